//! Enqueueing: [`NewMessage`] and [`Outbox::enqueue`].

use std::time::{Duration, SystemTime};

use super::policy::duration_ms;
use super::schema::{insert_row, InsertRow};
use super::{Enqueued, Outbox, OutboxError, Result, Status};
use crate::timefmt::to_ms;

/// A message to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// Channel name (non-empty).
    pub channel: String,
    /// Recipient (non-empty).
    pub target: String,
    /// Account, if any.
    pub account_id: Option<String>,
    /// Payload (JSON).
    pub payload: serde_json::Value,
    /// Idempotency key: a second enqueue with the same key returns the existing row.
    pub idempotency_key: Option<String>,
    /// Time to live from enqueue (at least 1 ms; millisecond precision); `None`
    /// uses [`super::OutboxOptions::default_ttl`].
    pub ttl: Option<Duration>,
}

impl Outbox {
    /// Enqueues `msg` at `now`: a new pending row due now, or — if a row with
    /// the same idempotency key exists in any status — that row's id
    /// ([`Enqueued::Existing`]), never a second row.
    ///
    /// Errors: [`OutboxError::EmptyField`] for an empty channel or target,
    /// [`OutboxError::InvalidTtl`] for a TTL under 1 ms; SQLite errors naming
    /// the file.
    pub fn enqueue(&self, msg: &NewMessage, now: SystemTime) -> Result<Enqueued> {
        let ttl = self.check(msg)?;
        let now = to_ms(now);
        let payload = msg.payload.to_string();
        self.insert(&new_row(msg, &payload, ttl, now))
    }

    /// Enqueues every message of `msgs` at `now` in ONE transaction (one
    /// commit, one fsync on SQLite; one commit on PostgreSQL): for each, in
    /// order, what [`Outbox::enqueue`] would return. A key repeated within
    /// the batch creates one row; its later occurrences get
    /// [`Enqueued::Existing`] of that row. An empty batch returns an empty
    /// vector without touching the database.
    ///
    /// Errors: as [`Outbox::enqueue`]; the batch is validated before anything
    /// is written, so an invalid message enqueues none of the batch.
    pub fn enqueue_many(&self, msgs: &[NewMessage], now: SystemTime) -> Result<Vec<Enqueued>> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_ms(now);
        let mut prepared = Vec::with_capacity(msgs.len());
        for m in msgs {
            prepared.push((self.check(m)?, m.payload.to_string()));
        }
        let rows: Vec<InsertRow<'_>> = msgs
            .iter()
            .zip(&prepared)
            .map(|(m, (ttl, payload))| new_row(m, payload, *ttl, now))
            .collect();
        super::store::pg_dispatch!(self, p => p.insert_many(&rows));
        self.tx(|tx| rows.iter().map(|r| insert_row(tx, r)).collect())
    }

    /// Validates `msg` (non-empty channel and target, TTL at least 1 ms) and
    /// returns its TTL (its own or the default).
    fn check(&self, msg: &NewMessage) -> Result<Option<Duration>> {
        for (field, v) in [("channel", &msg.channel), ("target", &msg.target)] {
            if v.is_empty() {
                return Err(OutboxError::EmptyField {
                    path: self.path().to_path_buf(),
                    field,
                });
            }
        }
        let ttl = msg.ttl.or(self.options().default_ttl);
        if let Some(t) = ttl.filter(|t| duration_ms(*t) <= 0) {
            return Err(OutboxError::InvalidTtl {
                path: self.path().to_path_buf(),
                ttl: t,
            });
        }
        Ok(ttl)
    }

    /// Inserts `row` unless its idempotency key exists (enqueue, legacy
    /// import), on either backend.
    pub(crate) fn insert(&self, row: &InsertRow<'_>) -> Result<Enqueued> {
        super::store::pg_dispatch!(self, p => p.insert(row));
        self.tx(|tx| insert_row(tx, row))
    }
}

/// The pending row of a new message enqueued at `now` (ms).
fn new_row<'a>(
    msg: &'a NewMessage,
    payload: &'a str,
    ttl: Option<Duration>,
    now: i64,
) -> InsertRow<'a> {
    InsertRow {
        key: msg.idempotency_key.as_deref(),
        channel: &msg.channel,
        target: &msg.target,
        account_id: msg.account_id.as_deref(),
        payload,
        status: Status::Pending,
        attempt_count: 0,
        next_attempt_at: now,
        queued_at: now,
        expires_at: ttl.map(|t| now.saturating_add(duration_ms(t))),
        last_attempt_at: None,
        last_error: None,
        completed_at: None,
        terminal_reason: None,
    }
}
