//! Where the shared stores live: `--database-url postgres://…` (env
//! `LOCKSTORE_DATABASE_URL`) moves the task ledger and the outbox to
//! PostgreSQL; without it they are the SQLite files of the state dir. The
//! JSON stores (commitments, `json`, daemon status report, daemon.lock) stay
//! per host in the state dir either way (docs/postgres.md, "Running it").

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lockstore::outbox::{Outbox, OutboxOptions};
use lockstore::postgres::PgOptions;
use lockstore::tasks::{RegistryOptions, TaskError, TaskRegistry};

/// The environment variable of `--database-url`.
pub const DATABASE_URL_ENV: &str = "LOCKSTORE_DATABASE_URL";

static URL: OnceLock<Option<String>> = OnceLock::new();

/// Validates `--database-url` (clap value parser): a `postgres://` or
/// `postgresql://` URL.
pub fn parse_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_string())
    } else {
        Err("expected a PostgreSQL URL (postgres://user@host:port/db or postgresql://…)".into())
    }
}

/// Records the global `--database-url` (once, from main).
pub fn set_url(url: Option<String>) {
    let _ = URL.set(url);
}

/// The PostgreSQL URL the ledger and the outbox live in, if any.
pub fn url() -> Option<&'static str> {
    URL.get().and_then(|u| u.as_deref())
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
    match url() {
        Some(u) => TaskRegistry::connect(u, opts, PgOptions::default()),
        None => TaskRegistry::open_state_dir(state, opts),
    }
}
