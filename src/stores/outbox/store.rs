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
    conn: rusqlite::Connection,
    path: PathBuf,
    opts: OutboxOptions,
}

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
            conn,
            path: path.to_path_buf(),
            opts,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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
        sqlite::immediate(&self.conn, &self.path, &self.opts.sqlite, f).map_err(|e| match e {
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
