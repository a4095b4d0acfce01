//! Validation: stored records through serde (the attributes on
//! [`Commitment`]) with `serde_path_to_error` naming the field, plus the one
//! cross-field rule serde cannot express (`latestMs ≥ earliestMs`); and the
//! checks of [`super::CommitmentsStore::upsert_inferred`]'s input.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::error::{CommitmentsError, InputProblem, Result};
use super::record::{Candidate, Commitment, InferredItem};

/// One record of the file that failed validation (also the shape of an entry
/// of the quarantine side file: camelCase `index`, `id`, `field`, `problem`,
/// `record`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidRecord {
    /// Index in the `commitments` array.
    pub index: usize,
    /// The record's `id`, if it has a string one.
    pub id: Option<String>,
    /// The offending field as a path (camelCase, `dueWindow.latestMs` for
    /// nested ones); empty when the record is not an object.
    pub field: String,
    /// What is wrong (serde's message).
    pub problem: String,
    /// The record as found (legacy fields already stripped).
    pub record: Value,
}

impl std::fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record #{}", self.index)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.problem)
        } else {
            write!(f, ": field {}: {}", self.field, self.problem)
        }
    }
}

/// Decodes record `index` of the file. On failure the error names the field
/// path (`serde_path_to_error`; for a missing field, the field itself) and
/// keeps the record as found.
pub(crate) fn decode_record(index: usize, record: Value) -> Result<Commitment, Box<InvalidRecord>> {
    let invalid = |record: Value, field: String, problem: String| {
        Box::new(InvalidRecord {
            index,
            id: record.get("id").and_then(Value::as_str).map(str::to_owned),
            field,
            problem,
            record,
        })
    };
    let c: Commitment = match serde_path_to_error::deserialize(&record) {
        Ok(c) => c,
        Err(e) => {
            let field = field_path(e.path(), &e.inner().to_string());
            let problem = e.into_inner().to_string();
            return Err(invalid(record, field, problem));
        }
    };
    let w = &c.due_window;
    if w.latest_ms < w.earliest_ms {
        let problem = format!("{} is before earliestMs {}", w.latest_ms, w.earliest_ms);
        return Err(invalid(record, "dueWindow.latestMs".into(), problem));
    }
    Ok(c)
}

/// `a.b` of the path where serde failed; serde reports a missing field on its
/// parent, so its name (from the message "missing field `x`") is appended.
fn field_path(path: &serde_path_to_error::Path, message: &str) -> String {
    let mut parts: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        parts.push(name.to_string());
    }
    parts.join(".")
}

/// The checks of `upsert_inferred` made before anything is locked.
pub(crate) fn validate_input(
    path: &Path,
    item: &InferredItem,
    candidates: &[Candidate],
) -> Result<()> {
    let bad = |problem| {
        Err(CommitmentsError::InvalidInput {
            path: path.to_path_buf(),
            problem,
        })
    };
    for (field, v) in [
        ("agentId", &item.scope.agent_id),
        ("sessionKey", &item.scope.session_key),
        ("channel", &item.scope.channel),
    ] {
        if v.trim().is_empty() {
            return bad(InputProblem::EmptyScopeField { field });
        }
    }
    for (candidate, c) in candidates.iter().enumerate() {
        if c.dedupe_key.trim().is_empty() {
            return bad(InputProblem::EmptyDedupeKey { candidate });
        }
        if !c.confidence.is_finite() || c.confidence < 0.0 {
            return bad(InputProblem::BadConfidence {
                candidate,
                confidence: c.confidence,
            });
        }
        if c.latest_ms < c.earliest_ms {
            return bad(InputProblem::InvertedWindow {
                candidate,
                earliest_ms: c.earliest_ms,
                latest_ms: c.latest_ms,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec() -> Value {
        json!({
            "id": "cm_x", "agentId": "main", "sessionKey": "s1", "channel": "telegram",
            "kind": "open_loop", "sensitivity": "routine", "source": "agent_promise",
            "status": "pending", "reason": "r", "suggestedText": "t", "dedupeKey": "k",
            "confidence": 0.9,
            "dueWindow": {"earliestMs": 1, "latestMs": 2, "timezone": "UTC"},
            "createdAtMs": 1, "updatedAtMs": 1, "attempts": 0
        })
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases: [(&str, Value, &str, &str); 5] = [
            ("status", json!("done"), "status", "unknown variant `done`"),
            (
                "reason",
                json!(" "),
                "reason",
                "expected a non-empty string",
            ),
            ("confidence", json!(-1), "confidence", "finite number >= 0"),
            (
                "dueWindow",
                json!({"earliestMs": 1, "latestMs": "x", "timezone": "UTC"}),
                "dueWindow.latestMs",
                "invalid type",
            ),
            (
                "dueWindow",
                json!({"latestMs": 2, "timezone": "UTC"}),
                "dueWindow.earliestMs",
                "missing field `earliestMs`",
            ),
        ];
        for (f, v, field, problem) in cases {
            let mut r = rec();
            r[f] = v;
            let e = decode_record(3, r).unwrap_err();
            assert_eq!((e.index, e.id.as_deref()), (3, Some("cm_x")));
            assert_eq!(e.field, field);
            assert!(e.problem.contains(problem), "{e}");
        }
        let e = decode_record(0, json!(5)).unwrap_err();
        assert_eq!((e.field.as_str(), e.id.as_deref()), ("", None));
        assert!(decode_record(0, rec()).is_ok());
    }
}
