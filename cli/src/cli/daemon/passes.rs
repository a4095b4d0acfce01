//! The daemon's tick passes, each a supervised component that opens its
//! stores lazily and drops them when it fails (a restart reopens them):
//! * `commitments`: expiry; ack sync; write-ahead of due deliveries into the
//!   outbox (needs the commitments file and the outbox);
//! * `outbox_maintenance`: TTL expiry each tick, prune daily (the outbox);
//! * `tasks_maintenance`: the ledger's sweep every `--maintenance-every` (the
//!   task ledger).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockstore::commitments::{Commitment, CommitmentsConfig, CommitmentsStore, TerminalStatus};
use lockstore::outbox::{NewMessage, Outbox, OutboxOptions, Retention, Status};
use lockstore::tasks::{MaintenanceMode, MaintenanceOptions, RegistryOptions, TaskRegistry};

use super::{commitment_key, stop_requested, DaemonArgs, SESSIONS_PER_TICK};
use crate::cli::commitments::at_ms;
use crate::cli::CliResult;

fn at(now: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(now.max(0) as u64)
}

/// A tick pass: [`Pass::step`] runs it once if its own schedule says so;
/// [`Pass::reset`] drops its store handles after a failure.
pub trait Pass {
    /// Component name (snake_case, as in the report).
    fn name(&self) -> &'static str;
    /// One run at `now` (Unix ms); opens the stores first if needed.
    fn step(&mut self, now: i64) -> CliResult;
    /// Drops the store handles (the next step reopens them).
    fn reset(&mut self);
}

/// Commitments: expiry, ack sync, write-ahead deliveries.
pub struct CommitmentsPass {
    state: PathBuf,
    enabled: bool,
    stores: Option<(CommitmentsStore, Outbox)>,
}

impl CommitmentsPass {
    /// For `state`; delivers due commitments only if `enabled`.
    pub fn new(state: &Path, a: &DaemonArgs) -> Self {
        CommitmentsPass {
            state: state.to_path_buf(),
            enabled: a.commitments_enabled,
            stores: None,
        }
    }

    fn stores(&mut self) -> CliResult<&(CommitmentsStore, Outbox)> {
        if self.stores.is_none() {
            let cfg = CommitmentsConfig {
                enabled: self.enabled,
                ..Default::default()
            };
            let c = CommitmentsStore::open(&self.state, cfg)?;
            let o = crate::cli::backend::open_outbox(&self.state, OutboxOptions::default())?;
            self.stores = Some((c, o));
        }
        Ok(self.stores.as_ref().expect("opened above"))
    }

    /// Marks `sent` every active commitment whose latest delivery was acked.
    pub fn sync_acks(&mut self, now: i64) -> CliResult {
        let (c, o) = self.stores()?;
        sync_acks(c, o, now)
    }
}

impl Pass for CommitmentsPass {
    fn name(&self) -> &'static str {
        "commitments"
    }

    fn step(&mut self, now: i64) -> CliResult {
        let enabled = self.enabled;
        let (c, o) = self.stores()?;
        c.expire(at_ms(now))?;
        sync_acks(c, o, now)?;
        if enabled {
            deliver_due_commitments(c, o, now)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stores = None;
    }
}

/// Outbox: TTL expiry each tick, prune daily (the delivery worker claims,
/// delivers and acks continuously beside it).
pub struct OutboxMaintenance {
    state: PathBuf,
    outbox: Option<Outbox>,
    last_prune: Option<Instant>,
}

impl OutboxMaintenance {
    /// For `state`.
    pub fn new(state: &Path) -> Self {
        OutboxMaintenance {
            state: state.to_path_buf(),
            outbox: None,
            last_prune: None,
        }
    }
}

impl Pass for OutboxMaintenance {
    fn name(&self) -> &'static str {
        "outbox_maintenance"
    }

    fn step(&mut self, now: i64) -> CliResult {
        if self.outbox.is_none() {
            self.outbox = Some(crate::cli::backend::open_outbox(
                &self.state,
                OutboxOptions::default(),
            )?);
        }
        let o = self.outbox.as_ref().expect("opened above");
        o.expire(at(now))?;
        if self
            .last_prune
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(86_400))
        {
            o.prune(&Retention::default(), at(now), false)?;
            self.last_prune = Some(Instant::now());
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.outbox = None;
    }
}

/// Task ledger: the maintenance sweep every `--maintenance-every`.
pub struct TasksMaintenance {
    state: PathBuf,
    every: Duration,
    registry: Option<TaskRegistry>,
    last: Option<Instant>,
}

impl TasksMaintenance {
    /// For `state`, every `a.maintenance_every`.
    pub fn new(state: &Path, a: &DaemonArgs) -> Self {
        TasksMaintenance {
            state: state.to_path_buf(),
            every: a.maintenance_every,
            registry: None,
            last: None,
        }
    }
}

impl Pass for TasksMaintenance {
    fn name(&self) -> &'static str {
        "tasks_maintenance"
    }

    fn step(&mut self, now: i64) -> CliResult {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(());
        }
        if self.registry.is_none() {
            self.registry = Some(
                crate::cli::backend::open_tasks(&self.state, RegistryOptions::default())
                    .map_err(crate::cli::tasks::cli_err)?,
            );
        }
        let reg = self.registry.as_ref().expect("opened above");
        let rep = reg
            .maintenance(
                MaintenanceMode::Apply,
                at(now),
                &MaintenanceOptions::default(),
            )
            .map_err(crate::cli::tasks::cli_err)?;
        tracing::debug!(?rep, "task maintenance");
        self.last = Some(Instant::now());
        Ok(())
    }

    fn reset(&mut self) {
        self.registry = None;
    }
}

/// Enqueues a delivery for each due commitment *before* bumping its
/// attempts (write-ahead), keyed `commitment:<id>:<attempts>`:
/// * a crash after the enqueue and before the bump leaves a row under the
///   current key: the next tick sees it and only bumps (no second row);
/// * while the previous attempt's row is pending, in flight, delivered or
///   unknown, nothing new is enqueued (no duplicate delivery); a dead or
///   expired previous attempt is retried under the next key.
///
/// At most [`SESSIONS_PER_TICK`] session keys per agent per tick (openclaw's
/// `listDueCommitmentSessionKeys` limit), the attempts of the whole tick
/// bumped in one section after all the enqueues, and a stop request honoured
/// between sessions: one tick stays short however large the backlog (each
/// section loads the whole commitments file), so the daemon keeps up and
/// SIGTERM is acted on promptly.
fn deliver_due_commitments(store: &CommitmentsStore, outbox: &Outbox, now: i64) -> CliResult {
    // One load for the whole pass (all agents, all due sessions).
    let due = store.list_due_for_heartbeat(at_ms(now), Some(SESSIONS_PER_TICK))?;
    let mut attempted: Vec<String> = Vec::new();
    let mut result = Ok(());
    for c in due {
        if stop_requested() {
            break;
        }
        match deliver_one(outbox, &c, now) {
            Ok(true) => attempted.push(c.id),
            Ok(false) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Bump what was enqueued even if a later step failed (a missed bump is
    // also safe: the next tick finds the row under the current key).
    if !attempted.is_empty() {
        store.mark_attempted(&attempted, at_ms(now))?;
    }
    result
}

/// Write-ahead of one delivery; true if the commitment's attempts must now
/// be bumped (its row under the current key exists).
fn deliver_one(outbox: &Outbox, c: &Commitment, now: i64) -> CliResult<bool> {
    let a = c.attempts;
    if outbox.get_by_key(&commitment_key(&c.id, a))?.is_some() {
        // Crash window: enqueued, not yet bumped.
        return Ok(true);
    }
    if a > 0 {
        if let Some(prev) = outbox.get_by_key(&commitment_key(&c.id, a - 1))? {
            if matches!(
                prev.status,
                Status::Pending | Status::InFlight | Status::Delivered | Status::Unknown
            ) {
                return Ok(false);
            }
        }
    }
    let expires = c.due_window.latest_ms + 72 * 3_600_000;
    let msg = NewMessage {
        channel: c.channel.clone(),
        target: c.to.clone().unwrap_or_else(|| c.session_key.clone()),
        account_id: c.account_id.clone(),
        payload: serde_json::json!({
            "text": c.suggested_text,
            "commitmentId": c.id,
            "agentId": c.agent_id,
            "sessionKey": c.session_key,
            "attempt": a + 1,
        }),
        idempotency_key: Some(commitment_key(&c.id, a)),
        ttl: Some(Duration::from_millis((expires - now).max(1) as u64)),
    };
    outbox.enqueue(&msg, at(now))?;
    Ok(true)
}

/// Marks `sent` every active commitment whose latest delivery was acked.
fn sync_acks(store: &CommitmentsStore, outbox: &Outbox, now: i64) -> CliResult {
    let snap = store.snapshot()?;
    let mut sent = Vec::new();
    for c in snap
        .commitments
        .iter()
        .filter(|c| c.status.is_active() && c.attempts > 0)
    {
        if let Some(e) = outbox.get_by_key(&commitment_key(&c.id, c.attempts - 1))? {
            if e.status == Status::Delivered {
                sent.push(c.id.clone());
            }
        }
    }
    if !sent.is_empty() {
        store.mark_status(&sent, TerminalStatus::Sent, at_ms(now))?;
    }
    Ok(())
}
