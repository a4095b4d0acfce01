//! The registry's in-memory state: the task map with its delivery states and
//! the secondary indexes (run id, owner key, child session, parent flow), the
//! committed [`Change`]s applied to it, and the [`View`] a mutation reads.

use std::collections::{BTreeMap, BTreeSet};

use super::observers::TaskEvent;
use super::record::{DeliveryState, TaskRecord};
use super::store::Snapshot;

/// Which secondary index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Index {
    RunId,
    OwnerKey,
    ChildSession,
    ParentFlow,
}

/// The registry's memory: the last committed state and its indexes.
#[derive(Default)]
pub(super) struct Inner {
    pub(super) snap: Snapshot,
    pub(super) data_version: Option<i64>,
    /// A group-commit batch has an open write transaction on the connection.
    /// Set and cleared only with `Inner` locked, together with BEGIN and
    /// COMMIT/ROLLBACK, so a holder of `Inner` knows the connection's state.
    pub(super) batch_open: bool,
    by_run: BTreeMap<String, BTreeSet<String>>,
    by_owner: BTreeMap<String, BTreeSet<String>>,
    by_child: BTreeMap<String, BTreeSet<String>>,
    by_flow: BTreeMap<String, BTreeSet<String>>,
}

fn idx_keys(t: &TaskRecord) -> [(Index, Option<&String>); 4] {
    [
        (Index::RunId, t.run_id.as_ref()),
        (
            Index::OwnerKey,
            (!t.owner_key.is_empty()).then_some(&t.owner_key),
        ),
        (Index::ChildSession, t.child_session_key.as_ref()),
        (Index::ParentFlow, t.parent_flow_id.as_ref()),
    ]
}

impl Inner {
    pub(super) fn index(&self, i: Index) -> &BTreeMap<String, BTreeSet<String>> {
        match i {
            Index::RunId => &self.by_run,
            Index::OwnerKey => &self.by_owner,
            Index::ChildSession => &self.by_child,
            Index::ParentFlow => &self.by_flow,
        }
    }
    fn index_mut(&mut self, i: Index) -> &mut BTreeMap<String, BTreeSet<String>> {
        match i {
            Index::RunId => &mut self.by_run,
            Index::OwnerKey => &mut self.by_owner,
            Index::ChildSession => &mut self.by_child,
            Index::ParentFlow => &mut self.by_flow,
        }
    }
    fn unindex(&mut self, t: &TaskRecord) {
        for (i, k) in idx_keys(t) {
            if let Some(k) = k {
                let m = self.index_mut(i);
                if let Some(s) = m.get_mut(k) {
                    s.remove(&t.task_id);
                    if s.is_empty() {
                        m.remove(k);
                    }
                }
            }
        }
    }
    fn reindex(&mut self, t: &TaskRecord) {
        for (i, k) in idx_keys(t) {
            if let Some(k) = k {
                self.index_mut(i)
                    .entry(k.clone())
                    .or_default()
                    .insert(t.task_id.clone());
            }
        }
    }
    /// Replaces the whole state (a reload).
    pub(super) fn replace(&mut self, snap: Snapshot) {
        *self = Inner {
            data_version: self.data_version,
            batch_open: self.batch_open,
            ..Default::default()
        };
        for t in snap.tasks.values() {
            self.reindex(t);
        }
        self.snap = snap;
    }
    fn put(&mut self, t: TaskRecord, d: Option<DeliveryState>) -> Option<TaskRecord> {
        let prev = self.snap.tasks.remove(&t.task_id);
        if let Some(p) = &prev {
            self.unindex(p);
        }
        self.reindex(&t);
        if let Some(d) = d {
            self.snap.delivery_states.insert(t.task_id.clone(), d);
        }
        self.snap.tasks.insert(t.task_id.clone(), t);
        prev
    }
    fn remove(&mut self, id: &str) -> Option<TaskRecord> {
        let prev = self.snap.tasks.remove(id);
        if let Some(p) = &prev {
            self.unindex(p);
        }
        self.snap.delivery_states.remove(id);
        prev
    }
}

/// A committed change to apply to memory.
#[allow(clippy::large_enum_variant)]
pub(super) enum Change {
    Put(TaskRecord, Option<DeliveryState>),
    Remove(String),
}

/// What a mutation sees of memory: the committed registry plus the changes of
/// earlier members of the same group-commit batch (not yet committed).
pub(super) struct View<'a> {
    pub(super) inner: &'a Inner,
    /// `(member, changes)` of the batch's earlier successful members.
    pub(super) pending: &'a [(usize, Vec<Change>)],
}

impl View<'_> {
    /// The version memory (plus the batch's earlier members) has for `id`.
    pub(super) fn version(&self, id: &str) -> Option<i64> {
        for ch in self.pending.iter().rev().flat_map(|(_, c)| c.iter().rev()) {
            match ch {
                Change::Put(t, _) if t.task_id == id => return Some(t.version),
                Change::Remove(r) if r == id => return None,
                _ => {}
            }
        }
        self.inner.snap.tasks.get(id).map(|t| t.version)
    }
}

/// Applies committed changes to memory; returns the events to emit (only
/// when `has_observers`).
pub(super) fn apply(
    inner: &mut Inner,
    changes: Vec<Change>,
    has_observers: bool,
) -> Vec<TaskEvent> {
    let mut events = Vec::new();
    for ch in changes {
        match ch {
            Change::Put(t, d) => {
                let ev_task = has_observers.then(|| t.clone());
                let prev = inner.put(t, d);
                if let Some(task) = ev_task {
                    events.push(TaskEvent::Upserted {
                        task,
                        previous: prev,
                    });
                }
            }
            Change::Remove(id) => {
                if let Some(prev) = inner.remove(&id) {
                    if has_observers {
                        events.push(TaskEvent::Deleted {
                            task_id: id,
                            previous: prev,
                        });
                    }
                }
            }
        }
    }
    events
}
