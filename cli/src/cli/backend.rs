//! Where the shared stores live: `--database-url postgres://…` (env
//! `LOCKSTORE_DATABASE_URL`) moves the task ledger and the outbox to
//! PostgreSQL; without it they are the SQLite files of the state dir. The
//! JSON stores (commitments, `json`, daemon status report, daemon.lock) stay
//! per host in the state dir either way (docs/postgres.md, "Running it").

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use lockstore::outbox::{Outbox, OutboxOptions};
use lockstore::postgres::PgOptions;
use lockstore::tasks::{RegistryOptions, TaskError, TaskRegistry};

/// The environment variable of `--database-url`.
pub const DATABASE_URL_ENV: &str = "LOCKSTORE_DATABASE_URL";

static URL: RwLock<Option<&'static str>> = RwLock::new(None);

/// Validates `--database-url` (clap value parser): a `postgres://` or
/// `postgresql://` URL.
pub fn parse_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_string())
    } else {
        Err("expected a PostgreSQL URL (postgres://user@host:port/db or postgresql://…)".into())
    }
}

/// Records the global `--database-url` (from main; the soak sets the URL
/// of the cluster it started). Leaks the string: set once or twice per
/// process.
pub fn set_url(url: Option<String>) {
    let url: Option<&'static str> = url.map(|u| &*Box::leak(u.into_boxed_str()));
    *URL.write().unwrap_or_else(|p| p.into_inner()) = url;
}

/// The PostgreSQL URL the ledger and the outbox live in, if any.
pub fn url() -> Option<&'static str> {
    *URL.read().unwrap_or_else(|p| p.into_inner())
}

/// The database the delivery worker opens ([`lockstore::outbox::worker::WorkerOptions::db`]):
/// the URL, or the state dir's outbox file.
pub fn outbox_db(state: &Path) -> PathBuf {
    match url() {
        Some(u) => PathBuf::from(u),
        None => lockstore::paths::outbox_db(state),
    }
}

/// Whether the outbox exists (on PostgreSQL: always — connecting creates
/// the schema).
pub fn outbox_exists(state: &Path) -> bool {
    url().is_some() || lockstore::paths::outbox_db(state).exists()
}

/// Whether the task ledger exists (always on PostgreSQL).
pub fn tasks_exist(state: &Path) -> bool {
    url().is_some() || lockstore::paths::tasks_db(state).exists()
}

/// Opens the outbox: on PostgreSQL when a URL is set, else the state dir's
/// SQLite file at `db` (normally [`lockstore::paths::outbox_db`]).
pub fn open_outbox_at(db: &Path, opts: OutboxOptions) -> lockstore::outbox::Result<Outbox> {
    match url() {
        Some(u) => Outbox::connect(u, opts, PgOptions::default()),
        None => Outbox::open(db, opts),
    }
}

/// Opens the outbox of `state` (or the PostgreSQL one).
pub fn open_outbox(state: &Path, opts: OutboxOptions) -> lockstore::outbox::Result<Outbox> {
    open_outbox_at(&lockstore::paths::outbox_db(state), opts)
}

/// Opens the task ledger of `state` (or the PostgreSQL one).
pub fn open_tasks(state: &Path, opts: RegistryOptions) -> Result<TaskRegistry, TaskError> {
    open_tasks_with(state, opts, PgOptions::default())
}

/// [`open_tasks`] with these PostgreSQL options.
pub fn open_tasks_with(
    state: &Path,
    opts: RegistryOptions,
    pg: PgOptions,
) -> Result<TaskRegistry, TaskError> {
    match url() {
        Some(u) => TaskRegistry::connect(u, opts, pg),
        None => TaskRegistry::open_state_dir(state, opts),
    }
}

/// [`open_outbox`] with these PostgreSQL options.
pub fn open_outbox_with(
    state: &Path,
    opts: OutboxOptions,
    pg: PgOptions,
) -> lockstore::outbox::Result<Outbox> {
    match url() {
        Some(u) => Outbox::connect(u, opts, pg),
        None => Outbox::open_state(state, opts),
    }
}

/// PostgreSQL options for a read-only look (`status`): a small pool, a
/// short connect timeout and no retrying through an outage, so that the
/// screen answers within seconds while the server is down.
pub fn quick_pg() -> PgOptions {
    let mut pg = PgOptions::default();
    pg.pool_size = 2;
    pg.connect_timeout = std::time::Duration::from_secs(2);
    pg.retry_deadline = std::time::Duration::from_millis(500);
    pg
}
