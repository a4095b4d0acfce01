//! The task ledger: SQLite task runs (`<state>/tasks/runs.sqlite`) that never
//! diverge from the in-memory registry, shared by a daemon and CLI processes.
//!
//! Follows openclaw's task ledger (reference §5: `src/tasks/*`): the
//! [`TaskRecord`] and its enums, the [`TaskStore`] interface with observers, the
//! persist-before-commit registry (openclaw #88007 → PR #88008), retention,
//! maintenance and audit. lockstore additions: owner process columns
//! (`owner_pid`, `owner_start_time`, `owner_boot_id`) so a dead owner is known
//! at once, a `version` column bumped on every write (compare-and-set),
//! `PRAGMA data_version` reloads for cross-process coherence, strict failures
//! instead of a silently empty registry, and a repair for every audit code.
//! See docs/tasks.md.
//!
//! Files: `record.rs` (the record, its enums and lifecycle rules), `store.rs`
//! (SQLite schema and rows), `audit.rs`; the registry in `registry.rs` (the
//! handle and its options), `index.rs` (memory and its indexes),
//! `coherence.rs` (reloads), `batch.rs` (persist-before-commit, group
//! commit), `mutations.rs`, `queries.rs`, `maintenance.rs` and
//! `observers.rs`. Feature `tasks`.

use std::path::PathBuf;

mod audit;
mod backend;
mod batch;
mod coherence;
mod index;
mod lease;
mod maintenance;
mod mutations;
mod observers;
#[cfg(feature = "postgres")]
mod pg;
mod queries;
mod record;
mod registry;
mod store;

pub use audit::{
    audit, AuditCode, AuditFinding, AuditOptions, AuditReport, AuditSummary, Severity,
};
pub use maintenance::{
    MaintenanceAction, MaintenanceMode, MaintenanceOptions, MaintenanceReport, TASK_RECONCILE_GRACE,
};
pub use mutations::Finish;
pub use observers::{ObserverError, TaskEvent, TaskObserver};
#[cfg(feature = "postgres")]
pub use pg::PgTaskStore;
pub use record::*;
pub use registry::{RegistryOptions, TaskRegistry};
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use store::MIGRATIONS;
pub use store::{Snapshot, SqliteTaskStore, TaskStore, WriteOutcome, SCHEMA_VERSION};

/// Errors of the task ledger. Every variant names the database file.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// A core error (SQLite, lock timeout, I/O, schema too new...).
    #[error(transparent)]
    Core(#[from] crate::Error),

    /// A persisted value does not parse (openclaw: "Invalid persisted task").
    /// Nothing is loaded; the file is left untouched.
    #[error("invalid persisted task {task_id} in {}: column {column} has unknown value {value:?}", .path.display())]
    InvalidPersisted {
        path: PathBuf,
        task_id: String,
        column: &'static str,
        value: String,
    },

    /// No task matches the lookup (task id, run id or session key).
    #[error("task not found: {lookup} (in {})", .path.display())]
    NotFound { path: PathBuf, lookup: String },

    /// A status change that monotonicity forbids (see
    /// [`TaskStatus::may_become`]). Nothing was written.
    #[error("task {task_id} in {}: status {from} cannot become {to} (a terminal status never returns to active, and a later result never downgrades cancelled, failed, timed_out or lost)", .path.display())]
    InvalidTransition {
        path: PathBuf,
        task_id: String,
        from: TaskStatus,
        to: TaskStatus,
    },

    /// A compare-and-set on `version` missed and could not be re-applied.
    #[error("task {task_id} in {}: compare-and-set on version failed (expected {expected}, found {found:?}); reload and retry", .path.display())]
    Conflict {
        path: PathBuf,
        task_id: String,
        expected: i64,
        found: Option<i64>,
    },

    /// Bad input for a new task: no runtime, empty description, or a
    /// terminal initial status (`reason` says which). Nothing was written.
    #[error("invalid task for {}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: &'static str },

    /// [`TaskRegistry::finish`] with an active status (queued or running).
    /// Nothing was written.
    #[error("task {task_id} in {}: finish needs a terminal status, not {status}", .path.display())]
    NotTerminal {
        path: PathBuf,
        task_id: String,
        status: TaskStatus,
    },

    /// An owner write ([`TaskRegistry::renew`],
    /// [`TaskRegistry::record_progress_fenced`], [`TaskRegistry::finish_fenced`])
    /// named fencing token `token`, but the task has moved on: another owner
    /// took it over (`current` is its token) or it already ended (`status`
    /// terminal, e.g. marked lost after the lease expired). Nothing was
    /// written; the caller no longer owns the task.
    #[error("task {task_id} in {}: stale owner: fencing token {token} is not the task's (token {current}, status {status}); another owner took over or the task ended", .path.display())]
    Stale {
        path: PathBuf,
        task_id: String,
        token: i64,
        current: i64,
        status: TaskStatus,
    },

    /// [`TaskRegistry::claim`] of a task another owner still holds: a live
    /// process on this host, or an unexpired lease (Unix ms
    /// `lease_expires_at`) of an owner on another host. Nothing was written.
    #[error("task {task_id} in {}: held by {holder} (lease until {lease_expires_at:?} ms)", .path.display())]
    Held {
        path: PathBuf,
        task_id: String,
        holder: String,
        lease_expires_at: Option<i64>,
    },
}

impl TaskError {
    /// The ledger file this error is about.
    pub fn path(&self) -> Option<&std::path::Path> {
        Some(match self {
            TaskError::Core(e) => return e.path(),
            TaskError::InvalidPersisted { path, .. }
            | TaskError::NotFound { path, .. }
            | TaskError::InvalidTransition { path, .. }
            | TaskError::Conflict { path, .. }
            | TaskError::Invalid { path, .. }
            | TaskError::NotTerminal { path, .. }
            | TaskError::Stale { path, .. }
            | TaskError::Held { path, .. } => path,
        })
    }

    /// Whether the disk is full ([`crate::Error::is_no_space`]: SQLITE_FULL,
    /// ENOSPC, EFBIG, EDQUOT), with or without group commit. Memory and the
    /// ledger's rows are unchanged.
    pub fn is_no_space(&self) -> bool {
        matches!(self, TaskError::Core(e) if e.is_no_space())
    }

    /// Whether the ledger's lock was not acquired before the deadline
    /// ([`crate::Error::is_lock_timeout`]). Nothing was written.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, TaskError::Core(e) if e.is_lock_timeout())
    }

    /// Whether the ledger is unusable as found: a persisted value that does
    /// not parse ([`TaskError::InvalidPersisted`]) or a malformed database
    /// ([`crate::Error::is_corrupt`]). The file is left untouched.
    pub fn is_corrupt(&self) -> bool {
        match self {
            TaskError::InvalidPersisted { .. } => true,
            TaskError::Core(e) => e.is_corrupt(),
            _ => false,
        }
    }

    pub(crate) fn sqlite(op: &'static str, path: &std::path::Path, e: rusqlite::Error) -> Self {
        TaskError::Core(crate::Error::sqlite(op, path, e))
    }
}

/// Into the umbrella error: a wrapped core error comes back out as itself.
impl From<TaskError> for crate::Error {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Core(c) => c,
            other => crate::Error::Tasks(Box::new(other)),
        }
    }
}
