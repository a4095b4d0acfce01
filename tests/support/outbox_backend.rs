//! Test support: one outbox on either backend, for the rstest matrix
//! (`#[values(Backend::Sqlite, Backend::Postgres)]`).
//!
//! PostgreSQL tests use the test binary's private cluster
//! (`lockstore_pg_cluster::Cluster::shared`) and a fresh database each. When
//! PostgreSQL is not installed they print `SKIP: …` and pass, unless
//! `LOCKSTORE_REQUIRE_PG` is set (`.ci/run`), which makes them fail.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use lockstore::outbox::{Outbox, OutboxOptions};
use lockstore::postgres::PgOptions;

/// The backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty outbox database: a SQLite file in a temp dir, or a new
/// PostgreSQL database.
pub struct Db {
    pub backend: Backend,
    /// The SQLite file or the PostgreSQL URL (what `WorkerOptions::db` takes).
    pub location: PathBuf,
    pub dir: tempfile::TempDir,
}

/// A fresh PostgreSQL database URL, or `None` (skip) when PostgreSQL is not
/// installed and `LOCKSTORE_REQUIRE_PG` is unset.
pub fn pg_url() -> Option<String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    if !lockstore_pg_cluster::available() && std::env::var_os("LOCKSTORE_REQUIRE_PG").is_none() {
        eprintln!("SKIP: PostgreSQL is not installed (set LOCKSTORE_REQUIRE_PG=1 to fail instead)");
        return None;
    }
    let c = lockstore_pg_cluster::Cluster::shared().expect("start the test PostgreSQL cluster");
    let name = format!(
        "outbox_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    Some(c.create_database(&name).expect("create a test database"))
}

impl Db {
    /// A fresh database on `backend`; `None`: skip the test.
    pub fn new(backend: Backend) -> Option<Db> {
        let dir = tempfile::tempdir().unwrap();
        let location = match backend {
            Backend::Sqlite => dir.path().join("outbox/outbox.sqlite"),
            Backend::Postgres => PathBuf::from(pg_url()?),
        };
        Some(Db {
            backend,
            location,
            dir,
        })
    }

    /// A new handle with default options.
    pub fn open(&self) -> Outbox {
        self.open_with(OutboxOptions::default())
    }

    /// A new handle with `opts`.
    pub fn open_with(&self, opts: OutboxOptions) -> Outbox {
        open_location(&self.location, opts, None)
    }

    /// A new PostgreSQL handle under `host_id` (another "host").
    pub fn open_as_host(&self, host_id: &str) -> Outbox {
        open_location(&self.location, OutboxOptions::default(), Some(host_id))
    }

    /// Runs `sql` with one text parameter and two ids: SQLite table
    /// `entries` (`?1, ?2, ?3`), PostgreSQL table `outbox_entries` (`$1,
    /// $2, $3`); write `{t}` for the table and `{p1}`.. for parameters.
    pub fn exec(&self, sql: &str, text: &str, a: i64, b: i64) {
        match self.backend {
            Backend::Sqlite => {
                let s = sql
                    .replace("{t}", "entries")
                    .replace("{p1}", "?1")
                    .replace("{p2}", "?2")
                    .replace("{p3}", "?3");
                let c = rusqlite::Connection::open(&self.location).unwrap();
                c.execute(&s, rusqlite::params![text, a, b]).unwrap();
            }
            Backend::Postgres => {
                let s = sql
                    .replace("{t}", "outbox_entries")
                    .replace("{p1}", "$1")
                    .replace("{p2}", "$2")
                    .replace("{p3}", "$3");
                let mut c =
                    postgres::Client::connect(self.location.to_str().unwrap(), postgres::NoTls)
                        .unwrap();
                c.execute(&s, &[&text, &a, &b]).unwrap();
            }
        }
    }
}

/// Opens the outbox at `location` (a SQLite file or a PostgreSQL URL).
pub fn open_location(location: &Path, opts: OutboxOptions, host_id: Option<&str>) -> Outbox {
    let s = location.to_str().unwrap();
    if s.starts_with("postgres") {
        let mut pg = PgOptions::default();
        if let Some(h) = host_id {
            pg.host_id = h.to_string();
        }
        Outbox::connect(s, opts, pg).unwrap()
    } else {
        Outbox::open(location, opts).unwrap()
    }
}
