//! The task record, its enums and the delivery-state record (openclaw
//! `src/tasks/task-registry.types.ts`, reference §5.1), plus the lifecycle rules
//! shared by the registry and maintenance: timestamp normalization, status
//! monotonicity, initial delivery status / notify policy, cleanupAfter stamping.

use std::collections::BTreeMap;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retention of a terminal task that is not `lost`: 7 days (openclaw
/// `DEFAULT_TASK_RETENTION_MS`).
pub const DEFAULT_TASK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Retention of a `lost` task: 24 h (openclaw `LOST_TASK_RETENTION_MS`).
pub const LOST_TASK_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The record's enums: persisted (SQLite, JSON) and parsed (CLI) with their
/// snake_case spelling; `FromStr` is strict (exact spelling only) and its
/// error is [`strum::ParseError`]; `as_str` / `Display` give the spelling;
/// `VARIANTS` lists every value in declaration order.
macro_rules! spelled {
    ($($name:ident),+) => {$(
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = <$name as strum::VariantArray>::VARIANTS;
            /// The persisted / CLI spelling.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
    )+};
}

/// Which runtime runs the task.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Runtime {
    /// `subagent`
    Subagent,
    /// `acp`
    Acp,
    /// `cli`
    Cli,
    /// `cron`
    Cron,
}

/// Whether the task belongs to a session (has an owner key) or the system.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ScopeKind {
    /// `session`
    Session,
    /// `system`
    System,
}

/// Lifecycle status. `queued` and `running` are active; the rest terminal.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum TaskStatus {
    /// `queued`: recorded, not started.
    Queued,
    /// `running`: started by its owner process.
    Running,
    /// `succeeded`: finished successfully.
    Succeeded,
    /// `failed`: finished with an error.
    Failed,
    /// `timed_out`: stopped by a timeout.
    TimedOut,
    /// `cancelled`: cancelled by an operator.
    Cancelled,
    /// `lost`: its owner died (or vanished) while it was active.
    Lost,
}

/// Outcome of the terminal notification to the requester.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DeliveryStatus {
    /// `pending`
    Pending,
    /// `delivered`
    Delivered,
    /// `session_queued`
    SessionQueued,
    /// `failed`
    Failed,
    /// `parent_missing`
    ParentMissing,
    /// `not_applicable`
    NotApplicable,
}

/// When the requester is notified.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum NotifyPolicy {
    /// `done_only`
    DoneOnly,
    /// `state_changes`
    StateChanges,
    /// `silent`
    Silent,
}

/// How a terminal task ended from the requester's point of view.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum TerminalOutcome {
    /// `succeeded`
    Succeeded,
    /// `blocked`
    Blocked,
}

spelled!(
    Runtime,
    ScopeKind,
    TaskStatus,
    DeliveryStatus,
    NotifyPolicy,
    TerminalOutcome
);

impl TaskStatus {
    /// `queued` or `running`.
    pub fn is_active(self) -> bool {
        matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }
    /// Not active.
    pub fn is_terminal(self) -> bool {
        !self.is_active()
    }
    /// Retention after the task ended (24 h for lost, else 7 days).
    pub fn retention(self) -> Duration {
        if self == TaskStatus::Lost {
            LOST_TASK_RETENTION
        } else {
            DEFAULT_TASK_RETENTION
        }
    }
    /// Status monotonicity (openclaw §5.6): the same status is always accepted;
    /// an active status may move anywhere; a terminal status never returns to
    /// active; terminal → terminal only from `succeeded` and never to `lost`
    /// (so a later success never downgrades cancelled/failed/timed_out/lost).
    pub fn may_become(self, next: TaskStatus) -> bool {
        if self == next || self.is_active() {
            return true;
        }
        next.is_terminal() && self == TaskStatus::Succeeded && next != TaskStatus::Lost
    }
}

/// Value of the flat metadata map: string, number, boolean or null.
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// One task run (JSON field names as openclaw's `TaskRecord`, camelCase).
/// It mirrors the ledger row, so its times stay Unix epoch ms (`i64`), as on
/// disk; the registry's methods take [`std::time::SystemTime`] and convert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// Primary key.
    pub task_id: String,
    /// Runtime.
    pub runtime: Runtime,
    /// Free-form kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_kind: Option<String>,
    /// Source id (a cron job id, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// Requesting session ("" for system scope; defaults to `owner_key`).
    pub requester_session_key: String,
    /// Owning session key ("" only for system scope).
    pub owner_key: String,
    /// Session or system.
    pub scope_kind: ScopeKind,
    /// Child session running the work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_session_key: Option<String>,
    /// Parent Task Flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_flow_id: Option<String>,
    /// Parent task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// Agent running the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Agent that requested it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester_agent_id: Option<String>,
    /// Run id (dedupe key together with the other identity fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Short label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Description (required).
    pub task: String,
    /// Lifecycle status.
    pub status: TaskStatus,
    /// Terminal delivery status.
    pub delivery_status: DeliveryStatus,
    /// Notify policy.
    pub notify_policy: NotifyPolicy,
    /// Created (ms).
    pub created_at: i64,
    /// Started (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// Ended (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Last progress or state event (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<i64>,
    /// When maintenance may prune the task (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_after: Option<i64>,
    /// Error text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Latest progress summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_summary: Option<String>,
    /// Final summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_summary: Option<String>,
    /// Terminal outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_outcome: Option<TerminalOutcome>,
    /// Flat metadata map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Pid of the process running the task (lockstore addition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    /// Start time (clock ticks since boot) of that process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_start_time: Option<u64>,
    /// Boot id of the host when that process ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_boot_id: Option<String>,
    /// Row version: 1 on insert, +1 on every write (compare-and-set token).
    pub version: i64,
    /// Host id of the owner that claimed the task ([`crate::tasks::TaskRegistry::claim`];
    /// schema v3). `None` on SQLite (one host) and for unclaimed tasks. An
    /// owner on another host is judged only by its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_host: Option<String>,
    /// When the owner's lease ends (Unix ms) unless renewed
    /// ([`crate::tasks::TaskRegistry::renew`]); cleared when the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    /// Fencing token: 0 until the first claim, +1 on every claim or
    /// takeover. Owner writes name it and are refused
    /// ([`crate::tasks::TaskError::Stale`]) once it has moved on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fencing_token: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Delivery state of one task (separate table, deleted with the task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryState {
    /// The task.
    pub task_id: String,
    /// Delivery context JSON (channel, to, accountId, threadId...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester_origin: Option<serde_json::Value>,
    /// Watermark of state-change notifications (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_notified_event_at: Option<i64>,
}

/// Fields of a new task; the registry fills in the id, status, delivery status,
/// notify policy defaults and timestamps.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Runtime (required).
    pub runtime: Option<Runtime>,
    /// Description (required, non-empty).
    pub task: String,
    /// Label.
    pub label: Option<String>,
    /// Owner session key; empty → system scope.
    pub owner_key: String,
    /// Requester session key (defaults to `owner_key`).
    pub requester_session_key: Option<String>,
    /// Run id.
    pub run_id: Option<String>,
    /// Child session key.
    pub child_session_key: Option<String>,
    /// Parent flow id.
    pub parent_flow_id: Option<String>,
    /// Parent task id.
    pub parent_task_id: Option<String>,
    /// Agent id.
    pub agent_id: Option<String>,
    /// Source id.
    pub source_id: Option<String>,
    /// Task kind.
    pub task_kind: Option<String>,
    /// Explicit notify policy (else the default rule).
    pub notify_policy: Option<NotifyPolicy>,
    /// Initial status (default queued; only active statuses allowed).
    pub status: Option<TaskStatus>,
    /// Owner process (pid, start time, boot id) — usually `proc::current()`.
    pub owner: Option<crate::proc::ProcessIdentity>,
    /// Metadata.
    pub metadata: Option<Metadata>,
    /// Delivery context.
    pub requester_origin: Option<serde_json::Value>,
}

/// Initial delivery status (§5.6): `not_applicable` for system scope, `pending`
/// with an owner, else `parent_missing`.
pub(crate) fn initial_delivery_status(scope: ScopeKind, owner_key: &str) -> DeliveryStatus {
    match scope {
        ScopeKind::System => DeliveryStatus::NotApplicable,
        _ if !owner_key.is_empty() => DeliveryStatus::Pending,
        _ => DeliveryStatus::ParentMissing,
    }
}

/// Default notify policy (§5.6): `silent` when delivery is `not_applicable` or
/// for cli/cron tasks (openclaw docs), else `done_only`.
pub(crate) fn default_notify_policy(runtime: Runtime, delivery: DeliveryStatus) -> NotifyPolicy {
    if delivery == DeliveryStatus::NotApplicable || matches!(runtime, Runtime::Cli | Runtime::Cron)
    {
        NotifyPolicy::Silent
    } else {
        NotifyPolicy::DoneOnly
    }
}

impl TaskRecord {
    /// `lastEventAt ?? startedAt ?? createdAt`: the base of audit ages and the
    /// maintenance grace.
    pub fn last_activity_at(&self) -> i64 {
        self.last_event_at
            .or(self.started_at)
            .unwrap_or(self.created_at)
    }

    /// `(endedAt ?? lastEventAt ?? createdAt) + retention(status)`.
    pub fn cleanup_due(&self) -> i64 {
        self.ended_at
            .or(self.last_event_at)
            .unwrap_or(self.created_at)
            .saturating_add(self.status.retention().as_millis() as i64)
    }

    /// The owner process as recorded, if a pid was recorded.
    pub fn owner_identity(&self) -> Option<crate::proc::ProcessIdentity> {
        self.owner_pid.map(|pid| crate::proc::ProcessIdentity {
            pid,
            start_time: self.owner_start_time,
            boot_id: self.owner_boot_id.clone(),
            hostname: None,
            pid_ns: None,
        })
    }

    /// Whether the timestamps violate an invariant (audit
    /// `inconsistent_timestamps`): `startedAt < createdAt`, `endedAt < startedAt`,
    /// `lastEventAt < startedAt ?? createdAt`, or an active task with `endedAt`.
    pub fn timestamps_inconsistent(&self) -> Option<&'static str> {
        let base = self.started_at.unwrap_or(self.created_at);
        if self.started_at.is_some_and(|s| s < self.created_at) {
            Some("startedAt is before createdAt")
        } else if self.ended_at.is_some_and(|e| e < base) {
            Some("endedAt is before startedAt")
        } else if self.last_event_at.is_some_and(|e| e < base) {
            Some("lastEventAt is before startedAt")
        } else if self.status.is_active() && self.ended_at.is_some() {
            Some("active task has endedAt")
        } else {
            None
        }
    }

    /// Timestamp normalization (§5.6, openclaw #69229): `createdAt` lowered to
    /// the min of `startedAt`, `lastEventAt`, `endedAt`; those clamped to ≥
    /// `startedAt ?? createdAt`; an active task has no `endedAt`.
    pub fn normalize(&mut self) {
        for t in [self.started_at, self.last_event_at, self.ended_at]
            .into_iter()
            .flatten()
        {
            self.created_at = self.created_at.min(t);
        }
        if let Some(s) = self.started_at {
            self.started_at = Some(s.max(self.created_at));
        }
        let base = self.started_at.unwrap_or(self.created_at);
        self.last_event_at = self.last_event_at.map(|t| t.max(base));
        self.ended_at = self.ended_at.map(|t| t.max(base));
        if self.status.is_active() {
            self.ended_at = None;
        }
    }

    /// cleanupAfter stamping (§5.7): a terminal task without `cleanupAfter` gets
    /// [`TaskRecord::cleanup_due`]; for `lost` the value is the min of the stamped
    /// value and the formula. Returns whether it changed anything.
    pub fn stamp_cleanup(&mut self) -> bool {
        if self.status.is_active() {
            return false;
        }
        let due = self.cleanup_due();
        let next = match (self.status, self.cleanup_after) {
            (TaskStatus::Lost, Some(c)) => c.min(due),
            (_, Some(c)) => c,
            (_, None) => due,
        };
        let changed = self.cleanup_after != Some(next);
        self.cleanup_after = Some(next);
        changed
    }
}

#[cfg(any(test, feature = "testing"))]
impl TaskRecord {
    /// `metadata[counter] += 1` (missing counts as 0).
    pub(crate) fn bump_counter(&mut self, counter: &str) {
        let m = self.metadata.get_or_insert_with(Default::default);
        let n = m.get(counter).and_then(|v| v.as_i64()).unwrap_or(0);
        m.insert(counter.to_string(), (n + 1).into());
    }
}

/// Parses a flat metadata map: a JSON object whose values are strings,
/// numbers, booleans or null and whose keys are non-empty.
pub(crate) fn parse_metadata(s: &str) -> Result<Metadata, String> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(m) = v else {
        return Err("metadata is not a JSON object".into());
    };
    let mut out = Metadata::new();
    for (k, v) in m {
        if k.is_empty() {
            return Err("metadata has an empty key".into());
        }
        if v.is_object() || v.is_array() {
            return Err(format!(
                "metadata key {k:?} is not a string, number, boolean or null"
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Formats epoch ms as ISO-8601 UTC (`2026-05-29T12:00:00.000Z`).
pub use crate::timefmt::iso_ms as iso;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_and_monotonicity() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_780_056_000_123), "2026-05-29T12:00:00.123Z");
        use TaskStatus::*;
        assert!(Running.may_become(Succeeded));
        assert!(!Succeeded.may_become(Running));
        assert!(!Cancelled.may_become(Succeeded));
        assert!(!Failed.may_become(Succeeded));
        assert!(Succeeded.may_become(Failed));
        assert!(!Succeeded.may_become(Lost));
        assert!(Lost.may_become(Lost));
    }
}
