//! The document of the [`crate::JsonStore`]: the `commitments.json` contents
//! inside JsonStore's `{"version": 1, ...}` envelope.
//!
//! On disk (byte-identical to what lockstore wrote before the store moved onto
//! JsonStore): 2-space pretty JSON with a trailing newline, keys `version`,
//! `commitments`, then other top-level keys (kept verbatim, sorted).

use serde::de::{Deserializer, Error as _};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::quarantine::strip_legacy;
use super::record::Commitment;
use super::validate::{decode_record, InvalidRecord};

/// The decoded `commitments.json` (what [`super::CommitmentsStore::snapshot`]
/// returns). Deserializing never fails on a bad record: each is validated on
/// its own and lands in [`CommitmentsFile::commitments`] or
/// [`CommitmentsFile::invalid`]; legacy source-text fields are stripped and
/// counted.
#[non_exhaustive]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "FileRepr")]
pub struct CommitmentsFile {
    /// Valid records, in file order.
    pub commitments: Vec<Commitment>,
    /// Records that failed validation, in file order. Serializing puts them
    /// back at their index (they are never dropped silently), but the store
    /// refuses to save while there are any (or quarantines them first).
    pub invalid: Vec<InvalidRecord>,
    /// How many records carried legacy source-text fields (stripped).
    pub legacy_stripped: usize,
    /// Top-level fields other than `version` and `commitments`, kept verbatim.
    pub other: Map<String, Value>,
    /// Whether the file exists (false for the empty store of a missing file).
    pub exists: bool,
}

/// The envelope's fields as they are parsed, before per-record validation.
#[derive(Deserialize)]
struct FileRepr {
    #[serde(deserialize_with = "array")]
    commitments: Vec<Value>,
    /// Also receives `version` (JsonStore checked it already); dropped.
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// `deserialize_with`: `commitments` must be an array (an error here makes the
/// file [`crate::Error::Corrupt`]).
fn array<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(a) => Ok(a),
        _ => Err(D::Error::custom("\"commitments\" is not an array")),
    }
}

impl From<FileRepr> for CommitmentsFile {
    fn from(repr: FileRepr) -> Self {
        let FileRepr {
            commitments,
            mut other,
        } = repr;
        other.remove("version");
        let mut file = CommitmentsFile {
            other,
            exists: true,
            ..Default::default()
        };
        for (index, mut record) in commitments.into_iter().enumerate() {
            if strip_legacy(&mut record) {
                file.legacy_stripped += 1;
            }
            match decode_record(index, record) {
                Ok(c) => file.commitments.push(c),
                Err(bad) => file.invalid.push(*bad),
            }
        }
        file
    }
}

impl Serialize for CommitmentsFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("commitments", &Records(self))?;
        for (k, v) in &self.other {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The `commitments` array: valid records with the invalid ones (as found) at
/// their original indices.
struct Records<'a>(&'a CommitmentsFile);

impl Serialize for Records<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut seq = s.serialize_seq(Some(f.commitments.len() + f.invalid.len()))?;
        let mut valid = f.commitments.iter();
        let mut bad = f.invalid.iter().peekable();
        for pos in 0..f.commitments.len() + f.invalid.len() {
            match bad.next_if(|b| b.index <= pos || valid.len() == 0) {
                Some(b) => seq.serialize_element(&b.record)?,
                None => {
                    if let Some(c) = valid.next() {
                        seq.serialize_element(c)?;
                    }
                }
            }
        }
        seq.end()
    }
}
