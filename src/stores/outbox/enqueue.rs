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
        let now = to_ms(now);
        let payload = msg.payload.to_string();
        self.insert(&InsertRow {
            key: msg.idempotency_key.as_deref(),
            channel: &msg.channel,
            target: &msg.target,
            account_id: msg.account_id.as_deref(),
            payload: &payload,
            status: Status::Pending,
            attempt_count: 0,
            next_attempt_at: now,
            queued_at: now,
            expires_at: ttl.map(|t| now.saturating_add(duration_ms(t))),
            last_attempt_at: None,
            last_error: None,
            completed_at: None,
            terminal_reason: None,
        })
    }

    /// Inserts `row` unless its idempotency key exists (enqueue, legacy
    /// import), on either backend.
    pub(crate) fn insert(&self, row: &InsertRow<'_>) -> Result<Enqueued> {
        super::store::pg_dispatch!(self, p => p.insert(row));
        self.tx(|tx| insert_row(tx, row))
    }
}
