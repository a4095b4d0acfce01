//! Typed errors of the core layers (lock, queue, writer, atomic IO, JSON documents).
//!
//! Every variant that concerns a file carries its path, so a message printed to a
//! user always names the file and what is wrong with it.

use std::path::PathBuf;
use std::time::Duration;

use crate::lock::owner::HolderInfo;

/// Result alias for the core layers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// lockstore's error: the core layers' variants (lock, queue, writer, atomic
/// save, JSON documents, SQLite conventions), and one variant per store layer
/// wrapping that store's own error (`tasks::TaskError`,
/// `outbox::OutboxError`, `commitments::CommitmentsError`, by feature;
/// each converts into this type with `?`/`From`, a wrapped core error coming
/// back out as itself). Every variant about a file names it ([`Error::path`]).
/// [`Error::is_no_space`], [`Error::is_lock_timeout`] and [`Error::is_corrupt`]
/// answer for every variant, the wrapped ones included.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The deadline in [`crate::lock::LockOptions::deadline`] passed before the
    /// in-process queue slot and the cross-process lock were both acquired.
    /// `waited` is the whole wait; `holder` is the last owner record read from the
    /// lock file, if any.
    #[error("timed out after {} ms waiting for file lock on {}{}", .waited.as_millis(), .path.display(), holder_suffix(.holder))]
    LockTimeout {
        path: PathBuf,
        waited: Duration,
        holder: Option<Box<HolderInfo>>,
    },

    /// The store lives on a file system whose advisory locks cannot be trusted
    /// (NFS, SMB/CIFS, FUSE). Set `LOCKSTORE_ALLOW_NETWORK_FS=1` to override.
    #[error("{} is on a {fs} file system, where advisory file locks are unreliable; move the state dir to a local disk or set LOCKSTORE_ALLOW_NETWORK_FS=1", .path.display())]
    UnsupportedFilesystem { path: PathBuf, fs: &'static str },

    /// The kernel refused to lock (ENOLCK, EOPNOTSUPP, ENOSYS). lockstore never
    /// proceeds unlocked.
    #[error("cannot lock {}: the file system does not support flock ({source}); refusing to proceed unlocked", .path.display())]
    LockUnsupported {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A nested exclusive section on a path this thread already holds.
    #[error("re-entrant exclusive section on {}: this thread already holds its writer slot (nesting would deadlock)", .path.display())]
    Reentrant { path: PathBuf },

    /// A store file that does not parse, has an unknown version or is otherwise
    /// unusable. The file is left untouched.
    #[error("corrupt store {}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// The store path is a symbolic link; lockstore refuses to write through one.
    #[error("refusing to write through symbolic link {}", .path.display())]
    Symlink { path: PathBuf },

    /// The path has no file name or parent directory.
    #[error("invalid store path {}: {reason}", .path.display())]
    InvalidPath { path: PathBuf, reason: &'static str },

    /// A store or lock path exists but is not a regular file (`kind`: "a
    /// directory", "a FIFO (named pipe)", "a character device", "a block
    /// device", "a socket"). Refused before any blocking open, so a FIFO cannot
    /// hang a reader and a device is never read or written.
    #[error("{} is {kind}, not a regular file; a store and its lock file must be regular files (or absent)", .path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },

    /// A file changed size while it was read: it grew past the size `fstat`
    /// reported when it was opened (plus a margin). Nothing was parsed.
    #[error("{} grew past its size ({size} bytes) while being read; refusing to read an unbounded file", .path.display())]
    FileGrew { path: PathBuf, size: u64 },

    /// The state directory (or a store directory inside it, or a directory
    /// above it) could be changed by another user: owned by someone other than
    /// the caller or root, writable by group or others without the sticky bit,
    /// or (a store directory) a symbolic link. `fix` says what to run. Set
    /// `LOCKSTORE_INSECURE_STATE_DIR=1` to skip the check (see docs/security.md).
    #[error("insecure state directory {}: {reason}; fix: {fix} (or set LOCKSTORE_INSECURE_STATE_DIR=1 to skip this check)", .path.display())]
    InsecureStateDir {
        path: PathBuf,
        reason: String,
        fix: String,
    },

    /// No state directory can be determined: `LOCKSTORE_STATE_DIR`,
    /// `XDG_STATE_HOME` and `HOME` are all unset or empty (lockstore never
    /// falls back to a directory relative to the working directory).
    #[error("no state directory: LOCKSTORE_STATE_DIR, XDG_STATE_HOME and HOME are all unset or empty; set one of them or pass --state-dir")]
    NoStateDir,

    /// Serializing the document failed; nothing was written.
    #[error("cannot serialize {}: {source}", .path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A SQLite error, with the operation that failed (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    #[error("{op} {}: {source}{}", .path.display(), crate::sqlite::hint(.source))]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The database's schema (SQLite `PRAGMA user_version`, or PostgreSQL's
    /// `lockstore_schema` row; `path` is then the redacted database URL) is
    /// newer than this binary knows; it is refused, never downgraded
    /// (features `sqlite` / `postgres`).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("database {} has schema version {found}, newer than the {supported} this lockstore {} supports; upgrade lockstore", .path.display(), env!("CARGO_PKG_VERSION"))]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// A PostgreSQL error (feature `postgres`): the operation, the database
    /// URL with its password redacted, and the client's error (SQLSTATE in
    /// `source.code()`).
    #[cfg(feature = "postgres")]
    #[error("{op} on {database}: {}", pg_message(source))]
    Postgres {
        op: &'static str,
        database: String,
        #[source]
        source: postgres::Error,
    },

    /// No PostgreSQL connection could be had from the pool before its
    /// connect timeout (server down, unreachable, authentication refused;
    /// feature `postgres`).
    #[cfg(feature = "postgres")]
    #[error("cannot connect to {database}: {source}")]
    PgConnect {
        database: String,
        #[source]
        source: r2d2::Error,
    },

    /// Sidecar protocol with `fail_closed`: the lock's holder is gone (`holder`
    /// says why) but reclaiming was not allowed (fs-safe's `file_lock_stale`).
    #[error("stale file lock on {}: {holder}; not reclaimed (fail-closed); check and run `lockstore lock reclaim`", .path.display())]
    LockStale { path: PathBuf, holder: String },

    /// Sidecar lease mode: another process took the lock over while this holder
    /// was silent; the commit was refused so the newer holder's work is kept.
    #[error("lost file lock on {}: another process reclaimed it (lease expired); nothing was written", .path.display())]
    LockLost { path: PathBuf },

    /// `<store>.lock` belongs to the other lock protocol (`found`); this acquirer
    /// uses `wanted`. The two protocols are never mixed on one store.
    #[error("lock file {} is used with the {found} lock protocol but this store is opened with the {wanted} protocol; use the same protocol everywhere (--lock-protocol)", .path.display())]
    LockProtocolMismatch {
        path: PathBuf,
        found: &'static str,
        wanted: &'static str,
    },

    /// An I/O error, with the operation that failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An error of the task ledger (feature `tasks`).
    #[cfg(feature = "tasks")]
    #[error(transparent)]
    Tasks(Box<crate::stores::tasks::TaskError>),

    /// An error of the delivery outbox (feature `outbox`).
    #[cfg(feature = "outbox")]
    #[error(transparent)]
    Outbox(Box<crate::stores::outbox::OutboxError>),

    /// An error of the commitments store (feature `commitments`).
    #[cfg(feature = "commitments")]
    #[error(transparent)]
    Commitments(Box<crate::stores::commitments::CommitmentsError>),
}

/// The server's own message (`ERROR: … (SQLSTATE 40001)`) when there is
/// one; rust-postgres's Display says only "db error".
#[cfg(feature = "postgres")]
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

fn holder_suffix(h: &Option<Box<HolderInfo>>) -> String {
    match h {
        Some(h) => format!(" ({})", h.describe()),
        None => String::new(),
    }
}

impl Error {
    /// Builds an [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The file this error is about. `None` for a store error about an input
    /// rather than a file (e.g. an unknown status name), for
    /// [`Error::NoStateDir`], and for PostgreSQL errors (they name the
    /// database URL instead).
    pub fn path(&self) -> Option<&std::path::Path> {
        Some(match self {
            Error::NoStateDir => return None,
            Error::LockTimeout { path, .. }
            | Error::UnsupportedFilesystem { path, .. }
            | Error::LockUnsupported { path, .. }
            | Error::Reentrant { path }
            | Error::Corrupt { path, .. }
            | Error::Symlink { path }
            | Error::InvalidPath { path, .. }
            | Error::NotRegularFile { path, .. }
            | Error::FileGrew { path, .. }
            | Error::InsecureStateDir { path, .. }
            | Error::Serialize { path, .. }
            | Error::LockStale { path, .. }
            | Error::LockLost { path }
            | Error::LockProtocolMismatch { path, .. }
            | Error::Io { path, .. } => path,
            #[cfg(feature = "sqlite")]
            Error::Sqlite { path, .. } => path,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Error::SchemaTooNew { path, .. } => path,
            #[cfg(feature = "postgres")]
            Error::Postgres { .. } | Error::PgConnect { .. } => return None,
            #[cfg(feature = "tasks")]
            Error::Tasks(e) => return e.path(),
            #[cfg(feature = "outbox")]
            Error::Outbox(e) => return e.path(),
            #[cfg(feature = "commitments")]
            Error::Commitments(e) => return e.path(),
        })
    }

    /// Builds an [`Error::Postgres`] for `op` on the database at `url`
    /// (its password redacted).
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(op: &'static str, url: &str, source: postgres::Error) -> Self {
        Error::Postgres {
            op,
            database: crate::postgres::redact(url),
            source,
        }
    }

    /// Builds an [`Error::PgConnect`] for the database at `url`.
    #[cfg(feature = "postgres")]
    pub(crate) fn pool(url: &str, source: r2d2::Error) -> Self {
        Error::PgConnect {
            database: crate::postgres::redact(url),
            source,
        }
    }

    /// Builds an [`Error::Sqlite`] for `op` on `path`.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(op: &'static str, path: impl Into<PathBuf>, source: rusqlite::Error) -> Self {
        Error::Sqlite {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether this is SQLITE_BUSY / SQLITE_LOCKED (contention; retryable).
    pub fn is_busy(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Error::Sqlite { source, .. } => crate::sqlite::is_busy(source),
            #[cfg(feature = "tasks")]
            Error::Tasks(e) => {
                matches!(&**e, crate::stores::tasks::TaskError::Core(c) if c.is_busy())
            }
            #[cfg(feature = "outbox")]
            Error::Outbox(e) => {
                matches!(&**e, crate::stores::outbox::OutboxError::Core(c) if c.is_busy())
            }
            _ => false,
        }
    }

    /// Whether the storage is full: the underlying I/O error is ENOSPC ("no
    /// space left on device"), EFBIG ("file too large") or EDQUOT ("disk quota
    /// exceeded") — also when a wrapper (the temp file's path) hides the OS
    /// error inside the I/O error, keeping only its kind) — or SQLite reported `SQLITE_FULL`. True
    /// with and without group commit: every member of a batch whose save hit
    /// the full disk gets such an error. The store's old file / rows are
    /// intact; free space and retry.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                matches!(
                    Error::os_code_of(source),
                    Some(libc_codes::ENOSPC) | Some(libc_codes::EFBIG) | Some(libc_codes::EDQUOT)
                ) || matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::FileTooLarge
                        | std::io::ErrorKind::QuotaExceeded
                )
            }
            #[cfg(feature = "sqlite")]
            Error::Sqlite {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => f.code == rusqlite::ErrorCode::DiskFull,
            #[cfg(feature = "tasks")]
            Error::Tasks(e) => e.is_no_space(),
            #[cfg(feature = "outbox")]
            Error::Outbox(e) => e.is_no_space(),
            #[cfg(feature = "commitments")]
            Error::Commitments(e) => e.is_no_space(),
            _ => false,
        }
    }

    /// Whether this is [`Error::LockTimeout`]: the deadline
    /// ([`crate::lock::LockOptions::deadline`]) passed while waiting for the
    /// in-process queue or the cross-process lock; nothing was done. Another
    /// writer holds the store (see the error's `holder`); retry later.
    pub fn is_lock_timeout(&self) -> bool {
        match self {
            Error::LockTimeout { .. } => true,
            #[cfg(feature = "tasks")]
            Error::Tasks(e) => e.is_lock_timeout(),
            #[cfg(feature = "outbox")]
            Error::Outbox(e) => e.is_lock_timeout(),
            #[cfg(feature = "commitments")]
            Error::Commitments(e) => e.is_lock_timeout(),
            _ => false,
        }
    }

    /// Whether the store's file is unusable as found: [`Error::Corrupt`]
    /// (unparsable JSON, missing or unknown version, failed migration, a
    /// foreign SQLite database), a SQLite database that is malformed or not a
    /// database (`SQLITE_CORRUPT`, `SQLITE_NOTADB`; feature `sqlite`) or one
    /// whose schema is newer than this binary ([`Error::SchemaTooNew`]). The
    /// file was left untouched; quarantine, repair or upgrade.
    pub fn is_corrupt(&self) -> bool {
        match self {
            Error::Corrupt { .. } => true,
            #[cfg(feature = "sqlite")]
            Error::SchemaTooNew { .. } => true,
            #[cfg(feature = "sqlite")]
            Error::Sqlite {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ),
            #[cfg(feature = "tasks")]
            Error::Tasks(e) => e.is_corrupt(),
            #[cfg(feature = "outbox")]
            Error::Outbox(e) => e.is_corrupt(),
            #[cfg(feature = "commitments")]
            Error::Commitments(e) => e.is_corrupt(),
            _ => false,
        }
    }

    /// The OS error code of `e`, looking through wrappers that keep it as a
    /// source (tempfile's path-carrying errors).
    pub(crate) fn os_code_of(e: &std::io::Error) -> Option<i32> {
        if let Some(c) = e.raw_os_error() {
            return Some(c);
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = match e.get_ref() {
            Some(inner) => Some(inner),
            None => None,
        };
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if let Some(c) = io.raw_os_error() {
                    return Some(c);
                }
                if let Some(inner) = io.get_ref() {
                    cur = Some(inner);
                    continue;
                }
            }
            cur = err.source();
        }
        None
    }
}

mod libc_codes {
    pub const ENOSPC: i32 = nix::libc::ENOSPC;
    pub const EFBIG: i32 = nix::libc::EFBIG;
    pub const EDQUOT: i32 = nix::libc::EDQUOT;
}
