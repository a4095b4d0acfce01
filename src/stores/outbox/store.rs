//! [`Outbox`]: one connection to the outbox database, and its read accessors.

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension, Transaction};

use super::schema::{row_to_entry, CachedExt, COLS, MIGRATIONS};
use super::{Entry, OutboxError, OutboxOptions, Result, Status};
use crate::sqlite;
use crate::Error;

/// One connection to the outbox database (feature `outbox`). Not `Sync`: open
/// one per thread (several connections, threads and processes may share the
/// file; every write is one `BEGIN IMMEDIATE` transaction retried on BUSY).
///
/// Times passed in (`now: SystemTime`) are the caller's clock — tests inject
/// it; they are stored as Unix milliseconds. Every method that writes returns,
/// besides its own errors, [`OutboxError::Core`] for SQLite errors naming the
/// file and [`OutboxError::CorruptRow`] for a row that does not decode.
pub struct Outbox {
    pub(crate) inner: Inner,
    path: PathBuf,
    opts: OutboxOptions,
}

/// The backend of an [`Outbox`]: an enum, not a trait object, so the SQLite
/// path pays one branch per call and no boxing or dynamic dispatch (its
/// statements, cached per connection, are unchanged). Each public method
/// first hands a PostgreSQL outbox to [`PgOutbox`] (via `pg_dispatch!`), then
/// runs the SQLite code.
pub(crate) enum Inner {
    Sqlite(rusqlite::Connection),
    #[cfg(feature = "postgres")]
    Pg(Box<super::pg::PgOutbox>),
}

/// Runs `$e` with `$pg` bound to the [`PgOutbox`] and returns its value when
/// `$self` is a PostgreSQL outbox.
macro_rules! pg_dispatch {
    ($self:expr, $pg:ident => $e:expr) => {
        #[cfg(feature = "postgres")]
        if let $crate::stores::outbox::store::Inner::Pg($pg) = &$self.inner {
            return $e;
        }
    };
}
pub(crate) use pg_dispatch;

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish()
    }
}

impl Outbox {
    /// Opens (creating, migrating) the outbox of the state directory `state`:
    /// `<state>/outbox/outbox.sqlite` ([`crate::paths::outbox_db`]).
    ///
    /// Errors: as [`Outbox::open`].
    pub fn open_state(state: impl AsRef<Path>, opts: OutboxOptions) -> Result<Self> {
        Self::open(crate::paths::outbox_db(state.as_ref()), opts)
    }

    /// Opens (creating, migrating) the outbox database at `path` (directory
    /// created 0700, file 0600, WAL verified, no in-memory fallback).
    ///
    /// Errors ([`OutboxError::Core`]): [`Error::InvalidPath`],
    /// [`Error::Sqlite`] naming the file, [`Error::SchemaTooNew`] (a newer
    /// lockstore's database, left untouched), [`Error::Corrupt`] (a foreign
    /// database: tables but no lockstore schema version), [`Error::Io`]; see
    /// [`crate::sqlite::open`].
    pub fn open(path: impl AsRef<Path>, opts: OutboxOptions) -> Result<Self> {
        let path = path.as_ref();
        let conn = sqlite::open(path, &opts.sqlite, MIGRATIONS)?;
        Ok(Outbox {
            inner: Inner::Sqlite(conn),
            path: path.to_path_buf(),
            opts,
        })
    }

    /// Connects to the outbox in the PostgreSQL database at `url`
    /// (`postgresql://user@host/db`, or the key=value form), creating or
    /// migrating its tables (`outbox_entries`, the sequence
    /// `outbox_fencing_token`, `lockstore_leader_leases`; versions in
    /// `lockstore_schema`). Feature `postgres`. Every method then behaves as
    /// on SQLite (same states, compare-and-set transitions, TTL, dead
    /// letters, idempotency keys and tombstones), and in addition: claim
    /// tokens carry a fencing token that increases with every claim, across
    /// hosts; claims are recorded under [`PgOptions::host_id`], and
    /// [`Outbox::rescue`] judges a claimer on another host by its lease only.
    /// `opts.sqlite` is ignored; [`Outbox::path`] is the URL with any
    /// password redacted. Handles of one process share a connection pool
    /// per URL. See docs/postgres.md.
    ///
    /// Do not call a PostgreSQL outbox from a thread that drives a tokio
    /// runtime: the sync `postgres` client blocks on its own runtime there
    /// and panics. In async code use `lockstore::tokio::Outbox::open(url)`
    /// (its calls run on a thread of their own).
    ///
    /// Errors ([`OutboxError::Core`]): [`Error::PgConnect`] (bad URL, server
    /// unreachable, authentication failed), [`Error::Postgres`] (a migration
    /// failed; rolled back), [`Error::SchemaTooNew`] (the database's outbox
    /// schema is newer than this binary; untouched).
    ///
    /// [`PgOptions::host_id`]: crate::postgres::PgOptions::host_id
    #[cfg(feature = "postgres")]
    pub fn connect(url: &str, opts: OutboxOptions, pg: crate::postgres::PgOptions) -> Result<Self> {
        let b = super::pg::PgOutbox::connect(url, pg)?;
        Ok(Outbox {
            path: b.location.clone(),
            inner: Inner::Pg(Box::new(b)),
            opts,
        })
    }

    /// Opens `db` as the worker names it ([`super::worker::WorkerOptions::db`]):
    /// a `postgres://` or `postgresql://` URL connects with the default
    /// [`crate::postgres::PgOptions`] (feature `postgres`), anything else is
    /// a SQLite file.
    pub(crate) fn open_db(db: &Path, opts: OutboxOptions) -> Result<Self> {
        if let Some(url) = db.to_str().filter(|s| is_database_url(s)) {
            #[cfg(feature = "postgres")]
            return Self::connect(url, opts, crate::postgres::PgOptions::default());
            #[cfg(not(feature = "postgres"))]
            let _ = url;
            #[cfg(not(feature = "postgres"))]
            return Err(OutboxError::Core(Error::InvalidPath {
                path: "<PostgreSQL database URL>".into(),
                reason: "a PostgreSQL URL needs lockstore built with feature `postgres`",
            }));
        }
        Self::open(db, opts)
    }

    /// The database file; on PostgreSQL the database URL with any password
    /// redacted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backend: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match &self.inner {
            Inner::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Inner::Pg(_) => "postgres",
        }
    }

    /// The host id claims are recorded under on PostgreSQL
    /// ([`crate::postgres::PgOptions::host_id`]); `None` on SQLite (one host).
    pub fn host_id(&self) -> Option<&str> {
        match &self.inner {
            Inner::Sqlite(_) => None,
            #[cfg(feature = "postgres")]
            Inner::Pg(p) => Some(p.host_id()),
        }
    }

    /// Waits up to `max` for work that may be due: on PostgreSQL until a
    /// `NOTIFY` from an enqueue, release, retry or rescue committed by any
    /// process (true), on SQLite it sleeps `max` (false; the worker polls).
    pub(crate) fn wait_for_work(&self, max: std::time::Duration) -> bool {
        pg_dispatch!(self, p => p.wait_for_work(max));
        std::thread::sleep(max);
        false
    }

    /// The `LISTEN` hub of a PostgreSQL outbox and the generation seen so
    /// far (for the async handle's idle wait); `None` on SQLite.
    #[cfg(all(feature = "postgres", feature = "tokio"))]
    pub(crate) fn work_hub(&self) -> Option<(std::sync::Arc<crate::postgres::Hub>, u64)> {
        match &self.inner {
            Inner::Pg(p) => Some((p.hub.clone(), p.hub.generation())),
            Inner::Sqlite(_) => None,
        }
    }

    /// The worker's periodic rescue: on PostgreSQL only by the process that
    /// holds the maintenance leader lease (`lockstore_leader_leases`, row
    /// `outbox-maintenance`; taken or renewed here for 15 s), elsewhere a
    /// zero report; on SQLite always [`Outbox::rescue`].
    pub(crate) fn rescue_as_leader(
        &self,
        now: std::time::SystemTime,
        adapter_idempotent: bool,
    ) -> Result<super::RescueReport> {
        pg_dispatch!(self, p => Ok(p
            .rescue_as_leader(crate::timefmt::to_ms(now), adapter_idempotent)?
            .unwrap_or_default()));
        self.rescue(now, adapter_idempotent)
    }

    /// The options it was opened with.
    pub fn options(&self) -> &OutboxOptions {
        &self.opts
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (retried whole on BUSY),
    /// inside an `outbox_commit` span; a decode failure becomes
    /// [`OutboxError::CorruptRow`].
    pub(crate) fn tx<T>(
        &self,
        f: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let span = tracing::debug_span!("outbox_commit", path = %self.path.display());
        let _g = span.enter();
        let conn = match &self.inner {
            Inner::Sqlite(c) => c,
            #[cfg(feature = "postgres")]
            Inner::Pg(_) => unreachable!("a SQLite transaction on a PostgreSQL outbox"),
        };
        sqlite::immediate(conn, &self.path, &self.opts.sqlite, f).map_err(|e| match e {
            Error::Sqlite {
                source: rusqlite::Error::FromSqlConversionFailure(i, _, why),
                ..
            } => OutboxError::CorruptRow {
                path: self.path.clone(),
                column: i,
                reason: why.to_string(),
            },
            e => e.into(),
        })
    }

    /// One entry by id (`None`: no such row).
    pub fn get(&self, id: i64) -> Result<Option<Entry>> {
        pg_dispatch!(self, p => p.get(id));
        self.tx(|tx| {
            tx.query_row_cached(
                &format!("SELECT {COLS} FROM entries WHERE id = ?1"),
                [id],
                row_to_entry,
            )
            .optional()
        })
    }

    /// One entry by idempotency key (`None`: no such row).
    pub fn get_by_key(&self, key: &str) -> Result<Option<Entry>> {
        pg_dispatch!(self, p => p.get_by_key(key));
        self.tx(|tx| {
            tx.query_row_cached(
                &format!("SELECT {COLS} FROM entries WHERE idempotency_key = ?1"),
                [key],
                row_to_entry,
            )
            .optional()
        })
    }

    /// Entries, all or only those of `status`, ordered by id; at most `limit`.
    pub fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<Entry>> {
        pg_dispatch!(self, p => p.list(status, limit));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.tx(|tx| {
            let mut st = tx.prepare(&format!(
                "SELECT {COLS} FROM entries WHERE (?1 IS NULL OR status = ?1) ORDER BY id LIMIT ?2"
            ))?;
            let v = st
                .query_map(params![status.map(|s| s.as_str()), limit], row_to_entry)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })
    }
}

/// True for a `postgres://` / `postgresql://` URL.
pub(crate) fn is_database_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}
