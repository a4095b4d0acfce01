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

use std::path::PathBuf;

pub mod audit;
pub mod record;
pub mod registry;
pub mod store;

pub use audit::{
    audit, AuditCode, AuditFinding, AuditOptions, AuditReport, AuditSummary, Severity,
};
pub use record::*;
pub use registry::{
    group_commit_stats, MaintenanceMode, MaintenanceOptions, MaintenanceReport, RegistryOptions,
    TaskEvent, TaskObserver, TaskRegistry,
};
pub use store::{Snapshot, SqliteTaskStore, TaskStore, WriteOutcome, SCHEMA_VERSION};

/// Errors of the task ledger. Every variant names the database file.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
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

    /// Bad input (empty description, active-only field...).
    #[error("invalid task for {}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl TaskError {
    pub(crate) fn sqlite(op: &'static str, path: &std::path::Path, e: rusqlite::Error) -> Self {
        TaskError::Core(crate::Error::sqlite(op, path, e))
    }
}
