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
}
