//! The records the outbox hands back: [`Entry`] (one row), [`Outcome`] (of a
//! compare-and-set transition) and [`Enqueued`].

use serde::{Deserialize, Serialize};

use super::Status;
use crate::proc::ProcessIdentity;

/// One outbox row, as stored. It mirrors the on-disk format (table `entries`),
/// so its times stay `i64` milliseconds since the Unix epoch (the `*_at`
/// fields) as on disk and in `lockstore outbox show` / `list --json`.
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
    /// When the entry is due (Unix ms).
    pub next_attempt_at: i64,
    /// Enqueue time (Unix ms).
    pub queued_at: i64,
    /// TTL deadline (Unix ms); `None` = never expires.
    pub expires_at: Option<i64>,
    /// Last attempt (claim) time (Unix ms).
    pub last_attempt_at: Option<i64>,
    /// Last error text.
    pub last_error: Option<String>,
    /// `retryable`, `permanent`, `exhausted`, `unknown_outcome`, `imported`.
    pub error_class: Option<String>,
    /// Jitter added to the last backoff (ms), stored so the schedule is auditable.
    pub backoff_jitter_ms: Option<i64>,
    /// Fencing token of the current (or last) claim.
    pub claim_token: Option<String>,
    /// Identity of the current (or last) claimer.
    pub claimed_by: Option<ProcessIdentity>,
    /// End of the current claim's lease (Unix ms).
    pub lease_expires_at: Option<i64>,
    /// When the adapter call began for the current claim (Unix ms).
    pub send_started_at: Option<i64>,
    /// Delivery time (Unix ms).
    pub delivered_at: Option<i64>,
    /// Why the row is terminal (`delivered`, `permanent_error`, `attempts_exhausted`, `ttl`, `send_outcome_unknown`, `legacy_failed`).
    pub terminal_reason: Option<String>,
    /// When the row became terminal (Unix ms).
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

/// Result of a compare-and-set transition (`ack`, `fail`, `release`, ...).
/// Serialized as `{"outcome": "applied"|"stale", "status": ...}`.
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

/// Result of [`super::Outbox::enqueue`]. Serialized as
/// `{"result": "created"|"existing", "id": ...}`.
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
