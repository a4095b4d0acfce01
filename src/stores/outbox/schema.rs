//! The on-disk format: the schema migrations, the column list, row decoding and
//! the shared row-level statements (insert with idempotency check,
//! compare-and-set transition).

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::{Enqueued, Entry, Outcome, Status};

/// Cached-statement forms of `execute` / `query_row`: parsing the SQL cost
/// about as much as running it (perf profile of the bench's outbox row).
pub(crate) trait CachedExt {
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

/// The outbox's migrations (see [`crate::sqlite::open`]): `MIGRATIONS[i]` takes
/// user_version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &["
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

pub(crate) const COLS: &str = "id, idempotency_key, channel, target, account_id, payload, status, attempt_count, next_attempt_at, queued_at, expires_at, last_attempt_at, last_error, error_class, backoff_jitter_ms, claim_token, claimed_by, lease_expires_at, send_started_at, delivered_at, terminal_reason, completed_at";

/// Decodes a row; bad JSON or status become a conversion error carrying the reason.
pub(crate) fn row_to_entry(r: &Row<'_>) -> rusqlite::Result<Entry> {
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
        status: status
            .parse()
            .map_err(|e: super::OutboxError| bad(6, e.to_string()))?,
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

pub(crate) fn status_of(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Option<Status>> {
    let s: Option<String> = tx
        .query_row_cached("SELECT status FROM entries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(s.and_then(|s| s.parse().ok()))
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

/// Runs the compare-and-set `sql` (params `p`) on row `id`: `Applied(to)` if it
/// changed exactly one row, else `Stale(current status)`.
pub(crate) fn cas(
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
