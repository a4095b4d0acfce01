//! Rescue of orphaned claims (a dead claimer or an ended lease).

use std::time::SystemTime;

use rusqlite::params;
use serde::Serialize;

use super::schema::CachedExt;
use super::{Outbox, Result};
use crate::proc::{self, Liveness, ProcessIdentity};
use crate::timefmt::to_ms;

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

impl Outbox {
    /// Rescues orphaned claims: an `in_flight` row whose claimer is definitely
    /// dead ([`crate::ProcessIdentity::liveness`] = `Dead`: same host and boot, pid gone or start time
    /// differs) or whose lease ended (`lease_expires_at <= now`) goes back to
    /// `pending` if its send had not started or `adapter_idempotent` (the adapter
    /// receives the idempotency key, so a resend is deduplicated); otherwise to
    /// `unknown`. Each move is a compare-and-set on (id, status, token); no
    /// attempt is consumed.
    pub fn rescue(&self, now: SystemTime, adapter_idempotent: bool) -> Result<RescueReport> {
        let now = to_ms(now);
        super::store::pg_dispatch!(self, p => p.rescue(now, adapter_idempotent));
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
                let claim = Claim {
                    judge_exactly: true,
                    claimed_by: by.as_deref(),
                    lease_expires_at: lease,
                    send_started: started.is_some(),
                };
                let msg = match claim.rescue(now, adapter_idempotent) {
                    Move::LeaveAlive => {
                        rep.left_alive += 1;
                        continue;
                    }
                    Move::ToPending => None,
                    Move::ToUnknown(msg) => Some(msg),
                };
                if msg.is_none() {
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
                        params![id, token, now, msg],
                    )? as u64;
                }
            }
            Ok(rep)
        })
    }
}

/// One in-flight claim as the rescuer sees it (both backends).
pub(crate) struct Claim<'a> {
    /// Whether the claimer can be judged exactly here (pid + start time +
    /// boot id): always on SQLite (one host); on PostgreSQL only when the
    /// claimer's host id is this process's. A claimer on another host is
    /// judged by its lease alone.
    pub(crate) judge_exactly: bool,
    /// The claimer's recorded `ProcessIdentity` (JSON), if any.
    pub(crate) claimed_by: Option<&'a str>,
    /// The claim's lease end (Unix ms).
    pub(crate) lease_expires_at: i64,
    /// Whether the send had started (`send_started_at` set).
    pub(crate) send_started: bool,
}

/// What the rescuer does with one claim.
pub(crate) enum Move {
    /// The claimer may still be working: leave the claim.
    LeaveAlive,
    /// Back to `pending` (the send had not started, or the adapter
    /// deduplicates a resend by the idempotency key).
    ToPending,
    /// To `unknown`, with this `last_error`: the send started and its outcome
    /// cannot be known.
    ToUnknown(String),
}

impl Claim<'_> {
    /// The one rescue rule of the outbox (docs/outbox.md, docs/postgres.md):
    /// a claimer that is definitely dead, or a lease that has ended, frees
    /// the claim; then [`Move::ToPending`] if the send had not started or
    /// `adapter_idempotent`, else [`Move::ToUnknown`].
    pub(crate) fn rescue(&self, now: i64, adapter_idempotent: bool) -> Move {
        let dead = self.judge_exactly
            && self
                .claimed_by
                .and_then(|b| serde_json::from_str::<ProcessIdentity>(b).ok())
                .map(|p| proc::liveness(&p) == Liveness::Dead)
                .unwrap_or(false);
        if !dead && self.lease_expires_at > now {
            return Move::LeaveAlive;
        }
        if !self.send_started || adapter_idempotent {
            return Move::ToPending;
        }
        let why = if dead {
            "claimer died"
        } else {
            "lease expired"
        };
        Move::ToUnknown(format!("{why} after the send started; outcome unknown"))
    }
}
