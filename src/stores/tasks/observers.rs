//! Registry events and observers (openclaw `onEvent`): built only when at
//! least one observer is registered, delivered after the write committed.

use std::sync::Arc;

use super::record::TaskRecord;
use super::registry::{Core, TaskRegistry};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A registry event (openclaw `onEvent` / observers). Built only when at least
/// one observer is registered.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
#[non_exhaustive]
pub enum TaskEvent {
    /// The registry (re)loaded from SQLite — emitted also for an empty ledger.
    Restored {
        /// Every task after the load.
        tasks: Vec<TaskRecord>,
    },
    /// A task was inserted or updated.
    Upserted {
        /// The task as persisted.
        task: TaskRecord,
        /// The previous in-memory copy, if any.
        previous: Option<TaskRecord>,
    },
    /// A task was deleted (with its delivery state).
    Deleted {
        /// Its id.
        task_id: String,
        /// The record before deletion.
        previous: TaskRecord,
    },
}

/// An observer's failure; logged and ignored.
pub type ObserverError = Box<dyn std::error::Error + Send + Sync>;

/// Receives [`TaskEvent`]s after the write committed. An observer's error is
/// logged and a panic caught; neither affects the write. Each caller notifies
/// on its own thread after its commit, so the events of concurrent mutations
/// (and of the members of one group-commit batch) may arrive out of order:
/// order them by [`TaskRecord::version`], which increases with every write.
pub trait TaskObserver: Send + Sync {
    /// Called after every committed change.
    ///
    /// Errors: any; logged at warn and otherwise ignored.
    fn on_event(&self, event: &TaskEvent) -> Result<(), ObserverError>;
}

impl<F: Fn(&TaskEvent) -> Result<(), ObserverError> + Send + Sync> TaskObserver for F {
    fn on_event(&self, event: &TaskEvent) -> Result<(), ObserverError> {
        self(event)
    }
}

pub(super) fn notify(obs: &[Arc<dyn TaskObserver>], ev: &TaskEvent) {
    for o in obs {
        match catch_unwind(AssertUnwindSafe(|| o.on_event(ev))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "task observer failed (ignored)"),
            Err(_) => tracing::warn!("task observer panicked (ignored)"),
        }
    }
}

impl Core {
    pub(super) fn has_observers(&self) -> bool {
        !self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

impl TaskRegistry {
    /// Registers an observer and sends it a `restored` event with the current
    /// tasks (also when there are none).
    pub fn add_observer(&self, o: Arc<dyn TaskObserver>) {
        let tasks = self
            .core
            .lock_inner()
            .snap
            .tasks
            .values()
            .cloned()
            .collect();
        notify(std::slice::from_ref(&o), &TaskEvent::Restored { tasks });
        self.core
            .observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(o);
    }

    pub(super) fn observers(&self) -> Vec<Arc<dyn TaskObserver>> {
        self.core
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Notifies every observer of `events` (in order), on this thread.
    pub(super) fn emit(&self, events: &[TaskEvent]) {
        if !events.is_empty() {
            let obs = self.observers();
            for ev in events {
                notify(&obs, ev);
            }
        }
    }
}
