//! Claiming and the compare-and-set transitions of a claimed row: `claim`,
//! `mark_send_started`, `renew`, `ack`, `fail`, `mark_unknown`, `release`, and the
//! operator's `retry`.
//!
//! Every transition of a claimed row is a compare-and-set on `(id, status,
//! claim_token)`: a late or stale caller gets [`Outcome::Stale`] (the row's
//! current status, unchanged), never an error and never a move of a terminal
//! row.

use std::time::{Duration, SystemTime};

use rusqlite::{params, OptionalExtension};

use super::failpoint;
use super::policy::{duration_ms, is_permanent_error};
use super::retention::expire_in;
use super::schema::{cas, row_to_entry, status_of, CachedExt, COLS};
use super::store::pg_dispatch;
use super::{Entry, Outbox, Outcome, Result, Status};
use crate::proc;
use crate::timefmt::to_ms;

/// The compare-and-set of an ack (SQLite): `?1` id, `?2` claim token, `?3` now.
const ACK_SQL: &str =
    "UPDATE entries SET status = 'delivered', delivered_at = ?3, completed_at = ?3,
   terminal_reason = 'delivered', payload = NULL, claim_token = NULL, lease_expires_at = NULL
 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2";

/// A failed delivery attempt, reported by a worker to [`Outbox::fail`].
#[derive(Debug, Clone, Default)]
pub struct Failure {
    /// Error text (matched against the permanent-error patterns of docs/outbox.md,
    /// case-insensitive).
    pub error: String,
    /// The adapter classified it as permanent: the entry becomes dead at once.
    pub permanent: bool,
    /// The channel's retry-after (millisecond precision); wins over the
    /// backoff table.
    pub retry_after: Option<Duration>,
}

impl Outbox {
    /// Expires due rows, then claims up to `batch` pending entries due at `now`
    /// (`next_attempt_at <= now`), oldest first, in one `UPDATE … RETURNING`:
    /// each gets status `in_flight`, a fresh claim token, the caller's identity
    /// ([`crate::ProcessIdentity::current`]) and a lease until `now + lease`. Two workers never
    /// claim the same entry. Returns the claimed entries, oldest first.
    ///
    /// Errors: SQLite errors naming the file.
    pub fn claim(&self, batch: usize, lease: Duration, now: SystemTime) -> Result<Vec<Entry>> {
        let now = to_ms(now);
        let me = serde_json::to_string(proc::current()).unwrap_or_default();
        let lease_end = now.saturating_add(duration_ms(lease));
        pg_dispatch!(self, p => p.claim(batch, lease, now));
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
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
                .query_map(params![token, me, lease_end, now, batch], row_to_entry)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            failpoint("before_claim_commit");
            Ok(rows)
        })?;
        v.sort_by_key(|e| (e.queued_at, e.id));
        if !v.is_empty() {
            tracing::debug!(path = %self.path().display(), pid = std::process::id(), n = v.len(), "claimed");
        }
        Ok(v)
    }

    /// Records that the adapter is about to be called for the claim (`id`,
    /// `token`). If the entry's TTL has passed it becomes `expired` instead
    /// (`Applied(Expired)`: do not send). `Applied(InFlight)` means: send now.
    pub fn mark_send_started(&self, id: i64, token: &str, now: SystemTime) -> Result<Outcome> {
        let now = to_ms(now);
        pg_dispatch!(self, p => p.mark_send_started(id, token, now));
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
    pub fn ack(&self, id: i64, token: &str, now: SystemTime) -> Result<Outcome> {
        let now = to_ms(now);
        pg_dispatch!(self, p => p.ack(id, token, now));
        self.tx(|tx| cas(tx, id, ACK_SQL, params![id, token, now], Status::Delivered))
    }

    /// Acknowledges delivery of several claims `(id, claim token)` in ONE
    /// transaction (one commit instead of one per message): for each item, in
    /// order, exactly what [`Outbox::ack`] would return had the items been
    /// acked one by one — each is its own compare-and-set on (id, status
    /// `in_flight`, claim token; on PostgreSQL also the fencing token and the
    /// attempt the token names), so a stale item gets `Stale(current status)`
    /// and leaves its row unchanged while the others apply. A claim repeated
    /// in the batch applies once (its first occurrence); the repeats are
    /// `Stale(Some(Delivered))`. An empty batch returns an empty vector
    /// without touching the database.
    ///
    /// On PostgreSQL it is one statement (`UPDATE … FROM unnest(…) …
    /// RETURNING`); on SQLite one `BEGIN IMMEDIATE` transaction.
    ///
    /// Errors: database errors naming the file or database (nothing of the
    /// batch is then applied).
    pub fn ack_many(&self, claims: &[(i64, &str)], now: SystemTime) -> Result<Vec<Outcome>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_ms(now);
        pg_dispatch!(self, p => p.ack_many(claims, now));
        self.tx(|tx| {
            claims
                .iter()
                .map(|&(id, token)| {
                    cas(tx, id, ACK_SQL, params![id, token, now], Status::Delivered)
                })
                .collect()
        })
    }

    /// Reports a failed attempt of the claim (`id`, `token`). Permanent (adapter
    /// classification or a permanent-error pattern) → `dead`; else `attempt_count +
    /// 1`, and beyond [`super::RetryPolicy::max_retries`] → `dead` (`attempts_exhausted`),
    /// otherwise `pending` at `now + delay` where delay is the adapter's
    /// retry-after if given, else the backoff table plus jitter (stored in
    /// `backoff_jitter_ms`). Stale if the claim is no longer current.
    pub fn fail(
        &self,
        id: i64,
        token: &str,
        failure: &Failure,
        now: SystemTime,
    ) -> Result<Outcome> {
        let now = to_ms(now);
        let permanent = failure.permanent || is_permanent_error(&failure.error);
        let policy = &self.options().retry;
        let jitter_frac = fastrand::f64();
        let decide = |cur: i64| decide(policy, failure, permanent, cur, now, jitter_frac);
        pg_dispatch!(self, p => p.fail(id, token, &failure.error, now, &decide));
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
            let (status, class, reason, next, jitter) = decide(cur);
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
    pub fn mark_unknown(
        &self,
        id: i64,
        token: &str,
        error: &str,
        now: SystemTime,
    ) -> Result<Outcome> {
        let now = to_ms(now);
        pg_dispatch!(self, p => p.mark_unknown(id, token, error, now));
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

    /// Renews the lease of the claim (`id`, `token`) to `now + lease` while its
    /// send is in flight (the async worker does this every third of the
    /// lease), so [`Outbox::rescue`] does not take away a claim whose worker is
    /// alive and still sending. A compare-and-set on `(id, status = in_flight,
    /// claim_token)`: `Applied(InFlight)` if renewed; `Stale(current status)`
    /// if the claim was lost (rescued, re-claimed, acked, failed, expired) —
    /// the row is then unchanged and its next transition by this claimer will
    /// be stale too.
    ///
    /// Errors: SQLite errors naming the file.
    pub fn renew(&self, id: i64, token: &str, lease: Duration, now: SystemTime) -> Result<Outcome> {
        let lease_end = to_ms(now).saturating_add(duration_ms(lease));
        pg_dispatch!(self, p => p.renew(id, token, lease_end));
        self.tx(|tx| {
            cas(
                tx,
                id,
                "UPDATE entries SET lease_expires_at = ?3
                 WHERE id = ?1 AND status = 'in_flight' AND claim_token = ?2",
                params![id, token, lease_end],
                Status::InFlight,
            )
        })
    }

    /// Gives back a claim whose send has not started (graceful shutdown, budget
    /// spent): `in_flight` → `pending`, no attempt consumed. Stale if the send was
    /// marked started or the claim is gone.
    pub fn release(&self, id: i64, token: &str) -> Result<Outcome> {
        pg_dispatch!(self, p => p.release(id, token));
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

    /// Operator retry: a `dead`, `unknown` or `expired` row → `pending`, due now,
    /// attempts reset to 0, terminal fields cleared (an expired row also loses its
    /// TTL, which has passed). Stale for any other status.
    pub fn retry(&self, id: i64, now: SystemTime) -> Result<Outcome> {
        let now = to_ms(now);
        pg_dispatch!(self, p => p.retry(id, now));
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
}

/// The decision of [`Outbox::fail`] for a claim whose stored attempt count is
/// `cur`: (status, error class, terminal reason, next attempt time, jitter).
pub(crate) type Decision = (
    Status,
    &'static str,
    Option<&'static str>,
    Option<i64>,
    Option<i64>,
);

fn decide(
    policy: &super::RetryPolicy,
    failure: &Failure,
    permanent: bool,
    cur: i64,
    now: i64,
    jitter_frac: f64,
) -> Decision {
    let n = cur + 1;
    if permanent {
        (
            Status::Dead,
            "permanent",
            Some("permanent_error"),
            None,
            None,
        )
    } else if n > i64::from(policy.max_retries) {
        (
            Status::Dead,
            "exhausted",
            Some("attempts_exhausted"),
            None,
            None,
        )
    } else if let Some(ra) = failure.retry_after {
        (
            Status::Pending,
            "retryable",
            None,
            Some(now.saturating_add(duration_ms(ra))),
            Some(0),
        )
    } else {
        let base = policy.base_delay_ms(n);
        let j = (base as f64 * policy.jitter.max(0.0) * jitter_frac) as i64;
        (
            Status::Pending,
            "retryable",
            None,
            Some(now.saturating_add(base).saturating_add(j)),
            Some(j),
        )
    }
}
