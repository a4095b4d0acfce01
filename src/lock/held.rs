//! A cross-process lock held for as long as a value lives, and a look at a
//! lock without taking it — the two operations a daemon needs beside the
//! writer's exclusive sections (one daemon per state dir; `status`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::owner::{HolderInfo, OwnerRecord};
use super::{Acquired, LockFile, LockOptions};
use crate::error::Result;

/// An exclusive `flock` on one lock file, held until dropped (the owner record
/// is marked released and the lock dropped; the kernel drops it too if the
/// process dies). For process-lifetime locks such as "one daemon per state
/// dir"; for load → modify → save use [`crate::run_exclusive`] or a store.
///
/// Unlike [`crate::Writer`] it does not take the in-process FIFO slot: hold
/// it from one place in the process.
#[derive(Debug)]
pub struct HeldLock {
    file: LockFile,
    record: Option<OwnerRecord>,
    reclaimed: bool,
}

impl HeldLock {
    /// Takes the lock on the lock file `lock_path` itself (created 0600, parent
    /// 0700), waiting as `opts` says (`max_retries: Some(0)` tries once).
    ///
    /// Errors: [`crate::Error::LockTimeout`] naming the holder
    /// ([`crate::Error::is_lock_timeout`]); [`crate::Error::UnsupportedFilesystem`],
    /// [`crate::Error::LockUnsupported`], [`crate::Error::Io`].
    pub fn acquire(lock_path: impl AsRef<Path>, opts: &LockOptions) -> Result<HeldLock> {
        let mut file = LockFile::new(lock_path.as_ref());
        let deadline = crate::queue::deadline_after(opts.deadline);
        let Acquired {
            record, reclaimed, ..
        } = file.lock(opts, deadline.max(Instant::now()))?;
        Ok(HeldLock {
            file,
            record: Some(record),
            reclaimed,
        })
    }

    /// The owner record this holder wrote (pid, start time, token, generation).
    pub fn record(&self) -> &OwnerRecord {
        self.record
            .as_ref()
            .expect("a HeldLock holds its record until dropped")
    }

    /// Whether the previous holder died holding it (its record was never
    /// released).
    pub fn reclaimed(&self) -> bool {
        self.reclaimed
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            self.file.unlock(r);
        }
    }
}

/// What [`inspect`] sees at a lock file of the flock protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockState {
    /// No lock file, or nobody holds it and its last holder released it.
    Free,
    /// A process holds the lock; the holder as its owner record says, judged
    /// now (running, stopped, dead-but-held...), or `None` when the file holds
    /// no readable owner record.
    Held(Option<HolderInfo>),
    /// Nobody holds the lock, but its last holder never released it: it died
    /// inside its section. The next acquirer reclaims it (and removes the dead
    /// holder's temp files).
    Abandoned(HolderInfo),
}

/// Looks at the lock file `lock_path` without taking it and without creating
/// it: probes with a non-blocking shared `flock` on a fresh descriptor and
/// reads the owner record.
///
/// Errors: [`crate::Error::Io`] when the file exists but cannot be opened or
/// probed.
pub fn inspect(lock_path: impl AsRef<Path>) -> Result<LockState> {
    let p = lock_path.as_ref();
    let held = LockFile::is_held(p)?;
    let record = LockFile::read_record(p);
    Ok(match (held, record) {
        (true, r) => LockState::Held(r.map(HolderInfo::judge)),
        (false, Some(r)) if !r.released => LockState::Abandoned(HolderInfo::judge(r)),
        (false, _) => LockState::Free,
    })
}

/// `<store>.lock`: the lock file of the store file `store`.
pub fn lock_path(store: impl AsRef<Path>) -> PathBuf {
    super::lock_path_for(store.as_ref())
}
