//! The commitments store: the JSON ledger of follow-ups an agent promised or
//! inferred ("check in after the interview on Friday"), shared by the daemon's
//! heartbeat (which delivers due ones and bumps their attempt counters) and the
//! CLI (which lists, adds, snoozes and dismisses them).
//!
//! Semantics follow openclaw's file-era commitments store (`src/commitments/*`,
//! reference §4): the same file `<state>/commitments/commitments.json`, the same
//! envelope `{"version": 1, "commitments": [...]}`, the same record fields
//! (camelCase) and enum strings (snake_case), the same merge, expiry, due-window
//! and rolling-24 h cap rules. What differs (see docs/commitments.md):
//!
//! * **No lost updates** (openclaw #81145): every mutator and every read helper
//!   is one exclusive section of [`crate::writer::Writer`] (in-process FIFO +
//!   cross-process `flock`): load → expire/modify → save-if-changed. The expiry
//!   pass is an internal helper that runs inside the caller's section and never
//!   re-enters the queue.
//! * **Invalid records are never dropped silently**: the incumbent skipped them
//!   and they vanished at the next write. Here a load that finds one returns
//!   [`CommitmentsError::InvalidRecords`] naming the file, record index and field,
//!   and nothing is written — unless [`CommitmentsConfig::quarantine_invalid`] is
//!   set, in which case the bad records are first saved (fsynced) to
//!   `commitments.json.invalid-<unix ms>.json` and the store goes on without them.
//! * A wrong envelope (not JSON, wrong version, `commitments` not an array) is
//!   [`crate::Error::Corrupt`], never read as an empty store.
//! * [`CommitmentsStore::mark_status`] reports which ids changed, which are
//!   unknown and which were already terminal.
//! * [`CommitmentsStore::list_due_session_keys`] is linear (openclaw #105787).
//!
//! All times are Unix epoch milliseconds (`i64`) and are passed in (`now`), so
//! tests control the clock.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::atomic::{self, Durability};
use crate::lock::LockOptions;
use crate::writer::Writer;

/// Envelope version of `commitments.json` (openclaw's file era).
pub const FILE_VERSION: u64 = 1;
/// Active records expire this long after `dueWindow.latestMs`: 72 h in ms
/// (openclaw `DEFAULT_COMMITMENT_EXPIRE_AFTER_HOURS`).
pub const EXPIRE_AFTER_MS: i64 = 72 * 3600 * 1000;
/// Rolling window of the per-session sent cap: 24 h in ms.
pub const DAY_MS: i64 = 24 * 3600 * 1000;
/// Default `maxPerDay` (openclaw `commitments.maxPerDay`).
pub const DEFAULT_MAX_PER_DAY: u32 = 3;
/// At most this many commitments are delivered per heartbeat (openclaw
/// `DEFAULT_COMMITMENT_MAX_PER_HEARTBEAT`).
pub const MAX_PER_HEARTBEAT: usize = 3;
/// Default limit of [`CommitmentsStore::list_pending_for_scope`].
pub const DEFAULT_PENDING_LIMIT: usize = 20;
/// Record fields from before openclaw PR #75302 (raw source text); stripped on
/// load, and their presence forces a rewrite.
pub const LEGACY_FIELDS: [&str; 2] = ["sourceUserText", "sourceAssistantText"];

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The on-disk string.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            /// The on-disk strings joined with `|`, for messages.
            pub fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join("|")
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(format!("unknown {} {s:?} (expected one of {})", stringify!($name), Self::expected())),
                }
            }
        }
    };
}

string_enum!(
    /// What the follow-up is about (`kind`).
    Kind {
        /// Check in around an event.
        EventCheckIn = "event_check_in",
        /// Check a deadline.
        DeadlineCheck = "deadline_check",
        /// A care check-in.
        CareCheckIn = "care_check_in",
        /// An open loop to close.
        OpenLoop = "open_loop",
    }
);

string_enum!(
    /// How sensitive the follow-up is (`sensitivity`).
    Sensitivity {
        /// Routine.
        Routine = "routine",
        /// Personal.
        Personal = "personal",
        /// Care.
        Care = "care",
    }
);

string_enum!(
    /// Where the commitment came from (`source`).
    Source {
        /// Inferred from what the user said.
        InferredUserContext = "inferred_user_context",
        /// The agent promised it.
        AgentPromise = "agent_promise",
    }
);

string_enum!(
    /// Lifecycle status (`status`). Active = `pending` or `snoozed`.
    Status {
        /// Waiting to be delivered.
        Pending = "pending",
        /// Delivered (terminal; `sentAtMs`).
        Sent = "sent",
        /// Dismissed by a person (terminal; `dismissedAtMs`).
        Dismissed = "dismissed",
        /// Snoozed until `snoozedUntilMs` (active).
        Snoozed = "snoozed",
        /// Expired 72 h after its window (terminal; `expiredAtMs`).
        Expired = "expired",
    }
);

impl Status {
    /// `pending` or `snoozed`.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::Snoozed)
    }
}

/// The terminal statuses [`CommitmentsStore::mark_status`] can set.
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

/// `dueWindow`: when the follow-up is due. `latestMs ≥ earliestMs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DueWindow {
    /// Not due before this (ms).
    pub earliest_ms: i64,
    /// Due until this (ms); expires 72 h later.
    pub latest_ms: i64,
    /// IANA time zone of the user, for display.
    pub timezone: String,
}

/// One commitment record, as stored (camelCase fields). Unknown fields are kept
/// as they are in [`Commitment::extra`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Commitment {
    /// `cm_<base36 ms>_<10 hex>`.
    pub id: String,
    /// Scope: agent id.
    pub agent_id: String,
    /// Scope: session key.
    pub session_key: String,
    /// Scope: channel.
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
    pub reason: String,
    /// The message to send (non-empty).
    pub suggested_text: String,
    /// Merge key within a scope (non-empty, trimmed).
    pub dedupe_key: String,
    /// Confidence, finite, ≥ 0.
    pub confidence: f64,
    /// Due window.
    pub due_window: DueWindow,
    /// Provenance: message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_message_id: Option<String>,
    /// Provenance: run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run_id: Option<String>,
    /// Created (ms).
    pub created_at_ms: i64,
    /// Last changed (ms).
    pub updated_at_ms: i64,
    /// Delivery attempts.
    pub attempts: u64,
    /// Last attempt (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at_ms: Option<i64>,
    /// Sent (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// Dismissed (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dismissed_at_ms: Option<i64>,
    /// Snoozed until (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snoozed_until_ms: Option<i64>,
    /// Expired (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at_ms: Option<i64>,
    /// Fields this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
    pub fn is_eligible(&self, now: i64) -> bool {
        self.status.is_active() && self.snoozed_until_ms.unwrap_or(0) <= now
    }

    /// Eligible, `earliestMs ≤ now` and not past `latestMs + 72 h`.
    pub fn is_due(&self, now: i64) -> bool {
        self.is_eligible(now)
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

/// Due records of one session (openclaw `listDueCommitmentsForSession` steps
/// 2–5): rolling 24 h sent count vs `max_per_day`, at most 3 per heartbeat.
fn due_for_session(
    records: &[Commitment],
    agent_id: &str,
    session_key: &str,
    now: i64,
    limit: Option<usize>,
    max_per_day: usize,
) -> Vec<Commitment> {
    let mine = |r: &&Commitment| r.agent_id == agent_id && r.session_key == session_key;
    let sent = records
        .iter()
        .filter(mine)
        .filter(|r| sent_recently(r, now))
        .count();
    let remaining = max_per_day.saturating_sub(sent);
    let limit = limit
        .unwrap_or(MAX_PER_HEARTBEAT)
        .min(remaining)
        .min(MAX_PER_HEARTBEAT);
    if limit == 0 {
        return Vec::new();
    }
    let mut v: Vec<Commitment> = records
        .iter()
        .filter(mine)
        .filter(|r| r.is_due(now))
        .cloned()
        .collect();
    sort_commitments(&mut v);
    v.truncate(limit);
    v
}

/// Distinct due session keys of one agent under the daily cap, sorted, at most
/// `limit` (openclaw `listDueCommitmentSessionKeys`, linear).
fn due_session_keys(
    records: &[Commitment],
    agent_id: &str,
    now: i64,
    limit: Option<usize>,
    max_per_day: usize,
) -> Vec<String> {
    let mut sent: HashMap<&str, usize> = HashMap::new();
    let mut due: HashSet<&str> = HashSet::new();
    for r in records.iter().filter(|r| r.agent_id == agent_id) {
        if sent_recently(r, now) {
            *sent.entry(r.session_key.as_str()).or_default() += 1;
        }
        if r.is_due(now) {
            due.insert(r.session_key.as_str());
        }
    }
    let mut keys: Vec<String> = due
        .into_iter()
        .filter(|k| sent.get(k).copied().unwrap_or(0) < max_per_day)
        .map(str::to_owned)
        .collect();
    keys.sort();
    if let Some(l) = limit {
        keys.truncate(l);
    }
    keys
}

/// Sorts by (`dueWindow.earliestMs`, `createdAtMs`, `id`), as openclaw.
pub fn sort_commitments(v: &mut [Commitment]) {
    v.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

/// A new id: `cm_<now in base36>_<10 random hex digits>` (openclaw format).
pub fn new_id(now: i64) -> String {
    format!(
        "cm_{}_{}",
        base36(now.max(0) as u64),
        crate::proc::random_hex(5)
    )
}

fn base36(mut n: u64) -> String {
    const D: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(D[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
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

/// One inferred commitment to create or merge.
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
    /// Window start (ms).
    pub earliest_ms: i64,
    /// Window end (ms), ≥ `earliest_ms`.
    pub latest_ms: i64,
    /// IANA time zone.
    pub timezone: String,
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

/// Status filter of [`CommitmentsStore::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// `pending` and `snoozed` (the CLI default, openclaw's "pending").
    Active,
    /// Every status.
    All,
    /// Exactly this status.
    Only(Status),
}

/// One record of the file that failed validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidRecord {
    /// Index in the `commitments` array.
    pub index: usize,
    /// The record's `id`, if it has a string one.
    pub id: Option<String>,
    /// The offending field (camelCase, `dueWindow.latestMs` for nested ones;
    /// empty when the record is not an object).
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// The record as found.
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

/// Errors of the commitments store.
#[derive(Debug, thiserror::Error)]
pub enum CommitmentsError {
    /// Lock, I/O, corrupt envelope ([`crate::Error::Corrupt`]) and the like.
    #[error(transparent)]
    Core(#[from] crate::Error),
    /// The file holds records that fail validation; nothing was written. Set
    /// [`CommitmentsConfig::quarantine_invalid`] to move them to a side file.
    #[error("{} has {} invalid commitment record(s): {}; refusing to overwrite it (quarantine them to a side file to continue, e.g. `lockstore commitments --quarantine-invalid`)", .path.display(), .records.len(), summarize(.records))]
    InvalidRecords {
        /// The store file.
        path: PathBuf,
        /// The invalid records.
        records: Vec<InvalidRecord>,
    },
    /// A candidate or argument is invalid; nothing was written.
    #[error("invalid commitment input: {0}")]
    InvalidInput(String),
}

fn summarize(r: &[InvalidRecord]) -> String {
    let mut s: Vec<String> = r.iter().take(3).map(|x| x.to_string()).collect();
    if r.len() > 3 {
        s.push(format!("and {} more", r.len() - 3));
    }
    s.join("; ")
}

/// Result alias of this module.
pub type Result<T, E = CommitmentsError> = std::result::Result<T, E>;

/// Store configuration.
#[derive(Debug, Clone)]
pub struct CommitmentsConfig {
    /// `commitments.enabled`: gates the heartbeat helpers
    /// ([`CommitmentsStore::list_due_for_session`],
    /// [`CommitmentsStore::list_due_session_keys`]). Reads and mutators always
    /// work. Default false (openclaw).
    pub enabled: bool,
    /// `commitments.maxPerDay`: sent commitments per agent+session in any rolling
    /// 24 h. Default 3; 0 is treated as the default (openclaw requires a positive
    /// integer).
    pub max_per_day: u32,
    /// How to wait for the lock.
    pub lock: LockOptions,
    /// fsync policy of saves. Default [`Durability::Full`].
    pub durability: Durability,
    /// Move invalid records to `commitments.json.invalid-<ms>.json` and go on,
    /// instead of failing with [`CommitmentsError::InvalidRecords`]. Default false.
    pub quarantine_invalid: bool,
}

impl Default for CommitmentsConfig {
    fn default() -> Self {
        CommitmentsConfig {
            enabled: false,
            max_per_day: DEFAULT_MAX_PER_DAY,
            lock: LockOptions::default(),
            durability: Durability::Full,
            quarantine_invalid: false,
        }
    }
}

/// The decoded file.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Valid records, in file order.
    pub commitments: Vec<Commitment>,
    /// Records that failed validation.
    pub invalid: Vec<InvalidRecord>,
    /// How many records carried legacy source-text fields (stripped).
    pub legacy_stripped: usize,
    /// Top-level fields other than `version` and `commitments`, kept verbatim.
    pub other: Map<String, Value>,
    /// Whether the file exists.
    pub exists: bool,
}

/// The commitments store on one state directory. `Send + Sync`.
#[derive(Debug)]
pub struct CommitmentsStore {
    writer: Writer,
    cfg: CommitmentsConfig,
}

/// Working copy inside an exclusive section.
struct Doc {
    snap: Snapshot,
    dirty: bool,
}

impl CommitmentsStore {
    /// Opens the store at `<state_dir>/commitments/commitments.json` (created on
    /// the first write; directory 0700, file 0600).
    ///
    /// Errors: [`crate::Error::Io`] creating the directory.
    pub fn open(state_dir: &Path, cfg: CommitmentsConfig) -> Result<Self> {
        Self::open_file(&crate::paths::commitments_file(state_dir), cfg)
    }

    /// Opens the store at an explicit file path.
    ///
    /// Errors: [`crate::Error::InvalidPath`], [`crate::Error::Io`].
    pub fn open_file(path: &Path, cfg: CommitmentsConfig) -> Result<Self> {
        let writer = Writer::open(path, cfg.lock.clone())?;
        Ok(CommitmentsStore { writer, cfg })
    }

    /// The canonical store file path.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// The configuration.
    pub fn config(&self) -> &CommitmentsConfig {
        &self.cfg
    }

    fn max_per_day(&self) -> u32 {
        if self.cfg.max_per_day == 0 {
            DEFAULT_MAX_PER_DAY
        } else {
            self.cfg.max_per_day
        }
    }

    /// Reads and validates the file without the lock (atomic saves make that
    /// safe) and without writing anything; invalid records are reported in
    /// [`Snapshot::invalid`], not as an error.
    ///
    /// Errors: [`crate::Error::Corrupt`] (bad envelope), [`crate::Error::Symlink`],
    /// [`crate::Error::Io`].
    pub fn snapshot(&self) -> Result<Snapshot> {
        let raw = atomic::read_file(self.path())?;
        Ok(decode(self.path(), raw.as_deref())?)
    }

    /// Runs `f` on the loaded, validated records inside one exclusive section,
    /// then saves if `f` reported a change (or legacy fields were stripped, or
    /// invalid records were quarantined).
    fn section<R>(&self, f: impl FnOnce(&mut Vec<Commitment>) -> Result<(R, bool)>) -> Result<R> {
        self.writer.run(|_ctx| {
            let mut doc = self.load_locked()?;
            let (out, changed) = f(&mut doc.snap.commitments)?;
            if changed || doc.dirty {
                self.save_locked(&doc.snap)?;
            }
            Ok(out)
        })
    }

    fn load_locked(&self) -> Result<Doc> {
        let path = self.path();
        let raw = atomic::read_file(path)?;
        let mut snap = decode(path, raw.as_deref())?;
        let mut dirty = snap.legacy_stripped > 0;
        if snap.legacy_stripped > 0 {
            tracing::info!(path = %path.display(), records = snap.legacy_stripped, "stripping legacy source text fields");
        }
        if !snap.invalid.is_empty() {
            if !self.cfg.quarantine_invalid {
                return Err(CommitmentsError::InvalidRecords {
                    path: path.to_path_buf(),
                    records: std::mem::take(&mut snap.invalid),
                });
            }
            let side = self.quarantine_locked(&snap.invalid)?;
            tracing::error!(path = %path.display(), moved_to = %side.display(), records = snap.invalid.len(), "quarantined invalid commitment records");
            snap.invalid.clear();
            dirty = true;
        }
        Ok(Doc { snap, dirty })
    }

    /// Writes the invalid records to `<file>.invalid-<ms>.json` (fsynced before
    /// the main file is rewritten without them).
    fn quarantine_locked(&self, invalid: &[InvalidRecord]) -> Result<PathBuf> {
        let path = self.path();
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

    fn save_locked(&self, snap: &Snapshot) -> Result<()> {
        let bytes = encode(self.path(), snap)?;
        let _span = tracing::debug_span!("commit", path = %self.path().display(), pid = std::process::id(), bytes = bytes.len()).entered();
        atomic::write_atomic(self.path(), &bytes, self.cfg.durability)?;
        Ok(())
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
        now: i64,
    ) -> Result<Vec<Commitment>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        validate_input(item, candidates)?;
        let key = item.scope.key();
        self.section(|records| {
            expire_unchecked(records, now);
            let mut created = Vec::new();
            for c in candidates {
                let dedupe = c.dedupe_key.trim();
                let found = records.iter_mut().find(|r| {
                    r.status.is_active() && r.dedupe_key.trim() == dedupe && r.scope_key() == key
                });
                match found {
                    Some(r) => merge(r, c, now),
                    None => {
                        for (f, v) in [("reason", &c.reason), ("suggestedText", &c.suggested_text)] {
                            if v.trim().is_empty() {
                                return Err(CommitmentsError::InvalidInput(format!(
                                    "{f} must be non-empty for a new commitment (dedupeKey {dedupe:?})"
                                )));
                            }
                        }
                        let rec = new_record(item, c, now);
                        created.push(rec.clone());
                        records.push(rec);
                    }
                }
            }
            Ok((created, true))
        })
    }

    /// Counts a delivery attempt (openclaw `markCommitmentsAttempted`): ids are
    /// trimmed and deduplicated; every matching record, **whatever its status**,
    /// gets `attempts += 1`, `lastAttemptAtMs = updatedAtMs = now`. Returns the
    /// ids that matched. Writes only if one matched.
    ///
    /// Errors: store errors.
    pub fn mark_attempted<S: AsRef<str>>(&self, ids: &[S], now: i64) -> Result<Vec<String>> {
        let ids = clean_ids(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
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
    ///
    /// Errors: store errors.
    pub fn mark_status<S: AsRef<str>>(
        &self,
        ids: &[S],
        status: TerminalStatus,
        now: i64,
    ) -> Result<StatusOutcome> {
        self.transition(ids, now, |r| {
            r.status = status.into();
            match status {
                TerminalStatus::Sent => r.sent_at_ms = Some(now),
                TerminalStatus::Dismissed => r.dismissed_at_ms = Some(now),
                TerminalStatus::Expired => r.expired_at_ms = Some(now),
            }
        })
    }

    /// Snoozes active records until `until_ms`: `status = snoozed`,
    /// `snoozedUntilMs = until_ms`, `updatedAtMs = now` (openclaw had the status
    /// but no flow setting it). Terminal ids are reported, not changed.
    ///
    /// Errors: store errors.
    pub fn snooze<S: AsRef<str>>(
        &self,
        ids: &[S],
        until_ms: i64,
        now: i64,
    ) -> Result<StatusOutcome> {
        self.transition(ids, now, |r| {
            r.status = Status::Snoozed;
            r.snoozed_until_ms = Some(until_ms);
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
            for id in ids {
                match records.iter_mut().find(|r| r.id == id) {
                    None => out.unknown.push(id),
                    Some(r) if !r.status.is_active() => out.already_terminal.push(id),
                    Some(r) => {
                        apply(r);
                        r.updated_at_ms = now;
                        out.changed.push(id);
                    }
                }
            }
            let changed = !out.changed.is_empty();
            Ok((out, changed))
        })
    }

    /// Runs the expiry pass alone (one exclusive section); returns how many
    /// records expired.
    ///
    /// Errors: store errors.
    pub fn expire(&self, now: i64) -> Result<usize> {
        self.section(|records| {
            let n = expire_unchecked(records, now);
            Ok((n, n > 0))
        })
    }

    /// Read helper: runs the expiry pass under the writer (saving if it changed
    /// anything), then `pick` on the records.
    fn read<R>(&self, now: i64, pick: impl FnOnce(&[Commitment]) -> R) -> Result<R> {
        self.section(|records| {
            let n = expire_unchecked(records, now);
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
        now: i64,
        limit: Option<usize>,
    ) -> Result<Vec<Commitment>> {
        let key = scope.key();
        self.read(now, |records| {
            let mut v: Vec<Commitment> = records
                .iter()
                .filter(|r| r.is_eligible(now) && r.scope_key() == key)
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
        now: i64,
        limit: Option<usize>,
    ) -> Result<Vec<Commitment>> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let max = self.max_per_day() as usize;
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
        now: i64,
        limit: Option<usize>,
    ) -> Result<Vec<String>> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let max = self.max_per_day() as usize;
        self.read(now, |records| {
            due_session_keys(records, agent_id, now, limit, max)
        })
    }

    /// The heartbeat's whole pass in one exclusive section (one load): for every
    /// agent with active records, its due session keys (at most
    /// `max_sessions_per_agent`, as [`CommitmentsStore::list_due_session_keys`]),
    /// and for each the due records (as [`CommitmentsStore::list_due_for_session`]
    /// with the default limit). Same rules as calling those per session, without
    /// reloading the file per session. `[]` unless enabled.
    ///
    /// Errors: store errors.
    pub fn list_due_for_heartbeat(
        &self,
        now: i64,
        max_sessions_per_agent: Option<usize>,
    ) -> Result<Vec<Commitment>> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let max = self.max_per_day() as usize;
        self.read(now, |records| {
            let agents: std::collections::BTreeSet<&str> = records
                .iter()
                .filter(|r| r.status.is_active())
                .map(|r| r.agent_id.as_str())
                .collect();
            let mut out = Vec::new();
            for agent in agents {
                for key in due_session_keys(records, agent, now, max_sessions_per_agent, max) {
                    out.extend(due_for_session(records, agent, &key, now, None, max));
                }
            }
            out
        })
    }

    /// Records filtered by status and agent, sorted — openclaw `listCommitments`.
    ///
    /// Errors: store errors.
    pub fn list(
        &self,
        status: StatusFilter,
        agent_id: Option<&str>,
        now: i64,
    ) -> Result<Vec<Commitment>> {
        self.read(now, |records| {
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

fn sent_recently(r: &Commitment, now: i64) -> bool {
    r.status == Status::Sent && r.sent_at_ms.is_some_and(|t| t >= now - DAY_MS)
}

/// The expiry pass: active records with `latestMs + 72 h < now` become
/// `expired` with `expiredAtMs = updatedAtMs = now`. Unchecked: the caller holds
/// the exclusive section. Returns how many expired.
fn expire_unchecked(records: &mut [Commitment], now: i64) -> usize {
    let mut n = 0;
    for r in records.iter_mut() {
        if r.status.is_active() && r.due_window.latest_ms.saturating_add(EXPIRE_AFTER_MS) < now {
            r.status = Status::Expired;
            r.expired_at_ms = Some(now);
            r.updated_at_ms = now;
            n += 1;
        }
    }
    n
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

fn validate_input(item: &InferredItem, candidates: &[Candidate]) -> Result<()> {
    let bad = |m: String| Err(CommitmentsError::InvalidInput(m));
    for (f, v) in [
        ("agentId", &item.scope.agent_id),
        ("sessionKey", &item.scope.session_key),
        ("channel", &item.scope.channel),
    ] {
        if v.trim().is_empty() {
            return bad(format!("{f} must be a non-empty string"));
        }
    }
    for (i, c) in candidates.iter().enumerate() {
        if c.dedupe_key.trim().is_empty() {
            return bad(format!(
                "candidate #{i}: dedupeKey must be a non-empty string"
            ));
        }
        if !c.confidence.is_finite() || c.confidence < 0.0 {
            return bad(format!(
                "candidate #{i}: confidence must be a finite number >= 0, got {}",
                c.confidence
            ));
        }
        if c.latest_ms < c.earliest_ms {
            return bad(format!(
                "candidate #{i}: latestMs {} is before earliestMs {}",
                c.latest_ms, c.earliest_ms
            ));
        }
    }
    Ok(())
}

fn clean_ids<S: AsRef<str>>(ids: &[S]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .map(|s| s.as_ref().trim())
        .filter(|s| !s.is_empty() && seen.insert(s.to_string()))
        .map(str::to_owned)
        .collect()
}

/// Decodes the file's bytes (`None` = missing file → empty store): the envelope
/// must be an object with `"version": 1` and a `commitments` array, else
/// [`crate::Error::Corrupt`]; each record is validated on its own (see
/// [`validate_record`]); legacy fields are stripped and counted.
///
/// Errors: [`crate::Error::Corrupt`].
pub fn decode(path: &Path, raw: Option<&[u8]>) -> Result<Snapshot, crate::Error> {
    let Some(raw) = raw else {
        return Ok(Snapshot::default());
    };
    let corrupt = |reason: String| crate::Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let top: Value =
        serde_json::from_slice(raw).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    let Value::Object(mut top) = top else {
        return Err(corrupt("top level is not a JSON object".into()));
    };
    match top.remove("version") {
        None => return Err(corrupt("missing \"version\" field".into())),
        Some(v) if v.as_u64() == Some(FILE_VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
            "unknown version {v} (this lockstore {} supports {FILE_VERSION}); refusing to touch it",
            env!("CARGO_PKG_VERSION")
        )))
        }
    }
    let list = match top.remove("commitments") {
        None => return Err(corrupt("missing \"commitments\" array".into())),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(corrupt("\"commitments\" is not an array".into())),
    };
    let mut snap = Snapshot {
        other: top,
        exists: true,
        ..Default::default()
    };
    for (index, mut rec) in list.into_iter().enumerate() {
        if let Value::Object(m) = &mut rec {
            let mut had = false;
            for f in LEGACY_FIELDS {
                had |= m.remove(f).is_some();
            }
            if had {
                snap.legacy_stripped += 1;
            }
        }
        match validate_record(&rec) {
            Ok(c) => snap.commitments.push(c),
            Err((field, problem)) => snap.invalid.push(InvalidRecord {
                index,
                id: rec.get("id").and_then(Value::as_str).map(str::to_owned),
                field,
                problem,
                record: rec,
            }),
        }
    }
    Ok(snap)
}

/// Validates one record (legacy fields already stripped) and decodes it.
/// Error: `(field, problem)`; field is empty when the record is not an object.
pub fn validate_record(v: &Value) -> Result<Commitment, (String, String)> {
    let Some(m) = v.as_object() else {
        return Err((String::new(), "record is not a JSON object".into()));
    };
    let err = |f: &str, p: String| Err((f.to_string(), p));
    let got = |x: &Value| -> String {
        let s = x.to_string();
        if s.chars().count() > 40 {
            format!("{}…", s.chars().take(40).collect::<String>())
        } else {
            s
        }
    };
    for f in [
        "id",
        "agentId",
        "sessionKey",
        "channel",
        "reason",
        "suggestedText",
        "dedupeKey",
    ] {
        match m.get(f) {
            None => return err(f, "missing (required non-empty string)".into()),
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(x) => return err(f, format!("must be a non-empty string, got {}", got(x))),
        }
    }
    for f in [
        "accountId",
        "to",
        "threadId",
        "senderId",
        "sourceMessageId",
        "sourceRunId",
    ] {
        match m.get(f) {
            None | Some(Value::String(_)) => {}
            Some(x) => return err(f, format!("must be a string, got {}", got(x))),
        }
    }
    fn check_enum<T: std::str::FromStr>(
        m: &Map<String, Value>,
        f: &str,
        expected: String,
    ) -> Result<(), (String, String)> {
        match m.get(f) {
            None => Err((f.into(), format!("missing (expected one of {expected})"))),
            Some(Value::String(s)) if s.parse::<T>().is_ok() => Ok(()),
            Some(x) => Err((f.into(), format!("{x} is not one of {expected}"))),
        }
    }
    check_enum::<Kind>(m, "kind", Kind::expected())?;
    check_enum::<Sensitivity>(m, "sensitivity", Sensitivity::expected())?;
    check_enum::<Source>(m, "source", Source::expected())?;
    check_enum::<Status>(m, "status", Status::expected())?;
    match m.get("confidence") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0) => {}
        None => return err("confidence", "missing (required number >= 0)".into()),
        Some(x) => {
            return err(
                "confidence",
                format!("must be a number >= 0, got {}", got(x)),
            )
        }
    }
    let int = |x: &Value| x.as_i64().is_some();
    for f in ["createdAtMs", "updatedAtMs"] {
        match m.get(f) {
            Some(x) if int(x) => {}
            None => return err(f, "missing (required integer ms)".into()),
            Some(x) => return err(f, format!("must be an integer (ms), got {}", got(x))),
        }
    }
    match m.get("attempts") {
        Some(x) if x.as_u64().is_some() => {}
        None => return err("attempts", "missing (required integer >= 0)".into()),
        Some(x) => {
            return err(
                "attempts",
                format!("must be an integer >= 0, got {}", got(x)),
            )
        }
    }
    for f in [
        "lastAttemptAtMs",
        "sentAtMs",
        "dismissedAtMs",
        "snoozedUntilMs",
        "expiredAtMs",
    ] {
        match m.get(f) {
            None => {}
            Some(x) if int(x) => {}
            Some(x) => return err(f, format!("must be an integer (ms), got {}", got(x))),
        }
    }
    let Some(w) = m.get("dueWindow") else {
        return err("dueWindow", "missing (required object)".into());
    };
    let Some(w) = w.as_object() else {
        return err("dueWindow", format!("must be an object, got {}", got(w)));
    };
    let mut ends = [0i64; 2];
    for (i, f) in ["earliestMs", "latestMs"].iter().enumerate() {
        match w.get(*f).and_then(Value::as_i64) {
            Some(x) => ends[i] = x,
            None => {
                return err(
                    &format!("dueWindow.{f}"),
                    "missing or not an integer (ms)".into(),
                )
            }
        }
    }
    if ends[1] < ends[0] {
        return err(
            "dueWindow.latestMs",
            format!("{} is before earliestMs {}", ends[1], ends[0]),
        );
    }
    match w.get("timezone") {
        Some(Value::String(_)) => {}
        _ => return err("dueWindow.timezone", "missing or not a string".into()),
    }
    serde_json::from_value::<Commitment>(v.clone()).map_err(|e| (String::new(), e.to_string()))
}

/// Encodes the store: `{"version": 1, "commitments": [...], ...other}`, 2-space
/// pretty JSON with a trailing newline.
///
/// Errors: [`crate::Error::Serialize`].
pub fn encode(path: &Path, snap: &Snapshot) -> Result<Vec<u8>, crate::Error> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        version: u64,
        commitments: &'a [Commitment],
        #[serde(flatten)]
        other: &'a Map<String, Value>,
    }
    let mut out = serde_json::to_vec_pretty(&Envelope {
        version: FILE_VERSION,
        commitments: &snap.commitments,
        other: &snap.other,
    })
    .map_err(|e| crate::Error::Serialize {
        path: path.to_path_buf(),
        source: e,
    })?;
    out.push(b'\n');
    Ok(out)
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
        assert!("bogus".parse::<Status>().is_err());
    }
}
