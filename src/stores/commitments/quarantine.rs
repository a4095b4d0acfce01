//! What a load removes from the file: legacy source-text fields (stripped from
//! every record) and, with [`super::CommitmentsConfig::quarantine_invalid`],
//! invalid records (moved to a side file first).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::validate::InvalidRecord;
use super::FILE_VERSION;
use crate::atomic;
use crate::json::unique_name;

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

/// Writes the invalid records to `<file>.invalid-<unix ms>.json` (or
/// `<file>.invalid-<unix ms>-<n>.json` when that name exists: side files never
/// replace each other), fsynced, with its directory (called inside the
/// store's exclusive section, before the main file is rewritten without
/// them): `{"version": 1, "source", "quarantinedAtMs", "records":
/// [InvalidRecord...]}`. The file appears whole: a temp file (0600) is written
/// and fsynced, then linked to the free name without replacing anything.
///
/// Errors: [`crate::Error::Serialize`], [`crate::Error::Io`].
pub(crate) fn write_side_file(path: &Path, invalid: &[InvalidRecord]) -> crate::Result<PathBuf> {
    use std::io::Write;
    let now = crate::proc::now_ms();
    let body = serde_json::json!({
        "version": FILE_VERSION,
        "source": path.display().to_string(),
        "quarantinedAtMs": now,
        "records": invalid,
    });
    let mut bytes = serde_json::to_vec_pretty(&body).map_err(|e| crate::Error::Serialize {
        path: path.to_path_buf(),
        source: e,
    })?;
    bytes.push(b'\n');
    let (dir, _) = atomic::split(path)?;
    let io = |op: &'static str| move |e| crate::Error::io(op, dir, e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".invalid-")
        .tempfile_in(dir)
        .map_err(io("create side temp file in"))?;
    tmp.write_all(&bytes)
        .map_err(io("write side temp file in"))?;
    tmp.as_file()
        .sync_all()
        .map_err(io("fsync side temp file in"))?;
    let mut tmp = Some(tmp);
    let (side, ()) = unique_name(path, &format!(".invalid-{now}"), ".json", |to| {
        let Some(t) = tmp.take() else {
            return Err(std::io::Error::other("side temp file already persisted"));
        };
        match t.persist_noclobber(to) {
            Ok(_) => Ok(()),
            Err(e) => {
                tmp = Some(e.file);
                Err(e.error)
            }
        }
    })?;
    atomic::fsync_dir(dir)?;
    Ok(side)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six side files in one millisecond, or after the clock stepped back
    /// onto names already taken: six new files, every older one intact.
    /// (Decoys are symbolic links for every millisecond from now until at
    /// least 300 ms after they exist.)
    #[test]
    fn side_files_never_overwrite_each_other() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("commitments.json");
        let mut decoys = Vec::new();
        let mut span = 500;
        loop {
            let start = crate::proc::now_ms();
            for ms in start..start + span {
                let p = d.path().join(format!("commitments.json.invalid-{ms}.json"));
                if std::fs::symlink_metadata(&p).is_err() {
                    std::os::unix::fs::symlink("decoy", &p).unwrap();
                    decoys.push(p);
                }
            }
            if crate::proc::now_ms() + 300 < start + span {
                break;
            }
            span *= 2;
        }
        let mut written = Vec::new();
        for _ in 0..6 {
            written.push(write_side_file(&path, &[]).unwrap());
        }
        for p in &decoys {
            let m = std::fs::symlink_metadata(p).unwrap();
            assert!(m.file_type().is_symlink(), "{} overwritten", p.display());
        }
        written.sort();
        written.dedup();
        assert_eq!(written.len(), 6);
        let n = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".invalid-"))
            .count();
        assert_eq!(n, decoys.len() + 6);
    }
}
