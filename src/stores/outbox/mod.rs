//! The delivery outbox: a SQLite queue of outbound messages that delivers every
//! message at least once, never blindly twice, expires what is too old and keeps
//! dead letters listable, retryable and prunable.
//!
//! Database: its own file `<state>/outbox/outbox.sqlite`
//! ([`crate::paths::outbox_db`]), not a shared state DB: the delivery worker
//! writes several short transactions per message, and a separate file keeps that
//! write traffic (and its WAL) from contending with the task ledger's writers;
//! it also lets an operator back up, restore or wipe the outbox alone (openclaw
//! deletes all queue rows on restore so a restored state cannot replay sends).
//!
//! Every operation is one `BEGIN IMMEDIATE` transaction ([`crate::sqlite::immediate`])
//! and every transition of a claimed row is a compare-and-set on
//! `(id, status, claim_token)`: a late or stale worker gets [`Outcome::Stale`]
//! (the row's current status, unchanged), never an error and never a move of a
//! terminal row (the review defect of openclaw PR #29998, where a late `fail`
//! resurrected a delivered row). All times are integer milliseconds since the
//! Unix epoch and are passed in (`now`), so tests control the clock.
//!
//! States (see docs/outbox.md for the diagram): `pending` → `in_flight` →
//! `delivered` (tombstone) | `pending` (retry with backoff) | `dead` |
//! `unknown`; `pending` → `expired` (TTL). Backoff and permanent-error patterns
//! follow openclaw's delivery queue (openclaw-stores.md §6.2).

pub mod adapters;
pub mod legacy;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::proc::{self, Liveness, ProcessIdentity};
use crate::sqlite::{self, SqliteOptions};
use crate::Error;

/// Cached-statement forms of `execute` / `query_row`: parsing the SQL cost
/// about as much as running it (perf profile of the bench's outbox row).
trait CachedExt {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl CachedExt for rusqlite::Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }
    fn query_row_cached<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// Errors of the outbox store.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A core error (SQLite, I/O, lock), naming the file.
    #[error(transparent)]
    Core(#[from] Error),
    /// Bad input from the caller (non-positive prune age, unknown status, ...).
    #[error("{0}")]
    Invalid(String),
    /// A stored row that cannot be decoded (bad status or claimer JSON).
    #[error("corrupt outbox row in {}: column {column}: {reason}", .path.display())]
    CorruptRow {
        /// Database file.
        path: PathBuf,
        /// Column index.
        column: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias of the outbox.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

const MIGRATIONS: &[&str] = &["
CREATE TABLE entries(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  idempotency_key TEXT,
  channel TEXT NOT NULL,
  target TEXT NOT NULL,
  account_id TEXT,
  payload TEXT CHECK (payload IS NULL OR json_valid(payload)),
  status TEXT NOT NULL CHECK (status IN ('pending','in_flight','delivered','dead','expired','unknown')),
  attempt_count INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  queued_at INTEGER NOT NULL,
  expires_at INTEGER,
  last_attempt_at INTEGER,
  last_error TEXT,
  error_class TEXT,
  backoff_jitter_ms INTEGER,
  claim_token TEXT,
  claimed_by TEXT,
  lease_expires_at INTEGER,
  send_started_at INTEGER,
  delivered_at INTEGER,
  terminal_reason TEXT,
  completed_at INTEGER,
  CHECK ((status = 'in_flight') = (claim_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
  CHECK ((status IN ('delivered','dead','expired','unknown')) = (completed_at IS NOT NULL))
);
CREATE UNIQUE INDEX entries_idempotency_key ON entries(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX entries_due ON entries(status, next_attempt_at, queued_at);
"];

/// Status of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting; due at `next_attempt_at`.
    Pending,
    /// Claimed by a worker (claim token, claimer, lease).
    InFlight,
    /// Delivered: a tombstone (payload dropped, idempotency key kept).
    Delivered,
    /// Dead letter: permanent error or attempts exhausted.
    Dead,
    /// The TTL passed before delivery.
    Expired,
    /// The send may have happened but its outcome is unknown; needs an operator.
    Unknown,
}

impl Status {
    /// All statuses, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::InFlight,
        Status::Delivered,
        Status::Dead,
        Status::Expired,
        Status::Unknown,
    ];

    /// The stored name (`pending`, `in_flight`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
            Status::Expired => "expired",
            Status::Unknown => "unknown",
        }
    }

    /// Terminal for the worker (only an operator `retry` moves it again).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Delivered | Status::Dead | Status::Expired | Status::Unknown
        )
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?} (expected pending, in_flight, delivered, dead, expired or unknown)")
            })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outbox row. Times in ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Row id (ascending with enqueue order).
    pub id: i64,
    /// Caller's idempotency key (unique among rows), if any.
    pub idempotency_key: Option<String>,
    /// Channel name (telegram, slack, ...).
    pub channel: String,
    /// Recipient within the channel.
    pub target: String,
    /// Account on the channel, if any.
    pub account_id: Option<String>,
    /// Message payload (JSON); `None` once delivered (tombstone).
    pub payload: Option<serde_json::Value>,
    /// Current status.
    pub status: Status,
    /// Failed attempts so far (rescue and budget deferral never count).
    pub attempt_count: i64,
    /// When the entry is due (ms).
    pub next_attempt_at: i64,
    /// Enqueue time (ms).
    pub queued_at: i64,
    /// TTL deadline (ms); `None` = never expires.
    pub expires_at: Option<i64>,
    /// Last attempt (claim) time (ms).
    pub last_attempt_at: Option<i64>,
    /// Last error text.
    pub last_error: Option<String>,
    /// `retryable`, `permanent`, `exhausted`, `unknown_outcome`.
    pub error_class: Option<String>,
    /// Jitter added to the last backoff (ms), stored so the schedule is auditable.
    pub backoff_jitter_ms: Option<i64>,
    /// Fencing token of the current (or last) claim.
    pub claim_token: Option<String>,
    /// Identity of the current (or last) claimer.
    pub claimed_by: Option<ProcessIdentity>,
    /// End of the current claim's lease (ms).
    pub lease_expires_at: Option<i64>,
    /// When the adapter call began for the current claim (ms).
    pub send_started_at: Option<i64>,
    /// Delivery time (ms).
    pub delivered_at: Option<i64>,
    /// Why the row is terminal (`delivered`, `permanent_error`, `attempts_exhausted`, `ttl`, `send_outcome_unknown`, ...).
    pub terminal_reason: Option<String>,
    /// When the row became terminal (ms).
    pub completed_at: Option<i64>,
}

impl Entry {
    /// The key handed to adapters: the idempotency key, or `lockstore-outbox-<id>`
    /// (deterministic, derived from the row id) when the caller gave none.
    pub fn delivery_key(&self) -> String {
        self.idempotency_key
            .clone()
            .unwrap_or_else(|| format!("lockstore-outbox-{}", self.id))
    }
}

/// Result of a compare-and-set transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "status")]
pub enum Outcome {
    /// Applied; the row is now in this status.
    Applied(Status),
    /// Not applied: the row was not in the expected state or the claim token did
    /// not match (a late or stale caller). Carries the row's current status
    /// (`None`: no such row). The row is unchanged.
    Stale(Option<Status>),
}

impl Outcome {
    /// True if the transition was applied.
    pub fn applied(self) -> bool {
        matches!(self, Outcome::Applied(_))
    }
}

/// A message to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// Channel name.
    pub channel: String,
    /// Recipient.
    pub target: String,
    /// Account, if any.
    pub account_id: Option<String>,
    /// Payload (JSON).
    pub payload: serde_json::Value,
    /// Idempotency key: a second enqueue with the same key returns the existing row.
    pub idempotency_key: Option<String>,
    /// Time to live (ms) from enqueue; `None` uses [`OutboxOptions::default_ttl`].
    pub ttl_ms: Option<i64>,
}

/// Result of [`Outbox::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "id")]
pub enum Enqueued {
    /// A new row with this id.
    Created(i64),
    /// A row with the same idempotency key already existed (any status).
    Existing(i64),
}

impl Enqueued {
    /// The row id.
    pub fn id(self) -> i64 {
        match self {
            Enqueued::Created(i) | Enqueued::Existing(i) => i,
        }
    }
}

/// A failure reported by a worker.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    /// Error text (matched against the permanent patterns, case-insensitive).
    pub error: String,
    /// The adapter classified it as permanent.
    pub permanent: bool,
    /// The channel's retry-after (ms); wins over the backoff table.
    pub retry_after_ms: Option<i64>,
}

/// Retry policy. Default: openclaw's `[5 s, 25 s, 2 min, 10 min]` (last repeats),
/// at most 5 retries, plus up to 20 % jitter added on top (never earlier than the
/// table).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before retry n (index n − 1), ms; the last value repeats.
    pub backoff_ms: Vec<i64>,
    /// Retries allowed after the first attempt; the failure after the last one is dead.
    pub max_retries: i64,
    /// Jitter: a uniform extra in `[0, delay × jitter]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff_ms: vec![5_000, 25_000, 120_000, 600_000],
            max_retries: 5,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Base delay (ms) before retry `n` (1-based), openclaw's `computeBackoffMs`:
    /// 0 for n ≤ 0, else the table at n − 1 clamped to the last entry.
    pub fn base_delay_ms(&self, n: i64) -> i64 {
        if n <= 0 || self.backoff_ms.is_empty() {
            return 0;
        }
        let i = ((n - 1) as usize).min(self.backoff_ms.len() - 1);
        self.backoff_ms[i]
    }
}

/// Permanent-error patterns of openclaw's delivery queue (openclaw-stores.md §6.2),
/// matched case-insensitively. `*` stands for "any text" (the regexes' `.*`).
pub const PERMANENT_PATTERNS: &[&str] = &[
    "no conversation reference found",
    "chat not found",
    "user not found",
    "bot was blocked by the user",
    "forbidden: bot was kicked",
    "chat_id is empty",
    "recipient is not a valid",
    "outbound not configured for channel",
    "ambiguous discord recipient",
    "bot*not*member",
    "ambiguous*recipient",
    "user*not in room",
];

/// True if `error` matches one of [`PERMANENT_PATTERNS`] (case-insensitive).
pub fn is_permanent_error(error: &str) -> bool {
    let e = error.to_lowercase();
    PERMANENT_PATTERNS.iter().any(|p| glob_contains(&e, p))
}

/// `pattern` parts separated by `*` occur in order in `s`.
fn glob_contains(s: &str, pattern: &str) -> bool {
    let mut rest = s;
    for part in pattern.split('*') {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Options of [`Outbox::open`].
#[derive(Debug, Clone, Default)]
pub struct OutboxOptions {
    /// SQLite options (durability, busy timeout, retry deadline).
    pub sqlite: SqliteOptions,
    /// Retry policy of [`Outbox::fail`].
    pub retry: RetryPolicy,
    /// TTL (ms) applied when [`NewMessage::ttl_ms`] is `None`; `None` = never expire.
    pub default_ttl: Option<i64>,
}

/// Retention of [`Outbox::prune`] (ms). Default: 30 days for every terminal kind.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Delivered tombstones older than this (by `completed_at`) are deleted.
    pub delivered_ms: i64,
    /// Dead letters older than this are deleted.
    pub dead_ms: i64,
    /// Expired rows older than this are deleted.
    pub expired_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        let d30 = 30 * 86_400_000;
        Retention {
            delivered_ms: d30,
            dead_ms: d30,
            expired_ms: d30,
        }
    }
}

impl Retention {
    /// The same age for every terminal kind.
    pub fn all(ms: i64) -> Self {
        Retention {
            delivered_ms: ms,
            dead_ms: ms,
            expired_ms: ms,
        }
    }
}

/// Counts removed (or, dry run, that would be removed) by [`Outbox::prune`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Delivered tombstones.
    pub delivered: u64,
    /// Dead letters.
    pub dead: u64,
    /// Expired rows.
    pub expired: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
}

/// Result of [`Outbox::rescue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RescueReport {
    /// Back to pending (no send started, or idempotent adapter).
    pub to_pending: u64,
    /// To `unknown` (send started, non-idempotent adapter).
    pub to_unknown: u64,
    /// In flight with a live claimer and an unexpired lease: left alone.
    pub left_alive: u64,
}

/// Result of [`Outbox::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Rows per status (every status present, 0 if none).
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Pending rows due now.
    pub due_now: u64,
    /// `queued_at` of the oldest pending row (ms).
    pub oldest_pending_queued_at: Option<i64>,
    /// `completed_at` of the oldest dead letter (ms).
    pub oldest_dead_at: Option<i64>,
}

pub(crate) use crate::failpoint::hit as failpoint;

const COLS: &str = "id, idempotency_key, channel, target, account_id, payload, status, attempt_count, next_attempt_at, queued_at, expires_at, last_attempt_at, last_error, error_class, backoff_jitter_ms, claim_token, claimed_by, lease_expires_at, send_started_at, delivered_at, terminal_reason, completed_at";

/// Decodes a row; bad JSON or status become a conversion error carrying the reason.
fn row_to_entry(r: &Row<'_>) -> rusqlite::Result<Entry> {
    let bad = |i: usize, why: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, why.into())
    };
    let status: String = r.get(6)?;
    let payload: Option<String> = r.get(5)?;
    let claimed_by: Option<String> = r.get(16)?;
    Ok(Entry {
        id: r.get(0)?,
        idempotency_key: r.get(1)?,
        channel: r.get(2)?,
        target: r.get(3)?,
        account_id: r.get(4)?,
        payload: payload
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| bad(5, format!("payload: {e}")))?,
        status: status.parse().map_err(|e| bad(6, e))?,
        attempt_count: r.get(7)?,
        next_attempt_at: r.get(8)?,
        queued_at: r.get(9)?,
        expires_at: r.get(10)?,
        last_attempt_at: r.get(11)?,
        last_error: r.get(12)?,
        error_class: r.get(13)?,
        backoff_jitter_ms: r.get(14)?,
        claim_token: r.get(15)?,
        claimed_by: claimed_by
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| bad(16, format!("claimed_by: {e}")))?,
        lease_expires_at: r.get(17)?,
        send_started_at: r.get(18)?,
        delivered_at: r.get(19)?,
        terminal_reason: r.get(20)?,
        completed_at: r.get(21)?,
    })
}

fn status_of(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Option<Status>> {
    let s: Option<String> = tx
        .query_row_cached("SELECT status FROM entries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(s.and_then(|s| s.parse().ok()))
}

/// One connection to the outbox database. Not `Sync`: open one per thread.
pub struct Outbox {
    conn: rusqlite::Connection,
    path: PathBuf,
    opts: OutboxOptions,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish()
    }
}

impl Outbox {
    /// Opens (creating, migrating) the outbox at `<state>/outbox/outbox.sqlite`.
    ///
    /// Errors: see [`crate::sqlite::open`].
    pub fn open_state(state: &Path, opts: OutboxOptions) -> Result<Self> {
        Self::open(&crate::paths::outbox_db(state), opts)
    }

    /// Opens (creating, migrating) the outbox database at `path`.
    ///
    /// Errors: see [`crate::sqlite::open`] (WAL verified, no in-memory fallback,
    /// newer schema refused).
    pub fn open(path: &Path, opts: OutboxOptions) -> Result<Self> {
        let conn = sqlite::open(path, &opts.sqlite, MIGRATIONS)?;
        Ok(Outbox {
            conn,
            path: path.to_path_buf(),
            opts,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options.
    pub fn options(&self) -> &OutboxOptions {
        &self.opts
    }

    fn tx<T>(&self, f: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T> {
        let span = tracing::debug_span!("outbox_commit", path = %self.path.display());
        let _g = span.enter();
        sqlite::immediate(&self.conn, &self.path, &self.opts.sqlite, f).map_err(|e| match e {
            Error::Sqlite {
                source: rusqlite::Error::FromSqlConversionFailure(i, _, why),
                ..
            } => OutboxError::CorruptRow {
                path: self.path.clone(),
                column: i,
                reason: why.to_string(),
            },
            e => e.into(),
        })
    }

    /// Enqueues `msg` at `now` (ms): a new pending row due now, or — if a row with
    /// the same idempotency key exists in any status — that row's id
    /// ([`Enqueued::Existing`]), never a second row.
    ///
    /// Errors: [`OutboxError::Invalid`] for an empty channel or target or a
    /// non-positive TTL; SQLite errors naming the file.
    pub fn enqueue(&self, msg: &NewMessage, now: i64) -> Result<Enqueued> {
        if msg.channel.is_empty() || msg.target.is_empty() {
            return Err(OutboxError::Invalid(
                "enqueue: channel and target must not be empty".into(),
            ));
        }
        let ttl = msg.ttl_ms.or(self.opts.default_ttl);
        if ttl.is_some_and(|t| t <= 0) {
            return Err(OutboxError::Invalid(
                "enqueue: the TTL must be positive".into(),
            ));
        }
        let payload = msg.payload.to_string();
        self.tx(|tx| {
            insert_row(
                tx,
                &InsertRow {
                    key: msg.idempotency_key.as_deref(),
                    channel: &msg.channel,
                    target: &msg.target,
                    account_id: msg.account_id.as_deref(),
                    payload: &payload,
                    status: Status::Pending,
                    attempt_count: 0,
                    next_attempt_at: now,
                    queued_at: now,
                    expires_at: ttl.map(|t| now + t),
                    last_attempt_at: None,
                    last_error: None,
                    completed_at: None,
                    terminal_reason: None,
                },
            )
        })
    }

    /// Expires due rows, then claims up to `batch` pending entries due at `now`
    /// (`next_attempt_at <= now`), oldest first, in one `UPDATE … RETURNING`:
    /// each gets status `in_flight`, a fresh claim token, the caller's identity
    /// ([`proc::current`]) and a lease until `now + lease`. Two workers never
    /// claim the same entry. Returns the claimed entries, oldest first.
    ///
    /// Errors: SQLite errors naming the file.
    pub fn claim(&self, batch: usize, lease: Duration, now: i64) -> Result<Vec<Entry>> {
        let me = serde_json::to_string(proc::current()).unwrap_or_default();
        let lease_end = now.saturating_add(lease.as_millis() as i64);
        let mut v = self.tx(|tx| {
            expire_in(tx, now)?;
            let token = proc::random_hex(12);
            let sql = format!(
                "UPDATE entries SET status = 'in_flight', claim_token = ?1 || '-' || id,
                   claimed_by = ?2, lease_expires_at = ?3, send_started_at = NULL,
                   last_attempt_at = ?4
                 WHERE id IN (SELECT id FROM entries
                              WHERE status = 'pending' AND next_attempt_at <= ?4
                              ORDER BY queued_at, id LIMIT ?5)
                 RETURNING {COLS}"
            );
            let mut st = tx.prepare_cached(&sql)?;
            let rows = st
                .query_map(
                    params![token, me, lease_end, now, batch as i64],
                    row_to_entry,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            failpoint("before_claim_commit");
            Ok(rows)
        })?;
        v.sort_by_key(|e| (e.queued_at, e.id));
        if !v.is_empty() {
            tracing::debug!(path = %self.path.display(), pid = std::process::id(), n = v.len(), "claimed");
        }
        Ok(v)
    }

    /// Records that the adapter is about to be called for the claim (`id`,
    /// `token`). If the entry's TTL has passed it becomes `expired` instead
    /// (`Applied(Expired)`: do not send). `Applied(InFlight)` means: send now.
    pub fn mark_send_started(&self, id: i64, token: &str, now: i64) -> Result<Outcome> {
        self.tx(|tx| {
            let n = tx.exec_cached(
                "UPDATE entries SET status = 'expired', terminal_reason = 'ttl', completed_at = ?3,
                   claim_token = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2
                   AND expires_at IS NOT NULL AND expires_at <= ?3",
                params![id, token, now],
            )?;
            if n == 1 {
                return Ok(Outcome::Applied(Status::Expired));
            }
            cas(
                tx,
                id,
                "UPDATE entries SET send_started_at = ?3
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                params![id, token, now],
                Status::InFlight,
            )
        })
    }

    /// Acknowledges delivery of the claim (`id`, `token`): `in_flight` →
    /// `delivered`, payload dropped (tombstone keeps the key). Stale otherwise.
    pub fn ack(&self, id: i64, token: &str, now: i64) -> Result<Outcome> {
        self.tx(|tx| {
            cas(
                tx,
                id,
                "UPDATE entries SET status = 'delivered', delivered_at = ?3, completed_at = ?3,
                   terminal_reason = 'delivered', payload = NULL, claim_token = NULL,
                   lease_expires_at = NULL
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                params![id, token, now],
                Status::Delivered,
            )
        })
    }

    /// Reports a failed attempt of the claim (`id`, `token`). Permanent (adapter
    /// classification or [`PERMANENT_PATTERNS`]) → `dead`; else `attempt_count +
    /// 1`, and beyond [`RetryPolicy::max_retries`] → `dead` (`attempts_exhausted`),
    /// otherwise `pending` at `now + delay` where delay is the adapter's
    /// retry-after if given, else the backoff table plus jitter (stored in
    /// `backoff_jitter_ms`). Stale if the claim is no longer current.
    pub fn fail(&self, id: i64, token: &str, failure: &Failure, now: i64) -> Result<Outcome> {
        let permanent = failure.permanent || is_permanent_error(&failure.error);
        let policy = self.opts.retry.clone();
        let jitter_frac = fastrand::f64();
        self.tx(|tx| {
            let cur: Option<i64> = tx
                .query_row_cached(
                    "SELECT attempt_count FROM entries
                     WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                    params![id, token],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(cur) = cur else {
                return Ok(Outcome::Stale(status_of(tx, id)?));
            };
            let n = cur + 1;
            let (status, class, reason, next, jitter) = if permanent {
                (
                    Status::Dead,
                    "permanent",
                    Some("permanent_error"),
                    None,
                    None,
                )
            } else if n > policy.max_retries {
                (
                    Status::Dead,
                    "exhausted",
                    Some("attempts_exhausted"),
                    None,
                    None,
                )
            } else if let Some(ra) = failure.retry_after_ms {
                (
                    Status::Pending,
                    "retryable",
                    None,
                    Some(now + ra.max(0)),
                    Some(0),
                )
            } else {
                let base = policy.base_delay_ms(n);
                let j = (base as f64 * policy.jitter.max(0.0) * jitter_frac) as i64;
                (
                    Status::Pending,
                    "retryable",
                    None,
                    Some(now + base + j),
                    Some(j),
                )
            };
            let completed = status.is_terminal().then_some(now);
            cas(
                tx,
                id,
                "UPDATE entries SET status = ?3, attempt_count = ?4, last_error = ?5,
                   error_class = ?6, terminal_reason = ?7,
                   next_attempt_at = COALESCE(?8, next_attempt_at),
                   backoff_jitter_ms = COALESCE(?9, backoff_jitter_ms), completed_at = ?10,
                   claim_token = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                params![
                    id,
                    token,
                    status.as_str(),
                    n,
                    failure.error,
                    class,
                    reason,
                    next,
                    jitter,
                    completed
                ],
                status,
            )
        })
    }

    /// The adapter cannot tell whether the send happened (e.g. a timeout after
    /// the request went out): `in_flight` → `unknown`, never resent blindly.
    pub fn mark_unknown(&self, id: i64, token: &str, error: &str, now: i64) -> Result<Outcome> {
        self.tx(|tx| {
            cas(
                tx,
                id,
                "UPDATE entries SET status = 'unknown', last_error = ?3,
                   error_class = 'unknown_outcome', terminal_reason = 'send_outcome_unknown',
                   completed_at = ?4, claim_token = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                params![id, token, error, now],
                Status::Unknown,
            )
        })
    }

    /// Gives back a claim whose send has not started (graceful shutdown, budget
    /// spent): `in_flight` → `pending`, no attempt consumed. Stale if the send was
    /// marked started or the claim is gone.
    pub fn release(&self, id: i64, token: &str) -> Result<Outcome> {
        self.tx(|tx| {
            cas(
                tx,
                id,
                "UPDATE entries SET status = 'pending', claim_token = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2
                   AND send_started_at IS NULL",
                params![id, token],
                Status::Pending,
            )
        })
    }

    /// Moves pending rows whose `expires_at <= now` to `expired`. Returns the count.
    pub fn expire(&self, now: i64) -> Result<u64> {
        self.tx(|tx| expire_in(tx, now))
    }

    /// Rescues orphaned claims: an `in_flight` row whose claimer is definitely
    /// dead ([`proc::liveness`] = `Dead`: same host and boot, pid gone or start time
    /// differs) or whose lease ended (`lease_expires_at <= now`) goes back to
    /// `pending` if its send had not started or `adapter_idempotent` (the adapter
    /// receives the idempotency key, so a resend is deduplicated); otherwise to
    /// `unknown`. Each move is a compare-and-set on (id, status, token); no
    /// attempt is consumed.
    pub fn rescue(&self, now: i64, adapter_idempotent: bool) -> Result<RescueReport> {
        self.tx(|tx| {
            let mut st = tx.prepare(
                "SELECT id, claim_token, claimed_by, lease_expires_at, send_started_at
                 FROM entries WHERE status = 'in_flight'",
            )?;
            type R = (i64, String, Option<String>, i64, Option<i64>);
            let rows: Vec<R> = st
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut rep = RescueReport::default();
            for (id, token, by, lease, started) in rows {
                let dead = by
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<ProcessIdentity>(b).ok())
                    .map(|p| proc::liveness(&p) == Liveness::Dead)
                    .unwrap_or(false);
                if !dead && lease > now {
                    rep.left_alive += 1;
                    continue;
                }
                let why = if dead {
                    "claimer died"
                } else {
                    "lease expired"
                };
                if started.is_none() || adapter_idempotent {
                    rep.to_pending += tx.exec_cached(
                        "UPDATE entries SET status = 'pending', claim_token = NULL,
                           lease_expires_at = NULL, send_started_at = NULL
                         WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                        params![id, token],
                    )? as u64;
                } else {
                    rep.to_unknown += tx.exec_cached(
                        "UPDATE entries SET status = 'unknown', claim_token = NULL,
                           lease_expires_at = NULL, error_class = 'unknown_outcome',
                           terminal_reason = 'send_outcome_unknown', completed_at = ?3,
                           last_error = ?4
                         WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                        params![
                            id,
                            token,
                            now,
                            format!("{why} after the send started; outcome unknown")
                        ],
                    )? as u64;
                }
            }
            Ok(rep)
        })
    }

    /// Operator retry: a `dead`, `unknown` or `expired` row → `pending`, due now,
    /// attempts reset to 0, terminal fields cleared (an expired row also loses its
    /// TTL, which has passed). Stale for any other status.
    pub fn retry(&self, id: i64, now: i64) -> Result<Outcome> {
        self.tx(|tx| {
            let n = tx.exec_cached(
                "UPDATE entries SET status = 'pending', attempt_count = 0, next_attempt_at = ?2,
                   terminal_reason = NULL, completed_at = NULL, error_class = NULL,
                   backoff_jitter_ms = NULL, send_started_at = NULL, claim_token = NULL,
                   lease_expires_at = NULL,
                   expires_at = CASE WHEN expires_at IS NOT NULL AND expires_at <= ?2 THEN NULL ELSE expires_at END
                 WHERE id = ?1 AND status IN ('dead','unknown','expired') AND payload IS NOT NULL",
                params![id, now],
            )?;
            Ok(if n == 1 {
                Outcome::Applied(Status::Pending)
            } else {
                Outcome::Stale(status_of(tx, id)?)
            })
        })
    }

    /// Deletes terminal rows completed before `now − retention` per kind:
    /// delivered tombstones, dead letters, expired rows. Never touches `pending`,
    /// `in_flight` or `unknown` (the latter waits for an operator). `dry_run`
    /// counts without deleting.
    ///
    /// Errors: [`OutboxError::Invalid`] if any retention age is ≤ 0.
    pub fn prune(&self, retention: &Retention, now: i64, dry_run: bool) -> Result<PruneReport> {
        for (k, v) in [
            ("delivered", retention.delivered_ms),
            ("dead", retention.dead_ms),
            ("expired", retention.expired_ms),
        ] {
            if v <= 0 {
                return Err(OutboxError::Invalid(format!(
                    "prune: the {k} retention must be positive (got {v} ms)"
                )));
            }
        }
        self.tx(|tx| {
            let mut rep = PruneReport {
                dry_run,
                ..Default::default()
            };
            for (status, age, slot) in [
                ("delivered", retention.delivered_ms, &mut rep.delivered),
                ("dead", retention.dead_ms, &mut rep.dead),
                ("expired", retention.expired_ms, &mut rep.expired),
            ] {
                let cutoff = now - age;
                *slot = if dry_run {
                    tx.query_row_cached(
                        "SELECT count(*) FROM entries WHERE status = ?1 AND completed_at < ?2",
                        params![status, cutoff],
                        |r| r.get::<_, i64>(0),
                    )? as u64
                } else {
                    tx.exec_cached(
                        "DELETE FROM entries WHERE status = ?1 AND completed_at < ?2",
                        params![status, cutoff],
                    )? as u64
                };
            }
            Ok(rep)
        })
    }

    /// Counts per status, due-now count and the oldest pending / dead times.
    pub fn stats(&self, now: i64) -> Result<Stats> {
        self.tx(|tx| {
            let mut s = Stats::default();
            for st in Status::ALL {
                s.by_status.insert(st.as_str().into(), 0);
            }
            let mut q = tx.prepare("SELECT status, count(*) FROM entries GROUP BY status")?;
            for r in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = r?;
                s.by_status.insert(k, v as u64);
            }
            s.due_now = tx.query_row_cached(
                "SELECT count(*) FROM entries WHERE status = 'pending' AND next_attempt_at <= ?1",
                [now],
                |r| r.get::<_, i64>(0),
            )? as u64;
            s.oldest_pending_queued_at = tx.query_row_cached(
                "SELECT min(queued_at) FROM entries WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?;
            s.oldest_dead_at = tx.query_row_cached(
                "SELECT min(completed_at) FROM entries WHERE status = 'dead'",
                [],
                |r| r.get(0),
            )?;
            Ok(s)
        })
    }

    /// One entry by id.
    pub fn get(&self, id: i64) -> Result<Option<Entry>> {
        self.tx(|tx| {
            tx.query_row_cached(
                &format!("SELECT {COLS} FROM entries WHERE id = ?1"),
                [id],
                row_to_entry,
            )
            .optional()
        })
    }

    /// One entry by idempotency key.
    pub fn get_by_key(&self, key: &str) -> Result<Option<Entry>> {
        self.tx(|tx| {
            tx.query_row_cached(
                &format!("SELECT {COLS} FROM entries WHERE idempotency_key = ?1"),
                [key],
                row_to_entry,
            )
            .optional()
        })
    }

    /// Entries, optionally of one status, ordered by id; at most `limit`.
    pub fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<Entry>> {
        self.tx(|tx| {
            let mut st = tx.prepare(&format!(
                "SELECT {COLS} FROM entries WHERE (?1 IS NULL OR status = ?1) ORDER BY id LIMIT ?2"
            ))?;
            let v = st
                .query_map(
                    params![status.map(|s| s.as_str()), limit as i64],
                    row_to_entry,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })
    }
}

pub(crate) struct InsertRow<'a> {
    pub key: Option<&'a str>,
    pub channel: &'a str,
    pub target: &'a str,
    pub account_id: Option<&'a str>,
    pub payload: &'a str,
    pub status: Status,
    pub attempt_count: i64,
    pub next_attempt_at: i64,
    pub queued_at: i64,
    pub expires_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_error: Option<&'a str>,
    pub completed_at: Option<i64>,
    pub terminal_reason: Option<&'a str>,
}

/// Inserts a row unless its idempotency key exists (checked inside the same
/// IMMEDIATE transaction, and enforced by the partial UNIQUE index).
pub(crate) fn insert_row(tx: &Transaction<'_>, r: &InsertRow<'_>) -> rusqlite::Result<Enqueued> {
    if let Some(k) = r.key {
        let existing: Option<i64> = tx
            .query_row_cached(
                "SELECT id FROM entries WHERE idempotency_key = ?1",
                [k],
                |x| x.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok(Enqueued::Existing(id));
        }
    }
    tx.exec_cached(
        "INSERT INTO entries(idempotency_key, channel, target, account_id, payload, status,
           attempt_count, next_attempt_at, queued_at, expires_at, last_attempt_at, last_error,
           completed_at, terminal_reason, error_class)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                 CASE WHEN ?6 = 'dead' THEN 'imported' END)",
        params![
            r.key,
            r.channel,
            r.target,
            r.account_id,
            r.payload,
            r.status.as_str(),
            r.attempt_count,
            r.next_attempt_at,
            r.queued_at,
            r.expires_at,
            r.last_attempt_at,
            r.last_error,
            r.completed_at,
            r.terminal_reason
        ],
    )?;
    Ok(Enqueued::Created(tx.last_insert_rowid()))
}

impl Outbox {
    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.tx(f)
    }
}

fn expire_in(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<u64> {
    Ok(tx.exec_cached(
        "UPDATE entries SET status = 'expired', terminal_reason = 'ttl', completed_at = ?1
         WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?1",
        [now],
    )? as u64)
}

fn cas(
    tx: &Transaction<'_>,
    id: i64,
    sql: &str,
    p: impl rusqlite::Params,
    to: Status,
) -> rusqlite::Result<Outcome> {
    let n = tx.exec_cached(sql, p)?;
    Ok(if n == 1 {
        Outcome::Applied(to)
    } else {
        Outcome::Stale(status_of(tx, id)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_patterns_are_case_insensitive_globs() {
        assert!(is_permanent_error("400: Bad Request: CHAT NOT FOUND"));
        assert!(is_permanent_error("the Bot is not a Member of the channel"));
        assert!(is_permanent_error("User @x:y is not in room !r"));
        assert!(!is_permanent_error("ETIMEDOUT connecting"));
        assert!(!is_permanent_error("member bot"));
    }

    #[test]
    fn backoff_table_matches_openclaw() {
        let p = RetryPolicy::default();
        let v: Vec<i64> = (0..=6).map(|n| p.base_delay_ms(n)).collect();
        assert_eq!(v, [0, 5_000, 25_000, 120_000, 600_000, 600_000, 600_000]);
    }
}
