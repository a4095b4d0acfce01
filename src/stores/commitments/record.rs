//! Record types: one commitment as stored, its enums, scope and due window, and
//! the inputs of [`super::CommitmentsStore::upsert_inferred`].
//!
//! The serde attributes here *are* the record validation (see
//! [`super::validate`]): required fields have no default, enums accept only
//! their snake_case strings, `deserialize_with` rejects empty strings and
//! negative or non-finite confidences. Unknown fields are kept in
//! [`Commitment::extra`], never refused.

use std::time::SystemTime;

use serde::de::{Deserializer, Error as _, Unexpected};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strum::{IntoStaticStr, VariantArray, VariantNames};

use super::EXPIRE_AFTER_MS;
use crate::timefmt::to_ms;

/// A string that is not one of an enum's on-disk forms (`FromStr` of [`Kind`],
/// [`Sensitivity`], [`Source`], [`Status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of {})", .expected.join("|"))]
pub struct ParseEnumError {
    /// The field: `kind`, `sensitivity`, `source` or `status`.
    pub what: &'static str,
    /// The string given.
    pub value: String,
    /// Every accepted string.
    pub expected: &'static [&'static str],
}

/// `ALL`, `as_str` and `FromStr` of an enum whose strings strum derives (the
/// same snake_case strings serde derives for the file).
macro_rules! string_forms {
    ($($t:ident = $what:literal),+) => {$(
        impl $t {
            /// Every value, in declaration order.
            pub const ALL: &'static [$t] = <$t as VariantArray>::VARIANTS;
            /// The on-disk string.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
        impl std::str::FromStr for $t {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, ParseEnumError> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| ParseEnumError {
                    what: $what,
                    value: s.to_string(),
                    expected: <$t as VariantNames>::VARIANTS,
                })
            }
        }
    )+};
}

/// What the follow-up is about (`kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[derive(Serialize, Deserialize, strum::Display, IntoStaticStr, VariantArray, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// `event_check_in`: check in around an event.
    EventCheckIn,
    /// `deadline_check`: check a deadline.
    DeadlineCheck,
    /// `care_check_in`: a care check-in.
    CareCheckIn,
    /// `open_loop`: an open loop to close.
    OpenLoop,
}

/// How sensitive the follow-up is (`sensitivity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[derive(Serialize, Deserialize, strum::Display, IntoStaticStr, VariantArray, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Sensitivity {
    /// `routine`.
    Routine,
    /// `personal`.
    Personal,
    /// `care`.
    Care,
}

/// Where the commitment came from (`source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[derive(Serialize, Deserialize, strum::Display, IntoStaticStr, VariantArray, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Source {
    /// `inferred_user_context`: inferred from what the user said.
    InferredUserContext,
    /// `agent_promise`: the agent promised it.
    AgentPromise,
}

/// Lifecycle status (`status`). Active = `pending` or `snoozed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[derive(Serialize, Deserialize, strum::Display, IntoStaticStr, VariantArray, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    /// `pending`: waiting to be delivered.
    Pending,
    /// `sent`: delivered (terminal; `sentAtMs`).
    Sent,
    /// `dismissed`: dismissed by a person (terminal; `dismissedAtMs`).
    Dismissed,
    /// `snoozed`: snoozed until `snoozedUntilMs` (active).
    Snoozed,
    /// `expired`: expired 72 h after its window (terminal; `expiredAtMs`).
    Expired,
}

string_forms!(
    Kind = "kind",
    Sensitivity = "sensitivity",
    Source = "source",
    Status = "status"
);

impl Status {
    /// `pending` or `snoozed`.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::Snoozed)
    }
}

/// Where a commitment is delivered: the seven scope fields. `agentId`,
/// `sessionKey`, `channel` are required (non-empty); the rest optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Agent id.
    pub agent_id: String,
    /// Session key.
    pub session_key: String,
    /// Channel (e.g. `telegram`).
    pub channel: String,
    /// Account id on the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Thread id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Sender id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
}

impl Scope {
    /// openclaw's scope key: the seven fields trimmed, missing = empty string,
    /// joined with U+001F.
    pub fn key(&self) -> String {
        scope_key([
            self.agent_id.as_str(),
            self.session_key.as_str(),
            self.channel.as_str(),
            self.account_id.as_deref().unwrap_or(""),
            self.to.as_deref().unwrap_or(""),
            self.thread_id.as_deref().unwrap_or(""),
            self.sender_id.as_deref().unwrap_or(""),
        ])
    }
}

fn scope_key(parts: [&str; 7]) -> String {
    parts
        .iter()
        .map(|p| p.trim())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// `dueWindow`: when the follow-up is due, Unix ms as on disk. A stored record
/// has `latestMs ≥ earliestMs` (checked on load, see [`super::InvalidRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DueWindow {
    /// Not due before this (Unix ms).
    pub earliest_ms: i64,
    /// Due until this (Unix ms); expires 72 h later.
    pub latest_ms: i64,
    /// IANA time zone of the user, for display.
    pub timezone: String,
}

/// One commitment record, as stored: camelCase fields, times as Unix ms
/// integers (the file's format). Deserializing validates it (required fields,
/// enum strings, non-empty strings, confidence finite and ≥ 0); fields this
/// version does not know are kept in [`Commitment::extra`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Commitment {
    /// `cm_<base36 ms>_<10 hex>` (non-empty).
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    /// Scope: agent id (non-empty).
    #[serde(deserialize_with = "non_empty")]
    pub agent_id: String,
    /// Scope: session key (non-empty).
    #[serde(deserialize_with = "non_empty")]
    pub session_key: String,
    /// Scope: channel (non-empty).
    #[serde(deserialize_with = "non_empty")]
    pub channel: String,
    /// Scope: account id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Scope: recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Scope: thread id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Scope: sender id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Sensitivity.
    pub sensitivity: Sensitivity,
    /// Source.
    pub source: Source,
    /// Status.
    pub status: Status,
    /// Why (non-empty).
    #[serde(deserialize_with = "non_empty")]
    pub reason: String,
    /// The message to send (non-empty).
    #[serde(deserialize_with = "non_empty")]
    pub suggested_text: String,
    /// Merge key within a scope (non-empty; trimmed when created).
    #[serde(deserialize_with = "non_empty")]
    pub dedupe_key: String,
    /// Confidence, finite, ≥ 0.
    #[serde(deserialize_with = "confidence")]
    pub confidence: f64,
    /// Due window.
    pub due_window: DueWindow,
    /// Provenance: message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_message_id: Option<String>,
    /// Provenance: run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run_id: Option<String>,
    /// Created (Unix ms).
    pub created_at_ms: i64,
    /// Last changed (Unix ms).
    pub updated_at_ms: i64,
    /// Delivery attempts.
    pub attempts: u64,
    /// Last attempt (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at_ms: Option<i64>,
    /// Sent (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// Dismissed (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dismissed_at_ms: Option<i64>,
    /// Snoozed until (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snoozed_until_ms: Option<i64>,
    /// Expired (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at_ms: Option<i64>,
    /// Fields this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `deserialize_with`: a string that is not empty after trimming.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(D::Error::invalid_value(
            Unexpected::Str(&s),
            &"a non-empty string",
        ));
    }
    Ok(s)
}

/// `deserialize_with`: a finite number ≥ 0.
fn confidence<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let x = f64::deserialize(d)?;
    if !x.is_finite() || x < 0.0 {
        return Err(D::Error::invalid_value(
            Unexpected::Float(x),
            &"a finite number >= 0",
        ));
    }
    Ok(x)
}

impl Commitment {
    /// The record's scope.
    pub fn scope(&self) -> Scope {
        Scope {
            agent_id: self.agent_id.clone(),
            session_key: self.session_key.clone(),
            channel: self.channel.clone(),
            account_id: self.account_id.clone(),
            to: self.to.clone(),
            thread_id: self.thread_id.clone(),
            sender_id: self.sender_id.clone(),
        }
    }

    /// The scope key (see [`Scope::key`]).
    pub fn scope_key(&self) -> String {
        scope_key([
            self.agent_id.as_str(),
            self.session_key.as_str(),
            self.channel.as_str(),
            self.account_id.as_deref().unwrap_or(""),
            self.to.as_deref().unwrap_or(""),
            self.thread_id.as_deref().unwrap_or(""),
            self.sender_id.as_deref().unwrap_or(""),
        ])
    }

    /// Active and its snooze (if any) has elapsed: `snoozedUntilMs ≤ now`
    /// (missing = 0).
    pub fn is_eligible(&self, now: SystemTime) -> bool {
        self.eligible_at(to_ms(now))
    }

    /// Eligible, `earliestMs ≤ now` and not past `latestMs + 72 h`.
    pub fn is_due(&self, now: SystemTime) -> bool {
        self.due_at(to_ms(now))
    }

    pub(crate) fn eligible_at(&self, now: i64) -> bool {
        self.status.is_active() && self.snoozed_until_ms.unwrap_or(0) <= now
    }

    pub(crate) fn due_at(&self, now: i64) -> bool {
        self.eligible_at(now)
            && self.due_window.earliest_ms <= now
            && self.due_window.latest_ms.saturating_add(EXPIRE_AFTER_MS) >= now
    }

    fn sort_key(&self) -> (i64, i64, &str) {
        (
            self.due_window.earliest_ms,
            self.created_at_ms,
            self.id.as_str(),
        )
    }
}

/// Sorts by (`dueWindow.earliestMs`, `createdAtMs`, `id`), as openclaw.
pub(crate) fn sort_commitments(v: &mut [Commitment]) {
    v.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

/// A new id: `cm_<now in base36>_<10 random hex digits>` (openclaw format).
pub(crate) fn new_id(now_ms: i64) -> String {
    format!(
        "cm_{}_{}",
        base36(now_ms.max(0) as u64),
        crate::proc::random_hex(5)
    )
}

fn base36(mut n: u64) -> String {
    const D: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(char::from(D[(n % 36) as usize]));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().collect()
}

/// Provenance of an extraction batch, shared by its candidates (openclaw's
/// extraction `item`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferredItem {
    /// Where the commitments are delivered.
    #[serde(flatten)]
    pub scope: Scope,
    /// Message the commitments were inferred from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_message_id: Option<String>,
    /// Run that inferred them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run_id: Option<String>,
}

/// One inferred commitment to create or merge. Its window is in Unix ms, as
/// the record's `dueWindow` (the camelCase JSON of `lockstore commitments add
/// --stdin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// Kind.
    pub kind: Kind,
    /// Sensitivity.
    pub sensitivity: Sensitivity,
    /// Source.
    pub source: Source,
    /// Why (non-empty on insert; empty keeps the old value on merge).
    pub reason: String,
    /// The message (non-empty on insert; empty keeps the old value on merge).
    pub suggested_text: String,
    /// Merge key (trimmed; non-empty).
    pub dedupe_key: String,
    /// Confidence, finite, ≥ 0.
    pub confidence: f64,
    /// Window start (Unix ms).
    pub earliest_ms: i64,
    /// Window end (Unix ms), ≥ `earliest_ms`.
    pub latest_ms: i64,
    /// IANA time zone.
    pub timezone: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_format() {
        let id = new_id(1_700_000_000_000);
        let parts: Vec<&str> = id.split('_').collect();
        assert_eq!(parts[0], "cm");
        assert_eq!(
            u64::from_str_radix(parts[1], 36).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parts[2].len(), 10);
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn enums_are_snake_case_strings() {
        assert_eq!(
            serde_json::to_value(Kind::EventCheckIn).unwrap(),
            "event_check_in"
        );
        assert_eq!(
            serde_json::to_value(Source::InferredUserContext).unwrap(),
            "inferred_user_context"
        );
        assert_eq!("snoozed".parse::<Status>().unwrap(), Status::Snoozed);
        let e = "bogus".parse::<Status>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown status \"bogus\" (expected one of pending|sent|dismissed|snoozed|expired)"
        );
        // strum's strings and serde's are the same for every variant.
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(k.to_string(), k.as_str());
        }
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in Sensitivity::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in Source::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
