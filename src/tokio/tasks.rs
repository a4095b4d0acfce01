//! [`TaskRegistry`]: the async handle on the task ledger (features `tokio` and
//! `tasks`).
//!
//! Design: an `Arc` of the sync [`crate::tasks::TaskRegistry`] (which is `Send +
//! Sync`), each call on tokio's blocking pool (`spawn_blocking`). Not one
//! connection thread per handle: that thread would run mutations one after the
//! other, and the sync registry's group commit — concurrent mutations queued in
//! the FIFO share one `BEGIN IMMEDIATE` transaction and one COMMIT — needs its
//! callers on separate threads. On the blocking pool, N concurrent async
//! callers are N queued writers and are batched exactly like N threads.

use std::panic::resume_unwind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::tasks::{
    AuditOptions, AuditReport, DeliveryState, DeliveryStatus, Finish, MaintenanceMode,
    MaintenanceOptions, MaintenanceReport, NewTask, NotifyPolicy, RegistryOptions, Snapshot,
    TaskError, TaskObserver, TaskRecord,
};
use crate::GroupCommitStats;

type SyncRegistry = crate::tasks::TaskRegistry;

/// The async handle on a task ledger (features `tokio` and `tasks`): the
/// methods of [`crate::tasks::TaskRegistry`] with the same names, argument
/// types and errors, as `async fn`s; closures (`update`'s patch, `delete_if`'s
/// predicate) must be `Send + 'static`. Cheap accessors (`path`,
/// `cas_misses`, `group_commit_stats`, ...) stay synchronous.
///
/// Each call runs the sync registry's method on tokio's blocking pool
/// (`spawn_blocking`), so no runtime worker blocks on the FIFO queue, the
/// flock or SQLite; a mutation waiting in the queue occupies one blocking-pool
/// thread (tokio's pool grows to 512 by default). Concurrent mutations from
/// many tasks are group-committed as the sync registry's are (see
/// [`crate::tasks::TaskRegistry`]): [`TaskRegistry::group_commit_stats`] counts
/// them. `Clone` is cheap and shares the registry; [`TaskRegistry::from_sync`]
/// / [`TaskRegistry::as_sync`] share one registry between threads and tasks.
///
/// Cancellation: dropping a call's future does not cancel it; the sync call
/// runs to its end on the blocking pool (a mutation commits or rolls back as a
/// whole, persist-before-commit holds) and its result is discarded.
///
/// A panic inside the call (e.g. in a patch) is resumed in the caller. If the
/// runtime is shutting down and the call never ran, it returns
/// [`TaskError::Core`] ([`crate::Error::Io`]).
#[derive(Clone, Debug)]
pub struct TaskRegistry {
    reg: Arc<SyncRegistry>,
}

async fn blocking<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    match ::tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => resume_unwind(e.into_panic()),
        Err(_) => Err(TaskError::Core(crate::Error::io(
            "spawn_blocking",
            path,
            std::io::Error::other("the tokio runtime is shutting down; the call did not run"),
        ))),
    }
}

impl TaskRegistry {
    /// Opens the ledger at `path` on the blocking pool. See
    /// [`crate::tasks::TaskRegistry::open`].
    ///
    /// Errors: as [`crate::tasks::TaskRegistry::open`].
    pub async fn open(path: impl AsRef<Path>, opts: RegistryOptions) -> Result<Self, TaskError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let reg = blocking(path, move || SyncRegistry::open(&p, opts)).await?;
        Ok(Self::from_sync(Arc::new(reg)))
    }

    /// Opens `<state_dir>/tasks/runs.sqlite`. See
    /// [`crate::tasks::TaskRegistry::open_state_dir`].
    ///
    /// Errors: as [`TaskRegistry::open`].
    pub async fn open_state_dir(
        state_dir: impl AsRef<Path>,
        opts: RegistryOptions,
    ) -> Result<Self, TaskError> {
        Self::open(crate::paths::tasks_db(state_dir.as_ref()), opts).await
    }

    /// Wraps a sync registry, shared with threads that use it directly (one
    /// in-memory view, one group-commit engine).
    pub fn from_sync(reg: Arc<SyncRegistry>) -> Self {
        TaskRegistry { reg }
    }

    /// The sync registry behind this handle.
    pub fn as_sync(&self) -> &Arc<SyncRegistry> {
        &self.reg
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SyncRegistry) -> Result<T, TaskError> + Send + 'static,
    ) -> Result<T, TaskError> {
        let reg = self.reg.clone();
        blocking(self.path().to_path_buf(), move || f(&reg)).await
    }

    /// The ledger path.
    pub fn path(&self) -> &Path {
        self.reg.path()
    }

    /// The path of the ledger's lock file (`<runs.sqlite>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        self.reg.lock_path()
    }

    /// See [`crate::tasks::TaskRegistry::cas_misses`].
    pub fn cas_misses(&self) -> u64 {
        self.reg.cas_misses()
    }

    /// See [`crate::tasks::TaskRegistry::group_commit_stats`] (mutations of
    /// the sync and async handles on this registry alike).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.reg.group_commit_stats()
    }

    /// See [`crate::tasks::TaskRegistry::lost_reason`] (pure; reads
    /// `/proc` for the owner's liveness).
    pub fn lost_reason(t: &TaskRecord, now: SystemTime, grace: Duration) -> Option<String> {
        SyncRegistry::lost_reason(t, now, grace)
    }

    // --- mutations ---

    /// See [`crate::tasks::TaskRegistry::create`].
    pub async fn create(
        &self,
        new: NewTask,
        now: SystemTime,
    ) -> Result<(TaskRecord, bool), TaskError> {
        self.run(move |r| r.create(new, now)).await
    }

    /// See [`crate::tasks::TaskRegistry::update`]; `patch` runs on the
    /// blocking pool, inside the write transaction.
    pub async fn update(
        &self,
        id: &str,
        patch: impl FnMut(&mut TaskRecord) -> Result<bool, TaskError> + Send + 'static,
    ) -> Result<TaskRecord, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.update(&id, patch)).await
    }

    /// See [`crate::tasks::TaskRegistry::mark_running`].
    pub async fn mark_running(&self, id: &str, now: SystemTime) -> Result<TaskRecord, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.mark_running(&id, now)).await
    }

    /// See [`crate::tasks::TaskRegistry::record_progress`].
    pub async fn record_progress(
        &self,
        id: &str,
        summary: Option<&str>,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let (id, summary) = (id.to_string(), summary.map(str::to_string));
        self.run(move |r| r.record_progress(&id, summary.as_deref(), now))
            .await
    }

    /// Test hook (feature `testing`): see `TaskRegistry::bump_counter`.
    #[cfg(any(test, feature = "testing"))]
    pub async fn bump_counter(
        &self,
        id: &str,
        counter: &str,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let (id, counter) = (id.to_string(), counter.to_string());
        self.run(move |r| r.bump_counter(&id, &counter, now)).await
    }

    /// See [`crate::tasks::TaskRegistry::finish`].
    pub async fn finish(
        &self,
        id: &str,
        how: Finish,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.finish(&id, how, now)).await
    }

    /// See [`crate::tasks::TaskRegistry::cancel`].
    pub async fn cancel(&self, id: &str, now: SystemTime) -> Result<TaskRecord, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.cancel(&id, now)).await
    }

    /// See [`crate::tasks::TaskRegistry::set_notify_policy`].
    pub async fn set_notify_policy(
        &self,
        id: &str,
        p: NotifyPolicy,
    ) -> Result<TaskRecord, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.set_notify_policy(&id, p)).await
    }

    /// See [`crate::tasks::TaskRegistry::set_delivery_status`].
    pub async fn set_delivery_status(
        &self,
        id: &str,
        d: DeliveryStatus,
    ) -> Result<TaskRecord, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.set_delivery_status(&id, d)).await
    }

    /// See [`crate::tasks::TaskRegistry::delete`].
    pub async fn delete(&self, id: &str) -> Result<bool, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.delete(&id)).await
    }

    /// See [`crate::tasks::TaskRegistry::delete_if`]; `pred` runs on the
    /// blocking pool, inside the write transaction.
    pub async fn delete_if(
        &self,
        id: &str,
        pred: impl FnMut(&TaskRecord) -> bool + Send + 'static,
    ) -> Result<bool, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.delete_if(&id, pred)).await
    }

    /// See [`crate::tasks::TaskRegistry::maintenance`].
    pub async fn maintenance(
        &self,
        mode: MaintenanceMode,
        now: SystemTime,
        opts: &MaintenanceOptions,
    ) -> Result<MaintenanceReport, TaskError> {
        let opts = opts.clone();
        self.run(move |r| r.maintenance(mode, now, &opts)).await
    }

    /// See [`crate::tasks::TaskRegistry::add_observer`] (the `restored` event
    /// is sent on the blocking pool).
    pub async fn add_observer(&self, o: Arc<dyn TaskObserver>) {
        // Infallible: only a runtime shutdown (the call never ran) is ignored.
        let _ = self
            .run(move |r| {
                r.add_observer(o);
                Ok(())
            })
            .await;
    }

    // --- reads ---

    /// See [`crate::tasks::TaskRegistry::get`].
    pub async fn get(&self, id: &str) -> Result<Option<TaskRecord>, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.get(&id)).await
    }

    /// See [`crate::tasks::TaskRegistry::delivery_state`].
    pub async fn delivery_state(&self, id: &str) -> Result<Option<DeliveryState>, TaskError> {
        let id = id.to_string();
        self.run(move |r| r.delivery_state(&id)).await
    }

    /// See [`crate::tasks::TaskRegistry::list`].
    pub async fn list(&self) -> Result<Vec<TaskRecord>, TaskError> {
        self.run(|r| r.list()).await
    }

    /// See [`crate::tasks::TaskRegistry::snapshot`].
    pub async fn snapshot(&self) -> Result<Snapshot, TaskError> {
        self.run(|r| r.snapshot()).await
    }

    /// See [`crate::tasks::TaskRegistry::by_run_id`].
    pub async fn by_run_id(&self, run_id: &str) -> Result<Vec<TaskRecord>, TaskError> {
        let k = run_id.to_string();
        self.run(move |r| r.by_run_id(&k)).await
    }

    /// See [`crate::tasks::TaskRegistry::by_owner_key`].
    pub async fn by_owner_key(&self, owner_key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        let k = owner_key.to_string();
        self.run(move |r| r.by_owner_key(&k)).await
    }

    /// See [`crate::tasks::TaskRegistry::by_child_session`].
    pub async fn by_child_session(&self, key: &str) -> Result<Vec<TaskRecord>, TaskError> {
        let k = key.to_string();
        self.run(move |r| r.by_child_session(&k)).await
    }

    /// See [`crate::tasks::TaskRegistry::by_parent_flow`].
    pub async fn by_parent_flow(&self, flow_id: &str) -> Result<Vec<TaskRecord>, TaskError> {
        let k = flow_id.to_string();
        self.run(move |r| r.by_parent_flow(&k)).await
    }

    /// See [`crate::tasks::TaskRegistry::lookup`].
    pub async fn lookup(&self, lookup: &str) -> Result<TaskRecord, TaskError> {
        let k = lookup.to_string();
        self.run(move |r| r.lookup(&k)).await
    }

    /// See [`crate::tasks::TaskRegistry::audit`].
    pub async fn audit(
        &self,
        now: SystemTime,
        opts: &AuditOptions,
    ) -> Result<AuditReport, TaskError> {
        let opts = opts.clone();
        self.run(move |r| r.audit(now, &opts)).await
    }

    /// See [`crate::tasks::TaskRegistry::list_fresh_tasks_for_owner_key`].
    pub async fn list_fresh_tasks_for_owner_key(
        &self,
        owner_key: &str,
        now: SystemTime,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let k = owner_key.to_string();
        self.run(move |r| r.list_fresh_tasks_for_owner_key(&k, now))
            .await
    }
}
