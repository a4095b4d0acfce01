//! The writer: composes the in-process FIFO queue and the cross-process lock.
//!
//! [`run_exclusive`] takes, in order, the queue slot for the store's canonical path
//! (so at most one thread of this process goes on), then the OS lock on
//! `<store>.lock` (so at most one process goes on), runs the closure, and releases
//! both — by RAII, so also when the closure errors or panics. The OS lock is never
//! requested while holding the queue's internal mutex, only while holding the
//! slot. One lock file handle is kept per store per process while any writer or
//! [`Writer`] for it is alive.
//!
//! A nested exclusive section on the same path from the same thread returns
//! [`Error::Reentrant`] at once instead of deadlocking (openclaw's process-wide
//! re-entrant lock gave no exclusion between tasks of one process; lockstore does
//! not repeat that).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::atomic;
use crate::error::{Error, Result};
use crate::group::Closer;
use crate::lock::owner::{HolderInfo, OwnerRecord};
#[cfg(feature = "sidecar")]
use crate::lock::sidecar::{SidecarHeld, SidecarLock};
#[cfg(not(feature = "sidecar"))]
use no_sidecar::{SidecarHeld, SidecarLock};

/// Without feature `sidecar` the sidecar lock types are uninhabited: the
/// match arms below compile away.
#[cfg(not(feature = "sidecar"))]
mod no_sidecar {
    use crate::error::Result;
    use crate::lock::{Acquired, LockOptions};
    use std::time::Instant;

    #[derive(Debug)]
    pub(crate) enum SidecarLock {}
    #[derive(Debug)]
    pub(crate) enum SidecarHeld {}
    impl SidecarLock {
        pub(crate) fn lock(
            &mut self,
            _: &LockOptions,
            _: Instant,
        ) -> Result<(Acquired, SidecarHeld)> {
            match *self {}
        }
    }
    impl SidecarHeld {
        pub(crate) fn verify_still_held(&self) -> Result<()> {
            match *self {}
        }
        pub(crate) fn release(self) {
            match self {}
        }
    }
}
use crate::lock::{self, Acquired, LockFile, LockOptions, LockProtocol};
use crate::queue::{self, FifoQueue, Handle, Registry};

/// Per-store state shared by every writer of one process.
pub struct StoreEntry {
    pub(crate) fifo: FifoQueue,
    pub(crate) lock: Mutex<OsLock>,
    protocol: LockProtocol,
    /// The group whose batch the previous slot holder left open (see
    /// [`crate::group`]): that batch holds the OS lock and unsaved changes.
    /// Only the queue slot holder touches it. Flock protocol only.
    pub(crate) batch: Mutex<Option<std::sync::Arc<dyn Closer>>>,
}

impl std::fmt::Debug for StoreEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreEntry")
            .field("fifo", &self.fifo)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// The store's cross-process lock, by protocol ([`LockOptions::protocol`]).
#[derive(Debug)]
pub(crate) enum OsLock {
    Flock(LockFile),
    #[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
    Sidecar(SidecarLock),
}

impl queue::HasQueue for StoreEntry {
    fn queue(&self) -> &FifoQueue {
        &self.fifo
    }
}

type Reg = Registry<PathBuf, StoreEntry>;

/// An owned reference to a store's queue entry (keeps it registered).
pub(crate) type OwnedEntry = Handle<'static, PathBuf, StoreEntry>;

/// A store's queue slot that owns its reference to the queue: `'static`, so a
/// slot won by an async task can move into a blocking thread.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) type OwnedSlot = queue::QueueSlot<OwnedEntry>;

fn registry() -> &'static Reg {
    static R: OnceLock<Reg> = OnceLock::new();
    R.get_or_init(Registry::new)
}

/// Number of stores with a live queue in this process (drained queues are
/// freed). Feature `testing`.
#[cfg(any(test, feature = "testing"))]
pub fn live_queues() -> usize {
    registry().len()
}

thread_local! {
    static HELD: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// Canonical form of a store path: the parent directory is created (0700) and
/// canonicalized, and the file name re-appended, so aliases (symlinked parent,
/// `./a/../a`) name one store.
///
/// Errors: [`Error::InvalidPath`] (no file name), [`Error::Io`].
pub fn canonical_store_path(path: &Path) -> Result<PathBuf> {
    let (dir, name) = atomic::split(path)?;
    if name == ".." || name == "." {
        return Err(Error::InvalidPath {
            path: path.to_path_buf(),
            reason: "not a file name",
        });
    }
    lock::ensure_dir(dir)?;
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("canonicalize", dir, e))?;
    Ok(dir.join(name))
}

/// What the closure of an exclusive section may know about it.
#[derive(Debug)]
pub struct Exclusive<'a> {
    path: &'a Path,
    acquired: &'a Acquired,
    waited: Duration,
    sidecar: Option<&'a SidecarHeld>,
}

impl Exclusive<'_> {
    /// The canonical store path.
    pub fn path(&self) -> &Path {
        self.path
    }
    /// The owner record this holder wrote (token, generation — a fencing token
    /// that increases with every acquisition of this lock file).
    pub fn record(&self) -> &OwnerRecord {
        &self.acquired.record
    }
    /// The lock's generation number (strictly increasing per lock file).
    pub fn generation(&self) -> u64 {
        self.acquired.record.generation
    }
    /// True when this acquisition reclaimed the lock from a crashed holder.
    pub fn reclaimed(&self) -> bool {
        self.acquired.reclaimed
    }
    /// Total wait (queue + OS lock).
    pub fn waited(&self) -> Duration {
        self.waited
    }
    /// Fencing check before a commit: with the sidecar protocol, verifies that the
    /// sidecar still holds this holder's bytes (its payload bytes unchanged);
    /// with flock, always Ok (a kernel flock cannot be taken over).
    ///
    /// Errors: [`Error::LockLost`], [`Error::Io`].
    pub fn verify_still_held(&self) -> Result<()> {
        match self.sidecar {
            Some(h) => h.verify_still_held(),
            None => Ok(()),
        }
    }
}

/// A handle on one store's writer; keeps the store's queue and lock file handle
/// alive between sections. Cheap to create; `Send + Sync`.
pub struct Writer {
    path: PathBuf,
    lock_path: PathBuf,
    opts: LockOptions,
    handle: Handle<'static, PathBuf, StoreEntry>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

struct HeldMark;
impl HeldMark {
    fn new(path: &Path) -> Self {
        HELD.with(|h| h.borrow_mut().push(path.to_path_buf()));
        HeldMark
    }
}
impl Drop for HeldMark {
    fn drop(&mut self) {
        HELD.with(|h| {
            h.borrow_mut().pop();
        });
    }
}

struct OsLockGuard<'a> {
    lf: MutexGuard<'a, OsLock>,
    record: Option<OwnerRecord>,
    sidecar: Option<SidecarHeld>,
}
impl Drop for OsLockGuard<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.sidecar.take() {
            h.release();
        } else if let (Some(r), OsLock::Flock(lf)) = (self.record.take(), &mut *self.lf) {
            lf.unlock(r);
        }
    }
}

impl Writer {
    /// Opens the writer for the store file `path` (the file need not exist).
    ///
    /// Errors: [`Error::InvalidPath`], [`Error::Io`] creating or canonicalizing the
    /// parent directory; [`Error::LockProtocolMismatch`] when this process already
    /// has the store open with the other [`LockOptions::protocol`].
    pub fn open(path: impl AsRef<Path>, opts: LockOptions) -> Result<Self> {
        let path = canonical_store_path(path.as_ref())?;
        let lock_path = lock::lock_path_for(&path);
        let handle = registry().get(&path, || StoreEntry {
            fifo: FifoQueue::new(),
            lock: Mutex::new(match opts.protocol {
                LockProtocol::Flock => OsLock::Flock(LockFile::new(lock_path.clone())),
                #[cfg(feature = "sidecar")]
                LockProtocol::Sidecar => OsLock::Sidecar(SidecarLock::new(lock_path.clone())),
            }),
            protocol: opts.protocol,
            batch: Mutex::new(None),
        });
        let open_with = handle.protocol;
        if open_with != opts.protocol {
            return Err(Error::LockProtocolMismatch {
                path: lock_path,
                found: open_with.as_str(),
                wanted: opts.protocol.as_str(),
            });
        }
        Ok(Writer {
            path,
            lock_path,
            opts,
            handle,
        })
    }

    /// The canonical store path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file path (`<store>.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// The lock options.
    pub fn options(&self) -> &LockOptions {
        &self.opts
    }

    /// Test hook (feature `testing`): writers of this process in the store's
    /// FIFO queue (the slot holder and the waiters), to line threads up
    /// behind a holder without sleeping.
    #[cfg(any(test, feature = "testing"))]
    pub fn queued(&self) -> usize {
        self.handle.fifo.len()
    }

    /// Runs `f` inside the store's exclusive section (queue slot, then OS lock).
    ///
    /// Errors: [`Error::Reentrant`] if this thread already holds the section;
    /// [`Error::LockTimeout`] after [`LockOptions::deadline`]; lock and I/O errors
    /// from the OS lock ([`Error::UnsupportedFilesystem`], [`Error::LockUnsupported`], [`Error::Io`]); and whatever `f` returns. A panic in `f` releases
    /// both locks and resumes unwinding in the caller only.
    pub fn run<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Exclusive<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        if self.held_by_this_thread() {
            return Err(Error::Reentrant {
                path: self.path.clone(),
            }
            .into());
        }
        let start = Instant::now();
        let deadline = queue::deadline_after(self.opts.deadline);
        let span = self.lock_wait_span();
        let slot = {
            let _entered = span.enter();
            self.slot(start, deadline)?
        };
        self.run_slotted(slot, start, deadline, &span, f)
    }

    /// The rest of [`Writer::run`] once this store's queue slot is held (won
    /// by this thread, or by a task that moved it here): close a batch left
    /// open, the OS lock, `f`, release (OS lock, then the slot).
    pub(crate) fn run_slotted<S, T, E, F>(
        &self,
        slot: S,
        start: Instant,
        deadline: Instant,
        span: &tracing::Span,
        f: F,
    ) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Exclusive<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let entered = span.enter();
        let entry: &StoreEntry = &self.handle;
        self.close_open_batch();
        let mut lf = relock(&entry.lock);
        let (acquired, sidecar) = match &mut *lf {
            OsLock::Flock(l) => (l.lock(&self.opts, deadline)?, None),
            OsLock::Sidecar(s) => {
                let (a, h) = s.lock(&self.opts, deadline)?;
                (a, Some(h))
            }
        };
        let guard = OsLockGuard {
            lf,
            record: Some(acquired.record.clone()),
            sidecar,
        };
        let waited = start.elapsed();
        span.record("waited_ms", waited.as_millis() as u64);
        drop(entered);
        self.after_reclaim(&acquired);
        let _mark = HeldMark::new(&self.path);
        let mut ctx = Exclusive {
            path: &self.path,
            acquired: &acquired,
            waited,
            sidecar: guard.sidecar.as_ref(),
        };
        let out = f(&mut ctx);
        // Release order: OS lock first, then the queue slot.
        drop(guard);
        drop(slot);
        out
    }

    /// The `lock_wait` span of one acquisition (fields path, pid, waited_ms;
    /// waited_ms is recorded once the OS lock is held).
    pub(crate) fn lock_wait_span(&self) -> tracing::Span {
        tracing::debug_span!(
            "lock_wait",
            path = %self.path.display(),
            pid = std::process::id(),
            waited_ms = tracing::field::Empty
        )
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

// Building blocks for group commit (crate::json).
impl Writer {
    pub(crate) fn entry(&self) -> &StoreEntry {
        &self.handle
    }

    /// Whether this thread is inside an exclusive section of this store.
    pub(crate) fn held_by_this_thread(&self) -> bool {
        HELD.with(|h| h.borrow().iter().any(|p| p == &self.path))
    }

    pub(crate) fn mark_held(&self) -> impl Drop {
        HeldMark::new(&self.path)
    }

    /// Enters this store's FIFO queue with an owned ticket: the waiter (and
    /// its future, and the slot it resolves to) keeps the store's queue
    /// registered and can move across threads and tasks.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn enter_owned(&self) -> queue::QueueWaiter<OwnedEntry> {
        queue::enter(self.handle.clone())
    }

    /// [`Error::LockTimeout`] for a wait that began at `start`, naming the
    /// current holder if the lock file says who.
    pub(crate) fn lock_timeout(&self, start: Instant) -> Error {
        let holder = LockFile::read_record(&self.lock_path).map(|r| Box::new(HolderInfo::judge(r)));
        Error::LockTimeout {
            path: self.lock_path.clone(),
            waited: start.elapsed(),
            holder,
        }
    }

    /// Waits for this store's FIFO turn until `deadline`.
    pub(crate) fn slot(&self, start: Instant, deadline: Instant) -> Result<queue::Slot<'_>> {
        match self.handle.fifo.enter().wait_until(deadline) {
            Ok(s) => Ok(s),
            Err(queue::QueueTimeout) => Err(self.lock_timeout(start)),
        }
    }

    /// Closes a group-commit batch left open by the previous slot holder. Must be
    /// called by the slot holder.
    pub(crate) fn close_open_batch(&self) {
        let open = relock(&self.handle.batch).take();
        if let Some(group) = open {
            group.close_open(self);
        }
    }

    /// Takes the OS lock (slot holder only) without keeping the mutex guard.
    /// Group commit is offered for the flock protocol only (the sidecar
    /// protocol's lease and fencing checks are per section).
    pub(crate) fn supports_group_commit(&self) -> bool {
        self.handle.protocol == LockProtocol::Flock
    }

    pub(crate) fn os_lock(&self, deadline: Instant) -> Result<Acquired> {
        let acquired = match &mut *relock(&self.handle.lock) {
            OsLock::Flock(l) => l.lock(&self.opts, deadline)?,
            OsLock::Sidecar(_) => {
                return Err(Error::InvalidPath {
                    path: self.lock_path.clone(),
                    reason: "group commit is not available with the sidecar lock protocol",
                })
            }
        };
        self.after_reclaim(&acquired);
        Ok(acquired)
    }

    /// Releases the OS lock taken by [`Writer::os_lock`].
    pub(crate) fn os_unlock(&self, record: OwnerRecord) {
        if let OsLock::Flock(l) = &mut *relock(&self.handle.lock) {
            l.unlock(record);
        }
    }

    fn after_reclaim(&self, acquired: &Acquired) {
        if let Some(prev) = acquired.previous.as_ref().filter(|_| acquired.reclaimed) {
            let n = atomic::remove_orphan_temps(&self.path, prev.pid);
            if n > 0 {
                tracing::warn!(path = %self.path.display(), pid = prev.pid, removed = n, "removed crashed owner's temp files");
            }
        }
    }

    /// Builds the closure context from an acquisition.
    pub(crate) fn context<'a>(&'a self, acquired: &'a Acquired, waited: Duration) -> Exclusive<'a> {
        Exclusive {
            path: &self.path,
            acquired,
            waited,
            sidecar: None,
        }
    }
}

/// Runs `f` inside the exclusive section of the store file `path`: the
/// in-process FIFO slot, then the cross-process lock on `<path>.lock`. See
/// [`Writer::run`] for the errors.
pub fn run_exclusive<T, E, F>(
    path: impl AsRef<Path>,
    opts: &LockOptions,
    f: F,
) -> std::result::Result<T, E>
where
    F: FnOnce(&mut Exclusive<'_>) -> std::result::Result<T, E>,
    E: From<Error>,
{
    Writer::open(path, opts.clone())?.run(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reentrant_is_an_error_not_a_deadlock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        let o = LockOptions::default();
        let r: Result<()> = run_exclusive(&p, &o, |_| {
            let inner: Result<()> = run_exclusive(&p, &o, |_| Ok(()));
            assert!(matches!(inner, Err(Error::Reentrant { .. })));
            // A different store is fine.
            run_exclusive(d.path().join("other.json"), &o, |_| Ok(()))
        });
        r.unwrap();
    }

    #[test]
    fn aliases_share_one_queue_and_queues_are_freed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::os::unix::fs::symlink(d.path().join("a"), d.path().join("link")).unwrap();
        let w1 = Writer::open(d.path().join("a/s.json"), LockOptions::default()).unwrap();
        let w2 = Writer::open(d.path().join("link/../a/s.json"), LockOptions::default()).unwrap();
        let w3 = Writer::open(d.path().join("link/s.json"), LockOptions::default()).unwrap();
        assert_eq!(w1.path(), w2.path());
        assert_eq!(w1.path(), w3.path());
        assert!(std::ptr::eq(
            w1.handle.arc().as_ref(),
            w3.handle.arc().as_ref()
        ));
        let before = live_queues();
        drop((w1, w2, w3));
        assert!(live_queues() < before);
    }

    #[test]
    fn panic_reaches_only_its_caller_and_releases() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        let o = LockOptions::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<()> = run_exclusive(&p, &o, |_| panic!("boom"));
        }));
        assert!(r.is_err());
        let ok: Result<u64> = run_exclusive(&p, &o, |ctx| Ok(ctx.generation()));
        assert_eq!(ok.unwrap(), 2);
        let rec = LockFile::read_record(&lock::lock_path_for(&p)).unwrap();
        assert!(rec.released);
    }
}
