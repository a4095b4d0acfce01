//! Registry reads: by id, lists, the secondary indexes, CLI lookup and audit.
//! Each read first reloads if another connection committed
//! ([`super::coherence`]) and then answers from memory.

use std::time::SystemTime;

use super::audit::{self, AuditOptions, AuditReport};
use super::index::Index;
use super::record::{DeliveryState, TaskRecord};
use super::registry::TaskRegistry;
use super::store::Snapshot;
use super::TaskError;

impl TaskRegistry {
    /// The task `id` (after a data_version check).
    ///
    /// Errors (every read): [`TaskError::Core`] (SQLite), and
    /// [`TaskError::InvalidPersisted`] when a reload finds a bad row.
    pub fn get(&self, id: &str) -> Result<Option<TaskRecord>, TaskError> {
        self.read(|i| i.snap.tasks.get(id).cloned())
    }

    /// The delivery state of task `id`.
    pub fn delivery_state(&self, id: &str) -> Result<Option<DeliveryState>, TaskError> {
        self.read(|i| i.snap.delivery_states.get(id).cloned())
    }

    /// Every task, newest first (createdAt desc, then id).
    pub fn list(&self) -> Result<Vec<TaskRecord>, TaskError> {
        self.read(|i| {
            let mut v: Vec<_> = i.snap.tasks.values().cloned().collect();
            v.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then(b.task_id.cmp(&a.task_id))
            });
            v
        })
    }

    /// The whole in-memory state (tasks and delivery states).
    pub fn snapshot(&self) -> Result<Snapshot, TaskError> {
        self.read(|i| i.snap.clone())
    }

    fn by_index(&self, which: Index, key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.read(|i| {
            i.index(which)
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|id| i.snap.tasks.get(id).cloned())
                .collect()
        })
    }

    /// Tasks with run id `run_id` (index).
    pub fn by_run_id(&self, run_id: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(Index::RunId, run_id)
    }
    /// Tasks of owner key `owner_key` (index).
    pub fn by_owner_key(&self, owner_key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(Index::OwnerKey, owner_key)
    }
    /// Tasks with child session `key` (index).
    pub fn by_child_session(&self, key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(Index::ChildSession, key)
    }
    /// Tasks of parent flow `flow_id` (index).
    pub fn by_parent_flow(&self, flow_id: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(Index::ParentFlow, flow_id)
    }

    /// Resolves a CLI lookup: task id, then run id, then child session key,
    /// then owner/requester session key (newest match).
    ///
    /// Errors: [`TaskError::NotFound`].
    pub fn lookup(&self, lookup: &str) -> Result<TaskRecord, TaskError> {
        let found = self.read(|i| {
            if let Some(t) = i.snap.tasks.get(lookup) {
                return Some(t.clone());
            }
            for which in [Index::RunId, Index::ChildSession, Index::OwnerKey] {
                if let Some(ids) = i.index(which).get(lookup) {
                    return ids
                        .iter()
                        .filter_map(|id| i.snap.tasks.get(id))
                        .max_by_key(|t| (t.created_at, t.task_id.clone()))
                        .cloned();
                }
            }
            i.snap
                .tasks
                .values()
                .filter(|t| t.requester_session_key == lookup && !lookup.is_empty())
                .max_by_key(|t| (t.created_at, t.task_id.clone()))
                .cloned()
        })?;
        found.ok_or_else(|| TaskError::NotFound {
            path: self.path().to_path_buf(),
            lookup: lookup.to_string(),
        })
    }

    /// Audits every task at `now` (see [`audit::audit`]).
    pub fn audit(&self, now: SystemTime, opts: &AuditOptions) -> Result<AuditReport, TaskError> {
        let tasks = self.list()?;
        Ok(audit::audit(&tasks, now, opts))
    }
}
