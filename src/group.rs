//! The group-commit engine shared by the JSON store ([`crate::json`]) and the
//! task ledger ([`crate::stores::tasks`]).
//!
//! A batch is opened by the writer at the head of a store's FIFO queue; each
//! queued writer in turn runs its own mutation on its own thread inside the
//! batch and, when more writers are queued, leaves the batch open for the next
//! one. The writer that finds no successor (or reaches
//! [`crate::json::GroupCommit::max_batch`], or finds the batch unusable) closes
//! it: one durable save / one COMMIT for every member. Members wait on
//! [`BatchShared`] for the outcome, so no caller returns before the save that
//! contains its change. A member's error or panic undoes only its own change
//! ([`Batch::savepoint`] / [`Batch::undo`]) and reaches only its caller.
//!
//! [`Group::run`] holds that handoff once; a store supplies only its batch
//! type ([`Batch`]: open/load, savepoint, keep, undo, save/commit) and the
//! closures that begin a batch and apply one member. The open batch lives,
//! typed, in the store's [`Group`]; the per-path
//! [`crate::writer::StoreEntry`] (shared by every writer of the path in this
//! process) records only *which* group has a batch open, as a [`Closer`], so
//! any slot holder — [`crate::writer::Writer::run`], another store handle of
//! the same path — can close it before it touches the store.
//!
//! If the successor a member counted on gives up (deadline) after the batch was
//! left open, nobody would close it: [`BatchShared::wait`] therefore re-checks
//! every 10 ms whether the queue is free and, if so, takes the slot and closes
//! the open batch itself.
//!
//! Errors keep their OS error: the closer's error is handed to every member
//! through [`duplicate`], which rebuilds it with the same `errno` / SQLite
//! code, so [`Error::is_no_space`] holds for every member of a batch that hit
//! a full disk.
//!
//! Synchronization of [`BatchShared`] uses the [`crate::sync`] shim so the
//! handoff is modelled with shuttle and loom (loom-tests/, `batch_handoff`).
//! This module is public only for those models (`--cfg loom` / `--cfg
//! shuttle`).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::json::GroupCommit;
use crate::lock::Acquired;
use crate::sync::{self, Condvar, Mutex};
use crate::writer::{Exclusive, Writer};

/// How often a waiting member re-checks for an abandoned open batch: 10 ms.
pub const ABANDONED_POLL: Duration = Duration::from_millis(10);

/// Group-commit statistics: how many batches were saved / committed and how
/// many updates (mutations) they held; the mean batch size is the ratio.
/// Returned by `JsonStore::group_commit_stats` and
/// `TaskRegistry::group_commit_stats` (one store handle).
///
/// Only batches whose save / COMMIT succeeded and that held at least one
/// successful update count; an update outside group commit counts as
/// neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Batches saved (JSON) or committed (SQLite).
    pub batches: u64,
    /// Successful updates in those batches.
    pub batched_updates: u64,
}

/// Counters behind [`GroupCommitStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCounter {
    batches: AtomicU64,
    updates: AtomicU64,
}

impl StatsCounter {
    pub(crate) const fn new() -> Self {
        StatsCounter {
            batches: AtomicU64::new(0),
            updates: AtomicU64::new(0),
        }
    }
    fn add(&self, updates: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.updates.fetch_add(updates as u64, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            batched_updates: self.updates.load(Ordering::Relaxed),
        }
    }
}

/// Completion of one group-commit batch, shared by its members: the closer
/// stores the outcome `O` once; every member waits for it.
pub struct BatchShared<O> {
    done: Mutex<Option<O>>,
    cv: Condvar,
}

impl<O> Default for BatchShared<O> {
    fn default() -> Self {
        BatchShared {
            done: Mutex::new(None),
            cv: Condvar::new(),
        }
    }
}

impl<O> BatchShared<O> {
    /// Records the batch outcome and wakes every member.
    #[cfg_attr(not(any(loom, shuttle)), allow(dead_code))]
    pub fn finish(&self, outcome: O) {
        *sync::lock(&self.done) = Some(outcome);
        self.cv.notify_all();
    }

    /// Whether the batch has been closed.
    #[allow(dead_code)]
    pub fn is_done(&self) -> bool {
        sync::lock(&self.done).is_some()
    }

    /// Waits until the batch is closed, then gives `take` the outcome. Every
    /// [`ABANDONED_POLL`] without an outcome it calls `close_if_abandoned`,
    /// which must close the open batch if the store's queue is free (the
    /// writer the batch was left open for gave up). Under loom (no time) the
    /// wait is untimed.
    pub fn wait_with<R>(
        &self,
        mut close_if_abandoned: impl FnMut() -> bool,
        take: impl FnOnce(&mut O) -> R,
    ) -> R {
        let mut g = sync::lock(&self.done);
        loop {
            if let Some(o) = g.as_mut() {
                return take(o);
            }
            g = sync::timed_wait(&self.cv, &self.done, g, ABANDONED_POLL);
            if g.is_none() {
                drop(g);
                close_if_abandoned();
                g = sync::lock(&self.done);
            }
        }
    }

    /// [`BatchShared::wait_with`] for a batch of `w`'s store.
    pub(crate) fn wait<R>(&self, w: &Writer, take: impl FnOnce(&mut O) -> R) -> R {
        self.wait_with(|| close_abandoned(w), take)
    }
}

/// Closes `w`'s open batch if the queue is free (no writer holds or waits for
/// the slot). Returns whether it took the slot.
pub(crate) fn close_abandoned(w: &Writer) -> bool {
    match w.entry().fifo.enter().try_now() {
        Ok(slot) => {
            w.close_open_batch();
            drop(slot);
            true
        }
        Err(_) => false,
    }
}

/// What one store's batch does; [`Group::run`] does the rest. Called only by
/// the holder of the store's queue slot, with the OS lock held.
pub(crate) trait Batch: Send + Sized + 'static {
    /// What [`Batch::undo`] needs to roll back one member (JSON: a copy of
    /// the document; SQLite: a `SAVEPOINT`).
    type Undo;
    /// What each successful member receives when the batch closes (the task
    /// ledger: its events).
    type Delivery: Send + Default + 'static;

    /// Prepares member `index` (0 = the batch's first). An error fails that
    /// member only (the batch may mark itself unusable).
    fn savepoint(&mut self, index: usize) -> Result<Self::Undo, Error>;
    /// Member `index` succeeded: keep its changes. A failure here must make
    /// [`Batch::accepts_more`] false and [`Batch::close`] fail.
    fn keep(&mut self, undo: Self::Undo, index: usize);
    /// Member `index` failed or panicked: undo its changes only. A failure
    /// here must make [`Batch::accepts_more`] false and [`Batch::close`] fail.
    fn undo(&mut self, undo: Self::Undo, index: usize);
    /// Whether later members may still join.
    fn accepts_more(&self) -> bool {
        true
    }
    /// Saves / commits the changes of the `committed` successful members
    /// (nothing when 0) and returns each member's delivery by index. The
    /// engine releases the OS lock afterwards.
    fn close(self, w: &Writer, committed: usize) -> Result<BTreeMap<usize, Self::Delivery>, Error>;
}

/// Closes a group's open batch; what the per-path slot
/// ([`crate::writer::StoreEntry`]) holds while a batch is left open.
pub(crate) trait Closer: Send + Sync {
    /// Saves / commits the open batch, releases the OS lock and tells its
    /// members. Slot holder only.
    fn close_open(&self, w: &Writer);
}

/// Outcome every member of a batch waits for.
type Outcome<D> = Result<BTreeMap<usize, D>, Error>;

struct Open<B, D> {
    batch: B,
    acquired: Acquired,
    /// Members that ran (any outcome).
    ran: usize,
    /// Members that succeeded.
    committed: usize,
    shared: Arc<BatchShared<Outcome<D>>>,
}

/// One store handle's group commit: its open batch (if any) and statistics.
/// `D` is `B`'s [`Batch::Delivery`] (a parameter so a store can name the
/// group without `B`'s bounds).
pub(crate) struct Group<B, D> {
    open: std::sync::Mutex<Option<Open<B, D>>>,
    stats: StatsCounter,
}

impl<B, D> std::fmt::Debug for Group<B, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("stats", &self.stats.get())
            .finish()
    }
}

fn relock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B: Batch> Group<B, B::Delivery> {
    /// A group with no open batch and zeroed statistics.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Group {
            open: std::sync::Mutex::new(None),
            stats: StatsCounter::new(),
        })
    }

    /// This group's statistics.
    pub(crate) fn stats(&self) -> GroupCommitStats {
        self.stats.get()
    }

    /// Runs one member through group commit on `w`'s store: queue slot →
    /// join the batch this group left open, or close another group's open
    /// batch and `begin` a new one (with the OS lock taken) → `member` on this
    /// thread between [`Batch::savepoint`] and [`Batch::keep`] /
    /// [`Batch::undo`] → leave the batch open for the next queued writer or
    /// close it → wait for the close. Returns `member`'s value and its
    /// delivery once the batch containing it is saved / committed.
    ///
    /// Errors: [`Error::Reentrant`], [`Error::LockTimeout`] and lock errors,
    /// `begin`'s and `member`'s errors (to this caller only), and the batch's
    /// save / commit error (to every successful member).
    pub(crate) fn run<R, E>(
        self: &Arc<Self>,
        w: &Writer,
        gc: &GroupCommit,
        begin: impl FnOnce() -> Result<B, E>,
        member: impl FnOnce(&mut B, usize, &mut Exclusive<'_>) -> Result<R, E>,
    ) -> Result<(R, B::Delivery), E>
    where
        E: From<Error>,
    {
        if w.held_by_this_thread() {
            return Err(Error::Reentrant {
                path: w.path().to_path_buf(),
            }
            .into());
        }
        let start = Instant::now();
        let deadline = crate::queue::deadline_after(w.options().deadline);
        let span = w.lock_wait_span();
        let slot = {
            let _entered = span.enter();
            w.slot(start, deadline)?
        };
        self.run_slotted(w, gc, slot, start, deadline, &span, begin, member)
    }

    /// [`Group::run`] for a caller that already holds `w`'s queue slot (won by
    /// an async task and moved to this thread, see [`crate::tokio`]): the
    /// same engine from "join or begin the batch" on. `start` and `deadline`
    /// are those of the queue wait; the OS lock wait is recorded in `span`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_slotted<S, R, E>(
        self: &Arc<Self>,
        w: &Writer,
        gc: &GroupCommit,
        slot: S,
        start: Instant,
        deadline: Instant,
        span: &tracing::Span,
        begin: impl FnOnce() -> Result<B, E>,
        member: impl FnOnce(&mut B, usize, &mut Exclusive<'_>) -> Result<R, E>,
    ) -> Result<(R, B::Delivery), E>
    where
        E: From<Error>,
    {
        let entered = span.enter();
        let left_open = relock(&w.entry().batch).take();
        let mine = match left_open {
            Some(c) if self.is(&c) => relock(&self.open).take(),
            Some(other) => {
                other.close_open(w);
                None
            }
            None => None,
        };
        let mut open = match mine {
            Some(o) => o,
            None => {
                let acquired = w.os_lock(deadline)?;
                match begin() {
                    Ok(batch) => Open {
                        batch,
                        acquired,
                        ran: 0,
                        committed: 0,
                        shared: Arc::new(BatchShared::default()),
                    },
                    Err(e) => {
                        w.os_unlock(acquired.record);
                        return Err(e);
                    }
                }
            }
        };
        let waited = start.elapsed();
        span.record("waited_ms", waited.as_millis() as u64);
        drop(entered);

        // Run this member on this thread; undo only its own change on failure.
        let index = open.ran;
        open.ran += 1;
        let outcome = {
            let _mark = w.mark_held();
            match open.batch.savepoint(index) {
                Err(e) => Ok(Err(E::from(e))),
                Ok(undo) => {
                    let Open {
                        batch, acquired, ..
                    } = &mut open;
                    let mut ctx = w.context(acquired, waited);
                    let r = catch_unwind(AssertUnwindSafe(|| member(batch, index, &mut ctx)));
                    if matches!(r, Ok(Ok(_))) {
                        open.batch.keep(undo, index);
                    } else {
                        open.batch.undo(undo, index);
                    }
                    r
                }
            }
        };
        if matches!(outcome, Ok(Ok(_))) {
            open.committed += 1;
        }

        // Leave the batch open for the next queued writer, or close it now.
        let mut successors = w.entry().fifo.len() > 1;
        if !successors && !gc.max_wait.is_zero() && open.ran < gc.max_batch {
            let until = Instant::now() + gc.max_wait;
            while !successors && Instant::now() < until {
                std::thread::yield_now();
                successors = w.entry().fifo.len() > 1;
            }
        }
        let shared = open.shared.clone();
        if successors && open.ran < gc.max_batch && open.batch.accepts_more() {
            *relock(&self.open) = Some(open);
            let closer: Arc<dyn Closer> = self.clone();
            *relock(&w.entry().batch) = Some(closer);
        } else {
            self.close(open, w);
        }
        drop(slot);
        match outcome {
            Ok(Ok(v)) => {
                let delivery = shared.wait(w, |o| match o {
                    Ok(m) => Ok(m.remove(&index).unwrap_or_default()),
                    Err(e) => Err(duplicate(e)),
                })?;
                Ok((v, delivery))
            }
            Ok(Err(e)) => Err(e),
            Err(p) => resume_unwind(p),
        }
    }

    /// Whether `c` is this group.
    fn is(self: &Arc<Self>, c: &Arc<dyn Closer>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(self))
    }

    fn close(&self, open: Open<B, B::Delivery>, w: &Writer) {
        let committed = open.committed;
        let r = open.batch.close(w, committed);
        w.os_unlock(open.acquired.record);
        match &r {
            Ok(_) if committed > 0 => {
                self.stats.add(committed);
            }
            Ok(_) => {}
            Err(e) if committed > 0 => {
                tracing::warn!(path = %w.path().display(), members = open.ran, error = %e, "group commit failed; every member gets the error");
            }
            Err(_) => {}
        }
        open.shared.finish(r);
    }
}

impl<B: Batch> Closer for Group<B, B::Delivery> {
    fn close_open(&self, w: &Writer) {
        let open = relock(&self.open).take();
        if let Some(open) = open {
            self.close(open, w);
        }
    }
}

/// Rebuilds `e` for another member of the batch: same variant, path and
/// fields; an I/O error keeps its OS error code (or its kind and message), a
/// SQLite error its primary and extended result codes and message.
pub(crate) fn duplicate(e: &Error) -> Error {
    fn io(e: &std::io::Error) -> std::io::Error {
        match Error::os_code_of(e) {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        }
    }
    match e {
        Error::LockTimeout {
            path,
            waited,
            holder,
        } => Error::LockTimeout {
            path: path.clone(),
            waited: *waited,
            holder: holder.clone(),
        },
        Error::UnsupportedFilesystem { path, fs } => Error::UnsupportedFilesystem {
            path: path.clone(),
            fs,
        },
        Error::LockUnsupported { path, source } => Error::LockUnsupported {
            path: path.clone(),
            source: io(source),
        },
        Error::Reentrant { path } => Error::Reentrant { path: path.clone() },
        Error::Corrupt { path, reason } => Error::Corrupt {
            path: path.clone(),
            reason: reason.clone(),
        },
        Error::Symlink { path } => Error::Symlink { path: path.clone() },
        Error::InvalidPath { path, reason } => Error::InvalidPath {
            path: path.clone(),
            reason,
        },
        Error::Serialize { path, source } => Error::Serialize {
            path: path.clone(),
            source: <serde_json::Error as serde::ser::Error>::custom(source),
        },
        #[cfg(feature = "sqlite")]
        Error::Sqlite { op, path, source } => Error::Sqlite {
            op,
            path: path.clone(),
            source: match source {
                rusqlite::Error::SqliteFailure(code, msg) => {
                    rusqlite::Error::SqliteFailure(*code, msg.clone())
                }
                other => rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(other.to_string()),
                ),
            },
        },
        #[cfg(feature = "sqlite")]
        Error::SchemaTooNew {
            path,
            found,
            supported,
        } => Error::SchemaTooNew {
            path: path.clone(),
            found: *found,
            supported: *supported,
        },
        Error::LockStale { path, holder } => Error::LockStale {
            path: path.clone(),
            holder: holder.clone(),
        },
        Error::LockLost { path } => Error::LockLost { path: path.clone() },
        Error::LockProtocolMismatch {
            path,
            found,
            wanted,
        } => Error::LockProtocolMismatch {
            path: path.clone(),
            found,
            wanted,
        },
        Error::Io { op, path, source } => Error::Io {
            op,
            path: path.clone(),
            source: io(source),
        },
        // A store layer's error never comes out of a batch's save or COMMIT;
        // kept total for the umbrella variants.
        #[allow(unreachable_patterns)]
        other => Error::Io {
            op: "group commit",
            path: other.path().map(Into::into).unwrap_or_default(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}
