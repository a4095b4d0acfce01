//! Queue statistics: [`OutboxStats`] and [`Outbox::stats`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::schema::CachedExt;
use super::{Outbox, OutboxError, Result, Status};
use crate::timefmt::{from_ms, to_ms};

/// Result of [`Outbox::stats`]. Serializes (`lockstore outbox stats --json`)
/// as `{"by_status": {"pending": n, ...}, "due_now": n,
/// "oldest_pending_queued_at": ms|null, "oldest_dead_at": ms|null}` with the
/// times in Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Rows per status (every status present, 0 if none), in lifecycle order.
    pub by_status: BTreeMap<Status, u64>,
    /// Pending rows due at the `now` given.
    pub due_now: u64,
    /// `queued_at` of the oldest pending row.
    #[serde(serialize_with = "opt_unix_ms")]
    pub oldest_pending_queued_at: Option<SystemTime>,
    /// `completed_at` of the oldest dead letter.
    #[serde(serialize_with = "opt_unix_ms")]
    pub oldest_dead_at: Option<SystemTime>,
}

fn opt_unix_ms<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&to_ms(*t)),
        None => s.serialize_none(),
    }
}

impl Outbox {
    /// Counts per status, the count due at `now`, and the oldest pending /
    /// dead times.
    ///
    /// Errors: SQLite errors naming the file; [`OutboxError::CorruptRow`] for a
    /// stored status this binary does not know.
    pub fn stats(&self, now: SystemTime) -> Result<OutboxStats> {
        let now = to_ms(now);
        super::store::pg_dispatch!(self, p => p.stats(now));
        self.tx(|tx| {
            let mut s = OutboxStats::default();
            for st in Status::ALL {
                s.by_status.insert(*st, 0);
            }
            let mut q = tx.prepare("SELECT status, count(*) FROM entries GROUP BY status")?;
            for r in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = r?;
                let k: Status = k.parse().map_err(|e: OutboxError| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        e.to_string().into(),
                    )
                })?;
                s.by_status.insert(k, v as u64);
            }
            s.due_now = tx.query_row_cached(
                "SELECT count(*) FROM entries WHERE status = 'pending' AND next_attempt_at <= ?1",
                [now],
                |r| r.get::<_, i64>(0),
            )? as u64;
            s.oldest_pending_queued_at = tx
                .query_row_cached(
                    "SELECT min(queued_at) FROM entries WHERE status = 'pending'",
                    [],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map(from_ms);
            s.oldest_dead_at = tx
                .query_row_cached(
                    "SELECT min(completed_at) FROM entries WHERE status = 'dead'",
                    [],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map(from_ms);
            Ok(s)
        })
    }
}
