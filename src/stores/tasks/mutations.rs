//! Registry mutations: create (with de-duplication), the compare-and-set
//! [`TaskRegistry::update`] every other change is built on, lifecycle
//! helpers and deletes. Each runs through [`TaskRegistry::mutate`]
//! (persist-before-commit, group commit).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::index::Change;
use super::record::*;
use super::registry::TaskRegistry;
use super::store::WriteOutcome;
use super::TaskError;
use crate::timefmt::to_ms;

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

/// How a task ended, for [`TaskRegistry::finish`]: a terminal status and,
/// optionally, an error text and a final summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The terminal status (not queued or running).
    pub status: TaskStatus,
    /// Error text to record (`None` keeps the recorded one).
    pub error: Option<String>,
    /// Final summary to record (`None` keeps the recorded one).
    pub summary: Option<String>,
}

impl Finish {
    /// `status` without error or summary.
    pub fn new(status: TaskStatus) -> Self {
        Finish {
            status,
            error: None,
            summary: None,
        }
    }
    /// Sets the error text.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
    /// Sets the final summary.
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// The finish patch on `t` at `now_ms` (see [`TaskRegistry::finish`]).
    pub(super) fn apply(&self, t: &mut TaskRecord, now_ms: i64) {
        t.status = self.status;
        t.ended_at = Some(now_ms);
        t.last_event_at = Some(now_ms);
        if self.error.is_some() {
            t.error = self.error.clone();
        }
        if self.summary.is_some() {
            t.terminal_summary = self.summary.clone();
        }
        if self.status == TaskStatus::Succeeded {
            t.terminal_outcome.get_or_insert(TerminalOutcome::Succeeded);
        }
    }
}

impl TaskRegistry {
    /// Creates a task (status `queued` unless `new.status` is `running`), or —
    /// when a task with the same run id, runtime, scope, owner, child session,
    /// parent flow, label and description exists — returns that one (create
    /// de-duplication, §5.6). Returns `(task, created)`.
    ///
    /// `now` is the creation time (`createdAt`, and `startedAt` for a running
    /// task).
    ///
    /// Errors: [`TaskError::Invalid`] (empty description, no runtime, terminal
    /// initial status), plus the write errors of [`TaskRegistry::update`].
    pub fn create(&self, new: NewTask, now: SystemTime) -> Result<(TaskRecord, bool), TaskError> {
        let now_ms = to_ms(now);
        let path = self.path().to_path_buf();
        let invalid = |reason: &'static str| TaskError::Invalid {
            path: path.clone(),
            reason,
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
            owner_host: None,
            lease_expires_at: None,
            fencing_token: 0,
        };
        t.normalize();
        let delivery = new.requester_origin.clone().map(|o| DeliveryState {
            task_id: t.task_id.clone(),
            requester_origin: Some(o),
            last_notified_event_at: None,
        });
        let p = path.clone();
        self.mutate(|tx, _| {
            if let Some(existing) = tri!(tx.find_duplicate(&t)?) {
                // Make sure memory has the durable copy too.
                return Ok(Ok((
                    (existing.clone(), false),
                    vec![Change::Put(existing, None)],
                )));
            }
            let mut w = t.clone();
            match tx.write_task(&w)? {
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
                tx.write_delivery(&w.task_id, Some(d))?;
            }
            Ok(Ok((
                (w.clone(), true),
                vec![Change::Put(w, delivery.clone())],
            )))
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
            let Some(fresh) = tri!(tx.read_task(id)?) else {
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
                // An ended task has no owner lease (its token stays, so a
                // late owner write is refused as stale).
                next.lease_expires_at = None;
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
            match tx.write_task(&next)? {
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
    ///
    /// Errors: as [`TaskRegistry::update`].
    pub fn mark_running(&self, id: &str, now: SystemTime) -> Result<TaskRecord, TaskError> {
        let now_ms = to_ms(now);
        self.update(id, |t| {
            t.status = TaskStatus::Running;
            t.started_at.get_or_insert(now_ms);
            t.last_event_at = Some(now_ms);
            Ok(true)
        })
    }

    /// Records progress: `lastEventAt` = now (never moved back) and, when
    /// given, `progressSummary`.
    ///
    /// Errors: as [`TaskRegistry::update`].
    pub fn record_progress(
        &self,
        id: &str,
        summary: Option<&str>,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let now_ms = to_ms(now);
        self.update(id, |t| {
            t.last_event_at = Some(now_ms.max(t.last_event_at.unwrap_or(i64::MIN)));
            if let Some(s) = summary {
                t.progress_summary = Some(s.to_string());
            }
            Ok(true)
        })
    }

    /// Test hook (feature `testing`): records progress at `now` and
    /// increments `metadata[counter]` by one — a read-modify-write that loses
    /// updates if two writers ever overlap.
    ///
    /// Errors: as [`TaskRegistry::update`].
    #[cfg(any(test, feature = "testing"))]
    pub fn bump_counter(
        &self,
        id: &str,
        counter: &str,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let now_ms = to_ms(now);
        self.update(id, |t| {
            t.last_event_at = Some(now_ms.max(t.last_event_at.unwrap_or(i64::MIN)));
            t.bump_counter(counter);
            Ok(true)
        })
    }

    /// Records a terminal status (`how.status`) with `endedAt` and
    /// `lastEventAt` = now, and `how`'s error and summary when given (an
    /// error or summary already recorded is kept otherwise). A success also
    /// records the terminal outcome `succeeded` unless one is set.
    ///
    /// Errors: [`TaskError::NotTerminal`] (`how.status` is queued or
    /// running), and as [`TaskRegistry::update`].
    pub fn finish(&self, id: &str, how: Finish, now: SystemTime) -> Result<TaskRecord, TaskError> {
        let Finish {
            status,
            error,
            summary,
        } = how;
        if status.is_active() {
            return Err(TaskError::NotTerminal {
                path: self.path().to_path_buf(),
                task_id: id.to_string(),
                status,
            });
        }
        let how = Finish {
            status,
            error,
            summary,
        };
        let now_ms = to_ms(now);
        self.update(id, |t| {
            how.apply(t, now_ms);
            Ok(true)
        })
    }

    /// Cancels a task (records `cancelled` with the error "cancelled by
    /// operator"; cli tasks are record-only, as in openclaw).
    ///
    /// Errors: as [`TaskRegistry::finish`].
    pub fn cancel(&self, id: &str, now: SystemTime) -> Result<TaskRecord, TaskError> {
        self.finish(
            id,
            Finish::new(TaskStatus::Cancelled).with_error("cancelled by operator"),
            now,
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
            let Some(fresh) = tri!(tx.read_task(id)?) else {
                return Ok(Ok((false, vec![Change::Remove(id.to_string())])));
            };
            if !pred(&fresh) {
                return Ok(Ok((false, vec![Change::Put(fresh, None)])));
            }
            if !tx.delete_task(id, fresh.version)? {
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
}
