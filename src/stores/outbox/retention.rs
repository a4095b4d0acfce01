//! Retention: TTL expiry of pending rows and pruning of old terminal rows.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Transaction};
use serde::Serialize;

use super::policy::duration_ms;
use super::schema::CachedExt;
use super::{Outbox, OutboxError, Result, Status};
use crate::timefmt::to_ms;

/// Retention of [`Outbox::prune`]: how long each kind of terminal row is kept
/// after it became terminal (`completed_at`). Every age must be at least 1 ms.
/// Default: 30 days for every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delivered tombstones older than this are deleted.
    pub delivered: Duration,
    /// Dead letters older than this are deleted.
    pub dead: Duration,
    /// Expired rows older than this are deleted.
    pub expired: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention::all(Duration::from_secs(30 * 86_400))
    }
}

impl Retention {
    /// The same age for every terminal kind.
    pub fn all(age: Duration) -> Self {
        Retention {
            delivered: age,
            dead: age,
            expired: age,
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

impl Outbox {
    /// Moves pending rows whose `expires_at <= now` to `expired`. Returns the count.
    pub fn expire(&self, now: SystemTime) -> Result<u64> {
        let now = to_ms(now);
        super::store::pg_dispatch!(self, p => p.expire(now));
        self.tx(|tx| expire_in(tx, now))
    }

    /// Deletes terminal rows that became terminal (`completed_at`) before
    /// `now − retention` of their kind: delivered tombstones, dead letters,
    /// expired rows. Never touches `pending`, `in_flight` or `unknown` (the
    /// latter waits for an operator). `dry_run` counts without deleting.
    ///
    /// Errors: [`OutboxError::InvalidPruneAge`] if any retention age is under
    /// 1 ms (nothing deleted); SQLite errors naming the file.
    pub fn prune(
        &self,
        retention: &Retention,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<PruneReport> {
        let ages = [
            (Status::Delivered, retention.delivered),
            (Status::Dead, retention.dead),
            (Status::Expired, retention.expired),
        ];
        for (status, age) in ages {
            if duration_ms(age) <= 0 {
                return Err(OutboxError::InvalidPruneAge {
                    path: self.path().to_path_buf(),
                    status,
                    age,
                });
            }
        }
        let now = to_ms(now);
        super::store::pg_dispatch!(self, p => p.prune(&ages.map(|(s, a)| (s, duration_ms(a))), now, dry_run));
        self.tx(|tx| {
            let mut rep = PruneReport {
                dry_run,
                ..Default::default()
            };
            for ((status, age), slot) in
                ages.into_iter()
                    .zip([&mut rep.delivered, &mut rep.dead, &mut rep.expired])
            {
                let cutoff = now.saturating_sub(duration_ms(age));
                *slot = if dry_run {
                    tx.query_row_cached(
                        "SELECT count(*) FROM entries WHERE status = ?1 AND completed_at < ?2",
                        params![status.as_str(), cutoff],
                        |r| r.get::<_, i64>(0),
                    )? as u64
                } else {
                    tx.exec_cached(
                        "DELETE FROM entries WHERE status = ?1 AND completed_at < ?2",
                        params![status.as_str(), cutoff],
                    )? as u64
                };
            }
            Ok(rep)
        })
    }
}

/// Moves pending rows whose TTL passed (`expires_at <= now`, Unix ms) to
/// `expired`; returns the count.
pub(crate) fn expire_in(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<u64> {
    Ok(tx.exec_cached(
        "UPDATE entries SET status = 'expired', terminal_reason = 'ttl', completed_at = ?1
         WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?1",
        [now],
    )? as u64)
}
