//! Maintenance (openclaw `task-registry.maintenance.ts`, with lockstore's
//! owner-liveness rule): mark lost, normalize timestamps, stamp
//! `cleanupAfter`, prune — previewed or applied.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::record::*;
use super::registry::TaskRegistry;
use super::TaskError;
use crate::proc::Liveness;
use crate::timefmt::to_ms;

/// Grace before an active task whose owner cannot be judged is marked lost:
/// 5 min (openclaw `TASK_RECONCILE_GRACE_MS`).
pub const TASK_RECONCILE_GRACE: Duration = Duration::from_secs(5 * 60);

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
#[non_exhaustive]
pub struct MaintenanceOptions {
    /// Grace before an active task whose owner cannot be judged (no owner
    /// recorded, another boot) is marked lost. Default
    /// [`TASK_RECONCILE_GRACE`] (5 min).
    pub grace: Duration,
}

impl MaintenanceOptions {
    /// The defaults with grace `grace`.
    pub fn with_grace(grace: Duration) -> Self {
        MaintenanceOptions { grace }
    }
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        MaintenanceOptions {
            grace: TASK_RECONCILE_GRACE,
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
    /// False when the sweep did nothing because another host's sweep held
    /// the maintenance leader lock (PostgreSQL, apply only; always true on
    /// SQLite and in preview).
    pub leader: bool,
}

impl TaskRegistry {
    /// Why an active task should be marked lost now, if it should: its owner
    /// is definitely dead ([`crate::ProcessIdentity::liveness`] = Dead: same boot, pid gone
    /// or start time differs) — at once; or the owner cannot be judged (none
    /// recorded, another boot or namespace) and the task has been silent for
    /// `grace`. A running or stopped owner is never judged lost.
    pub fn lost_reason(t: &TaskRecord, now: SystemTime, grace: Duration) -> Option<String> {
        Self::lost_reason_ms(
            t,
            to_ms(now),
            grace.as_millis().min(i64::MAX as u128) as i64,
            None,
        )
    }

    /// [`TaskRegistry::lost_reason`] as judged from host `my_host`
    /// (PostgreSQL): an owner recorded on another host is judged only by its
    /// lease (lost once `lease_expires_at` has passed; without a lease, after
    /// the grace); an owner on this host (or with no host recorded) by the
    /// exact process checks.
    pub(super) fn lost_reason_ms(
        t: &TaskRecord,
        now_ms: i64,
        grace_ms: i64,
        my_host: Option<&str>,
    ) -> Option<String> {
        if t.status.is_terminal() {
            return None;
        }
        let silent = now_ms - t.last_activity_at();
        if let (Some(h), Some(me)) = (t.owner_host.as_deref(), my_host) {
            if h != me {
                return match t.lease_expires_at {
                    Some(exp) => (now_ms >= exp).then(|| format!(
                        "the lease of owner process {} on host {h} expired {} s ago (token {}); the task was still {}",
                        t.owner_pid.unwrap_or(0), (now_ms - exp) / 1000, t.fencing_token, t.status
                    )),
                    None => (silent >= grace_ms).then(|| format!(
                        "owner on host {h} holds no lease and the task has been silent for {} s (grace {} s)",
                        silent / 1000, grace_ms / 1000
                    )),
                };
            }
        }
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

    /// Maintenance sweep at `now` (openclaw `task-registry.maintenance.ts`,
    /// with lockstore's owner-liveness rule): for each task, mark lost an active
    /// task per [`TaskRegistry::lost_reason`]; normalize inconsistent
    /// timestamps; stamp a missing `cleanupAfter`; prune a terminal task whose
    /// `cleanupAfter` has passed. `Preview` only counts. Each repair is its own
    /// persist-before-commit mutation that re-checks its condition on the
    /// durable row.
    pub fn maintenance(
        &self,
        mode: MaintenanceMode,
        now: SystemTime,
        opts: &MaintenanceOptions,
    ) -> Result<MaintenanceReport, TaskError> {
        let now_ms = to_ms(now);
        let mut rep = MaintenanceReport {
            mode,
            reconciled: 0,
            recovered: 0,
            cleanup_stamped: 0,
            pruned: 0,
            normalized: 0,
            actions: Vec::new(),
            leader: true,
        };
        // One leader at a time across hosts (PostgreSQL): the guard holds
        // the session advisory lock until the sweep ends.
        #[cfg(feature = "postgres")]
        let _leader = match mode {
            MaintenanceMode::Apply => match self.lead_maintenance()? {
                Some(None) => {
                    tracing::info!(database = %self.path().display(), "task maintenance skipped: another host leads");
                    rep.leader = false;
                    return Ok(rep);
                }
                g => g,
            },
            MaintenanceMode::Preview => None,
        };
        let my_host = self.core.host.clone();
        let my_host = my_host.as_deref();
        let grace = opts.grace.as_millis().min(i64::MAX as u128) as i64;
        for t in self.list()? {
            let id = t.task_id.clone();
            if let Some(reason) = Self::lost_reason_ms(&t, now_ms, grace, my_host) {
                let apply = mode == MaintenanceMode::Apply;
                let done = !apply
                    || self
                        .update(&id, |f| {
                            let Some(r) = Self::lost_reason_ms(f, now_ms, grace, my_host) else {
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
}
