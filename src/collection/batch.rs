//! The write path of a [`super::Collection`]: the exclusive section on the
//! collection's file (FIFO queue in this process, `flock` across processes)
//! → one `BEGIN IMMEDIATE` transaction (retried on BUSY until the SQLite
//! retry deadline) → the closure → COMMIT → only then the cache. With group
//! commit ([`crate::group`]) the transaction is shared by the writers queued
//! in this process, each in its own `SAVEPOINT` ([`CollectionBatch`]); without
//! it (or with the sidecar lock protocol) the same batch holds one writer.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cache::Change;
use super::tx::Tx;
use super::{Collection, Core};
use crate::error::Error;
use crate::group::{duplicate, Batch};
use crate::writer::Writer;

/// Runs a parameterless statement through the statement cache.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// An open transaction on the collection's write connection, shared by the
/// members of one group-commit batch.
pub(crate) struct CollectionBatch {
    core: Arc<Core>,
    /// Cache changes of the members that succeeded.
    pending: Vec<Change>,
    /// The transaction is unusable; every member gets this error.
    failed: Option<Error>,
    /// The last failed member's SQLite error (handed to every member when
    /// SQLite rolled the whole transaction back because of it).
    last_error: Option<Error>,
}

/// How one member of a [`CollectionBatch`] is undone.
pub(crate) enum Undo {
    /// The batch's first member: a failure rolls back the whole (otherwise
    /// empty) transaction.
    Transaction,
    /// `SAVEPOINT lockstore_member`.
    Savepoint,
}

impl CollectionBatch {
    fn fail(&mut self, e: Error) {
        self.failed.get_or_insert(e);
    }

    fn aborted(&self, why: &str) -> Error {
        Error::sqlite(
            "group commit",
            &self.core.path,
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some(why.into()),
            ),
        )
    }

    /// SQLite may roll the whole transaction back by itself (SQLITE_FULL,
    /// SQLITE_IOERR): the earlier members' changes are gone too.
    fn check_rolled_back(&mut self, conn: &Connection) {
        if conn.is_autocommit() && self.failed.is_none() {
            let e = match self.last_error.take() {
                Some(e) => e,
                None => self.aborted("the group-commit transaction was rolled back by SQLite"),
            };
            self.fail(e);
        }
    }
}

impl Batch for CollectionBatch {
    type Undo = Undo;
    type Delivery = ();

    fn savepoint(&mut self, index: usize) -> Result<Undo, Error> {
        if index == 0 {
            return Ok(Undo::Transaction);
        }
        let core = self.core.clone();
        let conn = core.write_conn();
        match run_cached(&conn, "SAVEPOINT lockstore_member") {
            Ok(()) => Ok(Undo::Savepoint),
            Err(e) => {
                let e = Error::sqlite("savepoint", &core.path, e);
                self.fail(duplicate(&e));
                Err(e)
            }
        }
    }

    fn keep(&mut self, undo: Undo, _: usize) {
        let core = self.core.clone();
        let conn = core.write_conn();
        if let Undo::Savepoint = undo {
            if let Err(e) = run_cached(&conn, "RELEASE lockstore_member") {
                self.fail(Error::sqlite("release savepoint", &core.path, e));
            }
        }
        self.check_rolled_back(&conn);
    }

    fn undo(&mut self, undo: Undo, _: usize) {
        let core = self.core.clone();
        let conn = core.write_conn();
        if !conn.is_autocommit() {
            let r = match undo {
                Undo::Transaction => run_cached(&conn, "ROLLBACK"),
                Undo::Savepoint => run_cached(&conn, "ROLLBACK TO lockstore_member")
                    .and_then(|()| run_cached(&conn, "RELEASE lockstore_member")),
            };
            if let Err(e) = r {
                self.fail(Error::sqlite("roll back member", &core.path, e));
            }
        }
        if let Undo::Transaction = undo {
            let e = self.aborted("the batch's first writer failed; nothing to commit");
            self.fail(e);
        }
        self.check_rolled_back(&conn);
    }

    fn accepts_more(&self) -> bool {
        self.failed.is_none()
    }

    fn close(self, w: &Writer, _committed: usize) -> Result<BTreeMap<usize, ()>, Error> {
        let core = self.core;
        let conn = core.write_conn();
        let r = match self.failed {
            Some(f) => Err(f),
            None => run_cached(&conn, "COMMIT").map_err(|e| Error::sqlite("commit", w.path(), e)),
        };
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(path = %w.path().display(), error = %e, "rollback of a failed commit failed");
            }
        }
        drop(conn);
        if r.is_ok() {
            if let Some(c) = &core.cache {
                super::relock(c).apply(self.pending);
            }
        }
        r.map(|()| BTreeMap::new())
    }
}

impl<V: Serialize + DeserializeOwned> Collection<V> {
    /// Opens a batch (the engine holds the OS lock): `BEGIN IMMEDIATE`,
    /// retried on BUSY (a writer outside lockstore) until the retry deadline.
    fn begin_batch(&self) -> Result<CollectionBatch, Error> {
        let core = &self.core;
        let conn = core.write_conn();
        let until = std::time::Instant::now() + core.sqlite.retry_deadline;
        let mut attempt = 0u32;
        loop {
            match run_cached(&conn, "BEGIN IMMEDIATE") {
                Ok(()) => break,
                Err(e) if crate::sqlite::is_busy(&e) && std::time::Instant::now() < until => {
                    attempt += 1;
                    tracing::debug!(path = %core.path.display(), attempt, "database busy; retrying BEGIN IMMEDIATE");
                    crate::sqlite::busy_pause(attempt);
                }
                Err(e) => return Err(Error::sqlite("begin transaction on", &core.path, e)),
            }
        }
        Ok(CollectionBatch {
            core: core.clone(),
            pending: Vec::new(),
            failed: None,
            last_error: None,
        })
    }

    /// Runs one member `f` on the open batch `b` (on the write connection).
    fn member<R, E>(
        &self,
        b: &mut CollectionBatch,
        f: impl FnOnce(&mut Tx<'_, V>) -> Result<R, E>,
    ) -> Result<R, E> {
        let core = &self.core;
        let conn = core.write_conn();
        let mut tx = Tx {
            conn: &conn,
            path: &core.path,
            encoding: core.encoding,
            now_ms: crate::proc::now_ms(),
            changes: Vec::new(),
            last_error: None,
            _v: PhantomData,
        };
        let r = f(&mut tx);
        match &r {
            Ok(_) => {
                if core.cache.is_some() {
                    b.pending.append(&mut tx.changes);
                }
            }
            Err(_) => {
                if let Some(e) = tx.last_error.take() {
                    b.last_error = Some(e);
                }
            }
        }
        r
    }

    /// The write path: `f` in a transaction, grouped with the writers queued
    /// in this process when group commit is on; returns after the COMMIT
    /// that contains `f`'s changes.
    pub(super) fn write<R, E>(&self, f: impl FnOnce(&mut Tx<'_, V>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<Error>,
    {
        let _span = tracing::debug_span!("collection_write", path = %self.core.path.display(), pid = std::process::id()).entered();
        if self.opts.group_commit.enabled && self.writer.supports_group_commit() {
            let (v, ()) = self.group.run(
                &self.writer,
                &self.opts.group_commit,
                || self.begin_batch().map_err(E::from),
                |b, _, _| self.member(b, f),
            )?;
            return Ok(v);
        }
        // One writer per transaction: the same batch, holding one member.
        self.writer.run(|_ctx| {
            let mut b = self.begin_batch()?;
            let undo = b.savepoint(0)?;
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.member(&mut b, f)));
            if matches!(r, Ok(Ok(_))) {
                b.keep(undo, 0);
            } else {
                b.undo(undo, 0);
            }
            match r {
                Ok(Ok(v)) => {
                    b.close(&self.writer, 1)?;
                    Ok(v)
                }
                Ok(Err(e)) => {
                    let _ = b.close(&self.writer, 0);
                    Err(e)
                }
                Err(p) => {
                    let _ = b.close(&self.writer, 0);
                    std::panic::resume_unwind(p)
                }
            }
        })
    }
}
