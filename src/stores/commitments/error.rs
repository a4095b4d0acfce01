//! Errors of the commitments store.

use std::path::PathBuf;

use super::validate::InvalidRecord;

/// Result alias of the commitments store.
pub type Result<T, E = CommitmentsError> = std::result::Result<T, E>;

/// Errors of the commitments store. Every variant names the store file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CommitmentsError {
    /// Lock, I/O, corrupt envelope ([`crate::Error::Corrupt`]: not JSON, not an
    /// object, missing or unknown `version`, `commitments` not an array) and the
    /// like.
    #[error(transparent)]
    Core(#[from] crate::Error),
    /// The file holds records that fail validation; nothing was written. Set
    /// [`super::CommitmentsConfig::quarantine_invalid`] to move them to a side
    /// file.
    #[error("{} has {} invalid commitment record(s): {}; refusing to overwrite it (quarantine them to a side file to continue, e.g. `lockstore commitments --quarantine-invalid`)", .path.display(), .records.len(), summarize(.records))]
    InvalidRecords {
        /// The store file.
        path: PathBuf,
        /// The invalid records, in file order.
        records: Vec<InvalidRecord>,
    },
    /// A candidate or its scope is invalid; nothing was written.
    #[error("invalid commitment input for {}: {problem}", .path.display())]
    InvalidInput {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        problem: InputProblem,
    },
}

impl CommitmentsError {
    /// The store file this error is about.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            CommitmentsError::Core(e) => e.path(),
            CommitmentsError::InvalidRecords { path, .. }
            | CommitmentsError::InvalidInput { path, .. } => Some(path),
        }
    }

    /// Whether the disk is full ([`crate::Error::is_no_space`]); the file is
    /// unchanged.
    pub fn is_no_space(&self) -> bool {
        matches!(self, CommitmentsError::Core(e) if e.is_no_space())
    }

    /// Whether the store's lock was not acquired before the deadline
    /// ([`crate::Error::is_lock_timeout`]); nothing was written.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, CommitmentsError::Core(e) if e.is_lock_timeout())
    }

    /// Whether the file is unusable as found: a corrupt envelope
    /// ([`crate::Error::is_corrupt`]) or records that fail validation
    /// ([`CommitmentsError::InvalidRecords`]). The file is left untouched.
    pub fn is_corrupt(&self) -> bool {
        match self {
            CommitmentsError::InvalidRecords { .. } => true,
            CommitmentsError::Core(e) => e.is_corrupt(),
            _ => false,
        }
    }
}

/// Into the umbrella error: a wrapped core error comes back out as itself.
impl From<CommitmentsError> for crate::Error {
    fn from(e: CommitmentsError) -> Self {
        match e {
            CommitmentsError::Core(c) => c,
            other => crate::Error::Commitments(Box::new(other)),
        }
    }
}

/// What is wrong with the input of
/// [`super::CommitmentsStore::upsert_inferred`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputProblem {
    /// A required scope field (`agentId`, `sessionKey`, `channel`) is empty.
    #[error("{field} must be a non-empty string")]
    EmptyScopeField {
        /// The field (camelCase).
        field: &'static str,
    },
    /// A candidate's `dedupeKey` is empty after trimming.
    #[error("candidate #{candidate}: dedupeKey must be a non-empty string")]
    EmptyDedupeKey {
        /// Index of the candidate.
        candidate: usize,
    },
    /// A candidate's confidence is negative or not finite.
    #[error("candidate #{candidate}: confidence must be a finite number >= 0, got {confidence}")]
    BadConfidence {
        /// Index of the candidate.
        candidate: usize,
        /// The value given.
        confidence: f64,
    },
    /// A candidate's window ends before it starts.
    #[error("candidate #{candidate}: latestMs {latest_ms} is before earliestMs {earliest_ms}")]
    InvertedWindow {
        /// Index of the candidate.
        candidate: usize,
        /// Window start (Unix ms).
        earliest_ms: i64,
        /// Window end (Unix ms).
        latest_ms: i64,
    },
    /// A candidate that would be inserted (no active record to merge into) has
    /// an empty `reason` or `suggestedText`; the whole batch is aborted.
    #[error("{field} must be non-empty for a new commitment (dedupeKey {dedupe_key:?})")]
    EmptyTextOnInsert {
        /// `reason` or `suggestedText`.
        field: &'static str,
        /// The candidate's trimmed dedupe key.
        dedupe_key: String,
    },
}

fn summarize(r: &[InvalidRecord]) -> String {
    let mut s: Vec<String> = r.iter().take(3).map(|x| x.to_string()).collect();
    if r.len() > 3 {
        s.push(format!("and {} more", r.len() - 3));
    }
    s.join("; ")
}
