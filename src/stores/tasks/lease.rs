//! Ownership with a lease and a fencing token (both backends; what makes
//! ownership safe across hosts on PostgreSQL): [`TaskRegistry::claim`] takes a
//! task for this process — the first claim of a queued task, or a takeover
//! once the previous owner is gone — and returns it with a new fencing token;
//! the owner then renews its lease ([`TaskRegistry::renew`]) and names its
//! token in every owner write ([`TaskRegistry::record_progress_fenced`],
//! [`TaskRegistry::finish_fenced`]), which is refused
//! ([`TaskError::Stale`]) once the token has moved on or the task ended. The
//! token check runs on the durable row inside the write transaction (under
//! the ledger's write lock), so a paused or cut-off owner cannot complete a
//! task someone else took over (River #1302's stale completion).
//!
//! Who is gone (see [`TaskRegistry::lost_reason`]): an owner on this host —
//! same host id, or SQLite — by its process (pid + start time + boot id: a
//! dead owner at once, a live or stopped one never); an owner on another host
//! only by its lease.

use std::time::{Duration, SystemTime};

use super::maintenance::TASK_RECONCILE_GRACE;
use super::mutations::Finish;
use super::record::*;
use super::registry::TaskRegistry;
use super::TaskError;
use crate::timefmt::to_ms;

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl TaskRegistry {
    /// The host id this registry claims under: `PgOptions::host_id` on
    /// PostgreSQL; `None` on SQLite (one host; owners are judged by process).
    pub fn host_id(&self) -> Option<&str> {
        self.core.host.as_deref()
    }

    /// Claims task `id` for this process at `now` with a lease of `lease`:
    /// status `running` (`startedAt` kept if set), owner = this process and
    /// host, `lease_expires_at = now + lease`, `fencing_token + 1`. Allowed
    /// when the task is queued, when this very process already owns it, or
    /// when its owner is gone — dead on this host, or its lease expired on
    /// another host (without a lease: silent for
    /// [`super::TASK_RECONCILE_GRACE`]). Returns the task; its
    /// `fencing_token` is the token to name in owner writes.
    ///
    /// Errors: [`TaskError::Held`] (another owner still holds it),
    /// [`TaskError::InvalidTransition`] (the task ended), and as
    /// [`TaskRegistry::update`].
    pub fn claim(
        &self,
        id: &str,
        lease: Duration,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let now_ms = to_ms(now);
        let me = crate::proc::ProcessIdentity::current();
        let host = self.core.host.clone();
        let path = self.path().to_path_buf();
        self.update(id, |t| {
            if t.status.is_terminal() {
                return Err(TaskError::InvalidTransition {
                    path: path.clone(),
                    task_id: t.task_id.clone(),
                    from: t.status,
                    to: TaskStatus::Running,
                });
            }
            let mine = t.owner_host == host
                && t.owner_pid == Some(me.pid)
                && t.owner_start_time == me.start_time;
            let free = t.status == TaskStatus::Queued
                || mine
                || Self::lost_reason_ms(t, now_ms, ms(TASK_RECONCILE_GRACE), host.as_deref())
                    .is_some();
            if !free {
                return Err(TaskError::Held {
                    path: path.clone(),
                    task_id: t.task_id.clone(),
                    holder: format!(
                        "process {} on host {}",
                        t.owner_pid.map_or("?".into(), |p| p.to_string()),
                        t.owner_host.as_deref().unwrap_or("(this host)")
                    ),
                    lease_expires_at: t.lease_expires_at,
                });
            }
            t.status = TaskStatus::Running;
            t.started_at.get_or_insert(now_ms);
            t.last_event_at = Some(now_ms.max(t.last_event_at.unwrap_or(i64::MIN)));
            t.owner_pid = Some(me.pid);
            t.owner_start_time = me.start_time;
            t.owner_boot_id = me.boot_id.clone();
            t.owner_host = host.clone();
            t.lease_expires_at = Some(now_ms.saturating_add(ms(lease)));
            t.fencing_token += 1;
            Ok(true)
        })
    }

    /// The owner's check on the durable row: `token` is still the task's
    /// and the task is still active.
    fn check_token(&self, t: &TaskRecord, token: i64) -> Result<(), TaskError> {
        if t.fencing_token != token || t.status.is_terminal() {
            return Err(TaskError::Stale {
                path: self.path().to_path_buf(),
                task_id: t.task_id.clone(),
                token,
                current: t.fencing_token,
                status: t.status,
            });
        }
        Ok(())
    }

    /// Heartbeat: the owner holding `token` extends its lease to `now +
    /// lease` (and `lastEventAt` to `now`, never back).
    ///
    /// Errors: [`TaskError::Stale`] (the token moved on or the task ended:
    /// stop working on it), and as [`TaskRegistry::update`].
    pub fn renew(
        &self,
        id: &str,
        token: i64,
        lease: Duration,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let now_ms = to_ms(now);
        self.update(id, |t| {
            self.check_token(t, token)?;
            t.lease_expires_at = Some(now_ms.saturating_add(ms(lease)));
            t.last_event_at = Some(now_ms.max(t.last_event_at.unwrap_or(i64::MIN)));
            Ok(true)
        })
    }

    /// [`TaskRegistry::record_progress`] by the owner holding `token`.
    ///
    /// Errors: [`TaskError::Stale`], and as [`TaskRegistry::update`].
    pub fn record_progress_fenced(
        &self,
        id: &str,
        token: i64,
        summary: Option<&str>,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        let now_ms = to_ms(now);
        self.update(id, |t| {
            self.check_token(t, token)?;
            t.last_event_at = Some(now_ms.max(t.last_event_at.unwrap_or(i64::MIN)));
            if let Some(s) = summary {
                t.progress_summary = Some(s.to_string());
            }
            Ok(true)
        })
    }

    /// [`TaskRegistry::finish`] by the owner holding `token`; the lease ends
    /// with the task.
    ///
    /// Errors: [`TaskError::Stale`] (another owner took over, or the task was
    /// already ended — e.g. marked lost after the lease expired; nothing is
    /// written), [`TaskError::NotTerminal`], and as [`TaskRegistry::update`].
    pub fn finish_fenced(
        &self,
        id: &str,
        token: i64,
        how: Finish,
        now: SystemTime,
    ) -> Result<TaskRecord, TaskError> {
        if how.status.is_active() {
            return Err(TaskError::NotTerminal {
                path: self.path().to_path_buf(),
                task_id: id.to_string(),
                status: how.status,
            });
        }
        let now_ms = to_ms(now);
        self.update(id, |t| {
            self.check_token(t, token)?;
            how.apply(t, now_ms);
            Ok(true)
        })
    }
}
