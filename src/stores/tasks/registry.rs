//! [`TaskRegistry`]: the in-memory task map and its indexes over
//! [`SqliteTaskStore`], with persist-before-commit (openclaw PR #88008),
//! cross-process coherence (`PRAGMA data_version` + compare-and-set on
//! `version`), observers, maintenance and audit.
//!
//! Every mutation runs, in order: [`crate::writer::run_exclusive`] on the ledger
//! path (FIFO in this process, `flock` across processes) → reload if another
//! connection committed (`data_version` changed) → one `BEGIN IMMEDIATE`
//! transaction that reads the fresh row, applies the patch, and writes it with
//! `UPDATE … WHERE version = <read version>` → COMMIT → only then memory. A
//! failed write returns the error and leaves memory exactly as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rusqlite::{params, Connection};
use serde::Serialize;

use super::audit::{self, AuditOptions, AuditReport};
use super::record::*;
use super::store::{self, Snapshot, SqliteTaskStore, WriteOutcome};
use super::TaskError;
use crate::group::BatchShared;
use crate::json::GroupCommit;
use crate::lock::{Acquired, LockOptions};
use crate::proc::Liveness;
use crate::sqlite::SqliteOptions;
use crate::writer::{OpenBatch, Writer};

/// Grace before an active task whose owner cannot be judged is marked lost:
/// 5 min in ms (openclaw `TASK_RECONCILE_GRACE_MS`).
pub const TASK_RECONCILE_GRACE_MS: i64 = 5 * 60_000;

/// Options of [`TaskRegistry::open`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// SQLite options (busy timeout 5 s, retry deadline 30 s, synchronous FULL).
    pub sqlite: SqliteOptions,
    /// Lock options for the exclusive section on the ledger path (60 s deadline).
    pub lock: LockOptions,
    /// Group commit of queued mutations (on by default): several mutations
    /// queued on this ledger in this process run in one `BEGIN IMMEDIATE`
    /// transaction, each in its own `SAVEPOINT`, with one COMMIT (one WAL
    /// fsync with synchronous FULL). See [`TaskRegistry`]. Flock protocol only.
    pub group_commit: GroupCommit,
}

/// A registry event (openclaw `onEvent` / observers). Built only when at least
/// one observer is registered.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
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

/// Receives [`TaskEvent`]s after the write committed. An observer's error is
/// logged and a panic caught; neither affects the write. Each caller notifies
/// on its own thread after its commit, so the events of concurrent mutations
/// (and of the members of one group-commit batch) may arrive out of order:
/// order them by [`TaskRecord::version`], which increases with every write.
pub trait TaskObserver: Send + Sync {
    /// Called after every committed change.
    fn on_event(&self, event: &TaskEvent) -> Result<(), String>;
}

impl<F: Fn(&TaskEvent) -> Result<(), String> + Send + Sync> TaskObserver for F {
    fn on_event(&self, event: &TaskEvent) -> Result<(), String> {
        self(event)
    }
}

/// Preview or apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintenanceMode {
    /// Count what would change; write nothing.
    Preview,
    /// Write the repairs.
    Apply,
}

/// Maintenance knobs.
#[derive(Debug, Clone)]
pub struct MaintenanceOptions {
    /// Grace before an active task whose owner cannot be judged (no owner
    /// recorded, another boot) is marked lost, in ms. Default 5 min.
    pub grace_ms: i64,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        MaintenanceOptions {
            grace_ms: TASK_RECONCILE_GRACE_MS,
        }
    }
}

/// One planned or applied maintenance action.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceAction {
    /// Task id.
    pub task_id: String,
    /// `mark_lost`, `stamp_cleanup`, `prune`, `normalize_timestamps`.
    pub action: &'static str,
    /// Why.
    pub reason: String,
}

/// Result of a sweep (openclaw `{reconciled, recovered, cleanupStamped,
/// pruned}` plus `normalized` and the actions).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceReport {
    /// Preview or apply.
    pub mode: MaintenanceMode,
    /// Active tasks marked lost.
    pub reconciled: usize,
    /// Tasks recovered from durable evidence (always 0: no cron history here).
    pub recovered: usize,
    /// cleanupAfter stamped.
    pub cleanup_stamped: usize,
    /// Terminal tasks pruned.
    pub pruned: usize,
    /// Timestamps normalized.
    pub normalized: usize,
    /// Every action (planned in preview; applied in apply).
    pub actions: Vec<MaintenanceAction>,
}

#[derive(Default)]
struct Inner {
    snap: Snapshot,
    data_version: Option<i64>,
    /// A group-commit batch has an open write transaction on the connection.
    /// Set and cleared only with `Inner` locked, together with BEGIN and
    /// COMMIT/ROLLBACK, so a holder of `Inner` knows the connection's state.
    batch_open: bool,
    by_run: BTreeMap<String, BTreeSet<String>>,
    by_owner: BTreeMap<String, BTreeSet<String>>,
    by_child: BTreeMap<String, BTreeSet<String>>,
    by_flow: BTreeMap<String, BTreeSet<String>>,
}

fn idx_keys(t: &TaskRecord) -> [(usize, Option<&String>); 4] {
    [
        (0, t.run_id.as_ref()),
        (1, (!t.owner_key.is_empty()).then_some(&t.owner_key)),
        (2, t.child_session_key.as_ref()),
        (3, t.parent_flow_id.as_ref()),
    ]
}

impl Inner {
    fn index(&mut self, i: usize) -> &mut BTreeMap<String, BTreeSet<String>> {
        match i {
            0 => &mut self.by_run,
            1 => &mut self.by_owner,
            2 => &mut self.by_child,
            _ => &mut self.by_flow,
        }
    }
    fn unindex(&mut self, t: &TaskRecord) {
        for (i, k) in idx_keys(t) {
            if let Some(k) = k {
                let m = self.index(i);
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
                self.index(i)
                    .entry(k.clone())
                    .or_default()
                    .insert(t.task_id.clone());
            }
        }
    }
    fn replace(&mut self, snap: Snapshot) {
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
enum Change {
    Put(TaskRecord, Option<DeliveryState>),
    Remove(String),
}

type TxResult<T> = rusqlite::Result<Result<T, TaskError>>;

/// What a mutation sees of memory: the committed registry plus the changes of
/// earlier members of the same group-commit batch (not yet committed).
struct View<'a> {
    inner: &'a Inner,
    /// `(member, changes)` of the batch's earlier successful members.
    pending: &'a [(usize, Vec<Change>)],
}

impl View<'_> {
    /// The version memory (plus the batch's earlier members) has for `id`.
    fn version(&self, id: &str) -> Option<i64> {
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

/// The registry's shared state (also held by an open group-commit batch,
/// which commits and updates memory when it is closed).
struct Core {
    store: SqliteTaskStore,
    inner: Mutex<Inner>,
    /// Signalled when a group-commit batch closes (`Inner::batch_open` false).
    idle: std::sync::Condvar,
    observers: RwLock<Vec<Arc<dyn TaskObserver>>>,
    cas_misses: AtomicU64,
    /// Group-commit batches committed by this registry, and their members.
    batches: AtomicU64,
    batched: AtomicU64,
}

/// The task registry. `Send + Sync`; share it with `Arc`.
///
/// Group commit ([`RegistryOptions::group_commit`], on by default): when
/// several threads of this process have mutations queued on the ledger, the
/// writer at the head of the FIFO queue takes the flock and opens one
/// `BEGIN IMMEDIATE` transaction; each queued mutation then runs in turn, on
/// its own thread, inside its own `SAVEPOINT` (SQLite docs, "SAVEPOINT"): an
/// error or panic rolls back only that savepoint and reaches only its caller.
/// The last one commits. Memory changes only after that COMMIT and only for
/// the mutations that succeeded; no caller returns before the COMMIT that
/// contains its change (persist-before-commit, openclaw PR #88008). If the
/// COMMIT fails every member of the batch gets the error and memory is
/// unchanged. While a batch is open, registry reads see the last committed
/// state; SQLite-direct reads through [`TaskRegistry::store`] on the
/// registry's own connection may see the open batch's rows.
pub struct TaskRegistry {
    core: Arc<Core>,
    writer: Writer,
    group: GroupCommit,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("path", &self.core.store.path())
            .finish()
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}

fn new_task_id(now_ms: i64) -> String {
    format!("{:011x}{}", now_ms.max(0), crate::proc::random_hex(5))
}

impl TaskRegistry {
    /// Opens the ledger at `<state_dir>/tasks/runs.sqlite` and loads it.
    ///
    /// Errors: as [`TaskRegistry::open`].
    pub fn open_state_dir(state_dir: &Path, opts: RegistryOptions) -> Result<Self, TaskError> {
        Self::open(&crate::paths::tasks_db(state_dir), opts)
    }

    /// Opens the ledger at `path`, migrates it and loads every task. A load
    /// failure (corrupt value, newer schema, unreadable file) is returned — the
    /// registry never starts empty over a ledger it could not read (openclaw
    /// only logged it, reference §7.4).
    ///
    /// Errors: [`TaskError::Core`] ([`crate::Error::SchemaTooNew`],
    /// [`crate::Error::Sqlite`]), [`TaskError::InvalidPersisted`].
    pub fn open(path: &Path, opts: RegistryOptions) -> Result<Self, TaskError> {
        let store = SqliteTaskStore::open(path, opts.sqlite)?;
        let writer = Writer::open(path, opts.lock)?;
        let reg = TaskRegistry {
            core: Arc::new(Core {
                store,
                inner: Mutex::new(Inner::default()),
                idle: std::sync::Condvar::new(),
                observers: RwLock::new(Vec::new()),
                cas_misses: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                batched: AtomicU64::new(0),
            }),
            writer,
            group: opts.group_commit,
        };
        {
            let mut inner = reg.lock_inner();
            let conn = reg.core.store.connection();
            reg.refresh(&mut inner, &conn)?;
        }
        Ok(reg)
    }

    /// The underlying store (SQLite-direct reads, failure injection).
    pub fn store(&self) -> &SqliteTaskStore {
        &self.core.store
    }

    /// The ledger path.
    pub fn path(&self) -> &Path {
        self.core.store.path()
    }

    /// Number of compare-and-set misses so far (a stale memory copy was
    /// reloaded and the patch re-applied on the fresh row).
    pub fn cas_misses(&self) -> u64 {
        self.core.cas_misses.load(Ordering::Relaxed)
    }

    /// Group-commit statistics of this registry: `(batches committed,
    /// mutations committed in them)`. A mutation outside group commit counts
    /// as neither.
    pub fn group_commit_stats(&self) -> (u64, u64) {
        (
            self.core.batches.load(Ordering::Relaxed),
            self.core.batched.load(Ordering::Relaxed),
        )
    }

    /// Registers an observer and sends it a `restored` event with the current
    /// tasks (also when there are none).
    pub fn add_observer(&self, o: Arc<dyn TaskObserver>) {
        let tasks = self.lock_inner().snap.tasks.values().cloned().collect();
        notify(std::slice::from_ref(&o), &TaskEvent::Restored { tasks });
        self.core
            .observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(o);
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.core.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observers(&self) -> Vec<Arc<dyn TaskObserver>> {
        self.core
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads when another connection committed since the last load
    /// (`PRAGMA data_version` changed). Returns the `restored` event to emit.
    /// Skipped while this registry's group-commit batch holds the write
    /// transaction (no other connection can commit then, and a reload inside
    /// it would read the batch's uncommitted rows).
    fn refresh(
        &self,
        inner: &mut Inner,
        conn: &Connection,
    ) -> Result<Option<TaskEvent>, TaskError> {
        if inner.batch_open {
            return Ok(None);
        }
        let dv = self.core.store.data_version(conn)?;
        if inner.data_version == Some(dv) {
            return Ok(None);
        }
        let (snap, dv) = self.core.store.load_with_version(conn)?;
        tracing::debug!(path = %self.path().display(), tasks = snap.tasks.len(), "reloaded task ledger");
        inner.replace(snap);
        inner.data_version = Some(dv);
        Ok(self.core.has_observers().then(|| TaskEvent::Restored {
            tasks: inner.snap.tasks.values().cloned().collect(),
        }))
    }

    /// Runs a read under the registry mutex after a data_version check.
    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> Result<T, TaskError> {
        let (out, ev) = {
            let mut inner = self.lock_inner();
            let conn = self.core.store.connection();
            let ev = self.refresh(&mut inner, &conn)?;
            drop(conn);
            (f(&inner), ev)
        };
        if let Some(ev) = ev {
            notify(&self.observers(), &ev);
        }
        Ok(out)
    }

    /// The persist-before-commit core: exclusive section → refresh → one
    /// IMMEDIATE transaction (`f` reads and writes SQLite only) → commit →
    /// memory → observers. With group commit, the transaction may be shared
    /// with the mutations queued before and after this one (see
    /// [`TaskRegistry`]).
    fn mutate<T>(
        &self,
        f: impl FnMut(&Connection, &View<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, TaskError> {
        if self.group.enabled && self.writer.supports_group_commit() {
            return self.mutate_grouped(f);
        }
        let mut f = f;
        let path = self.path().to_path_buf();
        let (out, events) = self.writer.run(|ctx| {
            let _span = tracing::debug_span!("task_ledger_commit", path = %path.display(), pid = std::process::id(), waited_ms = ctx.waited().as_millis() as u64).entered();
            let mut inner = self.lock_inner();
            let conn = self.core.store.connection();
            let mut events = Vec::new();
            events.extend(self.refresh(&mut inner, &conn)?);
            let (out, changes) = self.core.store.immediate(&conn, |tx| {
                f(
                    tx,
                    &View {
                        inner: &inner,
                        pending: &[],
                    },
                )
            })?;
            drop(conn);
            // Committed: only now does memory change.
            let has = self.core.has_observers();
            events.extend(apply(&mut inner, changes, has));
            Ok::<_, TaskError>((out, events))
        })?;
        if !events.is_empty() {
            let obs = self.observers();
            for ev in &events {
                notify(&obs, ev);
            }
        }
        Ok(out)
    }

    /// Opens a group-commit batch: OS lock, refresh, `BEGIN IMMEDIATE`
    /// (retried on BUSY until the SQLite retry deadline). Slot holder only.
    fn begin_batch(
        &self,
        deadline: std::time::Instant,
    ) -> Result<(Box<TaskBatch>, Option<TaskEvent>), TaskError> {
        let w = &self.writer;
        let acquired = w.os_lock(deadline)?;
        let begun = (|| {
            let mut inner = self.lock_inner();
            let conn = self.core.store.connection();
            let ev = self.refresh(&mut inner, &conn)?;
            let opts = self.core.store.options();
            let until = std::time::Instant::now() + opts.retry_deadline;
            let mut attempt = 0u32;
            loop {
                match run_cached(&conn, "BEGIN IMMEDIATE") {
                    Ok(()) => break,
                    Err(e) if crate::sqlite::is_busy(&e) && std::time::Instant::now() < until => {
                        attempt += 1;
                        tracing::debug!(path = %self.path().display(), attempt, "database busy; retrying BEGIN IMMEDIATE");
                        crate::sqlite::busy_pause(attempt);
                    }
                    Err(e) => return Err(TaskError::sqlite("begin group commit", self.path(), e)),
                }
            }
            inner.batch_open = true;
            Ok(ev)
        })();
        match begun {
            Ok(ev) => Ok((
                Box::new(TaskBatch {
                    core: self.core.clone(),
                    acquired,
                    pending: Vec::new(),
                    ran: 0,
                    committed_members: 0,
                    failed: None,
                    shared: Arc::new(BatchShared::default()),
                }),
                ev,
            )),
            Err(e) => {
                w.os_unlock(acquired.record);
                Err(e)
            }
        }
    }

    /// The group-commit path of [`TaskRegistry::mutate`] (the handoff of
    /// [`crate::json`]'s group commit, with a SAVEPOINT per member).
    fn mutate_grouped<T>(
        &self,
        mut f: impl FnMut(&Connection, &View<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, TaskError> {
        let w = &self.writer;
        if w.held_by_this_thread() {
            return Err(crate::Error::Reentrant {
                path: w.path().to_path_buf(),
            }
            .into());
        }
        let start = std::time::Instant::now();
        let deadline = crate::queue::deadline_after(w.options().deadline);
        let span = tracing::debug_span!(
            "lock_wait",
            path = %w.path().display(),
            pid = std::process::id(),
            waited_ms = tracing::field::Empty
        );
        let entered = span.enter();
        let slot = w.slot(start, deadline)?;
        let open = w
            .entry()
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let reuse = match open {
            Some(b)
                if b.as_any()
                    .downcast_ref::<TaskBatch>()
                    .is_some_and(|t| Arc::ptr_eq(&t.core, &self.core) && t.failed.is_none()) =>
            {
                b.into_any().downcast::<TaskBatch>().ok()
            }
            Some(other) => {
                other.close(w);
                None
            }
            None => None,
        };
        let (mut batch, restored) = match reuse {
            Some(b) => (b, None),
            None => self.begin_batch(deadline)?,
        };
        span.record("waited_ms", start.elapsed().as_millis() as u64);
        drop(entered);

        // Run this mutation in its own SAVEPOINT, on this thread.
        let member = batch.ran;
        batch.ran += 1;
        let outcome = {
            let _mark = w.mark_held();
            let _span =
                tracing::debug_span!("task_ledger_member", path = %w.path().display(), member)
                    .entered();
            let inner = self.lock_inner();
            let conn = self.core.store.connection();
            // The batch's first mutation needs no savepoint: if it fails, the
            // whole transaction (holding nothing else) is rolled back.
            let first = member == 0;
            let r = match if first {
                Ok(())
            } else {
                run_cached(&conn, "SAVEPOINT lockstore_member")
            } {
                Err(e) => Ok(Err(TaskError::sqlite("savepoint", self.path(), e))),
                Ok(()) => catch_unwind(AssertUnwindSafe(|| {
                    match f(
                        &conn,
                        &View {
                            inner: &inner,
                            pending: &batch.pending,
                        },
                    ) {
                        Ok(r) => r,
                        Err(e) => Err(TaskError::sqlite("transaction", self.path(), e)),
                    }
                })),
            };
            let ok = matches!(r, Ok(Ok(_)));
            let end = if ok {
                if first {
                    Ok(())
                } else {
                    run_cached(&conn, "RELEASE lockstore_member")
                }
            } else if conn.is_autocommit() {
                Ok(())
            } else if first {
                run_cached(&conn, "ROLLBACK")
            } else {
                run_cached(&conn, "ROLLBACK TO lockstore_member")
                    .and_then(|()| run_cached(&conn, "RELEASE lockstore_member"))
            };
            if let Err(e) = end {
                batch.failed.get_or_insert_with(|| failure_of(&e));
            }
            if first && !ok && batch.failed.is_none() {
                batch.failed = Some((
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    "the batch's first mutation failed; nothing to commit".into(),
                ));
            }
            // SQLite may roll the whole transaction back by itself (SQLITE_FULL,
            // SQLITE_IOERR, ...): the earlier members' changes are gone too.
            if conn.is_autocommit() && batch.failed.is_none() {
                batch.failed = Some((
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    "the group-commit transaction was rolled back by SQLite".into(),
                ));
            }
            drop(conn);
            drop(inner);
            match r {
                Ok(Ok((v, changes))) => {
                    batch.pending.push((member, changes));
                    Ok(Ok(v))
                }
                Ok(Err(e)) => Ok(Err(e)),
                Err(p) => Err(p),
            }
        };

        // Leave the batch open for the next queued mutation, or commit now.
        let gc = self.group;
        let mut successors = w.entry().fifo.len() > 1;
        if !successors && !gc.max_wait.is_zero() && batch.ran < gc.max_batch {
            let until = std::time::Instant::now() + gc.max_wait;
            while !successors && std::time::Instant::now() < until {
                std::thread::yield_now();
                successors = w.entry().fifo.len() > 1;
            }
        }
        let shared = batch.shared.clone();
        let committed_here = matches!(outcome, Ok(Ok(_)));
        if committed_here {
            batch.committed_members += 1;
        }
        if successors && batch.ran < gc.max_batch && batch.failed.is_none() {
            *w.entry().batch.lock().unwrap_or_else(|p| p.into_inner()) = Some(batch);
        } else {
            batch.close(w);
        }
        drop(slot);
        let obs_restored = restored.map(|ev| (self.observers(), ev));
        if let Some((obs, ev)) = &obs_restored {
            notify(obs, ev);
        }
        match outcome {
            Ok(Ok(v)) => {
                let events = shared.wait(w, |o| match o {
                    Ok(map) => Ok(map.remove(&member).unwrap_or_default()),
                    Err((code, msg)) => Err((*code, msg.clone())),
                });
                match events {
                    Ok(events) => {
                        if !events.is_empty() {
                            let obs = self.observers();
                            for ev in &events {
                                notify(&obs, ev);
                            }
                        }
                        Ok(v)
                    }
                    Err((code, msg)) => Err(TaskError::sqlite(
                        "group commit",
                        self.path(),
                        rusqlite::Error::SqliteFailure(code, Some(msg)),
                    )),
                }
            }
            Ok(Err(e)) => Err(e),
            Err(p) => resume_unwind(p),
        }
    }

    // ---- reads ----

    /// The task `id` (after a data_version check).
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

    fn by_index(&self, which: usize, key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.read(|i| {
            let m = match which {
                0 => &i.by_run,
                1 => &i.by_owner,
                2 => &i.by_child,
                _ => &i.by_flow,
            };
            m.get(key)
                .into_iter()
                .flatten()
                .filter_map(|id| i.snap.tasks.get(id).cloned())
                .collect()
        })
    }

    /// Tasks with run id `run_id` (index).
    pub fn by_run_id(&self, run_id: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(0, run_id)
    }
    /// Tasks of owner key `owner_key` (index).
    pub fn by_owner_key(&self, owner_key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(1, owner_key)
    }
    /// Tasks with child session `key` (index).
    pub fn by_child_session(&self, key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(2, key)
    }
    /// Tasks of parent flow `flow_id` (index).
    pub fn by_parent_flow(&self, flow_id: &str) -> Result<Vec<TaskRecord>, TaskError> {
        self.by_index(3, flow_id)
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
            for m in [&i.by_run, &i.by_child, &i.by_owner] {
                if let Some(ids) = m.get(lookup) {
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

    /// SQLite-direct reader (see [`SqliteTaskStore::list_fresh_tasks_for_owner_key`]).
    pub fn list_fresh_tasks_for_owner_key(
        &self,
        owner_key: &str,
        now_ms: i64,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        // Not while a group-commit batch has uncommitted rows on the connection.
        let mut inner = self.lock_inner();
        while inner.batch_open {
            inner = self
                .core
                .idle
                .wait(inner)
                .unwrap_or_else(|p| p.into_inner());
        }
        let out = self
            .core
            .store
            .list_fresh_tasks_for_owner_key(owner_key, now_ms);
        drop(inner);
        out
    }

    /// Audits every task at `now_ms` (see [`audit::audit`]).
    pub fn audit(&self, now_ms: i64, opts: &AuditOptions) -> Result<AuditReport, TaskError> {
        let tasks = self.list()?;
        Ok(audit::audit(&tasks, now_ms, opts))
    }

    // ---- mutations ----

    /// Creates a task (status `queued` unless `new.status` is `running`), or —
    /// when a task with the same run id, runtime, scope, owner, child session,
    /// parent flow, label and description exists — returns that one (create
    /// de-duplication, §5.6). Returns `(task, created)`.
    ///
    /// Errors: [`TaskError::Invalid`] (empty description, no runtime, terminal
    /// initial status), plus the write errors of [`TaskRegistry::update`].
    pub fn create(&self, new: NewTask, now_ms: i64) -> Result<(TaskRecord, bool), TaskError> {
        let path = self.path().to_path_buf();
        let invalid = |reason: &str| TaskError::Invalid {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let runtime = new.runtime.ok_or_else(|| invalid("runtime is required"))?;
        if new.task.trim().is_empty() {
            return Err(invalid("task description is required"));
        }
        let status = new.status.unwrap_or(TaskStatus::Queued);
        if status.is_terminal() {
            return Err(invalid("a new task must be queued or running"));
        }
        let scope = if new.owner_key.is_empty() {
            ScopeKind::System
        } else {
            ScopeKind::Session
        };
        let delivery_status = initial_delivery_status(scope, &new.owner_key);
        let mut t = TaskRecord {
            task_id: new_task_id(now_ms),
            runtime,
            task_kind: new.task_kind.clone(),
            source_id: new.source_id.clone(),
            requester_session_key: new
                .requester_session_key
                .clone()
                .unwrap_or_else(|| new.owner_key.clone()),
            owner_key: new.owner_key.clone(),
            scope_kind: scope,
            child_session_key: new.child_session_key.clone(),
            parent_flow_id: new.parent_flow_id.clone(),
            parent_task_id: new.parent_task_id.clone(),
            agent_id: new.agent_id.clone(),
            requester_agent_id: None,
            run_id: new.run_id.clone(),
            label: new.label.clone(),
            task: new.task.clone(),
            status,
            delivery_status,
            notify_policy: new
                .notify_policy
                .unwrap_or_else(|| default_notify_policy(runtime, delivery_status)),
            created_at: now_ms,
            started_at: (status == TaskStatus::Running).then_some(now_ms),
            ended_at: None,
            last_event_at: Some(now_ms),
            cleanup_after: None,
            error: None,
            progress_summary: None,
            terminal_summary: None,
            terminal_outcome: None,
            metadata: new.metadata.clone(),
            owner_pid: new.owner.as_ref().map(|o| o.pid),
            owner_start_time: new.owner.as_ref().and_then(|o| o.start_time),
            owner_boot_id: new.owner.as_ref().and_then(|o| o.boot_id.clone()),
            version: 0,
        };
        t.normalize();
        let delivery = new.requester_origin.clone().map(|o| DeliveryState {
            task_id: t.task_id.clone(),
            requester_origin: Some(o),
            last_notified_event_at: None,
        });
        let p = path.clone();
        self.mutate(|tx, _| {
            if let Some(run_id) = &t.run_id {
                let dup = tri!(store::query_tasks(
                    tx,
                    &p,
                    "WHERE run_id = ?1 AND runtime = ?2 AND scope_kind = ?3 AND owner_key = ?4 \
                     AND child_session_key IS ?5 AND parent_flow_id IS ?6 AND label IS ?7 AND task = ?8 \
                     ORDER BY created_at LIMIT 1",
                    params![
                        run_id,
                        t.runtime.as_str(),
                        t.scope_kind.as_str(),
                        t.owner_key,
                        t.child_session_key,
                        t.parent_flow_id,
                        t.label,
                        t.task
                    ],
                ));
                if let Some(existing) = dup.into_iter().next() {
                    // Make sure memory has the durable copy too.
                    return Ok(Ok((
                        (existing.clone(), false),
                        vec![Change::Put(existing, None)],
                    )));
                }
            }
            let mut w = t.clone();
            match store::write_task(tx, &w)? {
                WriteOutcome::Written(v) => w.version = v,
                WriteOutcome::Conflict(found) => {
                    return Ok(Err(TaskError::Conflict {
                        path: p.clone(),
                        task_id: w.task_id.clone(),
                        expected: 0,
                        found,
                    }))
                }
            }
            if let Some(d) = &delivery {
                store::write_delivery(tx, &w.task_id, Some(d))?;
            }
            Ok(Ok(((w.clone(), true), vec![Change::Put(w, delivery.clone())])))
        })
    }

    /// Updates task `id`: `patch` edits a copy of the **durable** row (read in
    /// the write transaction; if memory was stale this counts a CAS miss and the
    /// patch is re-applied on the fresh row) and returns whether it changed
    /// anything. Then status monotonicity is checked, timestamps normalized and
    /// `cleanupAfter` stamped for a terminal status, and the row written with a
    /// compare-and-set on `version`. Memory changes only after COMMIT.
    ///
    /// Errors: [`TaskError::NotFound`], [`TaskError::InvalidTransition`],
    /// errors returned by `patch`, [`TaskError::Core`] for SQLite/lock failures
    /// (memory is then unchanged).
    pub fn update(
        &self,
        id: &str,
        mut patch: impl FnMut(&mut TaskRecord) -> Result<bool, TaskError>,
    ) -> Result<TaskRecord, TaskError> {
        let path = self.path().to_path_buf();
        self.mutate(|tx, inner| {
            let Some(fresh) = tri!(store::read_task(tx, &path, id)) else {
                return Ok(Err(TaskError::NotFound {
                    path: path.clone(),
                    lookup: id.to_string(),
                }));
            };
            let mem_version = inner.version(id);
            if mem_version != Some(fresh.version) {
                self.core.cas_misses.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), task_id = id, memory = ?mem_version, durable = fresh.version, "compare-and-set miss: re-applying the patch on the durable row");
            }
            let mut next = fresh.clone();
            if !tri!(patch(&mut next)) {
                return Ok(Ok((fresh.clone(), vec![Change::Put(fresh, None)])));
            }
            next.task_id = fresh.task_id.clone();
            next.version = fresh.version;
            if !fresh.status.may_become(next.status) {
                return Ok(Err(TaskError::InvalidTransition {
                    path: path.clone(),
                    task_id: id.to_string(),
                    from: fresh.status,
                    to: next.status,
                }));
            }
            next.normalize();
            if next.status.is_terminal() {
                // Entering a terminal status: stamp cleanupAfter from the end time
                // unless the patch set one; lost keeps the min (§5.7).
                if fresh.status.is_active()
                    && next.cleanup_after == fresh.cleanup_after
                    && next.status != TaskStatus::Lost
                {
                    next.cleanup_after = None;
                }
                next.stamp_cleanup();
            }
            match store::write_task(tx, &next)? {
                WriteOutcome::Written(v) => next.version = v,
                WriteOutcome::Conflict(found) => {
                    return Ok(Err(TaskError::Conflict {
                        path: path.clone(),
                        task_id: id.to_string(),
                        expected: fresh.version,
                        found,
                    }))
                }
            }
            Ok(Ok((next.clone(), vec![Change::Put(next, None)])))
        })
    }

    /// Marks a task running (`startedAt`, `lastEventAt` = now).
    pub fn mark_running(&self, id: &str, now_ms: i64) -> Result<TaskRecord, TaskError> {
        self.update(id, |t| {
            t.status = TaskStatus::Running;
            t.started_at.get_or_insert(now_ms);
            t.last_event_at = Some(now_ms);
            Ok(true)
        })
    }

    /// Records progress: `lastEventAt` = now, optional `progressSummary`, and
    /// `metadata[counter] += 1` when `counter` is given (a read-modify-write used
    /// by the concurrency tests).
    pub fn record_progress(
        &self,
        id: &str,
        now_ms: i64,
        summary: Option<&str>,
        counter: Option<&str>,
    ) -> Result<TaskRecord, TaskError> {
        self.update(id, |t| {
            t.last_event_at = Some(now_ms.max(t.last_event_at.unwrap_or(i64::MIN)));
            if let Some(s) = summary {
                t.progress_summary = Some(s.to_string());
            }
            if let Some(c) = counter {
                let m = t.metadata.get_or_insert_with(Default::default);
                let n = m.get(c).and_then(|v| v.as_i64()).unwrap_or(0);
                m.insert(c.to_string(), (n + 1).into());
            }
            Ok(true)
        })
    }

    /// Records a terminal status with `endedAt` = now, error and summary.
    pub fn finish(
        &self,
        id: &str,
        now_ms: i64,
        status: TaskStatus,
        error: Option<String>,
        summary: Option<String>,
    ) -> Result<TaskRecord, TaskError> {
        if status.is_active() {
            return Err(TaskError::Invalid {
                path: self.path().to_path_buf(),
                reason: format!("finish needs a terminal status, not {status}"),
            });
        }
        self.update(id, |t| {
            t.status = status;
            t.ended_at = Some(now_ms);
            t.last_event_at = Some(now_ms);
            if error.is_some() {
                t.error = error.clone();
            }
            if summary.is_some() {
                t.terminal_summary = summary.clone();
            }
            if status == TaskStatus::Succeeded {
                t.terminal_outcome.get_or_insert(TerminalOutcome::Succeeded);
            }
            Ok(true)
        })
    }

    /// Cancels a task (records `cancelled`; cli tasks are record-only, as in
    /// openclaw).
    pub fn cancel(&self, id: &str, now_ms: i64) -> Result<TaskRecord, TaskError> {
        self.finish(
            id,
            now_ms,
            TaskStatus::Cancelled,
            Some("cancelled by operator".into()),
            None,
        )
    }

    /// Sets the notify policy.
    pub fn set_notify_policy(&self, id: &str, p: NotifyPolicy) -> Result<TaskRecord, TaskError> {
        self.update(id, |t| {
            let ch = t.notify_policy != p;
            t.notify_policy = p;
            Ok(ch)
        })
    }

    /// Sets the delivery status.
    pub fn set_delivery_status(
        &self,
        id: &str,
        d: DeliveryStatus,
    ) -> Result<TaskRecord, TaskError> {
        self.update(id, |t| {
            let ch = t.delivery_status != d;
            t.delivery_status = d;
            Ok(ch)
        })
    }

    /// Deletes a task and its delivery state in one transaction. Returns
    /// whether it existed. Memory changes only after COMMIT.
    pub fn delete(&self, id: &str) -> Result<bool, TaskError> {
        self.delete_if(id, |_| true)
    }

    /// Deletes task `id` if `pred` holds for its durable row (re-checked inside
    /// the write transaction; the DELETE is a compare-and-set on `version`).
    pub fn delete_if(
        &self,
        id: &str,
        mut pred: impl FnMut(&TaskRecord) -> bool,
    ) -> Result<bool, TaskError> {
        let path = self.path().to_path_buf();
        self.mutate(|tx, _| {
            let Some(fresh) = tri!(store::read_task(tx, &path, id)) else {
                return Ok(Ok((false, vec![Change::Remove(id.to_string())])));
            };
            if !pred(&fresh) {
                return Ok(Ok((false, vec![Change::Put(fresh, None)])));
            }
            tx.execute("DELETE FROM task_delivery_state WHERE task_id = ?1", [id])?;
            let n = tx.execute(
                "DELETE FROM task_runs WHERE task_id = ?1 AND version = ?2",
                params![id, fresh.version],
            )?;
            if n != 1 {
                return Ok(Err(TaskError::Conflict {
                    path: path.clone(),
                    task_id: id.to_string(),
                    expected: fresh.version,
                    found: None,
                }));
            }
            Ok(Ok((true, vec![Change::Remove(id.to_string())])))
        })
    }

    // ---- maintenance ----

    /// Why an active task should be marked lost now, if it should: its owner
    /// is definitely dead ([`crate::proc::liveness`] = Dead: same boot, pid gone
    /// or start time differs) — at once; or the owner cannot be judged (none
    /// recorded, another boot or namespace) and the task has been silent for
    /// `grace_ms`. A running or stopped owner is never judged lost.
    pub fn lost_reason(t: &TaskRecord, now_ms: i64, grace_ms: i64) -> Option<String> {
        if t.status.is_terminal() {
            return None;
        }
        let silent = now_ms - t.last_activity_at();
        match t.owner_identity() {
            Some(id) => match crate::proc::liveness(&id) {
                Liveness::Running | Liveness::Stopped => None,
                Liveness::Dead => Some(format!(
                    "owner process {} is dead (exited, killed, or its pid was reused); the task was still {}",
                    id.pid, t.status
                )),
                Liveness::Unknown => (silent >= grace_ms).then(|| format!(
                    "owner process {} cannot be judged from this host/boot and the task has been silent for {} s (grace {} s)",
                    id.pid, silent / 1000, grace_ms / 1000
                )),
            },
            None => (silent >= grace_ms).then(|| format!(
                "no owner process recorded and the task has been silent for {} s (grace {} s)",
                silent / 1000,
                grace_ms / 1000
            )),
        }
    }

    /// Maintenance sweep at `now_ms` (openclaw `task-registry.maintenance.ts`,
    /// with lockstore's owner-liveness rule): for each task, mark lost an active
    /// task per [`TaskRegistry::lost_reason`]; normalize inconsistent
    /// timestamps; stamp a missing `cleanupAfter`; prune a terminal task whose
    /// `cleanupAfter` has passed. `Preview` only counts. Each repair is its own
    /// persist-before-commit mutation that re-checks its condition on the
    /// durable row.
    pub fn maintenance(
        &self,
        mode: MaintenanceMode,
        now_ms: i64,
        opts: &MaintenanceOptions,
    ) -> Result<MaintenanceReport, TaskError> {
        let mut rep = MaintenanceReport {
            mode,
            reconciled: 0,
            recovered: 0,
            cleanup_stamped: 0,
            pruned: 0,
            normalized: 0,
            actions: Vec::new(),
        };
        let grace = opts.grace_ms;
        for t in self.list()? {
            let id = t.task_id.clone();
            if let Some(reason) = Self::lost_reason(&t, now_ms, grace) {
                let apply = mode == MaintenanceMode::Apply;
                let done = !apply
                    || self
                        .update(&id, |f| {
                            let Some(r) = Self::lost_reason(f, now_ms, grace) else {
                                return Ok(false);
                            };
                            f.status = TaskStatus::Lost;
                            f.error = Some(r);
                            f.ended_at = Some(now_ms);
                            f.last_event_at = Some(now_ms.max(f.last_event_at.unwrap_or(0)));
                            Ok(true)
                        })?
                        .status
                        == TaskStatus::Lost;
                if done {
                    rep.reconciled += 1;
                    rep.actions.push(MaintenanceAction {
                        task_id: id.clone(),
                        action: "mark_lost",
                        reason,
                    });
                }
                continue;
            }
            let mut projected = t.clone();
            if let Some(why) = t.timestamps_inconsistent() {
                projected.normalize();
                rep.normalized += 1;
                rep.actions.push(MaintenanceAction {
                    task_id: id.clone(),
                    action: "normalize_timestamps",
                    reason: why.into(),
                });
                if mode == MaintenanceMode::Apply {
                    projected = self.update(&id, |f| {
                        let bad = f.timestamps_inconsistent().is_some();
                        f.normalize();
                        Ok(bad)
                    })?;
                }
            }
            if projected.status.is_terminal() {
                let mut stamped = projected.clone();
                if stamped.stamp_cleanup() {
                    rep.cleanup_stamped += 1;
                    rep.actions.push(MaintenanceAction {
                        task_id: id.clone(),
                        action: "stamp_cleanup",
                        reason: format!(
                            "cleanupAfter = {}",
                            iso(stamped.cleanup_after.unwrap_or_default())
                        ),
                    });
                    if mode == MaintenanceMode::Apply {
                        stamped =
                            self.update(&id, |f| Ok(f.status.is_terminal() && f.stamp_cleanup()))?;
                    }
                }
                if stamped.cleanup_after.is_some_and(|c| now_ms >= c) {
                    let pruned = mode == MaintenanceMode::Preview
                        || self.delete_if(&id, |f| {
                            f.status.is_terminal() && f.cleanup_after.is_some_and(|c| now_ms >= c)
                        })?;
                    if pruned {
                        rep.pruned += 1;
                        rep.actions.push(MaintenanceAction {
                            task_id: id.clone(),
                            action: "prune",
                            reason: format!(
                                "cleanupAfter {} has passed",
                                iso(stamped.cleanup_after.unwrap_or_default())
                            ),
                        });
                    }
                }
            }
        }
        tracing::info!(path = %self.path().display(), mode = ?mode, reconciled = rep.reconciled, stamped = rep.cleanup_stamped, pruned = rep.pruned, normalized = rep.normalized, "task maintenance");
        Ok(rep)
    }

    /// The path of the ledger's lock file (`<runs.sqlite>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        crate::lock::lock_path_for(self.path())
    }
}

fn notify(obs: &[Arc<dyn TaskObserver>], ev: &TaskEvent) {
    for o in obs {
        match catch_unwind(AssertUnwindSafe(|| o.on_event(ev))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "task observer failed (ignored)"),
            Err(_) => tracing::warn!("task observer panicked (ignored)"),
        }
    }
}

/// Applies committed changes to memory; returns the events to emit (only
/// when `has_observers`).
fn apply(inner: &mut Inner, changes: Vec<Change>, has_observers: bool) -> Vec<TaskEvent> {
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

impl Core {
    fn has_observers(&self) -> bool {
        !self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Runs a parameterless statement through the statement cache (transaction
/// control runs once or twice per mutation; re-parsing it showed in profiles).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A batch failure, kept in a form every member can rebuild an error from.
type Failure = (rusqlite::ffi::Error, String);

fn failure_of(e: &rusqlite::Error) -> Failure {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            (*code, msg.clone().unwrap_or_else(|| e.to_string()))
        }
        other => (
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            other.to_string(),
        ),
    }
}

/// Outcome of a batch: each committed member's events (by member number), or
/// the failure every member gets.
type BatchOutcome = Result<BTreeMap<usize, Vec<TaskEvent>>, Failure>;

static BATCHES: AtomicU64 = AtomicU64::new(0);
static BATCHED: AtomicU64 = AtomicU64::new(0);

/// Group-commit statistics of the task ledgers in this process:
/// `(batches committed, mutations committed in them)`; the mean batch size is
/// the ratio.
pub fn group_commit_stats() -> (u64, u64) {
    (
        BATCHES.load(Ordering::Relaxed),
        BATCHED.load(Ordering::Relaxed),
    )
}

/// An open group-commit batch of a task ledger: holds the flock and the open
/// `BEGIN IMMEDIATE` transaction on the registry's connection.
struct TaskBatch {
    core: Arc<Core>,
    acquired: Acquired,
    /// Committed-to-be changes of the members that succeeded, in order.
    pending: Vec<(usize, Vec<Change>)>,
    /// Members that ran (any outcome).
    ran: usize,
    /// Members that succeeded.
    committed_members: usize,
    /// The transaction is unusable; every member gets this error.
    failed: Option<Failure>,
    shared: Arc<BatchShared<BatchOutcome>>,
}

impl OpenBatch for TaskBatch {
    fn close(self: Box<Self>, w: &Writer) {
        let b = *self;
        let core = b.core;
        let outcome: BatchOutcome = {
            let mut inner = core.inner.lock().unwrap_or_else(|p| p.into_inner());
            let conn = core.store.connection();
            let r = match b.failed {
                Some(f) => Err(f),
                None => run_cached(&conn, "COMMIT").map_err(|e| failure_of(&e)),
            };
            if !conn.is_autocommit() {
                if let Err(e) = conn.execute_batch("ROLLBACK") {
                    tracing::error!(path = %w.path().display(), error = %e, "rollback of a failed group commit failed");
                }
            }
            drop(conn);
            inner.batch_open = false;
            let out = r.map(|()| {
                // Committed: only now does memory change, member by member.
                let has = core.has_observers();
                let mut map = BTreeMap::new();
                for (m, chs) in b.pending {
                    map.insert(m, apply(&mut inner, chs, has));
                }
                map
            });
            drop(inner);
            core.idle.notify_all();
            out
        };
        w.os_unlock(b.acquired.record);
        if outcome.is_ok() {
            BATCHES.fetch_add(1, Ordering::Relaxed);
            BATCHED.fetch_add(b.committed_members as u64, Ordering::Relaxed);
            core.batches.fetch_add(1, Ordering::Relaxed);
            core.batched
                .fetch_add(b.committed_members as u64, Ordering::Relaxed);
        } else if b.committed_members > 0 {
            tracing::warn!(path = %w.path().display(), members = b.ran, "group commit failed; every member gets the error");
        }
        b.shared.finish(outcome);
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const T0: i64 = 1_700_000_000_000;

    fn reg(dir: &Path, max_batch: usize) -> TaskRegistry {
        TaskRegistry::open(
            &dir.join("runs.sqlite"),
            RegistryOptions {
                group_commit: GroupCommit {
                    enabled: true,
                    max_batch,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn task(r: &TaskRegistry, label: &str) -> String {
        r.create(
            NewTask {
                runtime: Some(Runtime::Subagent),
                task: label.into(),
                owner_key: "owner:a".into(),
                requester_origin: Some(serde_json::json!({"channel": "chat"})),
                ..Default::default()
            },
            T0,
        )
        .unwrap()
        .0
        .task_id
    }

    fn counter(t: &TaskRecord) -> i64 {
        t.metadata
            .as_ref()
            .and_then(|m| m.get("n"))
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    }

    /// The counter as SQLite has it, read on a fresh connection.
    fn durable_counter(r: &TaskRegistry, id: &str) -> i64 {
        let c = Connection::open(r.path()).unwrap();
        let m: Option<String> = c
            .query_row(
                "SELECT metadata_json FROM task_runs WHERE task_id = ?1",
                [id],
                |x| x.get(0),
            )
            .unwrap();
        m.and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
            .and_then(|v| v["n"].as_i64())
            .unwrap_or(0)
    }

    fn until_queued(r: &TaskRegistry, n: usize) {
        while r.writer.entry().fifo.len() < n {
            std::thread::yield_now();
        }
    }

    fn bump(r: &TaskRegistry, id: &str, seen: &Mutex<Vec<(char, i64)>>, who: char) {
        r.update(id, |t| {
            seen.lock().unwrap().push((who, counter(t)));
            let n = counter(t) + 1;
            t.metadata
                .get_or_insert_with(Default::default)
                .insert("n".into(), n.into());
            Ok(true)
        })
        .unwrap();
    }

    /// Runs a head mutation that blocks until `followers` (spawned one by one,
    /// each queued behind the previous) are all queued, then lets it go.
    fn queued_behind<'s>(
        sc: &'s std::thread::Scope<'s, '_>,
        r: &'s TaskRegistry,
        id: &'s str,
        seen: &'s Mutex<Vec<(char, i64)>>,
        followers: Vec<Box<dyn FnOnce() + Send + 's>>,
    ) {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let head = sc.spawn(move || {
            r.update(id, |t| {
                go_rx.recv().unwrap();
                seen.lock().unwrap().push(('a', counter(t)));
                let n = counter(t) + 1;
                t.metadata
                    .get_or_insert_with(Default::default)
                    .insert("n".into(), n.into());
                Ok(true)
            })
            .unwrap();
        });
        until_queued(r, 1);
        let mut hs = Vec::new();
        for (i, f) in followers.into_iter().enumerate() {
            hs.push(sc.spawn(f));
            until_queued(r, i + 2);
        }
        go_tx.send(()).unwrap();
        head.join().unwrap();
        for h in hs {
            h.join().unwrap();
        }
    }

    #[test]
    fn grouped_threads_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 64);
        let id = task(&r, "counter");
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..25 {
                        r.record_progress(&id, T0 + 5, None, Some("n")).unwrap();
                    }
                });
            }
        });
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 200);
        assert_eq!(durable_counter(&r, &id), 200);
        let (b, m) = r.group_commit_stats();
        assert!(
            b >= 1 && m == 200 + 1,
            "every mutation committed in a batch ({b}, {m})"
        );
    }

    #[test]
    fn batch_of_exactly_max_batch_commits_once() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 4);
        let id = task(&r, "counter");
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            let f = |c: char| -> Box<dyn FnOnce() + Send + '_> {
                let (r, id, seen) = (&r, &id, &seen);
                Box::new(move || bump(r, id, seen, c))
            };
            queued_behind(sc, &r, &id, &seen, vec![f('b'), f('c'), f('d')]);
        });
        let after = r.group_commit_stats();
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 4));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![('a', 0), ('b', 1), ('c', 2), ('d', 3)]
        );
        assert_eq!(durable_counter(&r, &id), 4);
    }

    #[test]
    fn batch_cut_by_max_batch_continues_in_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 4);
        let id = task(&r, "counter");
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            let f = |c: char| -> Box<dyn FnOnce() + Send + '_> {
                let (r, id, seen) = (&r, &id, &seen);
                Box::new(move || bump(r, id, seen, c))
            };
            queued_behind(sc, &r, &id, &seen, vec![f('b'), f('c'), f('d'), f('e')]);
        });
        let after = r.group_commit_stats();
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 5));
        // e ran in the second batch, on the first batch's committed state.
        assert_eq!(seen.lock().unwrap().last(), Some(&('e', 4)));
        assert_eq!(durable_counter(&r, &id), 5);
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 5);
    }

    #[test]
    fn error_sqlite_failure_and_panic_inside_a_batch_roll_back_only_their_own_savepoint() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 64);
        let id = task(&r, "counter");
        let other = task(&r, "victim");
        // Deleting `other` deletes its delivery state first, then fails on the
        // task row: without the member's savepoint the first DELETE would be
        // committed by the batch while memory keeps the delivery state.
        r.store()
            .connection()
            .execute_batch(
                "CREATE TEMP TRIGGER fail_delete BEFORE DELETE ON main.task_runs \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        r.add_observer(Arc::new(move |e: &TaskEvent| {
            if let TaskEvent::Upserted { task, .. } = e {
                ev.lock().unwrap().push(counter(task));
            }
            Ok(())
        }));
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        let results = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            let (r, id, other, seen, results) = (&r, &id, &other, &seen, &results);
            let followers: Vec<Box<dyn FnOnce() + Send + '_>> = vec![
                Box::new(move || bump(r, id, seen, 'b')),
                Box::new(move || {
                    let e = r.update(id, |t| {
                        seen.lock().unwrap().push(('c', counter(t)));
                        t.metadata
                            .get_or_insert_with(Default::default)
                            .insert("n".into(), 100.into());
                        Err(TaskError::Invalid {
                            path: "c".into(),
                            reason: "closure error".into(),
                        })
                    });
                    results.lock().unwrap().push(('c', e.is_err()));
                }),
                Box::new(move || {
                    let e = r.delete(other);
                    results.lock().unwrap().push(('x', e.is_err()));
                }),
                Box::new(move || {
                    let p = catch_unwind(AssertUnwindSafe(|| {
                        r.update(id, |t| -> Result<bool, TaskError> {
                            seen.lock().unwrap().push(('p', counter(t)));
                            panic!("closure panic")
                        })
                    }));
                    results.lock().unwrap().push(('p', p.is_err()));
                }),
                Box::new(move || bump(r, id, seen, 'e')),
            ];
            queued_behind(sc, r, id, seen, followers);
        });
        let after = r.group_commit_stats();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 3),
            "one batch, three committed members"
        );
        let mut res = results.lock().unwrap().clone();
        res.sort();
        assert_eq!(res, vec![('c', true), ('p', true), ('x', true)]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![('a', 0), ('b', 1), ('c', 2), ('p', 2), ('e', 2)]
        );
        assert_eq!(durable_counter(&r, &id), 3);
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 3);
        // The failed delete left both SQLite and memory whole.
        let c = Connection::open(r.path()).unwrap();
        let ds: i64 = c
            .query_row(
                "SELECT count(*) FROM task_delivery_state WHERE task_id = ?1",
                [&other],
                |x| x.get(0),
            )
            .unwrap();
        assert_eq!(ds, 1, "the failed member's first DELETE was rolled back");
        assert!(r.get(&other).unwrap().is_some());
        assert!(r.delivery_state(&other).unwrap().is_some());
        // Observers saw only the committed members (each caller notifies
        // after the commit, so concurrent callers' events may interleave).
        let mut ev = events.lock().unwrap().clone();
        ev.sort();
        assert_eq!(ev, vec![1, 2, 3]);
    }

    #[test]
    fn successor_giving_up_while_the_batch_is_open_still_closes_it() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 64);
        let id = task(&r, "counter");
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        let (go_tx, go_rx) = mpsc::channel::<()>();
        std::thread::scope(|sc| {
            let (r, id, seen) = (&r, &id, &seen);
            let a = sc.spawn(move || {
                r.update(id, |t| {
                    go_rx.recv().unwrap();
                    let n = counter(t) + 1;
                    t.metadata
                        .get_or_insert_with(Default::default)
                        .insert("n".into(), n.into());
                    Ok(true)
                })
            });
            until_queued(r, 1);
            let b = sc.spawn(move || bump(r, id, seen, 'b'));
            until_queued(r, 2);
            // A successor that will give up: a queue ticket, dropped unserved
            // (what a deadline does to a waiting writer).
            let quitter = r.writer.entry().fifo.enter();
            until_queued(r, 3);
            go_tx.send(()).unwrap();
            // b leaves the batch open for the quitter ...
            while !(r.writer.entry().fifo.len() == 1
                && r.writer.entry().batch.lock().unwrap().is_some())
            {
                std::thread::yield_now();
            }
            // ... which gives up. a and b must still be committed and told.
            drop(quitter);
            a.join().unwrap().unwrap();
            b.join().unwrap();
        });
        let after = r.group_commit_stats();
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 2));
        assert!(r.writer.entry().batch.lock().unwrap().is_none());
        assert_eq!(durable_counter(&r, &id), 2);
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 2);
    }
}
