//! Audit of the task ledger (openclaw `src/tasks/task-registry.audit.ts`,
//! reference §5.9): codes, thresholds, sort and summary. Pure: a function of the
//! records and `now`.
//!
//! | Code | Severity | Trigger | Repair (maintenance apply) |
//! | --- | --- | --- | --- |
//! | `stale_queued` | warn | queued, age ≥ 10 min | owner dead, or unjudgeable and silent past the grace → `lost`; owner alive → needs a person (documented) |
//! | `stale_running` | error | running, age ≥ 30 min | same as above |
//! | `lost` | warn while retained, error after `cleanupAfter` | status lost | pruned once `cleanupAfter` passed; the warn is informational |
//! | `delivery_failed` | warn | delivery failed, notify ≠ silent | needs a person: redeliver out of band, then `tasks notify ID silent` |
//! | `missing_cleanup` | warn | terminal, not lost, no `cleanupAfter` | stamp `cleanupAfter` |
//! | `inconsistent_timestamps` | warn | see [`TaskRecord::timestamps_inconsistent`] | normalize timestamps |
//!
//! Age = `now − (lastEventAt ?? startedAt ?? createdAt)`, floored at 0.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::record::{iso, TaskRecord, TaskStatus};

/// Default `staleQueuedMs`: 10 min.
pub const STALE_QUEUED: Duration = Duration::from_secs(10 * 60);
/// Default `staleRunningMs`: 30 min.
pub const STALE_RUNNING: Duration = Duration::from_secs(30 * 60);

/// Finding severity; parses (strictly) from `warn` / `error`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Severity {
    /// Attention advised.
    Warn,
    /// Something is wrong.
    Error,
}

impl Severity {
    /// `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// Audit codes; parse (strictly) from their snake_case names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AuditCode {
    /// Queued for ≥ 10 min.
    StaleQueued,
    /// Running for ≥ 30 min without an event.
    StaleRunning,
    /// Lost (warn while retained, error after cleanupAfter).
    Lost,
    /// Delivery failed and the requester expects a notification.
    DeliveryFailed,
    /// Terminal, not lost, no cleanupAfter.
    MissingCleanup,
    /// Timestamps out of order.
    InconsistentTimestamps,
}

impl AuditCode {
    /// All six codes.
    pub const ALL: [AuditCode; 6] = [
        AuditCode::StaleQueued,
        AuditCode::StaleRunning,
        AuditCode::Lost,
        AuditCode::DeliveryFailed,
        AuditCode::MissingCleanup,
        AuditCode::InconsistentTimestamps,
    ];
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditCode::StaleQueued => "stale_queued",
            AuditCode::StaleRunning => "stale_running",
            AuditCode::Lost => "lost",
            AuditCode::DeliveryFailed => "delivery_failed",
            AuditCode::MissingCleanup => "missing_cleanup",
            AuditCode::InconsistentTimestamps => "inconsistent_timestamps",
        }
    }
}

/// Thresholds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditOptions {
    /// `stale_queued` threshold (default 10 min).
    pub stale_queued: Duration,
    /// `stale_running` threshold (default 30 min).
    pub stale_running: Duration,
}

impl AuditOptions {
    /// Thresholds `stale_queued` and `stale_running`.
    pub fn new(stale_queued: Duration, stale_running: Duration) -> Self {
        AuditOptions {
            stale_queued,
            stale_running,
        }
    }
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions::new(STALE_QUEUED, STALE_RUNNING)
    }
}

/// One finding (JSON camelCase).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditFinding {
    /// Severity.
    pub severity: Severity,
    /// Code.
    pub code: AuditCode,
    /// Task id.
    pub task_id: String,
    /// Task status.
    pub status: TaskStatus,
    /// Age in ms (None where age is not meaningful).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<i64>,
    /// Human detail.
    pub detail: String,
    /// The task.
    pub task: TaskRecord,
}

/// Summary `{total, warnings, errors, byCode}` (all six codes present).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditSummary {
    /// Number of findings.
    pub total: usize,
    /// Warn findings.
    pub warnings: usize,
    /// Error findings.
    pub errors: usize,
    /// Count per code.
    pub by_code: BTreeMap<&'static str, usize>,
}

/// Sorted findings and their summary (always over every finding).
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Summary of all findings.
    pub summary: AuditSummary,
    /// Findings, sorted.
    pub findings: Vec<AuditFinding>,
}

impl AuditReport {
    /// Findings matching `severity` and `code`, at most `limit`; the summary is
    /// not affected (it always counts the unfiltered findings).
    pub fn filtered(
        &self,
        severity: Option<Severity>,
        code: Option<AuditCode>,
    ) -> Vec<&AuditFinding> {
        self.findings
            .iter()
            .filter(|f| severity.is_none_or(|s| f.severity == s))
            .filter(|f| code.is_none_or(|c| f.code == c))
            .collect()
    }
}

/// Audits `tasks` at `now`. Sort: errors first, then larger age first
/// (missing age = −1), then `createdAt` ascending (then task id, for a total
/// order).
pub fn audit(tasks: &[TaskRecord], now: SystemTime, opts: &AuditOptions) -> AuditReport {
    let now_ms = crate::timefmt::to_ms(now);
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    let (stale_queued_ms, stale_running_ms) = (ms(opts.stale_queued), ms(opts.stale_running));
    let mut out = Vec::new();
    for t in tasks {
        let age = (now_ms - t.last_activity_at()).max(0);
        let mut push = |severity, code, age_ms: Option<i64>, detail: String| {
            out.push(AuditFinding {
                severity,
                code,
                task_id: t.task_id.clone(),
                status: t.status,
                age_ms,
                detail,
                task: t.clone(),
            })
        };
        match t.status {
            TaskStatus::Queued if age >= stale_queued_ms => push(
                Severity::Warn,
                AuditCode::StaleQueued,
                Some(age),
                "task has been queued without starting".into(),
            ),
            TaskStatus::Running if age >= stale_running_ms => push(
                Severity::Error,
                AuditCode::StaleRunning,
                Some(age),
                "task is running but has reported nothing".into(),
            ),
            TaskStatus::Lost => {
                let retained = t.cleanup_after.is_some_and(|c| c > now_ms);
                let prefix = t
                    .error
                    .as_deref()
                    .map(|e| format!("{e}; "))
                    .unwrap_or_default();
                let (sev, tail) = if retained {
                    (
                        Severity::Warn,
                        format!(
                            " and is retained until {}",
                            iso(t.cleanup_after.unwrap_or_default())
                        ),
                    )
                } else {
                    (Severity::Error, String::new())
                };
                push(
                    sev,
                    AuditCode::Lost,
                    Some(age),
                    format!("{prefix}task lost its backing session{tail}"),
                );
            }
            _ => {}
        }
        if t.delivery_status == super::DeliveryStatus::Failed
            && t.notify_policy != super::NotifyPolicy::Silent
        {
            push(
                Severity::Warn,
                AuditCode::DeliveryFailed,
                Some(age),
                "terminal notification could not be delivered".into(),
            );
        }
        if t.status.is_terminal() && t.status != TaskStatus::Lost && t.cleanup_after.is_none() {
            push(
                Severity::Warn,
                AuditCode::MissingCleanup,
                Some(age),
                "terminal task has no cleanupAfter".into(),
            );
        }
        if let Some(why) = t.timestamps_inconsistent() {
            push(
                Severity::Warn,
                AuditCode::InconsistentTimestamps,
                Some(age),
                why.into(),
            );
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.age_ms.unwrap_or(-1).cmp(&a.age_ms.unwrap_or(-1)))
            .then(a.task.created_at.cmp(&b.task.created_at))
            .then(a.task_id.cmp(&b.task_id))
    });
    AuditReport {
        summary: summarize(&out),
        findings: out,
    }
}

/// `{total, warnings, errors, byCode}` of `findings`.
pub(crate) fn summarize(findings: &[AuditFinding]) -> AuditSummary {
    let mut s = AuditSummary {
        by_code: AuditCode::ALL.iter().map(|c| (c.as_str(), 0)).collect(),
        ..Default::default()
    };
    for f in findings {
        s.total += 1;
        match f.severity {
            Severity::Warn => s.warnings += 1,
            Severity::Error => s.errors += 1,
        }
        *s.by_code.entry(f.code.as_str()).or_default() += 1;
    }
    s
}
