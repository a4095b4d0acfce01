//! Test support for the task-ledger suites: one ledger on either backend
//! (SQLite in a temp dir, or a fresh database in the test binary's private
//! PostgreSQL cluster), raw SQL on it, and more registries on the same ledger
//! (same host, or another host id on PostgreSQL).
#![allow(dead_code)]

use std::path::PathBuf;

use lockstore::postgres::PgOptions;
use lockstore::tasks::{RegistryOptions, TaskRegistry};

/// Which backend a ledger lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A URL for a fresh database named after `name` (+ pid), or `None` (after
/// printing `SKIP`) when PostgreSQL is not installed and
/// `LOCKSTORE_REQUIRE_PG` is unset.
pub fn pg_url(name: &str) -> Option<String> {
    if !lockstore_pg_cluster::available() {
        if std::env::var_os("LOCKSTORE_REQUIRE_PG").is_some() {
            panic!("PostgreSQL binaries not found and LOCKSTORE_REQUIRE_PG is set");
        }
        eprintln!("SKIP: {name}: PostgreSQL binaries not found");
        return None;
    }
    let cluster = lockstore_pg_cluster::Cluster::shared().expect("start the test cluster");
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut db: String = format!("t_{}_{}_{n}", name, std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if db.len() > 60 {
        db = format!("{}_{}", &db[..40], fastrand::u64(..));
    }
    Some(cluster.create_database(&db).expect("create database"))
}

/// PostgreSQL options playing host `host`.
pub fn pg_opts(host: &str) -> PgOptions {
    let mut o = PgOptions::default();
    o.host_id = host.to_string();
    o
}

/// One task ledger under test.
pub struct Ledger {
    pub backend: Backend,
    pub reg: TaskRegistry,
    /// SQLite file or PostgreSQL URL.
    pub path: PathBuf,
    pub url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Ledger {
    /// Opens a fresh ledger; `None`: skipped (see [`pg_url`]).
    pub fn open(b: Backend, name: &str, opts: RegistryOptions) -> Option<Ledger> {
        match b {
            Backend::Sqlite => {
                let d = tempfile::tempdir().unwrap();
                let path = d.path().join("tasks/runs.sqlite");
                let reg = TaskRegistry::open(&path, opts).unwrap();
                Some(Ledger {
                    backend: b,
                    reg,
                    path,
                    url: None,
                    _dir: Some(d),
                })
            }
            Backend::Postgres => {
                let url = pg_url(name)?;
                let reg = TaskRegistry::connect(&url, opts, pg_opts("host-a")).unwrap();
                Some(Ledger {
                    backend: b,
                    reg,
                    path: PathBuf::from(&url),
                    url: Some(url),
                    _dir: None,
                })
            }
        }
    }

    /// Another registry on the same ledger (same host).
    pub fn reopen(
        &self,
        opts: RegistryOptions,
    ) -> Result<TaskRegistry, lockstore::tasks::TaskError> {
        self.reopen_as("host-a", opts)
    }

    /// Another registry on the same ledger as host `host` (PostgreSQL; on
    /// SQLite the host is ignored).
    pub fn reopen_as(
        &self,
        host: &str,
        opts: RegistryOptions,
    ) -> Result<TaskRegistry, lockstore::tasks::TaskError> {
        match &self.url {
            None => TaskRegistry::open(&self.path, opts),
            Some(url) => TaskRegistry::connect(url, opts, pg_opts(host)),
        }
    }

    /// Runs `sql` (SQLite spelling, one parameter `?1`) outside the
    /// registry; returns the rows changed.
    pub fn exec(&self, sql: &str, id: &str) -> u64 {
        match &self.url {
            None => {
                let c = rusqlite::Connection::open(&self.path).unwrap();
                if sql.contains("?1") {
                    c.execute(sql, [id]).unwrap() as u64
                } else {
                    c.execute(sql, []).unwrap() as u64
                }
            }
            Some(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                let sql = sql.replace("?1", "$1");
                if sql.contains("$1") {
                    c.execute(sql.as_str(), &[&id]).unwrap()
                } else {
                    c.execute(sql.as_str(), &[]).unwrap()
                }
            }
        }
    }

    /// One text column of one row (`SELECT <col> FROM task_runs WHERE task_id = ?1`).
    pub fn column(&self, col: &str, id: &str) -> Option<String> {
        let sql = format!("SELECT {col} FROM task_runs WHERE task_id = ?1");
        match &self.url {
            None => {
                let c = rusqlite::Connection::open(&self.path).unwrap();
                c.query_row(&sql, [id], |r| r.get(0)).ok()
            }
            Some(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.query_opt(sql.replace("?1", "$1").as_str(), &[&id])
                    .unwrap()
                    .map(|r| r.get(0))
            }
        }
    }

    /// A second [`lockstore::tasks::TaskStore`] on the same ledger.
    pub fn store(&self) -> Box<dyn lockstore::tasks::TaskStore> {
        match &self.url {
            None => Box::new(
                lockstore::tasks::SqliteTaskStore::open(&self.path, Default::default()).unwrap(),
            ),
            Some(url) => {
                Box::new(lockstore::tasks::PgTaskStore::connect(url, pg_opts("host-a")).unwrap())
            }
        }
    }
}

/// Opens a ledger or returns from the test (skipped).
#[macro_export]
macro_rules! ledger {
    ($b:expr, $name:expr) => {
        ledger!($b, $name, lockstore::tasks::RegistryOptions::default())
    };
    ($b:expr, $name:expr, $opts:expr) => {
        match $crate::tasks_support::Ledger::open($b, $name, $opts) {
            Some(l) => l,
            None => return,
        }
    };
}

/// `e` and its sources, joined (PostgreSQL's server message is in a source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
