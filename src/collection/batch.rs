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

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cache::Change;
use super::tx::Tx;
use super::{Collection, Core};
use crate::error::Error;
use crate::group::Batch;
use crate::sqlite::{MemberTx, MemberUndo};
use crate::writer::Writer;

/// An open transaction on the collection's write connection, shared by the
/// members of one group-commit batch, with the savepoint mechanics every
/// SQLite store shares ([`crate::sqlite::MemberTx`]).
pub(crate) struct CollectionBatch {
    core: Arc<Core>,
    /// Cache changes of the members that succeeded.
    pending: Vec<Change>,
    tx: MemberTx,
}

impl Batch for CollectionBatch {
    type Undo = MemberUndo;
    type Delivery = ();

    fn savepoint(&mut self, index: usize) -> Result<MemberUndo, Error> {
        let core = self.core.clone();
        let conn = core.write_conn();
        self.tx.savepoint(&conn, index)
    }

    fn keep(&mut self, undo: MemberUndo, _: usize) {
        let core = self.core.clone();
        let conn = core.write_conn();
        self.tx.keep(&conn, undo);
    }

    fn undo(&mut self, undo: MemberUndo, _: usize) {
        let core = self.core.clone();
        let conn = core.write_conn();
        self.tx.undo(&conn, undo);
    }

    fn accepts_more(&self) -> bool {
        self.tx.accepts_more()
    }

    fn close(self, w: &Writer, _committed: usize) -> Result<BTreeMap<usize, ()>, Error> {
        let core = self.core;
        let conn = core.write_conn();
        let r = self.tx.commit(&conn, w.path());
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
        let tx = MemberTx::begin(&conn, &core.path, core.sqlite.retry_deadline)?;
        Ok(CollectionBatch {
            core: core.clone(),
            pending: Vec::new(),
            tx,
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
                    b.tx.last_error = Some(e);
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
