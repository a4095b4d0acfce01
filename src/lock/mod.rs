//! Cross-process lock: an exclusive `flock(2)` on a dedicated lock file beside the
//! store, `<store file>.lock`.
//!
//! * The lock file is created mode 0600 (parent dir 0700), opened with
//!   `O_NOFOLLOW|O_CLOEXEC`, and never deleted, renamed or replaced by lockstore.
//!   After acquiring, the fd's (dev, inode) is compared with the path's; on a
//!   mismatch (someone deleted or replaced the file) the handle is reopened and the
//!   acquisition retried, logged at warn. So two holders can never both believe
//!   they hold the lock on the file at the path.
//! * flock locks belong to the open file description, and the kernel drops them
//!   when the holder dies, so a crashed holder never freezes other writers (the
//!   incumbent's sidecar files did). fcntl record locks are never used: closing
//!   any other fd of the file would silently drop them.
//! * Acquisition polls `try_lock` with capped exponential backoff plus jitter
//!   until a deadline ([`LockOptions`]); the first contention reads the holder's
//!   owner record ([`owner::OwnerRecord`]), logs one event and calls
//!   [`LockOptions::on_wait`] (the CLI prints a cargo-style "Blocking waiting for
//!   file lock" line there).
//! * After acquiring, an owner record that was never released means the previous
//!   holder crashed inside its critical section: this is logged at warn as a
//!   reclaim and reported to the caller, which removes the dead holder's orphaned
//!   temp files.
//!
//! See docs/lock-protocol.md for the whole protocol and failure model.

pub(crate) mod fs_check;
mod held;
pub(crate) mod owner;
mod protocol;
#[cfg(feature = "sidecar")]
pub mod sidecar;

pub use held::{inspect, lock_path, HeldLock, LockState};
pub use owner::{HolderInfo, OwnerRecord};
pub use protocol::LockProtocol;

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Number of stale-lock reclaims (a dead holder's unreleased record found on
/// acquiring) in this process.
static RECLAIMS: AtomicU64 = AtomicU64::new(0);

/// Total reclaims of crashed owners' locks observed by this process.
pub fn reclaim_count() -> u64 {
    RECLAIMS.load(Ordering::Relaxed)
}

/// Callback invoked at most once per acquisition when the lock is contended
/// for longer than [`LockOptions::on_wait_after`]: the lock path and what is
/// known of the holder.
pub type WaitCallback = Arc<dyn Fn(&Path, Option<&HolderInfo>) + Send + Sync>;

/// How to wait for a lock. All durations are wall-clock.
#[derive(Clone)]
pub struct LockOptions {
    /// Give up after this long in total (queue wait + OS lock wait). Default 60 s,
    /// openclaw's stale age.
    pub deadline: Duration,
    /// First backoff delay between `try_lock` polls. Default 1 ms.
    pub backoff_min: Duration,
    /// Cap on the backoff delay. Default 25 ms.
    pub backoff_max: Duration,
    /// Growth factor per poll. Default 1.5.
    pub backoff_factor: f64,
    /// Multiply each delay by a random factor in [1, 2) (then cap again), as
    /// openclaw's `randomize`. Default true.
    pub jitter: bool,
    /// Give up after this many sleeps even before the deadline (openclaw's
    /// `retries`). Default `None`.
    pub max_retries: Option<u32>,
    /// Called once when an acquisition finds the lock held by another process
    /// and is still waiting [`on_wait_after`](Self::on_wait_after) later.
    pub on_wait: Option<WaitCallback>,
    /// How long an acquisition waits before calling `on_wait` (a wait that ends
    /// sooner calls nothing). Default zero: at once. The CLI uses 100 ms, as
    /// cargo does before its "Blocking waiting for file lock" line.
    pub on_wait_after: Duration,
    /// Wait for a contended lock by blocking in `flock` on a helper thread (woken
    /// by the kernel the moment the holder releases) instead of polling with
    /// backoff. Default true; ignored when `max_retries` is set (the openclaw
    /// profile polls).
    pub blocking_wait: bool,
    /// Cross-process protocol of this store: [`LockProtocol::Flock`] (default) or
    /// `LockProtocol::Sidecar` (feature `sidecar`; interop with `@openclaw/fs-safe`). Never mix the
    /// two on one store.
    pub protocol: LockProtocol,
    /// Sidecar only: age after which a lock without a judgeable owner (empty,
    /// unparseable, no pid) is stale. Default 60 s (openclaw's `stale`).
    pub stale: Duration,
    /// Sidecar only: return [`Error::LockStale`] instead of reclaiming a stale lock
    /// (fs-safe's `staleRecovery: "fail-closed"`). Default false.
    pub fail_closed: bool,
    /// Sidecar only: lease mode with this lease term. The holder refreshes the
    /// sidecar's mtime every term/3; a waiter may take over a live holder silent
    /// for longer than the term, and the old holder gets [`Error::LockLost`] at
    /// its next commit. Default `None` (no lease: a live holder is never robbed).
    pub lease: Option<Duration>,
}

impl std::fmt::Debug for LockOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockOptions")
            .field("deadline", &self.deadline)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("backoff_factor", &self.backoff_factor)
            .field("jitter", &self.jitter)
            .field("max_retries", &self.max_retries)
            .field("on_wait", &self.on_wait.is_some())
            .field("on_wait_after", &self.on_wait_after)
            .field("blocking_wait", &self.blocking_wait)
            .field("protocol", &self.protocol)
            .field("stale", &self.stale)
            .field("fail_closed", &self.fail_closed)
            .field("lease", &self.lease)
            .finish()
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            deadline: Duration::from_secs(60),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(25),
            backoff_factor: 1.5,
            jitter: true,
            max_retries: None,
            on_wait: None,
            on_wait_after: Duration::ZERO,
            blocking_wait: true,
            protocol: LockProtocol::Flock,
            stale: Duration::from_secs(60),
            fail_closed: false,
            lease: None,
        }
    }
}

impl LockOptions {
    /// The incumbent's fail-fast profile (`DEFAULT_LOCK_OPTIONS` of openclaw's
    /// `persistent-dedupe.ts`): 6 retries, factor 1.35, 8–180 ms, jitter; the
    /// whole wait is about 0.1–0.25 s.
    pub fn openclaw_compatible() -> Self {
        LockOptions {
            deadline: Duration::from_secs(60),
            backoff_min: Duration::from_millis(8),
            backoff_max: Duration::from_millis(180),
            backoff_factor: 1.35,
            jitter: true,
            max_retries: Some(6),
            on_wait: None,
            blocking_wait: false,
            ..Default::default()
        }
    }

    /// Same options with another deadline.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Delay before poll number `n` (0-based): `min(max, max(min, min × factor^n))`,
    /// times a jitter in [1, 2) capped at `max` again (openclaw's formula).
    pub fn delay(&self, n: u32) -> Duration {
        let min = self.backoff_min.as_secs_f64();
        let max = self.backoff_max.as_secs_f64().max(min);
        let mut d = (min * self.backoff_factor.max(1.0).powi(n.min(64) as i32)).clamp(min, max);
        if self.jitter {
            d = (d * (1.0 + fastrand::f64())).min(max);
        }
        Duration::from_secs_f64(d)
    }
}

/// The lock file path for a store file: `<store>.lock`.
pub(crate) fn lock_path_for(store: &Path) -> PathBuf {
    let mut s = store.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// The store file of a lock file `<store>.lock` (`None` for another name,
/// e.g. `daemon.lock`'s store `daemon` is returned but a bare `.lock` is not).
fn store_path_of(lock: &Path) -> Option<PathBuf> {
    let s = lock.as_os_str().as_encoded_bytes();
    let stem = s.strip_suffix(b".lock")?;
    if stem.is_empty() || stem.ends_with(b"/") {
        return None;
    }
    // The bytes came from an OsStr and were cut at an ASCII suffix.
    let stem = std::ffi::OsStr::from_bytes(stem);
    Some(PathBuf::from(stem))
}

/// As root, gives a lock file this process just created to the owner of its
/// store (if the store exists) or of its directory, so a user whose store root
/// touched can still open the lock file. Best effort: a failure is logged.
fn give_to_store_owner(f: &File, path: &Path, store: Option<&Path>, dir: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let owner = store
        .and_then(|s| std::fs::symlink_metadata(s).ok())
        .or_else(|| std::fs::metadata(dir).ok());
    let Some(m) = owner else { return };
    if m.uid() == 0 && m.gid() == 0 {
        return;
    }
    if let Err(e) = std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid())) {
        tracing::warn!(path = %path.display(), error = %e, "could not give the new lock file to its store's owner");
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io("create directory", dir, e)),
    }
}

/// An open lock file. Lock and unlock it many times; keep one per store per
/// process (the writer does).
#[derive(Debug)]
pub(crate) struct LockFile {
    path: PathBuf,
    file: Option<File>,
    fs_checked: bool,
    /// `<lock>.waiters`: blocked waiters hold a shared flock on it (see
    /// [`LockFile::lock`], "hand-off to waiters").
    waiters: Option<File>,
    /// Set when a waiter was seen at our last release (with that release's
    /// generation): the next acquisition first lets a waiter go.
    polite: Option<u64>,
}

/// Proof of a held lock, with what the acquisition found.
#[derive(Debug, Clone)]
pub(crate) struct Acquired {
    /// The record this holder wrote.
    pub record: OwnerRecord,
    /// The previous holder's record, if one was found.
    pub previous: Option<OwnerRecord>,
    /// True when the previous holder never released: it crashed while holding.
    pub reclaimed: bool,
    /// Time spent waiting for the OS lock (shown by `Debug`).
    #[allow(dead_code)]
    pub waited: Duration,
}

fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOLCK) | Some(nix::libc::EOPNOTSUPP) | Some(nix::libc::ENOSYS)
    )
}

impl LockFile {
    /// A lock file handle for `path` (the `.lock` file itself); nothing is opened
    /// until the first [`LockFile::lock`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LockFile {
            path: path.into(),
            file: None,
            fs_checked: false,
            waiters: None,
            polite: None,
        }
    }

    fn waiters_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_os_string();
        p.push(".waiters");
        PathBuf::from(p)
    }

    /// The waiters file (created 0600 on first use, never deleted); `None` if it
    /// cannot be opened (the hand-off is an optimization, never required).
    fn waiters_file(&mut self) -> Option<&File> {
        if self.waiters.is_none() {
            let wp = self.waiters_path();
            let existed = std::fs::symlink_metadata(&wp).is_ok();
            self.waiters = crate::atomic::open_regular(
                &wp,
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600),
                "open",
            )
            .ok()
            .flatten()
            .map(|(f, _)| f);
            if let (Some(f), false) = (&self.waiters, existed) {
                let dir = wp.parent().unwrap_or(Path::new("."));
                give_to_store_owner(f, &wp, store_path_of(&self.path).as_deref(), dir);
            }
        }
        self.waiters.as_ref()
    }

    /// Before re-acquiring right after a release that had waiters: wait until one
    /// of them has taken the lock (the owner record's generation moved past
    /// `released_gen`) or none is left, polling every 50 µs for at most 20 ms and
    /// never past `deadline`; then acquire as usual (blocking like the others).
    fn yield_to_waiters(&mut self, released_gen: u64, deadline: Instant) {
        let bound = deadline.min(Instant::now() + Duration::from_millis(20));
        loop {
            match self.waiters_file().map(|w| w.try_lock()) {
                Some(Err(std::fs::TryLockError::WouldBlock)) => {}
                Some(Ok(())) => {
                    if let Some(w) = &self.waiters {
                        let _ = w.unlock();
                    }
                    return;
                }
                _ => return,
            }
            let moved = Self::read_record(&self.path).is_some_and(|r| r.generation != released_gen);
            if moved || Instant::now() >= bound {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let dir = self
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // The store beside a `<store>.lock` must be a regular file or
            // absent: `json set /dev/null` must not create `/dev/null.lock`.
            let store = store_path_of(&self.path);
            if let Some(store) = &store {
                crate::atomic::regular_or_absent(store)?;
            }
            ensure_dir(dir)?;
            if !self.fs_checked {
                fs_check::check_dir(dir)?;
                self.fs_checked = true;
            }
            let existed = crate::atomic::regular_or_absent(&self.path)?.is_some();
            let (f, _) = crate::atomic::open_regular(
                &self.path,
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600),
                "open lock file",
            )?
            .ok_or_else(|| {
                Error::io(
                    "open lock file",
                    &self.path,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?;
            if !existed {
                give_to_store_owner(&f, &self.path, store.as_deref(), dir);
            }
            self.file = Some(f);
        }
        match &self.file {
            Some(f) => Ok(f),
            None => unreachable!("opened above"),
        }
    }

    /// Whether our fd still refers to the file at the path (same dev and inode).
    fn identity_matches(&self, f: &File) -> Result<bool> {
        let fd_meta = f
            .metadata()
            .map_err(|e| Error::io("fstat lock file", &self.path, e))?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => Ok(m.dev() == fd_meta.dev() && m.ino() == fd_meta.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat lock file", &self.path, e)),
        }
    }

    /// Reads the owner record at the path, without locking (lenient).
    pub fn read_record(path: &Path) -> Option<OwnerRecord> {
        let (f, _) =
            crate::atomic::open_regular(path, std::fs::OpenOptions::new().read(true), "open")
                .ok()??;
        let mut buf = Vec::new();
        f.take(64 * 1024).read_to_end(&mut buf).ok()?;
        OwnerRecord::parse(&buf)
    }

    /// Acquires the lock, waiting until `deadline` (and at most
    /// `opts.max_retries` sleeps).
    ///
    /// Errors: [`Error::LockTimeout`] naming the holder; [`Error::LockUnsupported`]
    /// for ENOLCK/EOPNOTSUPP/ENOSYS; [`Error::UnsupportedFilesystem`];
    /// [`Error::Io`].
    ///
    /// Hand-off to waiters: `flock` wakes every waiter on release but hands the
    /// lock to no one, so a process that releases and re-locks in a loop wins
    /// most rounds (on 2 cores, before a woken waiter is even scheduled). So a
    /// blocked waiter holds a shared flock on `<lock>.waiters` while it waits;
    /// a releaser that sees one (a non-blocking exclusive probe fails) first lets
    /// those waiters take the lock before its own next acquisition (bounded by
    /// 20 ms and the deadline). Nothing depends on it for correctness.
    pub fn lock(&mut self, opts: &LockOptions, deadline: Instant) -> Result<Acquired> {
        if let Some(gen) = self.polite.take() {
            self.yield_to_waiters(gen, deadline);
        }
        let r = self.lock_inner(opts, deadline);
        if let Some(w) = &self.waiters {
            let _ = w.unlock(); // stop announcing ourselves as a waiter
        }
        r
    }

    fn lock_inner(&mut self, opts: &LockOptions, deadline: Instant) -> Result<Acquired> {
        let start = Instant::now();
        let mut polls: u32 = 0;
        let mut announced = false;
        // The on_wait callback fires once, when the wait passes this instant.
        let notify_at = start + opts.on_wait_after;
        let mut notified = opts.on_wait.is_none();
        loop {
            let f = self.open()?;
            match f.try_lock() {
                Ok(()) => {
                    let f = match &self.file {
                        Some(f) => f,
                        None => unreachable!(),
                    };
                    if !self.identity_matches(f)? {
                        tracing::warn!(path = %self.path.display(), "lock file was deleted or replaced while we waited; reopening");
                        let _ = f.unlock();
                        self.file = None;
                        continue;
                    }
                    return self.after_acquire(start.elapsed());
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    if is_unsupported(&e) {
                        return Err(Error::LockUnsupported {
                            path: self.path.clone(),
                            source: e,
                        });
                    }
                    return Err(Error::io("lock", &self.path, e));
                }
            }
            if !announced {
                announced = true;
                if let Some(w) = self.waiters_file() {
                    let _ = w.try_lock_shared();
                }
                let holder = Self::read_record(&self.path).map(HolderInfo::judge);
                match &holder {
                    Some(h) => tracing::info!(
                        path = %self.path.display(),
                        holder_pid = h.record.pid,
                        holder_state = h.liveness.as_str(),
                        held_ms = h.held.as_millis() as u64,
                        "Blocking waiting for file lock ({})", h.describe()
                    ),
                    None => {
                        tracing::info!(path = %self.path.display(), "Blocking waiting for file lock")
                    }
                }
            }
            if !notified && Instant::now() >= notify_at {
                notified = true;
                self.notify_wait(opts);
            }
            let now = Instant::now();
            let out_of_retries = opts.max_retries.is_some_and(|r| polls >= r);
            if now >= deadline || out_of_retries {
                let holder = Self::read_record(&self.path).map(|r| Box::new(HolderInfo::judge(r)));
                return Err(Error::LockTimeout {
                    path: self.path.clone(),
                    waited: start.elapsed(),
                    holder,
                });
            }
            if opts.blocking_wait && opts.max_retries.is_none() {
                // Sleep in the kernel until the holder releases (or the deadline):
                // the wake-up is immediate, unlike polling.
                let notice = (!notified).then_some((notify_at, opts));
                notified |= self.blocking_wait(deadline, notice)?;
                polls += 1;
                continue;
            }
            let d = opts.delay(polls).min(deadline - now);
            polls += 1;
            std::thread::sleep(d);
        }
    }

    /// Blocks in `flock(LOCK_EX)` on a duplicate of our descriptor (same open
    /// file description, so the lock it gets is ours) on a helper thread, until
    /// `deadline`. On timeout the helper is abandoned: our descriptor is closed and
    /// replaced by a fresh one (a new open file description), and the helper
    /// unlocks and closes its duplicate if it ever gets the lock — so an abandoned
    /// wait can never release a lock we take later.
    ///
    /// With `notice = Some((at, opts))`, calls `opts.on_wait` once if the wait
    /// is still going at `at` (and keeps waiting on the same helper); returns
    /// whether it did.
    fn blocking_wait(
        &mut self,
        deadline: Instant,
        mut notice: Option<(Instant, &LockOptions)>,
    ) -> Result<bool> {
        #[derive(PartialEq)]
        enum St {
            Waiting,
            Abandoned,
            Done,
        }
        let Some(f) = &self.file else {
            return Ok(false);
        };
        let dup = f
            .try_clone()
            .map_err(|e| Error::io("dup lock file", &self.path, e))?;
        let state = Arc::new((
            std::sync::Mutex::new(St::Waiting),
            std::sync::Condvar::new(),
        ));
        let result: Arc<std::sync::Mutex<Option<std::io::Result<()>>>> = Arc::default();
        let mut fired = false;
        let (st2, res2) = (state.clone(), result.clone());
        let spawned = std::thread::Builder::new()
            .name("lockstore-flock-wait".into())
            .spawn(move || {
                let r = dup.lock();
                let mut g = match st2.0.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if *g == St::Abandoned {
                    if r.is_ok() {
                        let _ = dup.unlock();
                    }
                    return;
                }
                if let Ok(mut slot) = res2.lock() {
                    *slot = Some(r);
                }
                *g = St::Done;
                st2.1.notify_all();
            });
        if let Err(e) = spawned {
            return Err(Error::io("spawn lock wait thread", &self.path, e));
        }
        let mut g = match state.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while *g == St::Waiting {
            let now = Instant::now();
            if let Some((_, opts)) = notice.filter(|(at, _)| now >= *at && *at < deadline) {
                notice = None;
                fired = true;
                drop(g);
                self.notify_wait(opts);
                g = match state.0.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                continue;
            }
            let wake = match notice {
                Some((at, _)) if at < deadline => at,
                _ => deadline,
            };
            if now >= deadline {
                *g = St::Abandoned;
                drop(g);
                self.file = None; // the helper keeps the old description alive
                return Ok(fired);
            }
            g = match state.1.wait_timeout(g, wake.saturating_duration_since(now)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(g);
        let r = result.lock().ok().and_then(|mut s| s.take());
        match r {
            Some(Err(e)) if is_unsupported(&e) => Err(Error::LockUnsupported {
                path: self.path.clone(),
                source: e,
            }),
            Some(Err(e)) => Err(Error::io("lock", &self.path, e)),
            _ => Ok(fired),
        }
    }

    /// Calls `opts.on_wait` with the current holder (read afresh).
    fn notify_wait(&self, opts: &LockOptions) {
        if let Some(cb) = &opts.on_wait {
            let holder = Self::read_record(&self.path).map(HolderInfo::judge);
            cb(&self.path, holder.as_ref());
        }
    }

    fn after_acquire(&mut self, waited: Duration) -> Result<Acquired> {
        let f = match &self.file {
            Some(f) => f,
            None => unreachable!(),
        };
        let mut buf = Vec::new();
        {
            use std::os::unix::fs::FileExt;
            let len = f
                .metadata()
                .map_err(|e| Error::io("fstat lock file", &self.path, e))?
                .len() as usize;
            buf.resize(len.min(64 * 1024), 0);
            let n = f
                .read_at(&mut buf, 0)
                .map_err(|e| Error::io("read lock file", &self.path, e))?;
            buf.truncate(n);
        }
        let previous = OwnerRecord::parse(&buf);
        // Flock records always have generation >= 1; anything else that looks like
        // a sidecar payload means the store is locked with the other protocol.
        if previous.as_ref().is_none_or(|p| p.generation == 0) && protocol::looks_like_sidecar(&buf)
        {
            let _ = f.unlock();
            self.file = None;
            return Err(Error::LockProtocolMismatch {
                path: self.path.clone(),
                found: "sidecar",
                wanted: LockProtocol::Flock.as_str(),
            });
        }
        let generation = previous.as_ref().map_or(0, |p| p.generation) + 1;
        let reclaimed = previous.as_ref().is_some_and(|p| !p.released);
        if let Some(p) = previous.as_ref().filter(|_| reclaimed) {
            RECLAIMS.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %self.path.display(),
                pid = p.pid,
                held_since_ms = p.acquired_at_ms,
                "reclaimed lock on {} from crashed owner pid {} (held since {} ms)",
                self.path.display(), p.pid, p.acquired_at_ms
            );
        }
        let record = OwnerRecord::for_current(generation);
        self.write_record(&record)?;
        Ok(Acquired {
            record,
            previous,
            reclaimed,
            waited,
        })
    }

    fn write_record(&self, rec: &OwnerRecord) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let f = match &self.file {
            Some(f) => f,
            None => unreachable!("write_record is only called while locked"),
        };
        let mut bytes = serde_json::to_vec(rec).map_err(|e| Error::Serialize {
            path: self.path.clone(),
            source: e,
        })?;
        // Pad with spaces to the current length instead of truncating:
        // `ftruncate` changes the inode and was ~8 % of a one-writer task-ledger
        // profile (two records per section). Trailing spaces are valid JSON
        // whitespace and `OwnerRecord::parse` stops at the last `}`. A file
        // longer than 4 KiB (not written by us) is truncated as before.
        let cur = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        if cur > 4096 {
            f.set_len(0)
                .map_err(|e| Error::io("truncate lock file", &self.path, e))?;
        } else if bytes.len() + 1 < cur {
            bytes.resize(cur - 1, b' ');
        }
        bytes.push(b'\n');
        f.write_all_at(&bytes, 0)
            .map_err(|e| Error::io("write owner record", &self.path, e))?;
        Ok(())
    }

    /// Marks the record released and unlocks. Errors writing the record are
    /// logged, not returned: the unlock itself always happens.
    pub fn unlock(&mut self, mut record: OwnerRecord) {
        record.released = true;
        record.released_at_ms = Some(crate::proc::now_ms());
        if let Err(e) = self.write_record(&record) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not mark owner record released");
        }
        if let Some(f) = &self.file {
            if let Err(e) = f.unlock() {
                // Closing the fd releases the flock for certain.
                tracing::warn!(path = %self.path.display(), error = %e, "unlock failed; closing the lock file");
                self.file = None;
            }
        }
        // Were processes waiting while we held it? Then let them go first next time.
        if let Some(w) = &self.waiters {
            match w.try_lock() {
                Ok(()) => {
                    let _ = w.unlock();
                }
                Err(std::fs::TryLockError::WouldBlock) => self.polite = Some(record.generation),
                Err(_) => {}
            }
        }
    }

    /// Whether the lock is currently held by any process (probes with a
    /// non-blocking lock on a fresh descriptor, releasing at once). Does not create
    /// the file.
    pub fn is_held(path: &Path) -> Result<bool> {
        crate::atomic::regular_or_absent(path)?;
        let Some((f, _)) = crate::atomic::open_regular(
            path,
            std::fs::OpenOptions::new().read(true),
            "open lock file",
        )?
        else {
            return Ok(false);
        };
        match f.try_lock_shared() {
            Ok(()) => {
                let _ = f.unlock();
                Ok(false)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("probe lock", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openclaw_profile_delays_match_reference() {
        let mut o = LockOptions::openclaw_compatible();
        o.jitter = false;
        let ms: Vec<f64> = (0..6)
            .map(|n| (o.delay(n).as_secs_f64() * 1000.0 * 10.0).round() / 10.0)
            .collect();
        assert_eq!(ms, vec![8.0, 10.8, 14.6, 19.7, 26.6, 35.9]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let o = LockOptions::default();
        for n in 0..40 {
            let base = {
                let mut p = o.clone();
                p.jitter = false;
                p.delay(n)
            };
            let d = o.delay(n);
            assert!(
                d >= base && d <= o.backoff_max,
                "n={n} d={d:?} base={base:?}"
            );
        }
    }

    #[test]
    fn two_handles_never_both_hold() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let mut a = LockFile::new(&p);
        let mut b = LockFile::new(&p);
        let acq = a.lock(&LockOptions::default(), Instant::now()).unwrap();
        let short = LockOptions::default();
        let err = b.lock(&short, Instant::now()).unwrap_err();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
        assert!(LockFile::is_held(&p).unwrap());
        a.unlock(acq.record);
        assert!(!LockFile::is_held(&p).unwrap());
        let acq2 = b.lock(&short, Instant::now()).unwrap();
        assert_eq!(acq2.record.generation, 2);
        assert!(!acq2.reclaimed);
        assert!(acq2.previous.unwrap().released);
    }

    #[test]
    fn timeout_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let mut a = LockFile::new(&p);
        let _held = a.lock(&LockOptions::default(), Instant::now()).unwrap();
        let mut b = LockFile::new(&p);
        let err = b
            .lock(
                &LockOptions::default(),
                Instant::now() + Duration::from_millis(20),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("held by pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("running"), "{msg}");
    }

    #[test]
    fn max_retries_bounds_the_wait() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let mut a = LockFile::new(&p);
        let _held = a.lock(&LockOptions::default(), Instant::now()).unwrap();
        let mut b = LockFile::new(&p);
        let o = LockOptions::openclaw_compatible();
        let err = b.lock(&o, queue_deadline(&o)).unwrap_err();
        match err {
            Error::LockTimeout { waited, .. } => assert!(waited < Duration::from_secs(2)),
            e => panic!("{e}"),
        }
    }

    /// `on_wait` is called once the wait passes `on_wait_after`, not when it
    /// begins (the holder releases only after the call), in both wait modes.
    #[test]
    fn on_wait_fires_after_the_threshold() {
        for blocking in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("s.json.lock");
            let mut a = LockFile::new(&p);
            let held = a.lock(&LockOptions::default(), Instant::now()).unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let tx = std::sync::Mutex::new(tx);
            let opts = LockOptions {
                blocking_wait: blocking,
                on_wait_after: Duration::from_millis(150),
                on_wait: Some(Arc::new(move |_: &Path, h: Option<&HolderInfo>| {
                    assert!(h.is_some(), "holder named");
                    let _ = tx.lock().unwrap().send(());
                })),
                ..Default::default()
            };
            let p2 = p.clone();
            let waiter = std::thread::spawn(move || {
                let start = Instant::now();
                let mut b = LockFile::new(&p2);
                let acq = b.lock(&opts, start + Duration::from_secs(60)).unwrap();
                b.unlock(acq.record);
                start.elapsed()
            });
            let t0 = Instant::now();
            rx.recv_timeout(Duration::from_secs(60))
                .expect("on_wait was never called");
            let fired_after = t0.elapsed();
            a.unlock(held.record);
            waiter.join().unwrap();
            assert!(
                fired_after >= Duration::from_millis(140),
                "blocking={blocking}: on_wait after {fired_after:?}"
            );
            assert!(rx.try_recv().is_err(), "called twice");
        }
    }

    /// Whether /proc/locks lists a shared (READ) flock on `path`'s inode.
    fn has_shared_flock(path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
            return false;
        };
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "N: FLOCK ADVISORY READ PID MAJ:MIN:INODE 0 EOF"
            f.get(1) == Some(&"FLOCK")
                && f.get(3) == Some(&"READ")
                && f.get(5)
                    .and_then(|d| d.rsplit(':').next())
                    .and_then(|i| i.parse::<u64>().ok())
                    == Some(ino)
        })
    }

    /// A wait that ends before `on_wait_after` calls nothing (the waiter is
    /// known to be waiting by its shared flock on `<lock>.waiters`).
    #[test]
    fn a_short_wait_calls_nothing() {
        for blocking in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("s.json.lock");
            let mut a = LockFile::new(&p);
            let held = a.lock(&LockOptions::default(), Instant::now()).unwrap();
            let calls = Arc::new(AtomicU64::new(0));
            let c2 = calls.clone();
            let opts = LockOptions {
                blocking_wait: blocking,
                on_wait_after: Duration::from_secs(3600),
                on_wait: Some(Arc::new(move |_: &Path, _: Option<&HolderInfo>| {
                    c2.fetch_add(1, Ordering::SeqCst);
                })),
                ..Default::default()
            };
            let p2 = p.clone();
            let waiter = std::thread::spawn(move || {
                let mut b = LockFile::new(&p2);
                let acq = b
                    .lock(&opts, Instant::now() + Duration::from_secs(60))
                    .unwrap();
                b.unlock(acq.record);
            });
            // Until the waiter announces itself (a shared flock on
            // `<lock>.waiters`, seen in /proc/locks without probing it: a probe
            // could make the waiter's one try_lock_shared fail): it is waiting.
            let waiters = a.waiters_path();
            let give_up = Instant::now() + Duration::from_secs(60);
            while !has_shared_flock(&waiters) {
                assert!(
                    Instant::now() < give_up,
                    "the waiter never announced itself"
                );
                std::thread::yield_now();
            }
            a.unlock(held.record);
            waiter.join().unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 0, "blocking={blocking}");
        }
    }

    fn queue_deadline(o: &LockOptions) -> Instant {
        crate::queue::deadline_after(o.deadline)
    }
}
