//! Who holds leases in a PostgreSQL outbox (feature `postgres`), for
//! operators (`lockstore status`): the hosts with claims in flight and the
//! maintenance leader leases. Read-only; one `READ COMMITTED` snapshot per
//! query.

use std::time::SystemTime;

use crate::postgres::PgOptions;
use crate::timefmt::to_ms;

/// A lease holder of a PostgreSQL outbox ([`lease_holders`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LeaseHolder {
    /// What is held: `"claims"` (delivery claims in flight) or
    /// `"leader:<name>"` (a maintenance leader lease row of
    /// `lockstore_leader_leases`).
    pub kind: String,
    /// The holder's host id (`LOCKSTORE_HOST_ID` of its process).
    pub host_id: String,
    /// Claims held (1 for a leader lease).
    pub count: u64,
    /// The latest lease expiry among them, Unix ms.
    pub lease_expires_at_ms: i64,
    /// Whether that lease has expired at `now` (a host that stopped
    /// renewing: paused, cut off or dead; another host may take over).
    pub expired: bool,
}

/// The lease holders of the outbox in the PostgreSQL database at `url`, at
/// `now`: per host, its in-flight delivery claims; and each maintenance
/// leader lease. Uses the shared pool of `url` (`pg.pool_size`).
///
/// Errors: [`crate::Error::PgConnect`] (server unreachable, bad URL),
/// [`crate::Error::Postgres`] (a query failed, e.g. the outbox schema is not
/// migrated yet — connect an [`super::Outbox`] first).
pub fn lease_holders(
    url: &str,
    pg: &PgOptions,
    now: SystemTime,
) -> crate::Result<Vec<LeaseHolder>> {
    let now = to_ms(now);
    let pool = crate::postgres::shared_pool(url, pg)?;
    let mut c = pool
        .get_timeout(pg.connect_timeout)
        .map_err(|e| crate::Error::pool(url, e))?;
    let mut out = Vec::new();
    let rows = c
        .query(
            "SELECT coalesce(claimer_host, '?'), count(*), max(lease_expires_at)
               FROM outbox_entries WHERE status = 'in_flight'
              GROUP BY 1 ORDER BY 1",
            &[],
        )
        .map_err(|e| crate::Error::postgres("list claim holders", url, e))?;
    for r in rows {
        let until: i64 = r.get::<_, Option<i64>>(2).unwrap_or(0);
        out.push(LeaseHolder {
            kind: "claims".into(),
            host_id: r.get(0),
            count: r.get::<_, i64>(1).max(0) as u64,
            lease_expires_at_ms: until,
            expired: until <= now,
        });
    }
    let rows = c
        .query(
            "SELECT name, host_id, lease_expires_at FROM lockstore_leader_leases ORDER BY name",
            &[],
        )
        .map_err(|e| crate::Error::postgres("list leader leases", url, e))?;
    for r in rows {
        let until: i64 = r.get(2);
        out.push(LeaseHolder {
            kind: format!("leader:{}", r.get::<_, String>(0)),
            host_id: r.get(1),
            count: 1,
            lease_expires_at_ms: until,
            expired: until <= now,
        });
    }
    Ok(out)
}
