//! `<state-dir>/daemon-status.json`: the running daemon's health report, read
//! by `lockstore status`.
//!
//! The daemon rewrites it every tick with lockstore's own atomic save
//! ([`lockstore::write_atomic`], durability `process`: a power loss may lose
//! the last report, never tear it), so a reader sees one whole report. Only the
//! daemon holding `daemon.lock` writes it, so no store lock is needed. A reader
//! trusts it only when its `pid` is the holder of `daemon.lock` and its
//! `updated_at_ms` is younger than `stale_after_ms`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the report in the state dir.
pub const REPORT_FILE: &str = "daemon-status.json";

/// Version of the report format written by this binary.
pub const REPORT_VERSION: u32 = 1;

/// Path of the report in `state`.
pub fn report_path(state: &Path) -> PathBuf {
    state.join(REPORT_FILE)
}

/// Health of one supervised component.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not started yet (the daemon is starting).
    Starting,
    /// Working.
    Running,
    /// Failed with a transient error; restarts after its backoff.
    Restarting,
    /// Failed on a corrupt or too-new store; retried only slowly
    /// ([`super::supervisor::CORRUPT_RETRY`]) until an operator repairs it.
    Failed,
    /// The daemon stopped (last report of a graceful stop).
    Stopped,
}

impl Health {
    /// The snake_case name (as in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Running => "running",
            Health::Restarting => "restarting",
            Health::Failed => "failed",
            Health::Stopped => "stopped",
        }
    }
}

/// One component's line of the report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ComponentReport {
    /// `delivery`, `commitments`, `outbox_maintenance` or `tasks_maintenance`.
    pub name: String,
    /// Current health.
    pub health: Health,
    /// Since when (Unix ms) it has this health.
    pub since_ms: i64,
    /// How many times it was restarted after a failure.
    pub restarts: u64,
    /// Failures in a row (reset by a success); drives the backoff.
    pub consecutive_failures: u32,
    /// The last failure's message (kept after a successful restart).
    pub last_error: Option<String>,
    /// When (Unix ms) the last failure happened.
    pub last_error_at_ms: Option<i64>,
    /// When (Unix ms) the next restart is due (restarting / failed only).
    pub next_attempt_at_ms: Option<i64>,
}

/// The whole report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DaemonReport {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The daemon's pid.
    pub pid: u32,
    /// When (Unix ms) the daemon started.
    pub started_at_ms: i64,
    /// When (Unix ms) this report was written.
    pub updated_at_ms: i64,
    /// A reader calls the report stale when it is older than this (ms).
    pub stale_after_ms: u64,
    /// The tick period (ms).
    pub tick_ms: u64,
    /// The delivery adapter spec (`file:PATH` or `exec:CMD`).
    pub adapter: String,
    /// The supervised components, in tick order.
    pub components: Vec<ComponentReport>,
}

impl DaemonReport {
    /// Writes the report atomically to `path`.
    pub fn save(&self, path: &Path) -> lockstore::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        lockstore::write_atomic(path, &bytes, lockstore::Durability::Process)
    }

    /// Reads the report at `path`: `Ok(None)` if there is none; `Err` naming
    /// the file if it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Option<DaemonReport>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a daemon report: {e}", path.display()))
    }
}
