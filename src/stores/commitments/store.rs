//! Store operations: [`CommitmentsStore`] on a [`JsonStore<CommitmentsFile>`].

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Map;

use super::error::{CommitmentsError, InputProblem, Result};
use super::file::CommitmentsFile;
use super::heartbeat::{due_for_heartbeat, due_for_session, due_session_keys, expire};
use super::quarantine::write_side_file;
use super::record::{
    new_id, sort_commitments, Candidate, Commitment, DueWindow, InferredItem, Scope, Status,
};
use super::validate::validate_input;
use super::{CommitmentsConfig, DEFAULT_MAX_PER_DAY, DEFAULT_PENDING_LIMIT, FILE_VERSION};
use crate::json::{JsonOptions, JsonStore};
use crate::timefmt::to_ms;

/// The terminal statuses [`CommitmentsStore::mark_status`] can set.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminalStatus {
    /// `sent`, stamps `sentAtMs`.
    Sent,
    /// `dismissed`, stamps `dismissedAtMs`.
    Dismissed,
    /// `expired`, stamps `expiredAtMs`.
    Expired,
}

impl From<TerminalStatus> for Status {
    fn from(t: TerminalStatus) -> Status {
        match t {
            TerminalStatus::Sent => Status::Sent,
            TerminalStatus::Dismissed => Status::Dismissed,
            TerminalStatus::Expired => Status::Expired,
        }
    }
}

/// Status filter of [`CommitmentsStore::list`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// `pending` and `snoozed` (the CLI default, openclaw's "pending").
    Active,
    /// Every status.
    All,
    /// Exactly this status.
    Only(Status),
}

/// What [`CommitmentsStore::mark_status`] and [`CommitmentsStore::snooze`] did,
/// each list in request order (ids trimmed and deduplicated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusOutcome {
    /// Ids whose status changed.
    pub changed: Vec<String>,
    /// Ids not in the store.
    pub unknown: Vec<String>,
    /// Ids that were already terminal (sent, dismissed, expired): untouched.
    pub already_terminal: Vec<String>,
}

/// The commitments store on one state directory: a [`JsonStore`] of
/// [`CommitmentsFile`] (envelope version [`FILE_VERSION`], group commit on).
/// `Send + Sync`; share it or open it again (one writer queue per path).
#[derive(Debug)]
pub struct CommitmentsStore {
    json: JsonStore<CommitmentsFile>,
    cfg: CommitmentsConfig,
}

impl CommitmentsStore {
    /// Opens the store at `<state_dir>/commitments/commitments.json` (created on
    /// the first write; directory 0700, file 0600).
    ///
    /// Errors: [`crate::Error::InvalidPath`], [`crate::Error::Io`] creating the
    /// directory.
    pub fn open(state_dir: impl AsRef<Path>, cfg: CommitmentsConfig) -> Result<Self> {
        Self::open_file(crate::paths::commitments_file(state_dir.as_ref()), cfg)
    }

    /// Opens the store at an explicit file path.
    ///
    /// Errors: [`crate::Error::InvalidPath`], [`crate::Error::Io`].
    pub fn open_file(path: impl AsRef<Path>, cfg: CommitmentsConfig) -> Result<Self> {
        let opts = JsonOptions {
            lock: cfg.lock.clone(),
            durability: cfg.durability,
            // openclaw's only version; a version 2 adds `migrate` from 1.
            version: Some(FILE_VERSION),
            migrate: None,
            ..Default::default()
        };
        let json = JsonStore::open(path, opts)?;
        Ok(CommitmentsStore { json, cfg })
    }

    /// The canonical store file path.
    pub fn path(&self) -> &Path {
        self.json.path()
    }

    /// The configuration.
    pub fn config(&self) -> &CommitmentsConfig {
        &self.cfg
    }

    fn max_per_day(&self) -> usize {
        match self.cfg.max_per_day {
            0 => DEFAULT_MAX_PER_DAY as usize,
            n => n as usize,
        }
    }

    /// Reads and validates the file without the lock (atomic saves make that
    /// safe) and without writing anything; invalid records are reported in
    /// [`CommitmentsFile::invalid`], not as an error. A missing file is an
    /// empty store.
    ///
    /// Errors: [`crate::Error::Corrupt`] (bad envelope), [`crate::Error::Symlink`],
    /// [`crate::Error::Io`].
    pub fn snapshot(&self) -> Result<CommitmentsFile> {
        self.json.load().map_err(Into::into)
    }

    /// Runs `op` (which returns its value and whether it changed the records)
    /// so that it writes only when it changes something:
    ///
    /// 1. on a lock-free load of the committed file: if the file is clean (no
    ///    invalid records, no legacy fields) and `op` changes nothing, its
    ///    value is the answer — linearized at that load, nothing locked or
    ///    written (a file not in canonical form is left as it is);
    /// 2. otherwise `op` runs again in [`CommitmentsStore::locked`] on a fresh
    ///    load, whose save is group-committed with other threads' updates.
    fn section<R>(&self, op: impl Fn(&mut Vec<Commitment>) -> Result<(R, bool)>) -> Result<R> {
        let mut doc = self.snapshot()?;
        if !doc.invalid.is_empty() && !self.cfg.quarantine_invalid {
            return Err(self.invalid_records(doc.invalid));
        }
        if doc.invalid.is_empty() && doc.legacy_stripped == 0 {
            let (out, changed) = op(&mut doc.commitments)?;
            if !changed {
                return Ok(out);
            }
        }
        self.locked(|records| Ok(op(records)?.0))
    }

    /// One exclusive section ([`JsonStore::try_update`]): load, strip legacy
    /// fields, refuse or quarantine invalid records, `op`, save if the bytes
    /// changed. `op`'s error writes nothing.
    fn locked<R>(&self, op: impl FnOnce(&mut Vec<Commitment>) -> Result<R>) -> Result<R> {
        self.json
            .try_update(|doc: &mut CommitmentsFile| {
                let path = self.path();
                if doc.legacy_stripped > 0 {
                    tracing::info!(path = %path.display(), records = doc.legacy_stripped, "stripping legacy source text fields");
                    doc.legacy_stripped = 0;
                }
                if !doc.invalid.is_empty() {
                    if !self.cfg.quarantine_invalid {
                        return Err(self.invalid_records(std::mem::take(&mut doc.invalid)));
                    }
                    let side = write_side_file(path, &doc.invalid)?;
                    tracing::warn!(path = %path.display(), moved_to = %side.display(), records = doc.invalid.len(), "quarantined invalid commitment records");
                    doc.invalid.clear();
                }
                op(&mut doc.commitments)
            })
    }

    fn invalid_records(&self, records: Vec<super::InvalidRecord>) -> CommitmentsError {
        CommitmentsError::InvalidRecords {
            path: self.path().to_path_buf(),
            records,
        }
    }

    /// Creates or merges inferred commitments (openclaw `upsertInferredCommitments`).
    ///
    /// One exclusive section: the expiry pass, then per candidate: an **active**
    /// record with the same scope key and trimmed `dedupeKey` is merged (`reason`
    /// and `suggestedText` replaced unless the new value is empty, `confidence` =
    /// max, window widened to min earliest / max latest, `timezone` = new,
    /// `updatedAtMs = now`; id, createdAtMs, attempts unchanged); otherwise a new
    /// `pending` record with `attempts` 0 is inserted. Returns only the newly
    /// created records. No candidates → `[]` without touching the file.
    ///
    /// Errors: [`CommitmentsError::InvalidInput`] (empty required scope field,
    /// empty dedupeKey, negative or non-finite confidence, `latestMs <
    /// earliestMs`, checked before anything is locked; an empty reason or
    /// suggestedText for a candidate that would be inserted rather than merged,
    /// which aborts the whole batch without writing) — openclaw's SQLite era
    /// dropped such candidates silently; store errors.
    pub fn upsert_inferred(
        &self,
        item: &InferredItem,
        candidates: &[Candidate],
        now: SystemTime,
    ) -> Result<Vec<Commitment>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        validate_input(self.path(), item, candidates)?;
        let now = to_ms(now);
        let key = item.scope.key();
        self.locked(|records| {
            expire(records, now);
            let mut created = Vec::new();
            for c in candidates {
                let dedupe = c.dedupe_key.trim();
                let found = records.iter_mut().find(|r| {
                    r.status.is_active() && r.dedupe_key.trim() == dedupe && r.scope_key() == key
                });
                if let Some(r) = found {
                    merge(r, c, now);
                    continue;
                }
                for (field, v) in [("reason", &c.reason), ("suggestedText", &c.suggested_text)] {
                    if v.trim().is_empty() {
                        return Err(CommitmentsError::InvalidInput {
                            path: self.path().to_path_buf(),
                            problem: InputProblem::EmptyTextOnInsert {
                                field,
                                dedupe_key: dedupe.to_string(),
                            },
                        });
                    }
                }
                let rec = new_record(item, c, now);
                created.push(rec.clone());
                records.push(rec);
            }
            Ok(created)
        })
    }

    /// Counts a delivery attempt (openclaw `markCommitmentsAttempted`): ids are
    /// trimmed and deduplicated; every matching record, **whatever its status**,
    /// gets `attempts += 1`, `lastAttemptAtMs = updatedAtMs = now`. Returns the
    /// ids that matched. Writes only if one matched.
    ///
    /// Errors: store errors.
    pub fn mark_attempted<S: AsRef<str>>(&self, ids: &[S], now: SystemTime) -> Result<Vec<String>> {
        let ids = clean_ids(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_ms(now);
        self.section(|records| {
            let mut hit = Vec::new();
            for id in &ids {
                if let Some(r) = records.iter_mut().find(|r| &r.id == id) {
                    r.attempts = r.attempts.saturating_add(1);
                    r.last_attempt_at_ms = Some(now);
                    r.updated_at_ms = now;
                    hit.push(id.clone());
                }
            }
            let changed = !hit.is_empty();
            Ok((hit, changed))
        })
    }

    /// Sets a terminal status (openclaw `markCommitmentsStatus`): only active
    /// records change — `status`, `updatedAtMs = now` and the matching
    /// `sentAtMs` / `dismissedAtMs` / `expiredAtMs`. Unlike openclaw, reports
    /// unknown and already-terminal ids instead of ignoring them silently.
    /// Writes only if a record changed.
    ///
    /// Errors: store errors.
    pub fn mark_status<S: AsRef<str>>(
        &self,
        ids: &[S],
        status: TerminalStatus,
        now: SystemTime,
    ) -> Result<StatusOutcome> {
        let at = to_ms(now);
        self.transition(ids, at, |r| {
            r.status = status.into();
            match status {
                TerminalStatus::Sent => r.sent_at_ms = Some(at),
                TerminalStatus::Dismissed => r.dismissed_at_ms = Some(at),
                TerminalStatus::Expired => r.expired_at_ms = Some(at),
            }
        })
    }

    /// Snoozes active records until `until`: `status = snoozed`,
    /// `snoozedUntilMs = until`, `updatedAtMs = now` (openclaw had the status
    /// but no flow setting it). Terminal ids are reported, not changed.
    ///
    /// Errors: store errors.
    pub fn snooze<S: AsRef<str>>(
        &self,
        ids: &[S],
        until: SystemTime,
        now: SystemTime,
    ) -> Result<StatusOutcome> {
        let until = to_ms(until);
        self.transition(ids, to_ms(now), |r| {
            r.status = Status::Snoozed;
            r.snoozed_until_ms = Some(until);
        })
    }

    fn transition<S: AsRef<str>>(
        &self,
        ids: &[S],
        now: i64,
        apply: impl Fn(&mut Commitment),
    ) -> Result<StatusOutcome> {
        let ids = clean_ids(ids);
        if ids.is_empty() {
            return Ok(StatusOutcome::default());
        }
        self.section(|records| {
            let mut out = StatusOutcome::default();
            for id in &ids {
                match records.iter_mut().find(|r| &r.id == id) {
                    None => out.unknown.push(id.clone()),
                    Some(r) if !r.status.is_active() => out.already_terminal.push(id.clone()),
                    Some(r) => {
                        apply(r);
                        r.updated_at_ms = now;
                        out.changed.push(id.clone());
                    }
                }
            }
            let changed = !out.changed.is_empty();
            Ok((out, changed))
        })
    }

    /// Runs the expiry pass alone; returns how many records expired. Writes
    /// only if one did.
    ///
    /// Errors: store errors.
    pub fn expire(&self, now: SystemTime) -> Result<usize> {
        let now = to_ms(now);
        self.section(|records| {
            let n = expire(records, now);
            Ok((n, n > 0))
        })
    }

    /// Read helper: the expiry pass (saved if it expired anything), then `pick`.
    fn read<R>(&self, now: i64, pick: impl Fn(&[Commitment]) -> R) -> Result<R> {
        self.section(|records| {
            let n = expire(records, now);
            Ok((pick(records), n > 0))
        })
    }

    /// Active, unsnoozed records of exactly this scope (scope keys equal), due or
    /// not, sorted, at most `limit` (default 20) — openclaw
    /// `listPendingCommitmentsForScope`.
    ///
    /// Errors: store errors.
    pub fn list_pending_for_scope(
        &self,
        scope: &Scope,
        now: SystemTime,
        limit: Option<usize>,
    ) -> Result<Vec<Commitment>> {
        let key = scope.key();
        let now = to_ms(now);
        self.read(now, |records| {
            let mut v: Vec<Commitment> = records
                .iter()
                .filter(|r| r.eligible_at(now) && r.scope_key() == key)
                .cloned()
                .collect();
            sort_commitments(&mut v);
            v.truncate(limit.unwrap_or(DEFAULT_PENDING_LIMIT));
            v
        })
    }

    /// Due records for one agent+session to deliver now — openclaw
    /// `listDueCommitmentsForSession`: `[]` unless enabled; `sent` = records of the
    /// session with `sentAtMs ≥ now − 24 h`; `remaining = maxPerDay − sent`;
    /// limit = min(`limit` or 3, remaining, 3); keep active, unsnoozed records
    /// with `earliestMs ≤ now ≤ latestMs + 72 h`; sorted.
    ///
    /// Errors: store errors.
    pub fn list_due_for_session(
        &self,
        agent_id: &str,
        session_key: &str,
        now: SystemTime,
        limit: Option<usize>,
    ) -> Result<Vec<Commitment>> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let (now, max) = (to_ms(now), self.max_per_day());
        self.read(now, |records| {
            due_for_session(records, agent_id, session_key, now, limit, max)
        })
    }

    /// Distinct session keys of the agent with at least one due record and a
    /// rolling-24 h sent count below `maxPerDay`, sorted, at most `limit` — openclaw
    /// `listDueCommitmentSessionKeys`, in one linear pass. `[]` unless enabled.
    ///
    /// Errors: store errors.
    pub fn list_due_session_keys(
        &self,
        agent_id: &str,
        now: SystemTime,
        limit: Option<usize>,
    ) -> Result<Vec<String>> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let (now, max) = (to_ms(now), self.max_per_day());
        self.read(now, |records| {
            due_session_keys(records, agent_id, now, limit, max)
        })
    }

    /// The heartbeat's whole pass on one load: for every agent with active
    /// records, its due session keys (at most `max_sessions_per_agent`, as
    /// [`CommitmentsStore::list_due_session_keys`]), and for each the due
    /// records (as [`CommitmentsStore::list_due_for_session`] with the default
    /// limit). Same rules as calling those per session, without reloading the
    /// file per session. `[]` unless enabled.
    ///
    /// Errors: store errors.
    pub fn list_due_for_heartbeat(
        &self,
        now: SystemTime,
        max_sessions_per_agent: Option<usize>,
    ) -> Result<Vec<Commitment>> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let (now, max) = (to_ms(now), self.max_per_day());
        self.read(now, |records| {
            due_for_heartbeat(records, now, max_sessions_per_agent, max)
        })
    }

    /// Records filtered by status and agent, sorted — openclaw `listCommitments`.
    ///
    /// Errors: store errors.
    pub fn list(
        &self,
        status: StatusFilter,
        agent_id: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Commitment>> {
        self.read(to_ms(now), |records| {
            let mut v: Vec<Commitment> = records
                .iter()
                .filter(|r| match status {
                    StatusFilter::All => true,
                    StatusFilter::Active => r.status.is_active(),
                    StatusFilter::Only(s) => r.status == s,
                })
                .filter(|r| agent_id.is_none_or(|a| r.agent_id == a))
                .cloned()
                .collect();
            sort_commitments(&mut v);
            v
        })
    }
}

fn merge(r: &mut Commitment, c: &Candidate, now: i64) {
    if !c.reason.trim().is_empty() {
        r.reason = c.reason.clone();
    }
    if !c.suggested_text.trim().is_empty() {
        r.suggested_text = c.suggested_text.clone();
    }
    if c.confidence > r.confidence {
        r.confidence = c.confidence;
    }
    r.due_window.earliest_ms = r.due_window.earliest_ms.min(c.earliest_ms);
    r.due_window.latest_ms = r.due_window.latest_ms.max(c.latest_ms);
    r.due_window.timezone = c.timezone.clone();
    r.updated_at_ms = now;
}

fn new_record(item: &InferredItem, c: &Candidate, now: i64) -> Commitment {
    let s = &item.scope;
    Commitment {
        id: new_id(now),
        agent_id: s.agent_id.clone(),
        session_key: s.session_key.clone(),
        channel: s.channel.clone(),
        account_id: s.account_id.clone(),
        to: s.to.clone(),
        thread_id: s.thread_id.clone(),
        sender_id: s.sender_id.clone(),
        kind: c.kind,
        sensitivity: c.sensitivity,
        source: c.source,
        status: Status::Pending,
        reason: c.reason.clone(),
        suggested_text: c.suggested_text.clone(),
        dedupe_key: c.dedupe_key.trim().to_string(),
        confidence: c.confidence,
        due_window: DueWindow {
            earliest_ms: c.earliest_ms,
            latest_ms: c.latest_ms,
            timezone: c.timezone.clone(),
        },
        source_message_id: item.source_message_id.clone(),
        source_run_id: item.source_run_id.clone(),
        created_at_ms: now,
        updated_at_ms: now,
        attempts: 0,
        last_attempt_at_ms: None,
        sent_at_ms: None,
        dismissed_at_ms: None,
        snoozed_until_ms: None,
        expired_at_ms: None,
        extra: Map::new(),
    }
}

/// Ids trimmed, empty ones dropped, deduplicated (first occurrence kept).
fn clean_ids<S: AsRef<str>>(ids: &[S]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .map(|s| s.as_ref().trim())
        .filter(|s| !s.is_empty() && seen.insert(s.to_string()))
        .map(str::to_owned)
        .collect()
}
