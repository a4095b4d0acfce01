//! Typed keyed collections in one SQLite file (feature `sqlite`):
//! [`Collection<V>`].
//!
//! A [`crate::JsonStore`] rewrites its whole document on every update, so an
//! update costs O(size of the document). A collection keeps each record as a
//! row of one SQLite table (key, value as JSON text or JSONB, a version per
//! record, the time of its last change; see [`schema`]), so an update costs
//! one small transaction whatever the number of records, and a daemon and its
//! CLI can update the same file at once.
//!
//! What lockstore adds to SQLite here is what it adds everywhere:
//! * Writes go through the store's writer: the in-process FIFO queue, the
//!   `flock` on `<file>.lock`, then one `BEGIN IMMEDIATE` transaction
//!   ([`crate::sqlite`] conventions: WAL verified, busy timeout, retry on
//!   BUSY, migrations, foreign and too-new databases refused untouched).
//!   Writers queued in one process share one transaction and one COMMIT
//!   (group commit through the shared engine, [`crate::group`]; each writer
//!   in its own `SAVEPOINT`, so an error or panic undoes only its own
//!   changes). No caller returns before the COMMIT containing its change.
//! * A record whose value does not decode is [`crate::Error::Corrupt`]
//!   naming the file and the key; it is never skipped (a scan stops there)
//!   and never overwritten by an update.
//! * Reads use a second connection (WAL: readers never wait for the writer
//!   and never see an uncommitted batch). An optional cache
//!   ([`CollectionOptions::cache`]) stays coherent across processes through
//!   `PRAGMA data_version` ([`cache`]).
//!
//! Migration from a JSON document: [`Collection::import_json`] and
//! [`Collection::export_json`] ([`migrate`]). See docs/collections.md.

mod batch;
mod cache;
mod migrate;
mod options;
mod read;
mod scan;
mod schema;
mod tx;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::group::{Group, GroupCommitStats};
use crate::writer::Writer;

use batch::CollectionBatch;
use cache::Cache;

pub use migrate::ImportReport;
pub use options::{CollectionOptions, Encoding};
pub use scan::Scan;
pub use tx::Tx;

/// One record as stored (feature `sqlite`): what [`Collection::get_record`]
/// and [`Collection::scan_prefix`] / [`Collection::scan_range`] return.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Record<V> {
    /// The key.
    pub key: String,
    /// The decoded value.
    pub value: V,
    /// 1 when inserted, +1 on every change (an update that changes nothing
    /// does not count).
    pub version: i64,
    /// Unix ms of the last change (the writer's clock).
    pub updated_ms: i64,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a collection handle shares with its open group-commit batch.
pub(crate) struct Core {
    path: PathBuf,
    sqlite: crate::sqlite::SqliteOptions,
    encoding: Encoding,
    /// Every write, and the `data_version` check of the cache.
    write: Mutex<Connection>,
    /// Every read (`query_only`).
    read: Mutex<Connection>,
    cache: Option<Mutex<Cache>>,
}

impl Core {
    fn write_conn(&self) -> MutexGuard<'_, Connection> {
        relock(&self.write)
    }
    fn read_conn(&self) -> MutexGuard<'_, Connection> {
        relock(&self.read)
    }
}

/// A typed keyed collection: records of `V` (any serde type) keyed by
/// string, stored as rows of one SQLite file (feature `sqlite`). `Send +
/// Sync`; share it with `Arc`, or open it again (in this process or another):
/// every handle of one file shares its FIFO queue and `flock`.
///
/// * [`Collection::get`], [`Collection::get_record`], [`Collection::len`],
///   [`Collection::scan_prefix`], [`Collection::scan_range`]: reads of the
///   last committed state, on the read connection.
/// * [`Collection::insert`], [`Collection::remove`], [`Collection::update`]
///   and [`Collection::transaction`] (several records at once): the write
///   path (queue → `flock` → `BEGIN IMMEDIATE` → COMMIT, group commit on by
///   default). `update` is a load → modify → save of one record with no
///   lost update across threads and processes.
///
/// Durability: [`crate::Durability::Full`] by default (`synchronous=FULL`:
/// an acknowledged write survives power loss); `Process` survives a crash
/// of the process only.
///
/// ```
/// # fn main() -> Result<(), lockstore::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// use lockstore::{Collection, CollectionOptions};
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Session { turns: u64 }
///
/// let sessions: Collection<Session> =
///     Collection::open(dir.path().join("sessions.sqlite"), CollectionOptions::default())?;
/// sessions.insert("s1", &Session { turns: 0 })?;
/// sessions.update("s1", |s| if let Some(s) = s { s.turns += 1 })?;
/// assert_eq!(sessions.get("s1")?, Some(Session { turns: 1 }));
/// # Ok(())
/// # }
/// ```
pub struct Collection<V> {
    core: Arc<Core>,
    writer: Writer,
    opts: CollectionOptions,
    group: Arc<Group<CollectionBatch, ()>>,
    _v: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for Collection<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("path", &self.core.path)
            .field("opts", &self.opts)
            .finish()
    }
}

impl<V: Serialize + DeserializeOwned> Collection<V> {
    /// Opens (creating if needed) the collection at `path`: the SQLite file
    /// is created 0600 in a 0700 directory, switched to WAL and migrated
    /// (see [`crate::sqlite::open`]).
    ///
    /// Errors: [`Error::InvalidPath`]; [`Error::Corrupt`] for a foreign
    /// database (created by another program) and [`Error::SchemaTooNew`]
    /// for a newer one, both left untouched; [`Error::Sqlite`] naming the
    /// file (not a database, cannot open); [`Error::Io`].
    pub fn open(path: impl AsRef<Path>, opts: CollectionOptions) -> Result<Self> {
        let path = path.as_ref();
        let write = crate::sqlite::open(path, &opts.sqlite, schema::MIGRATIONS)?;
        let read = crate::sqlite::open(path, &opts.sqlite, schema::MIGRATIONS)?;
        read.execute_batch("PRAGMA query_only=1")
            .map_err(|e| Error::sqlite("configure the read connection of", path, e))?;
        let writer = Writer::open(path, opts.lock.clone())?;
        Ok(Collection {
            core: Arc::new(Core {
                path: path.to_path_buf(),
                sqlite: opts.sqlite.clone(),
                encoding: opts.encoding,
                write: Mutex::new(write),
                read: Mutex::new(read),
                cache: opts.cache.map(|cap| Mutex::new(Cache::new(cap))),
            }),
            writer,
            opts,
            group: Group::new(),
            _v: PhantomData,
        })
    }

    /// The collection's file, as given to [`Collection::open`].
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// The options.
    pub fn options(&self) -> &CollectionOptions {
        &self.opts
    }

    /// Test hook (feature `testing`): writers of this process queued on the
    /// collection's file (the slot holder and the waiters).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn queued_writers(&self) -> usize {
        self.writer.queued()
    }

    /// Group-commit statistics of this handle (see [`GroupCommitStats`]).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.group.stats()
    }

    /// Inserts or replaces the record `key` (see [`Tx::insert`]).
    ///
    /// Errors: lock errors ([`Error::LockTimeout`], [`Error::Reentrant`]),
    /// [`Error::Serialize`], [`Error::Sqlite`] (e.g. `SQLITE_FULL`:
    /// [`Error::is_no_space`]).
    pub fn insert(&self, key: &str, value: &V) -> Result<()> {
        self.write(|tx| tx.insert(key, value))
    }

    /// Removes the record `key`; returns whether it existed.
    ///
    /// Errors: as [`Collection::insert`].
    pub fn remove(&self, key: &str) -> Result<bool> {
        self.write(|tx| tx.remove(key))
    }

    /// Load → `f` → save of the record `key` in one transaction under the
    /// writer: no lost update across threads and processes. `f` gets
    /// `Some(&mut value)`, or `None` when there is no such record (nothing
    /// is written then; use [`Collection::transaction`] to insert or remove
    /// depending on the value). Written only if the encoding changed.
    ///
    /// Errors: [`Error::Corrupt`] naming the file and the key (the stored
    /// value does not decode; the record is left untouched), and those of
    /// [`Collection::insert`].
    pub fn update<R>(&self, key: &str, f: impl FnOnce(Option<&mut V>) -> R) -> Result<R> {
        self.write(|tx| tx.update(key, f))
    }

    /// Runs `f` in one transaction: every change `f` makes through the
    /// [`Tx`] is committed together, or — when `f` returns an error or
    /// panics — none is (with group commit only this closure's changes are
    /// rolled back; the other queued writers commit). Returns `f`'s value
    /// after the COMMIT.
    ///
    /// ```
    /// # fn main() -> Result<(), lockstore::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let c: lockstore::Collection<i64> =
    /// #     lockstore::Collection::open(dir.path().join("c.sqlite"), Default::default())?;
    /// # c.insert("a", &5)?;
    /// // Move 3 from a to b, atomically.
    /// c.transaction(|tx| {
    ///     let a = tx.get("a")?.unwrap_or(0);
    ///     let b = tx.get("b")?.unwrap_or(0);
    ///     tx.insert("a", &(a - 3))?;
    ///     tx.insert("b", &(b + 3))?;
    ///     Ok::<_, lockstore::Error>(())
    /// })?;
    /// # assert_eq!((c.get("a")?, c.get("b")?), (Some(2), Some(3)));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors: `f`'s error as is; lock and SQLite errors (see
    /// [`Collection::insert`]) converted with `E: From<lockstore::Error>`.
    pub fn transaction<R, E>(
        &self,
        f: impl FnOnce(&mut Tx<'_, V>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E>
    where
        E: From<Error>,
    {
        self.write(f)
    }
}
