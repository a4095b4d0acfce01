//! Import of openclaw's generation-1 file queue (openclaw-stores.md §6.1):
//! `delivery-queue/*.json` (pending) and `delivery-queue/failed/*.json` (dead).
//!
//! Each file becomes one row whose idempotency key is derived from the entry
//! (`legacy:<id>`, or `legacy-file:<file stem>` without an id), so importing
//! twice imports nothing twice. The whole legacy entry is kept as the payload.
//! A source file is renamed aside to `<name>.imported` only after its row has
//! been re-read and checked; files are never deleted; malformed files are
//! reported and left in place.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::schema::InsertRow;
use super::{Enqueued, Outbox, OutboxError, Result, Status};
use crate::timefmt::to_ms;

/// Result of [`import_legacy`].
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// New rows.
    pub imported: u64,
    /// Files whose row already existed (imported before).
    pub existing: u64,
    /// Files renamed aside to `.imported`.
    pub renamed: u64,
    /// Malformed files and files whose id another file already claimed (path,
    /// reason naming the duplicate id and the other file or row), left in
    /// place.
    pub malformed: Vec<(PathBuf, String)>,
}

struct Legacy {
    key: String,
    channel: String,
    target: String,
    account_id: Option<String>,
    payload: String,
    attempts: i64,
    queued_at: i64,
    last_attempt_at: Option<i64>,
    last_error: Option<String>,
}

fn parse(path: &Path) -> std::result::Result<Legacy, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let n = |k: &str| o.get(k).and_then(|x| x.as_i64());
    let channel = s("channel")
        .filter(|c| !c.is_empty())
        .ok_or("missing \"channel\"")?;
    let target = s("to").filter(|c| !c.is_empty()).ok_or("missing \"to\"")?;
    let queued_at = n("enqueuedAt").ok_or("missing or non-integer \"enqueuedAt\"")?;
    let key = match s("id") {
        Some(id) if !id.is_empty() => format!("legacy:{id}"),
        _ => format!(
            "legacy-file:{}",
            path.file_stem()
                .map(|x| x.to_string_lossy())
                .unwrap_or_default()
        ),
    };
    Ok(Legacy {
        key,
        channel,
        target,
        account_id: s("accountId"),
        payload: v.to_string(),
        attempts: n("retryCount").unwrap_or(0).max(0),
        queued_at,
        last_attempt_at: n("lastAttemptAt"),
        last_error: s("lastError"),
    })
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::Error::io("read directory", dir, e).into()),
    };
    let mut v = Vec::new();
    for de in rd {
        let de = de.map_err(|e| crate::Error::io("read directory", dir, e))?;
        let p = de.path();
        let ft = de
            .file_type()
            .map_err(|e| crate::Error::io("stat", &p, e))?;
        if ft.is_file() && p.extension().is_some_and(|e| e == "json") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Imports `dir/delivery-queue/*.json` (or `dir/*.json` when `dir` is itself the
/// queue directory) as pending and `…/failed/*.json` as dead, at `now` (the
/// dead rows' `completed_at`).
/// Pending rows keep `retryCount` as `attempt_count` and become due per
/// openclaw's eligibility rule (`(lastAttemptAt or enqueuedAt) + backoff(retryCount)`;
/// `retryCount 0` is due at once).
///
/// Errors: [`OutboxError::Core`] for I/O errors listing the directories or
/// renaming a file and SQLite errors; [`OutboxError::LegacyReadBack`] if a row
/// did not read back as written (its file is left in place).
pub fn import_legacy(ob: &Outbox, dir: impl AsRef<Path>, now: SystemTime) -> Result<ImportReport> {
    import_legacy_with_progress(ob, dir, now, &mut |_, _| {})
}

/// [`import_legacy`], calling `progress(done, total)` after each file
/// (`total`: the `.json` files found when the import began, pending and
/// failed; `done` counts imported, already present and malformed files).
///
/// Errors: as [`import_legacy`].
pub fn import_legacy_with_progress(
    ob: &Outbox,
    dir: impl AsRef<Path>,
    now: SystemTime,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ImportReport> {
    let dir = dir.as_ref();
    let now = to_ms(now);
    let q = if dir.join("delivery-queue").is_dir() {
        dir.join("delivery-queue")
    } else {
        dir.to_path_buf()
    };
    let mut rep = ImportReport::default();
    // Idempotency key → the file of this run that claimed it: a second file
    // with the same id is a duplicate, reported with both files.
    let mut seen: std::collections::HashMap<String, PathBuf> = Default::default();
    let lists = [
        (json_files(&q)?, Status::Pending),
        (json_files(&q.join("failed"))?, Status::Dead),
    ];
    let total = (lists[0].0.len() + lists[1].0.len()) as u64;
    let mut done = 0u64;
    for (files, status) in lists {
        for f in files {
            done += 1;
            let l = match parse(&f) {
                Ok(l) => l,
                Err(why) => {
                    tracing::warn!(path = %f.display(), reason = %why, "malformed legacy queue file left in place");
                    rep.malformed.push((f, why));
                    progress(done, total);
                    continue;
                }
            };
            if let Some(first) = seen.get(&l.key) {
                let why = format!(
                    "duplicate id: {} is also the key of {} (imported first); left in place",
                    l.key,
                    first.display()
                );
                tracing::warn!(path = %f.display(), reason = %why, "legacy queue file with a duplicate id left in place");
                rep.malformed.push((f, why));
                progress(done, total);
                continue;
            }
            seen.insert(l.key.clone(), f.clone());
            let next = if l.attempts == 0 {
                l.queued_at
            } else {
                l.last_attempt_at.unwrap_or(l.queued_at)
                    + ob.options().retry.base_delay_ms(l.attempts)
            };
            let dead = status == Status::Dead;
            let r = ob.insert(&InsertRow {
                key: Some(&l.key),
                channel: &l.channel,
                target: &l.target,
                account_id: l.account_id.as_deref(),
                payload: &l.payload,
                status,
                attempt_count: l.attempts,
                next_attempt_at: next,
                queued_at: l.queued_at,
                expires_at: None,
                last_attempt_at: l.last_attempt_at,
                last_error: l.last_error.as_deref(),
                completed_at: dead.then_some(now),
                terminal_reason: dead.then_some("legacy_failed"),
            })?;
            match r {
                Enqueued::Created(_) => rep.imported += 1,
                Enqueued::Existing(_) => rep.existing += 1,
            }
            // Verify by re-reading before the source is moved aside.
            let row = ob.get_by_key(&l.key)?;
            let ok = row
                .as_ref()
                .is_some_and(|e| e.channel == l.channel && e.target == l.target && e.id == r.id());
            if !ok && matches!(r, Enqueued::Existing(_)) {
                // Imported by an earlier run from another file with the same id.
                let why = match &row {
                    Some(e) => format!(
                        "duplicate id: {} is already the key of row {} (channel {}, target {}) from an earlier import; left in place",
                        l.key, e.id, e.channel, e.target
                    ),
                    None => format!("duplicate id: {} is already taken; left in place", l.key),
                };
                tracing::warn!(path = %f.display(), reason = %why, "legacy queue file with a duplicate id left in place");
                rep.existing -= 1;
                rep.malformed.push((f, why));
                continue;
            }
            if !ok {
                return Err(OutboxError::LegacyReadBack {
                    path: ob.path().to_path_buf(),
                    file: f,
                });
            }
            let mut aside = f.clone().into_os_string();
            aside.push(".imported");
            std::fs::rename(&f, &aside).map_err(|e| crate::Error::io("rename aside", &f, e))?;
            rep.renamed += 1;
            progress(done, total);
        }
    }
    Ok(rep)
}
