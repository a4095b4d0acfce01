//! PostgreSQL conventions shared by the task ledger and the outbox when they
//! live in a shared database (feature `postgres`): the connection pool, the
//! one migration runner, the host id that names lease owners, and the
//! retry classification.
//!
//! * Client and pool: the sync `postgres` crate (rust-postgres; the stores'
//!   APIs are sync, and the `tokio` handles already run them on the blocking
//!   pool) and an r2d2 pool of its connections, one pool per database URL (and
//!   pool size) per process, shared by its store handles; connections are
//!   made on demand and closed after 60 s idle.
//!   Connections are plain-text (`NoTls`): use a unix socket or a local
//!   network; TLS is a follow-up.
//! * Migrations (`migrate`): table `lockstore_schema(component, version)`;
//!   `migrations[n - 1]` brings `component` from version `n - 1` to `n`. All
//!   steps run in one transaction holding a transaction-scoped advisory lock
//!   (`pg_advisory_xact_lock`), so concurrent openers on several hosts apply
//!   each step once; a database whose version is above the binary's is
//!   refused ([`Error::SchemaTooNew`]) and never downgraded.
//! * Host id ([`host_id`]): `LOCKSTORE_HOST_ID`, else `/etc/machine-id`, else
//!   the hostname. On one host, owners are judged exactly (pid + start time);
//!   an owner on another host only by its lease.
//! * Retry: serialization failures (SQLSTATE 40001), deadlocks (40P01) and
//!   broken connections (`is_retryable`) are retried whole by the stores
//!   with backoff until their deadline (`with_tx`); every other error is
//!   returned.
//! * Wake-ups: `hub` — one `LISTEN` connection per database and channel
//!   per process, reconnecting with backoff.
//! * Maintenance leader: `try_lead` — a lease row in
//!   `lockstore_leader_leases`, not a session advisory lock (a pooled
//!   connection is not ours between operations). See docs/postgres.md.

// The helpers serve the stores: with feature `postgres` alone nothing calls them.
#![cfg_attr(not(any(feature = "outbox", feature = "tasks")), allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

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
    /// The server ends a session that sits inside a transaction longer than
    /// this (`idle_in_transaction_session_timeout`, set on every connection;
    /// default 5 s): a process paused (SIGSTOP, a VM freeze) or cut off in
    /// the middle of a transaction would otherwise hold its row locks — the
    /// task ledger's write lock among them — and stall every other host
    /// until it resumes. lockstore's transactions last milliseconds; the
    /// paused process's transaction fails when it resumes and is retried or
    /// reported (PostgreSQL docs, "Client Connection Defaults").
    pub idle_in_transaction_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            retry_deadline: Duration::from_secs(30),
            host_id: host_id(),
            idle_in_transaction_timeout: Duration::from_secs(5),
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

/// Builds the pool (connections are made on first use: a bad URL or an
/// unreachable server shows at the first checkout, after `connect_timeout`). Errors:
/// [`Error::Postgres`] naming the redacted URL (bad URL, server unreachable,
/// authentication failed).
pub(crate) fn pool(url: &str, opts: &PgOptions) -> Result<Pool> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| Error::postgres("parse database URL", url, e))?;
    // Appended to the URL's own `options`, so an operator's settings stay.
    let ours = format!(
        "-c idle_in_transaction_session_timeout={}",
        opts.idle_in_transaction_timeout.as_millis().max(1)
    );
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {ours}"),
        _ => ours,
    };
    config.options(&options);
    let mgr = r2d2_postgres::PostgresConnectionManager::new(config, postgres::NoTls);
    r2d2::Pool::builder()
        .max_size(opts.pool_size.max(1))
        // Connections are made on demand (not `max_size` at once) and closed
        // after a minute idle: a process holds few connections per database.
        .min_idle(Some(0))
        .idle_timeout(Some(Duration::from_secs(60)))
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

/// The pool of `url` shared by every store handle of this process with the
/// same `pool_size` (a worker opens a handle per thread and per poll; one pool
/// keeps their connections). Built by [`pool`] on first use; errors as
/// [`pool`].
pub(crate) fn shared_pool(url: &str, opts: &PgOptions) -> Result<Pool> {
    static POOLS: OnceLock<Mutex<HashMap<(String, u32), Pool>>> = OnceLock::new();
    let key = (url.to_string(), opts.pool_size);
    let mut g = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = g.get(&key) {
        return Ok(p.clone());
    }
    let p = pool(url, opts)?;
    g.insert(key, p.clone());
    Ok(p)
}

/// Runs `f` in one `READ COMMITTED` transaction on a pooled connection and
/// commits. A retryable failure ([`is_retryable`]: serialization failure,
/// deadlock, broken connection, and a pool that cannot connect — the server
/// is restarting) rolls back and reruns `f` whole after a backoff (10 ms
/// doubling to 1 s, with jitter) until `opts.retry_deadline`; then, or for any
/// other error, the error is returned as [`Error::Postgres`] /
/// [`Error::PgConnect`] (`op` names the operation).
///
/// A connection that broke while `COMMIT` was in flight leaves the outcome
/// unknown; the rerun then finds the committed state, so `f` must be a
/// compare-and-set (every store operation is) or idempotent.
pub(crate) fn with_tx<T>(
    pool: &Pool,
    url: &str,
    opts: &PgOptions,
    op: &'static str,
    mut f: impl FnMut(&mut postgres::Transaction<'_>) -> std::result::Result<T, postgres::Error>,
) -> Result<T> {
    let deadline = Instant::now() + opts.retry_deadline;
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = opts
            .connect_timeout
            .min(left)
            .max(Duration::from_millis(50));
        let err = match pool.get_timeout(wait) {
            Err(e) if Instant::now() >= deadline => return Err(Error::pool(url, e)),
            Err(e) => {
                tracing::debug!(database = %redact(url), attempt, error = %e, "postgres: no connection; retrying");
                None
            }
            Ok(mut c) => {
                let r = (|| {
                    let mut tx = c.transaction()?;
                    let v = f(&mut tx)?;
                    tx.commit()?;
                    Ok(v)
                })();
                match r {
                    Ok(v) => return Ok(v),
                    Err(e) if is_retryable(&e) && Instant::now() < deadline => Some(e),
                    Err(e) => return Err(Error::postgres(op, url, e)),
                }
            }
        };
        if let Some(e) = err {
            tracing::warn!(database = %redact(url), op, attempt, error = %e, "postgres transaction failed; retrying");
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2));
        std::thread::sleep(
            (delay + jitter).min(deadline.saturating_duration_since(Instant::now())),
        );
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Wakes idle workers: one `LISTEN` connection per (database, channel) and
/// process, on its own thread, counting notifications in a generation that
/// waiters compare with the one they last saw. Each time it starts listening
/// (first connect, and reconnects with backoff after the connection broke)
/// it bumps the generation too: a notification may have been missed, so
/// waiters poll once. The thread ends once no store handle holds the hub.
pub(crate) struct Hub {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Hub {
    /// The current generation.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `max` for the generation to differ from `*seen`; returns
    /// true (and updates `*seen`) if it did.
    pub(crate) fn wait(&self, seen: &mut u64, max: Duration) -> bool {
        let g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, max, |g| *g == *seen)
            .unwrap_or_else(|p| p.into_inner());
        let changed = *g != *seen;
        *seen = *g;
        changed
    }

    fn bump(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_all();
    }
}

/// The hub of `channel` on `url` (started on first use).
pub(crate) fn hub(url: &str, channel: &'static str) -> Arc<Hub> {
    type Hubs = HashMap<(String, &'static str), Weak<Hub>>;
    static HUBS: OnceLock<Mutex<Hubs>> = OnceLock::new();
    let mut g = HUBS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let key = (url.to_string(), channel);
    if let Some(h) = g.get(&key).and_then(Weak::upgrade) {
        return h;
    }
    let h = Arc::new(Hub {
        generation: Mutex::new(0),
        cv: Condvar::new(),
    });
    g.insert(key, Arc::downgrade(&h));
    let (weak, url) = (Arc::downgrade(&h), url.to_string());
    let spawned = std::thread::Builder::new()
        .name("lockstore-pg-listen".into())
        .spawn(move || listen_loop(&url, channel, &weak));
    if let Err(e) = spawned {
        // Waiters then fall back to polling.
        tracing::warn!(error = %e, "cannot start the postgres LISTEN thread; workers poll");
    }
    h
}

fn listen_loop(url: &str, channel: &'static str, hub: &Weak<Hub>) {
    let mut delay = Duration::from_millis(50);
    while hub.strong_count() > 0 {
        let client = url
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
            .and_then(|mut c| c.batch_execute(&format!("LISTEN {channel}")).map(|_| c));
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(database = %redact(url), error = %e, "postgres LISTEN: cannot connect; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        delay = Duration::from_millis(50);
        // Listening (again): notifications sent before now are lost, so
        // waiters wake and poll once.
        if let Some(h) = hub.upgrade() {
            h.bump();
        }
        loop {
            let mut got = false;
            let broken = {
                use postgres::fallible_iterator::FallibleIterator;
                let mut n = client.notifications();
                let mut it = n.timeout_iter(Duration::from_millis(500));
                loop {
                    match it.next() {
                        Ok(Some(_)) => got = true,
                        Ok(None) => break false,
                        Err(e) => {
                            tracing::debug!(database = %redact(url), error = %e, "postgres LISTEN connection lost; reconnecting");
                            break true;
                        }
                    }
                }
            };
            let Some(h) = hub.upgrade() else { return };
            if got {
                h.bump();
            }
            drop(h);
            if broken || client.is_closed() {
                break;
            }
        }
    }
}

/// Tries to take or keep the leader lease `name` (table
/// `lockstore_leader_leases`) for `holder` until `now_ms + lease`: true if
/// `holder` is the leader now. A lease row, not a session advisory lock: it
/// survives the pool handing the connection to someone else, shows which
/// host leads, and a holder that pauses loses it once the lease ends.
pub(crate) fn try_lead(
    tx: &mut postgres::Transaction<'_>,
    name: &str,
    holder: &str,
    host: &str,
    now_ms: i64,
    lease: Duration,
) -> std::result::Result<bool, postgres::Error> {
    let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
    let r = tx.query_opt(
        "INSERT INTO lockstore_leader_leases(name, holder, host_id, fencing_token, lease_expires_at)
         VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, host_id = EXCLUDED.host_id,
           fencing_token = lockstore_leader_leases.fencing_token
             + CASE WHEN lockstore_leader_leases.holder = EXCLUDED.holder THEN 0 ELSE 1 END,
           lease_expires_at = EXCLUDED.lease_expires_at
         WHERE lockstore_leader_leases.holder = EXCLUDED.holder
            OR lockstore_leader_leases.lease_expires_at <= $5
         RETURNING fencing_token",
        &[&name, &holder, &host, &until, &now_ms],
    )?;
    Ok(r.is_some())
}

/// The `CREATE TABLE` of the leader leases (part of the first migration of
/// each component that elects a maintenance leader; `IF NOT EXISTS`).
pub(crate) const LEADER_TABLE: &str = "
CREATE TABLE IF NOT EXISTS lockstore_leader_leases(
  name TEXT PRIMARY KEY,
  holder TEXT NOT NULL,
  host_id TEXT NOT NULL,
  fencing_token BIGINT NOT NULL,
  lease_expires_at BIGINT NOT NULL
);";

#[cfg(test)]
mod tests {
    use super::*;

    /// A session paused inside a transaction (a SIGSTOPped host) holds its
    /// locks only until `idle_in_transaction_timeout`: the server ends it and
    /// another session's wait for the same lock completes. Without the
    /// setting on the pool's connections the second session waits until its
    /// own `lock_timeout` (20 s) and the test fails. (Seen in the multi-host
    /// soak: a SIGSTOPped daemon holding the task ledger's write lock kept
    /// another host's daemon from stopping for 30 s.)
    #[test]
    fn a_session_paused_in_a_transaction_releases_its_locks() {
        if !lockstore_pg_cluster::available() && std::env::var_os("LOCKSTORE_REQUIRE_PG").is_none()
        {
            eprintln!("SKIP: PostgreSQL is not installed");
            return;
        }
        let c = lockstore_pg_cluster::Cluster::shared().unwrap();
        let url = c
            .create_database(&format!("idle_in_tx_{}", std::process::id()))
            .unwrap();
        let opts = PgOptions {
            idle_in_transaction_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let p = pool(&url, &opts).unwrap();
        let mut paused = p.get().unwrap();
        let mut tx = paused.transaction().unwrap();
        tx.execute("SELECT pg_advisory_xact_lock(42)", &[]).unwrap();
        // `paused` now sits idle in its transaction, holding the lock.
        let mut other = p.get().unwrap();
        let mut tx2 = other.transaction().unwrap();
        tx2.batch_execute("SET LOCAL lock_timeout = '20s'").unwrap();
        let t0 = std::time::Instant::now();
        tx2.execute("SELECT pg_advisory_xact_lock(42)", &[])
            .expect("the paused session's lock was released by the server");
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
        tx2.commit().unwrap();
        // The paused session's transaction is gone: its next statement fails.
        assert!(tx.execute("SELECT 1", &[]).is_err());
    }
}
