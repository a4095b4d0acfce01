//! What a load removes from the file: legacy source-text fields (stripped from
//! every record) and, with [`super::CommitmentsConfig::quarantine_invalid`],
//! invalid records (moved to a side file first).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::validate::InvalidRecord;
use super::FILE_VERSION;
use crate::atomic::{self, Durability};

/// Record fields from before openclaw PR #75302 (raw source text); stripped on
/// load, and their presence forces a rewrite.
pub(crate) const LEGACY_FIELDS: [&str; 2] = ["sourceUserText", "sourceAssistantText"];

/// Removes the legacy fields from a record; whether it had any.
pub(crate) fn strip_legacy(record: &mut Value) -> bool {
    let Value::Object(m) = record else {
        return false;
    };
    let mut had = false;
    for f in LEGACY_FIELDS {
        had |= m.remove(f).is_some();
    }
    had
}

/// Writes the invalid records to `<file>.invalid-<unix ms>.json`, fsynced
/// (called inside the store's exclusive section, before the main file is
/// rewritten without them): `{"version": 1, "source", "quarantinedAtMs",
/// "records": [InvalidRecord...]}`.
///
/// Errors: [`crate::Error::Serialize`], [`crate::Error::Io`].
pub(crate) fn write_side_file(path: &Path, invalid: &[InvalidRecord]) -> crate::Result<PathBuf> {
    let now = crate::proc::now_ms();
    let mut side = path.as_os_str().to_os_string();
    side.push(format!(".invalid-{now}.json"));
    let side = PathBuf::from(side);
    let body = serde_json::json!({
        "version": FILE_VERSION,
        "source": path.display().to_string(),
        "quarantinedAtMs": now,
        "records": invalid,
    });
    let mut bytes = serde_json::to_vec_pretty(&body).map_err(|e| crate::Error::Serialize {
        path: side.clone(),
        source: e,
    })?;
    bytes.push(b'\n');
    atomic::write_atomic(&side, &bytes, Durability::Full)?;
    Ok(side)
}
