//! [`OutboxError`], the error type of every outbox operation.

use std::path::PathBuf;
use std::time::Duration;

use super::Status;

/// Errors of the outbox store (feature `outbox`). Every variant about the
/// database names its file (`path`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A core error (SQLite, I/O, lock, schema too new, foreign database), naming
    /// the file.
    #[error(transparent)]
    Core(#[from] crate::Error),
    /// [`super::Outbox::enqueue`]: a required text field (`channel`, `target`)
    /// is empty. Nothing was written.
    #[error("cannot enqueue into {}: the {field} must not be empty", .path.display())]
    EmptyField {
        /// Database file.
        path: PathBuf,
        /// The empty field (`"channel"` or `"target"`).
        field: &'static str,
    },
    /// [`super::Outbox::enqueue`]: the TTL (the message's or
    /// [`super::OutboxOptions::default_ttl`]) is shorter than 1 ms. Nothing was
    /// written.
    #[error("cannot enqueue into {}: the TTL must be at least 1 ms (got {ttl:?})", .path.display())]
    InvalidTtl {
        /// Database file.
        path: PathBuf,
        /// The TTL given.
        ttl: Duration,
    },
    /// [`super::Outbox::prune`]: a retention age is shorter than 1 ms (pruning
    /// everything terminal "older than now" is never what an operator meant).
    /// Nothing was deleted.
    #[error("cannot prune {}: the {status} retention must be at least 1 ms (got {age:?})", .path.display())]
    InvalidPruneAge {
        /// Database file.
        path: PathBuf,
        /// The terminal status whose retention is wrong.
        status: Status,
        /// The age given.
        age: Duration,
    },
    /// A status name that is not one of the stored names (`pending`,
    /// `in_flight`, `delivered`, `dead`, `expired`, `unknown`), from
    /// [`Status`]'s `FromStr`.
    #[error("unknown outbox status {value:?} (expected pending, in_flight, delivered, dead, expired or unknown)")]
    UnknownStatus {
        /// The text given.
        value: String,
    },
    /// A stored row that cannot be decoded (bad status, payload or claimer
    /// JSON).
    #[error("corrupt outbox row in {}: column {column}: {reason}", .path.display())]
    CorruptRow {
        /// Database file.
        path: PathBuf,
        /// Column index (in the order of [`super::Entry`]'s fields).
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// [`super::legacy::import_legacy`]: the row written for a legacy file did
    /// not read back as written; the file was left in place.
    #[error("legacy import into {}: the row for {} did not read back as written; the file was left in place", .path.display(), .file.display())]
    LegacyReadBack {
        /// Database file.
        path: PathBuf,
        /// The legacy queue file.
        file: PathBuf,
    },
}

impl OutboxError {
    /// The database file this error is about; `None` for
    /// [`OutboxError::UnknownStatus`] (an input, not a file).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            OutboxError::Core(e) => e.path(),
            OutboxError::EmptyField { path, .. }
            | OutboxError::InvalidTtl { path, .. }
            | OutboxError::InvalidPruneAge { path, .. }
            | OutboxError::CorruptRow { path, .. }
            | OutboxError::LegacyReadBack { path, .. } => Some(path),
            OutboxError::UnknownStatus { .. } => None,
        }
    }

    /// Whether the disk is full ([`crate::Error::is_no_space`]); the outbox's
    /// rows are unchanged.
    pub fn is_no_space(&self) -> bool {
        matches!(self, OutboxError::Core(e) if e.is_no_space())
    }

    /// Whether a lock or busy wait ran past its deadline
    /// ([`crate::Error::is_lock_timeout`]); nothing was written.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, OutboxError::Core(e) if e.is_lock_timeout())
    }

    /// Whether the database is unusable as found: a row that does not decode
    /// ([`OutboxError::CorruptRow`]) or a malformed or foreign database
    /// ([`crate::Error::is_corrupt`]). Nothing was written.
    pub fn is_corrupt(&self) -> bool {
        match self {
            OutboxError::CorruptRow { .. } => true,
            OutboxError::Core(e) => e.is_corrupt(),
            _ => false,
        }
    }
}

/// Into the umbrella error: a wrapped core error comes back out as itself.
impl From<OutboxError> for crate::Error {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Core(c) => c,
            other => crate::Error::Outbox(Box::new(other)),
        }
    }
}

/// Result alias of the outbox.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;
