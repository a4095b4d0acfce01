//! The sidecar lock protocol (feature `sidecar`), compatible with the npm package `@openclaw/fs-safe`
//! (0.21.0: `src/sidecar-lock*.ts`, used by `jsonStore({filePath, lock: true})`).
//!
//! The lock on a store `<target>` is *the existence* of `<target>.lock`:
//!
//! * **Acquire**: exclusive-create `<target>.lock` (`O_CREAT|O_EXCL|O_NOFOLLOW|
//!   O_CLOEXEC`, mode 0600), take an exclusive `flock` on the new fd (the *liveness
//!   beacon*: the kernel drops it when the holder dies), then write the payload
//!   `{pid, createdAt, starttime, hostname, bootId, token, lockstore: {version,
//!   flock: true, leaseMs?, cmd}}` — a superset of fs-safe's `{pid, createdAt}`.
//!   Like fs-safe, no acquirer creates the lock while the reclaim guard
//!   `<target>.lock.reclaim` exists.
//! * **Release**: check that the path still names our inode and holds our exact
//!   bytes ("remove if unchanged", as fs-safe), unlink, close (which drops the beacon).
//! * **Waiting**: [`LockOptions`] backoff with jitter until the deadline.
//! * **Stale reclaim**: only under the guard directory `<target>.lock.reclaim`
//!   (mkdir-exclusive; fs-safe's raw reclaimers use the same name, its root-confined
//!   reclaimers a regular file of that name — either blocks us). Under the guard the
//!   file's (dev, ino) and exact bytes are re-checked right before the unlink, and
//!   the reclaimer creates its own lock before dropping the guard (as fs-safe).
//!   When the current holder counts as gone:
//!   - lockstore payload and its beacon flock is free ⇒ dead for certain;
//!   - lockstore payload with `leaseMs`, beacon held, mtime older than `leaseMs`
//!     ⇒ a live but silent holder whose lease expired (lease mode);
//!   - foreign payload with a valid pid ⇒ only when definitely dead
//!     ([`crate::ProcessIdentity::liveness`]: same host and boot id when recorded, and ESRCH, a
//!     zombie, or a different start time; EPERM counts as alive);
//!   - foreign payload without a pid, empty or unparseable file with a free flock
//!     ⇒ only when its `createdAt` (else mtime) is older than [`LockOptions::stale`].
//!
//!   With [`LockOptions::fail_closed`] each of these returns [`Error::LockStale`]
//!   instead (fs-safe's `staleRecovery: "fail-closed"`, `file_lock_stale`).
//! * **Stale guard**: a guard older than 10 s was left by a crashed
//!   reclaimer (reclaims take microseconds) and is removed, re-checking its (dev,
//!   ino) and mtime first.
//! * **Lease** ([`LockOptions::lease`]): the holder refreshes the sidecar's mtime
//!   every lease/3 from a background thread; the holder's fencing check
//!   ([`crate::Exclusive::verify_still_held`], called by `JsonStore` right before each save) returns [`Error::LockLost`]
//!   when a waiter took the lock over.
//!
//! The flock protocol (`<store>.lock`, docs/lock-protocol.md) uses the same file name but a persistent
//! file holding an [`OwnerRecord`] (fields `generation`, `acquired_at_ms`, never
//! `createdAt`); each protocol refuses the other's file with
//! [`Error::LockProtocolMismatch`]. See docs/lock-protocol-sidecar.md.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use super::owner::{HolderInfo, OwnerRecord};
use super::{Acquired, LockOptions, LockProtocol};
use crate::error::{Error, Result};
use crate::proc::{self, Liveness, ProcessIdentity};

/// Version of the `lockstore` marker object in the sidecar payload.
pub(crate) const PAYLOAD_VERSION: u64 = 1;

/// A reclaim guard older than this was left by a crashed reclaimer and is
/// removed (a reclaim holds its guard for microseconds to milliseconds).
pub(crate) const GUARD_STALE: Duration = Duration::from_secs(10);

/// Largest payload read from a sidecar (fs-safe's `MAX_LOCK_PAYLOAD_BYTES`).
const MAX_PAYLOAD: u64 = 1024 * 1024;

/// The reclaim guard path of a lock file: `<lock>.reclaim`.
pub(crate) fn reclaim_guard_path(lock_path: &Path) -> PathBuf {
    let mut s = lock_path.as_os_str().to_os_string();
    s.push(".reclaim");
    PathBuf::from(s)
}

/// What a sidecar file says about its holder.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// Written by lockstore's sidecar protocol (has the `lockstore` marker).
    Lockstore {
        /// The parsed holder identity.
        holder: OwnerRecord,
        /// The holder's lease in ms, when it runs in lease mode.
        lease_ms: Option<u64>,
    },
    /// Written by fs-safe or another implementation; `holder.pid` is 0 when the
    /// payload has no valid pid; `created_ms` is `createdAt` if it parses.
    Foreign {
        /// The parsed holder identity (pid 0 if absent).
        holder: OwnerRecord,
        /// `createdAt` in Unix ms, if present and valid.
        created_ms: Option<i64>,
    },
    /// The flock protocol's owner record: the store uses the other protocol.
    FlockRecord,
    /// Empty or not a JSON object (a holder crashed between create and write, or
    /// is writing right now).
    Unparseable,
}

impl Payload {
    /// Parses sidecar bytes (JSON with optional trailing whitespace, as fs-safe's
    /// ownership-token trailer).
    pub fn parse(raw: &[u8]) -> Payload {
        let obj = match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(m)) => m,
            _ => return Payload::Unparseable,
        };
        if obj.contains_key("generation")
            && obj.contains_key("acquired_at_ms")
            && !obj.contains_key("createdAt")
        {
            return Payload::FlockRecord;
        }
        let pid = obj
            .get("pid")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0 && *p <= i32::MAX as u64)
            .unwrap_or(0) as u32;
        let start_time = obj
            .get("starttime")
            .or_else(|| obj.get("startTime"))
            .and_then(Value::as_u64);
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let created_ms = s("createdAt").and_then(|c| crate::timefmt::parse_ms(&c));
        let marker = obj.get("lockstore").and_then(Value::as_object);
        let holder = OwnerRecord {
            pid,
            start_time,
            boot_id: s("bootId"),
            hostname: s("hostname"),
            cmd: marker
                .and_then(|m| m.get("cmd"))
                .and_then(Value::as_str)
                .map(str::to_string),
            acquired_at_ms: created_ms.unwrap_or(0),
            token: s("token").unwrap_or_default(),
            ..Default::default()
        };
        match marker {
            Some(m) => Payload::Lockstore {
                holder,
                lease_ms: m.get("leaseMs").and_then(Value::as_u64),
            },
            None => Payload::Foreign { holder, created_ms },
        }
    }

    /// The holder record, if the payload names one.
    pub fn holder(&self) -> Option<&OwnerRecord> {
        match self {
            Payload::Lockstore { holder, .. } | Payload::Foreign { holder, .. } => Some(holder),
            _ => None,
        }
    }
}

/// A consistent read of the sidecar: the bytes of the inode `(dev, ino)` that the
/// path named before and after the read.
#[derive(Debug)]
pub struct SidecarSnapshot {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Exact bytes (at most 1 MiB).
    pub raw: Vec<u8>,
    /// Last modification time.
    pub mtime: SystemTime,
    file: File,
}

impl SidecarSnapshot {
    /// Reads the sidecar at `path`: `None` if missing or replaced during the read.
    ///
    /// Errors: [`Error::Symlink`] or [`Error::InvalidPath`] when the path is not a
    /// regular file; [`Error::Io`].
    pub fn read(path: impl AsRef<Path>) -> Result<Option<SidecarSnapshot>> {
        let path = path.as_ref();
        let before = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat lock file", path, e)),
        };
        if before.file_type().is_symlink() {
            return Err(Error::Symlink {
                path: path.to_path_buf(),
            });
        }
        if !before.is_file() {
            return Err(Error::InvalidPath {
                path: path.to_path_buf(),
                reason: "lock path is not a regular file",
            });
        }
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open lock file", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::io("fstat lock file", path, e))?;
        if meta.dev() != before.dev() || meta.ino() != before.ino() {
            return Ok(None);
        }
        let mut raw = Vec::new();
        (&mut file)
            .take(MAX_PAYLOAD)
            .read_to_end(&mut raw)
            .map_err(|e| Error::io("read lock file", path, e))?;
        match std::fs::symlink_metadata(path) {
            Ok(a) if a.dev() == meta.dev() && a.ino() == meta.ino() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat lock file", path, e)),
        }
        Ok(Some(SidecarSnapshot {
            dev: meta.dev(),
            ino: meta.ino(),
            raw,
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            file,
        }))
    }

    /// Whether an exclusive flock on this inode is held by someone (the beacon of
    /// a live lockstore holder). Probes with `try_lock` and releases at once.
    pub fn beacon_held(&self) -> bool {
        match self.file.try_lock() {
            Ok(()) => {
                let _ = self.file.unlock();
                false
            }
            Err(_) => true,
        }
    }

    /// Age of the file's mtime.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.mtime)
            .unwrap_or(Duration::ZERO)
    }

    fn same(&self, other: &SidecarSnapshot) -> bool {
        self.dev == other.dev && self.ino == other.ino && self.raw == other.raw
    }
}

/// The judgement of a sidecar's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The holder is (or may be) alive: never reclaimed. The reason says why.
    Retain(String),
    /// The holder is gone for certain (or its lease expired): may be reclaimed.
    Stale(String),
}

/// Judges the sidecar `snap` at `lock_path` by the rules in the module docs;
/// `stale` is the age limit for payloads without a judgeable pid.
///
/// Errors: [`Error::LockProtocolMismatch`] for the flock protocol's owner record.
pub fn judge(
    lock_path: impl AsRef<Path>,
    snap: &SidecarSnapshot,
    stale: Duration,
) -> Result<(Payload, Verdict)> {
    let lock_path = lock_path.as_ref();
    let payload = Payload::parse(&snap.raw);
    let verdict = match &payload {
        Payload::FlockRecord => {
            return Err(Error::LockProtocolMismatch {
                path: lock_path.to_path_buf(),
                found: LockProtocol::Flock.as_str(),
                wanted: LockProtocol::Sidecar.as_str(),
            })
        }
        Payload::Lockstore { holder, lease_ms } => {
            if !snap.beacon_held() {
                Verdict::Stale(format!(
                    "lockstore holder pid {} no longer holds its beacon flock: it died",
                    holder.pid
                ))
            } else if let Some(l) = lease_ms.filter(|l| snap.age() > Duration::from_millis(*l)) {
                Verdict::Stale(format!(
                    "lockstore holder pid {} is alive but silent for {} ms, past its {} ms lease",
                    holder.pid,
                    snap.age().as_millis(),
                    l
                ))
            } else {
                Verdict::Retain(format!(
                    "lockstore holder pid {} is {}",
                    holder.pid,
                    proc::liveness(&holder.identity()).as_str()
                ))
            }
        }
        Payload::Foreign { holder, created_ms } if holder.pid != 0 => {
            let _ = created_ms;
            let id = ProcessIdentity {
                pid_ns: None,
                ..holder.identity()
            };
            match proc::liveness(&id) {
                Liveness::Dead => Verdict::Stale(format!(
                    "owner pid {} is dead (no such process, a zombie, or its start time changed)",
                    holder.pid
                )),
                l => Verdict::Retain(format!("owner pid {} is {}", holder.pid, l.as_str())),
            }
        }
        Payload::Foreign { created_ms, .. } => {
            let age = match created_ms {
                Some(c) => Duration::from_millis((proc::now_ms() - c).max(0) as u64),
                None => snap.age(),
            };
            age_verdict("payload without an owner pid", age, stale)
        }
        Payload::Unparseable => {
            if snap.beacon_held() {
                Verdict::Retain("a live lockstore holder is writing its payload".into())
            } else {
                age_verdict("empty or unparseable payload", snap.age(), stale)
            }
        }
    };
    Ok((payload, verdict))
}

fn age_verdict(what: &str, age: Duration, stale: Duration) -> Verdict {
    if age > stale {
        Verdict::Stale(format!(
            "{what}, {} ms old (stale after {} ms)",
            age.as_millis(),
            stale.as_millis()
        ))
    } else {
        Verdict::Retain(format!(
            "{what}, only {} ms old (stale after {} ms)",
            age.as_millis(),
            stale.as_millis()
        ))
    }
}

/// Result of [`reclaim_definitely_stale`] (fs-safe's
/// `reclaimDefinitelyStaleFileLock`: `"missing" | "removed" | "retained"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimOutcome {
    /// No lock file.
    Missing,
    /// Removed; the reason says why it was stale.
    Removed(String),
    /// Kept; the reason says why (alive holder, guard busy, changed meanwhile).
    Retained(String),
}

/// Removes the sidecar at `lock_path` only if its holder is gone by the rules in
/// the module docs, under the reclaim guard, re-checking identity and bytes.
///
/// Errors: [`Error::LockProtocolMismatch`] for a flock-protocol file; [`Error::Io`].
pub fn reclaim_definitely_stale(
    lock_path: impl AsRef<Path>,
    stale: Duration,
) -> Result<ReclaimOutcome> {
    let lock_path = lock_path.as_ref();
    let Some(snap) = SidecarSnapshot::read(lock_path)? else {
        return Ok(ReclaimOutcome::Missing);
    };
    let (_, verdict) = judge(lock_path, &snap, stale)?;
    let reason = match verdict {
        Verdict::Retain(r) => return Ok(ReclaimOutcome::Retained(r)),
        Verdict::Stale(r) => r,
    };
    let Some(_guard) = Guard::take(lock_path)? else {
        return Ok(ReclaimOutcome::Retained(
            "another reclaim is in progress (guard exists)".into(),
        ));
    };
    if !unlink_if_unchanged(lock_path, &snap)? {
        return Ok(ReclaimOutcome::Retained(
            "the lock file changed while being judged".into(),
        ));
    }
    super::RECLAIMS.fetch_add(1, Ordering::Relaxed);
    Ok(ReclaimOutcome::Removed(reason))
}

/// Unlinks the sidecar if the path still names `snap`'s inode with the same bytes.
fn unlink_if_unchanged(lock_path: &Path, snap: &SidecarSnapshot) -> Result<bool> {
    match SidecarSnapshot::read(lock_path)? {
        Some(now) if now.same(snap) => {}
        _ => return Ok(false),
    }
    match std::fs::remove_file(lock_path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove stale lock file", lock_path, e)),
    }
}

/// The held reclaim guard directory; removed on drop.
struct Guard {
    path: PathBuf,
}

impl Guard {
    /// mkdir-exclusive `<lock>.reclaim`; `None` when it exists (a stale guard is
    /// removed first, so the next attempt can take it).
    fn take(lock_path: &Path) -> Result<Option<Guard>> {
        let path = reclaim_guard_path(lock_path);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Some(Guard { path })),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                remove_stale_guard(&path);
                Ok(None)
            }
            Err(e) => Err(Error::io("create reclaim guard", &path, e)),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove reclaim guard");
        }
    }
}

/// Whether a guard exists at `guard`; a guard older than [`GUARD_STALE`] is
/// removed (and reported absent).
fn guard_blocks(guard: &Path) -> bool {
    match std::fs::symlink_metadata(guard) {
        Err(_) => false,
        Ok(_) => !remove_stale_guard(guard),
    }
}

/// Removes a guard left by a crashed reclaimer (older than [`GUARD_STALE`]),
/// re-checking (dev, ino, mtime) right before. Returns true if it was removed.
fn remove_stale_guard(guard: &Path) -> bool {
    let Ok(m) = std::fs::symlink_metadata(guard) else {
        return true;
    };
    let age = m
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::ZERO);
    if age <= GUARD_STALE {
        return false;
    }
    match std::fs::symlink_metadata(guard) {
        Ok(n) if n.dev() == m.dev() && n.ino() == m.ino() && n.mtime() == m.mtime() => {}
        _ => return false,
    }
    let r = if m.is_dir() {
        std::fs::remove_dir(guard)
    } else {
        std::fs::remove_file(guard)
    };
    match r {
        Ok(()) => {
            tracing::warn!(path = %guard.display(), age_ms = age.as_millis() as u64, "removed a reclaim guard left by a crashed reclaimer");
            true
        }
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}

/// The sidecar lock of one store (`<store>.lock`); holds no state between
/// acquisitions.
#[derive(Debug)]
pub(crate) struct SidecarLock {
    path: PathBuf,
}

/// A held sidecar lock. Dropping it releases (see [`SidecarHeld::release`]).
#[derive(Debug)]
pub(crate) struct SidecarHeld {
    path: PathBuf,
    file: Option<File>,
    dev: u64,
    ino: u64,
    raw: Vec<u8>,
    lease: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl SidecarLock {
    /// The sidecar lock whose file is `path` (the `.lock` file itself).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SidecarLock { path: path.into() }
    }

    /// Acquires the lock (see the module docs), waiting until `deadline` with the
    /// backoff of `opts`.
    ///
    /// Errors: [`Error::LockTimeout`] naming the holder; [`Error::LockStale`] with
    /// `fail_closed`; [`Error::LockProtocolMismatch`] when `<store>.lock` is the
    /// flock protocol's; [`Error::Symlink`]; [`Error::Io`].
    pub fn lock(
        &mut self,
        opts: &LockOptions,
        deadline: Instant,
    ) -> Result<(Acquired, SidecarHeld)> {
        let start = Instant::now();
        let guard_path = reclaim_guard_path(&self.path);
        let mut polls: u32 = 0;
        let mut announced = false;
        let mut notified = false;
        let mut last_holder: Option<OwnerRecord> = None;
        loop {
            if !guard_blocks(&guard_path) {
                if let Some(held) = self.try_create(opts, deadline)? {
                    return Ok(self.acquired(held, None, false, start));
                }
                if let Some(snap) = SidecarSnapshot::read(&self.path)? {
                    let (payload, verdict) = judge(&self.path, &snap, opts.stale)?;
                    last_holder = payload.holder().cloned();
                    if let Verdict::Stale(reason) = verdict {
                        if opts.fail_closed {
                            return Err(Error::LockStale {
                                path: self.path.clone(),
                                holder: reason,
                            });
                        }
                        if let Some(r) = self.reclaim(opts, deadline, &snap, &payload, &reason)? {
                            return Ok(r.finish(self, start));
                        }
                    } else {
                        if !announced {
                            announced = true;
                            tracing::info!(path = %self.path.display(), reason = %match &verdict { Verdict::Retain(r) | Verdict::Stale(r) => r.as_str() }, "Blocking waiting for sidecar lock");
                        }
                        if !notified && start.elapsed() >= opts.on_wait_after {
                            notified = true;
                            if let Some(cb) = &opts.on_wait {
                                let info = last_holder.clone().map(HolderInfo::judge);
                                cb(&self.path, info.as_ref());
                            }
                        }
                    }
                } else {
                    continue; // vanished between create and read: retry at once
                }
            }
            let now = Instant::now();
            if now >= deadline || opts.max_retries.is_some_and(|r| polls >= r) {
                return Err(Error::LockTimeout {
                    path: self.path.clone(),
                    waited: start.elapsed(),
                    holder: last_holder.map(|r| Box::new(HolderInfo::judge(r))),
                });
            }
            let d = opts.delay(polls).min(deadline - now);
            polls += 1;
            std::thread::sleep(d);
        }
    }

    fn acquired(
        &self,
        held: SidecarHeld,
        previous: Option<OwnerRecord>,
        reclaimed: bool,
        start: Instant,
    ) -> (Acquired, SidecarHeld) {
        let record = match Payload::parse(&held.raw) {
            Payload::Lockstore { holder, .. } => OwnerRecord {
                pid_ns: proc::current().pid_ns,
                uid: Some(nix::unistd::getuid().as_raw()),
                version: Some(env!("CARGO_PKG_VERSION").to_string()),
                ..holder
            },
            _ => OwnerRecord::for_current(0),
        };
        (
            Acquired {
                record,
                previous,
                reclaimed,
                waited: start.elapsed(),
            },
            held,
        )
    }

    /// Under the guard: re-check, unlink, create ours. `None` if another process
    /// got there first.
    fn reclaim(
        &self,
        opts: &LockOptions,
        deadline: Instant,
        snap: &SidecarSnapshot,
        payload: &Payload,
        reason: &str,
    ) -> Result<Option<Reclaimed>> {
        let Some(guard) = Guard::take(&self.path)? else {
            return Ok(None);
        };
        if !unlink_if_unchanged(&self.path, snap)? {
            return Ok(None);
        }
        super::RECLAIMS.fetch_add(1, Ordering::Relaxed);
        let prev = payload.holder().cloned();
        let lease_reclaim =
            matches!(payload, Payload::Lockstore { .. }) && reason.contains("lease");
        tracing::warn!(path = %self.path.display(), pid = prev.as_ref().map_or(0, |p| p.pid), reason, "reclaimed stale sidecar lock");
        let held = self.try_create(opts, deadline)?;
        drop(guard);
        Ok(held.map(|h| Reclaimed {
            held: h,
            // A lease reclaim robs a live holder: leave its temp files alone.
            previous: if lease_reclaim { None } else { prev },
        }))
    }

    /// Exclusive-create, beacon flock, payload. `None` on EEXIST.
    fn try_create(&self, opts: &LockOptions, deadline: Instant) -> Result<Option<SidecarHeld>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(Error::io("create sidecar lock", &self.path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::io("fstat sidecar lock", &self.path, e))?;
        let mut held = SidecarHeld {
            path: self.path.clone(),
            file: Some(file),
            dev: meta.dev(),
            ino: meta.ino(),
            raw: Vec::new(),
            lease: None,
        };
        // A waiter may be probing the empty file's flock for a moment: retry.
        let mut spins = 0u32;
        loop {
            let f = held.file()?;
            match f.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    spins += 1;
                    std::thread::sleep(Duration::from_micros(50 * u64::from(spins.min(20))));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::LockTimeout {
                        path: self.path.clone(),
                        waited: Duration::ZERO,
                        holder: None,
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("flock sidecar lock", &self.path, e))
                }
            }
        }
        held.raw = payload_bytes(opts)?;
        held.file()?
            .write_all_at(&held.raw, 0)
            .map_err(|e| Error::io("write sidecar payload", &self.path, e))?;
        // Someone removed our file before we wrote (only possible if they judged it
        // while empty and older than `stale`): we do not hold the lock.
        if !held.identity_matches()? {
            held.raw.clear();
            return Ok(None);
        }
        if let Some(lease) = opts.lease {
            held.start_lease(lease)?;
        }
        Ok(Some(held))
    }
}

struct Reclaimed {
    held: SidecarHeld,
    previous: Option<OwnerRecord>,
}

impl Reclaimed {
    fn finish(self, lock: &SidecarLock, start: Instant) -> (Acquired, SidecarHeld) {
        lock.acquired(self.held, self.previous, true, start)
    }
}

fn payload_bytes(opts: &LockOptions) -> Result<Vec<u8>> {
    let me = proc::current();
    let mut marker = Map::new();
    marker.insert("version".into(), PAYLOAD_VERSION.into());
    marker.insert("flock".into(), true.into());
    if let Some(l) = opts.lease {
        marker.insert("leaseMs".into(), (l.as_millis() as u64).into());
    }
    marker.insert("cmd".into(), proc::command_line().into());
    let mut m = Map::new();
    m.insert("pid".into(), me.pid.into());
    m.insert(
        "createdAt".into(),
        crate::timefmt::iso_ms(proc::now_ms()).into(),
    );
    if let Some(t) = me.start_time {
        m.insert("starttime".into(), t.into());
    }
    if let Some(h) = &me.hostname {
        m.insert("hostname".into(), h.clone().into());
    }
    if let Some(b) = &me.boot_id {
        m.insert("bootId".into(), b.clone().into());
    }
    m.insert("token".into(), proc::random_hex(16).into());
    m.insert("lockstore".into(), Value::Object(marker));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(m)).map_err(|e| Error::Serialize {
        path: PathBuf::new(),
        source: e,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

impl SidecarHeld {
    fn file(&self) -> Result<&File> {
        self.file.as_ref().ok_or_else(|| Error::LockLost {
            path: self.path.clone(),
        })
    }

    fn identity_matches(&self) -> Result<bool> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => Ok(m.dev() == self.dev && m.ino() == self.ino),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat sidecar lock", &self.path, e)),
        }
    }

    fn start_lease(&mut self, lease: Duration) -> Result<()> {
        let f = self
            .file()?
            .try_clone()
            .map_err(|e| Error::io("dup sidecar lock fd", &self.path, e))?;
        let every = (lease / 3).max(Duration::from_millis(1));
        let (tx, rx) = mpsc::channel::<()>();
        let path = self.path.clone();
        let h = std::thread::Builder::new()
            .name("lockstore-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    if let Err(e) = f.set_modified(SystemTime::now()) {
                        tracing::warn!(path = %path.display(), error = %e, "could not refresh lease");
                    }
                }
            })
            .map_err(|e| Error::io("spawn lease thread", &self.path, e))?;
        self.lease = Some((tx, h));
        Ok(())
    }

    /// Checks that the sidecar at the path is still ours (same inode, same bytes);
    /// call it right before committing (fencing).
    ///
    /// Errors: [`Error::LockLost`] when another process reclaimed the lock (lease
    /// expiry, or a foreign reclaimer); [`Error::Io`].
    pub fn verify_still_held(&self) -> Result<()> {
        let lost = || Error::LockLost {
            path: self.path.clone(),
        };
        if self.raw.is_empty() || !self.identity_matches()? {
            return Err(lost());
        }
        let mut buf = vec![0u8; self.raw.len() + 1];
        let n = self
            .file()?
            .read_at(&mut buf, 0)
            .map_err(|e| Error::io("read sidecar lock", &self.path, e))?;
        if buf[..n] != self.raw[..] {
            return Err(lost());
        }
        Ok(())
    }

    /// Releases: stops the lease thread, unlinks the sidecar only if it is still
    /// ours (logged at warn otherwise), closes the fd (dropping the beacon).
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if let Some((tx, h)) = self.lease.take() {
            drop(tx);
            let _ = h.join();
        }
        if self.file.is_none() {
            return;
        }
        match self.verify_still_held() {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove sidecar lock");
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "sidecar lock was taken over; leaving the new holder's file")
            }
        }
        self.file = None;
    }
}

impl Drop for SidecarHeld {
    fn drop(&mut self) {
        self.release_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LockOptions {
        LockOptions {
            protocol: LockProtocol::Sidecar,
            ..Default::default()
        }
    }

    #[test]
    fn exclusive_then_release_removes_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let o = opts();
        let (_, held) = SidecarLock::new(&p).lock(&o, Instant::now()).unwrap();
        let err = SidecarLock::new(&p)
            .lock(&o, Instant::now() + Duration::from_millis(30))
            .unwrap_err();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
        held.verify_still_held().unwrap();
        let payload = Payload::parse(&held.raw);
        assert!(
            matches!(payload, Payload::Lockstore { ref holder, .. } if holder.pid == std::process::id())
        );
        held.release();
        assert!(!p.exists());
    }

    #[test]
    fn dead_foreign_owner_is_reclaimed_live_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(
            &p,
            format!(
                "{{\"pid\": {dead}, \"createdAt\": \"{}\"}}\n",
                crate::timefmt::iso_ms(proc::now_ms())
            ),
        )
        .unwrap();
        let (acq, held) = SidecarLock::new(&p).lock(&opts(), Instant::now()).unwrap();
        assert!(acq.reclaimed);
        assert_eq!(acq.previous.unwrap().pid, dead);
        drop(held);
        // A live foreign owner (this process) is never reclaimed.
        std::fs::write(
            &p,
            format!(
                "{{\"pid\": {}, \"createdAt\": \"2000-01-01T00:00:00.000Z\"}}",
                std::process::id()
            ),
        )
        .unwrap();
        assert!(matches!(
            reclaim_definitely_stale(&p, Duration::ZERO).unwrap(),
            ReclaimOutcome::Retained(_)
        ));
        let mut fc = opts();
        fc.fail_closed = true;
        std::fs::write(&p, format!("{{\"pid\": {dead}}}")).unwrap();
        let err = SidecarLock::new(&p).lock(&fc, Instant::now()).unwrap_err();
        assert!(matches!(err, Error::LockStale { .. }), "{err}");
    }

    /// The re-check under the guard: a reclaimer that judged an old dead file must
    /// not unlink the lock a faster reclaimer created meanwhile.
    #[test]
    fn reclaim_rechecks_identity_and_bytes_before_unlink() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        std::fs::write(
            &p,
            "{\"pid\": 999999999, \"createdAt\": \"2000-01-01T00:00:00.000Z\"}",
        )
        .unwrap();
        let old = SidecarSnapshot::read(&p).unwrap().unwrap();
        // A faster reclaimer removes it and takes the lock.
        std::fs::remove_file(&p).unwrap();
        let (_, held) = SidecarLock::new(&p).lock(&opts(), Instant::now()).unwrap();
        assert!(!unlink_if_unchanged(&p, &old).unwrap());
        held.verify_still_held().unwrap();
        // Same inode rewritten in place with other bytes: also refused.
        drop(held);
        std::fs::write(&p, "{\"pid\": 999999999}").unwrap();
        let old = SidecarSnapshot::read(&p).unwrap().unwrap();
        std::fs::write(&p, "{\"pid\": 1}").unwrap();
        assert!(!unlink_if_unchanged(&p, &old).unwrap());
        assert!(p.exists());
    }

    #[test]
    fn flock_record_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let rec = serde_json::to_vec(&OwnerRecord::for_current(3)).unwrap();
        std::fs::write(&p, rec).unwrap();
        let err = SidecarLock::new(&p)
            .lock(&opts(), Instant::now())
            .unwrap_err();
        assert!(matches!(err, Error::LockProtocolMismatch { .. }), "{err}");
    }

    #[test]
    fn stale_guard_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json.lock");
        let g = reclaim_guard_path(&p);
        std::fs::create_dir(&g).unwrap();
        assert!(guard_blocks(&g));
        let old = SystemTime::now() - GUARD_STALE - Duration::from_secs(1);
        std::fs::File::open(&g).unwrap().set_modified(old).unwrap();
        assert!(!guard_blocks(&g));
        assert!(!g.exists());
    }
}
