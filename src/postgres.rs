//! PostgreSQL conventions shared by the task ledger and the outbox when they
//! live in a shared database (feature `postgres`): the connection pool, the
//! one migration runner, the host id that names lease owners, and the
//! retry classification.
//!
//! * Client and pool: the sync `postgres` crate (rust-postgres; the stores'
//!   APIs are sync, and the `tokio` handles already run them on the blocking
//!   pool) and an r2d2 pool of its connections, one pool per store handle.
//!   Connections are plain-text (`NoTls`): use a unix socket or a local
//!   network; TLS is a follow-up.
//! * Migrations ([`migrate`]): table `lockstore_schema(component, version)`;
//!   `migrations[n - 1]` brings `component` from version `n - 1` to `n`. All
//!   steps run in one transaction holding a transaction-scoped advisory lock
//!   (`pg_advisory_xact_lock`), so concurrent openers on several hosts apply
//!   each step once; a database whose version is above the binary's is
//!   refused ([`Error::SchemaTooNew`]) and never downgraded.
//! * Host id ([`host_id`]): `LOCKSTORE_HOST_ID`, else `/etc/machine-id`, else
//!   the hostname. On one host, owners are judged exactly (pid + start time);
//!   an owner on another host only by its lease.
//! * Retry: serialization failures (SQLSTATE 40001), deadlocks (40P01) and
//!   broken connections ([`is_retryable`]) are retried whole by the stores
//!   with backoff until their deadline; every other error is returned.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};

/// A pool of connections to one database.
pub(crate) type Pool = r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>;

/// Options for connecting a store to PostgreSQL.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// Maximum connections in the store's pool (default 8).
    pub pool_size: u32,
    /// How long to wait for a pooled connection or a new one (default 10 s);
    /// past it the call fails with [`Error::Postgres`].
    pub connect_timeout: Duration,
    /// Retries of a transaction that failed with a serialization failure,
    /// deadlock or broken connection stop after this long (default 30 s).
    pub retry_deadline: Duration,
    /// The host id lease owners are recorded under (default [`host_id`]).
    /// Tests set distinct ids to play several hosts in one process.
    pub host_id: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            retry_deadline: Duration::from_secs(30),
            host_id: host_id(),
        }
    }
}

/// `url` with any password replaced by `***`, for errors and logs.
pub(crate) fn redact(url: &str) -> String {
    // postgresql://user:secret@host/db → postgresql://user:***@host/db
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    // key=value form: hide password=...
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the pool (connects once to check the URL). Errors:
/// [`Error::Postgres`] naming the redacted URL (bad URL, server unreachable,
/// authentication failed).
pub(crate) fn pool(url: &str, opts: &PgOptions) -> Result<Pool> {
    let config: postgres::Config = url
        .parse()
        .map_err(|e| Error::postgres("parse database URL", url, e))?;
    let mgr = r2d2_postgres::PostgresConnectionManager::new(config, postgres::NoTls);
    r2d2::Pool::builder()
        .max_size(opts.pool_size.max(1))
        .connection_timeout(opts.connect_timeout)
        // Errors while (re)connecting are returned by `get`, not logged by r2d2.
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build(mgr)
        .map_err(|e| Error::pool(url, e))
}

/// True for errors a store retries whole: serialization failure (40001),
/// deadlock (40P01), and connection-level failures (the server restarted or
/// the connection broke: no SQLSTATE, or class 08 / 57P01-57P03).
pub(crate) fn is_retryable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(c) => {
            let c = c.code();
            c == "40001" || c == "40P01" || c.starts_with("08") || c.starts_with("57P0")
        }
        // No SQLSTATE: an I/O error on the connection.
        None => true,
    }
}

/// Runs `migrations` for `component` (e.g. `"outbox"`, `"tasks"`): see the
/// module docs. Errors: [`Error::SchemaTooNew`] (the database is newer than
/// this binary; nothing written), [`Error::Postgres`] (a step failed; the
/// whole migration is rolled back).
pub(crate) fn migrate(
    client: &mut postgres::Client,
    url: &str,
    component: &str,
    migrations: &[&str],
) -> Result<()> {
    let err = |op: &'static str| move |e: postgres::Error| Error::postgres(op, url, e);
    let mut tx = client.transaction().map_err(err("begin migration"))?;
    // One key for every lockstore migration in this database: migrations are
    // rare and short, and one key avoids ordering questions between components.
    tx.execute("SELECT pg_advisory_xact_lock(7251300001)", &[])
        .map_err(err("lock for migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS lockstore_schema (
             component TEXT PRIMARY KEY,
             version INTEGER NOT NULL
         )",
    )
    .map_err(err("create lockstore_schema"))?;
    let found: i32 = tx
        .query_opt(
            "SELECT version FROM lockstore_schema WHERE component = $1",
            &[&component],
        )
        .map_err(err("read schema version"))?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let target = migrations.len() as i32;
    if found > target {
        return Err(Error::SchemaTooNew {
            path: redact(url).into(),
            found: i64::from(found),
            supported: i64::from(target),
        });
    }
    for (i, step) in migrations.iter().enumerate().skip(found as usize) {
        tx.batch_execute(step).map_err(err("apply migration"))?;
        tracing::info!(component, version = i + 1, "postgres migration applied");
    }
    if found < target {
        tx.execute(
            "INSERT INTO lockstore_schema (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&component, &target],
        )
        .map_err(err("record schema version"))?;
    }
    tx.commit().map_err(err("commit migration"))?;
    Ok(())
}

/// This process's host id, the name lease owners are recorded under:
/// `$LOCKSTORE_HOST_ID`, else the first line of `/etc/machine-id`, else the
/// hostname, else `"unknown-host"`. Read once per process. Two hosts must
/// never share an id (cloned VMs sharing a machine-id should set
/// `LOCKSTORE_HOST_ID`).
pub fn host_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        if let Ok(v) = std::env::var("LOCKSTORE_HOST_ID") {
            let v = v.trim().to_string();
            if !v.is_empty() {
                return v;
            }
        }
        if let Ok(s) = std::fs::read_to_string("/etc/machine-id") {
            let s = s.trim().to_string();
            if !s.is_empty() {
                return s;
            }
        }
        crate::proc::hostname().unwrap_or_else(|| "unknown-host".to_string())
    })
    .clone()
}
