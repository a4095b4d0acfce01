//! `lockstore daemon`: the long-running process that shares the state dir with
//! CLI invocations.
//!
//! One daemon per state dir: it holds an exclusive flock on
//! `<state-dir>/daemon.lock` (with the usual owner record) for its lifetime; a
//! second daemon exits at once naming the running one's pid. SIGINT/SIGTERM stop
//! it gracefully: the current tick finishes, the worker releases its claims, the
//! locks are released, exit 0.
//!
//! Each tick, in an order chosen so that a crash between any two steps neither
//! loses nor duplicates a delivery:
//! 1. commitments: expiry pass; for each due session, write-ahead a delivery to
//!    the outbox with idempotency key `commitment:<id>:<attempt>` *before*
//!    bumping the commitment's attempts (a crash in between re-enqueues the same
//!    key, which the outbox de-duplicates); an outbox ack later marks it sent.
//! 2. outbox: rescue, expire, claim → deliver → ack/fail; daily prune.
//! 3. tasks: the maintenance sweep every `--maintenance-every` (default 60 s).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use lockstore::commitments::{Commitment, CommitmentsConfig, CommitmentsStore, TerminalStatus};
use lockstore::lock::{HeldLock, LockOptions};
use lockstore::outbox::worker::{self, WorkerOptions};
use lockstore::outbox::{adapters, NewMessage, Outbox, OutboxOptions, Retention, Status};
use lockstore::tasks::{MaintenanceMode, MaintenanceOptions, RegistryOptions, TaskRegistry};
use lockstore::Error;

use super::{parse_duration, CliError, CliResult};

/// Arguments of `lockstore daemon`.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Tick period (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,
    /// Delivery adapter: file:PATH or exec:CMD.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Run one tick and exit.
    #[arg(long)]
    pub once: bool,
    /// Period of the task-ledger maintenance sweep.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub maintenance_every: Duration,
    /// Deliver due commitments (the heartbeat; openclaw's `commitments.enabled`,
    /// off by default there too).
    #[arg(long)]
    pub commitments_enabled: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM handlers that request a graceful stop.
pub fn install_signal_handlers() -> CliResult {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &act) }.map_err(|e| CliError {
            code: super::exit::IO,
            msg: format!("cannot install {sig} handler: {e}"),
        })?;
    }
    Ok(())
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Takes the daemon lock or explains who holds it.
pub fn take_daemon_lock(state_dir: &Path) -> CliResult<HeldLock> {
    let path = lockstore::paths::daemon_lock(state_dir);
    let opts = LockOptions {
        max_retries: Some(0),
        ..Default::default()
    };
    match HeldLock::acquire(&path, &opts) {
        Ok(held) => Ok(held),
        Err(Error::LockTimeout { holder, .. }) => {
            let who = holder
                .map(|h| h.describe())
                .unwrap_or_else(|| "another process".into());
            Err(CliError {
                code: super::exit::LOCK_TIMEOUT,
                msg: format!(
                    "a daemon is already running on {}: {who}",
                    state_dir.display()
                ),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Idempotency key of the outbox delivery for attempt `attempt` (0-based count
/// of attempts before this one) of commitment `id`.
pub fn commitment_key(id: &str, attempt: u64) -> String {
    format!("commitment:{id}:{attempt}")
}

/// Most due session keys per agent handled in one tick (the rest wait for the
/// next tick).
pub const SESSIONS_PER_TICK: usize = 32;

/// The stores the daemon works on.
struct Daemon {
    state: PathBuf,
    commitments: CommitmentsStore,
    outbox: Outbox,
    tasks: TaskRegistry,
    last_maintenance: Option<Instant>,
    last_prune: Option<Instant>,
}

/// Runs `lockstore daemon`.
pub fn run(a: DaemonArgs, state_dir: &Path) -> CliResult {
    let daemon_lock = take_daemon_lock(state_dir)?;
    install_signal_handlers()?;
    let started = Instant::now();
    let mut d = Daemon::open(&a, state_dir)?;
    let adapter_spec = a
        .adapter
        .clone()
        .unwrap_or_else(|| format!("file:{}", state_dir.join("deliveries.jsonl").display()));
    let adapter = adapters::from_spec(&adapter_spec, Duration::from_secs(30))
        .map_err(|e| CliError::usage(format!("--adapter {adapter_spec}: {e}")))?;
    let wopts = WorkerOptions {
        poll: a.tick.min(Duration::from_secs(1)),
        ..WorkerOptions::new(lockstore::paths::outbox_db(state_dir))
    };
    tracing::info!(state_dir = %state_dir.display(), pid = std::process::id(), "daemon started");
    let result = std::thread::scope(|s| {
        // The delivery worker runs continuously beside the ticks (rescue at
        // start, then claim → deliver → ack/fail), until the stop flag is set.
        let worker = (!a.once).then(|| {
            s.spawn(|| {
                let r = worker::run(&wopts, adapter.as_ref(), &STOP);
                if let Err(e) = &r {
                    tracing::error!(error = %e, "delivery worker stopped");
                }
                r
            })
        });
        let result = loop {
            let tick_start = Instant::now();
            if let Err(e) = d.tick(&a) {
                tracing::error!(error = %e.msg, "tick failed");
                if a.once {
                    break Err(e);
                }
            }
            if a.once {
                // One pass: deliver everything due now, then sync acks back.
                let r = worker::run_once(&wopts, adapter.as_ref(), &STOP)
                    .map_err(CliError::from)
                    .and_then(|_| d.sync_acks(crate::cli::now_ms()));
                break r;
            }
            while tick_start.elapsed() < a.tick && !stop_requested() {
                std::thread::sleep(Duration::from_millis(20).min(a.tick));
            }
            if stop_requested() {
                break Ok(());
            }
        };
        STOP.store(true, Ordering::SeqCst);
        if let Some(w) = worker {
            let _ = w.join();
        }
        result
    });
    tracing::info!(
        pid = std::process::id(),
        uptime_s = started.elapsed().as_secs(),
        "daemon stopping"
    );
    drop(daemon_lock);
    result
}

impl Daemon {
    fn open(a: &DaemonArgs, state: &Path) -> CliResult<Self> {
        let cfg = CommitmentsConfig {
            enabled: a.commitments_enabled,
            ..Default::default()
        };
        Ok(Daemon {
            state: state.to_path_buf(),
            commitments: CommitmentsStore::open(state, cfg)?,
            outbox: Outbox::open_state(state, OutboxOptions::default())?,
            tasks: TaskRegistry::open_state_dir(state, RegistryOptions::default())
                .map_err(super::tasks::cli_err)?,
            last_maintenance: None,
            last_prune: None,
        })
    }

    fn tick(&mut self, a: &DaemonArgs) -> CliResult {
        let _span = tracing::debug_span!("tick", state = %self.state.display()).entered();
        let now = crate::cli::now_ms();
        // 1. commitments: expiry, then write-ahead deliveries of due ones.
        self.commitments.expire(super::commitments::at_ms(now))?;
        self.sync_acks(now)?;
        if a.commitments_enabled {
            self.deliver_due_commitments(now)?;
        }
        // 2. outbox: TTL expiry each tick, prune daily (the worker thread
        //    claims, delivers and acks continuously).
        self.outbox
            .expire(std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64))?;
        if self
            .last_prune
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(86_400))
        {
            self.outbox.prune(
                &Retention::default(),
                std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64),
                false,
            )?;
            self.last_prune = Some(Instant::now());
        }
        // 3. tasks: maintenance sweep.
        if self
            .last_maintenance
            .is_none_or(|t| t.elapsed() >= a.maintenance_every)
        {
            let rep = self
                .tasks
                .maintenance(
                    MaintenanceMode::Apply,
                    std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64),
                    &MaintenanceOptions::default(),
                )
                .map_err(super::tasks::cli_err)?;
            tracing::debug!(?rep, "task maintenance");
            self.last_maintenance = Some(Instant::now());
        }
        Ok(())
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
    fn deliver_due_commitments(&self, now: i64) -> CliResult {
        // One load for the whole pass (all agents, all due sessions).
        let due = self
            .commitments
            .list_due_for_heartbeat(super::commitments::at_ms(now), Some(SESSIONS_PER_TICK))?;
        let mut attempted: Vec<String> = Vec::new();
        let mut result = Ok(());
        for c in due {
            if stop_requested() {
                break;
            }
            match self.deliver_one(&c, now) {
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
            self.commitments
                .mark_attempted(&attempted, super::commitments::at_ms(now))?;
        }
        result
    }

    /// Write-ahead of one delivery; true if the commitment's attempts must now
    /// be bumped (its row under the current key exists).
    fn deliver_one(&self, c: &Commitment, now: i64) -> CliResult<bool> {
        let a = c.attempts;
        if self.outbox.get_by_key(&commitment_key(&c.id, a))?.is_some() {
            // Crash window: enqueued, not yet bumped.
            return Ok(true);
        }
        if a > 0 {
            if let Some(prev) = self.outbox.get_by_key(&commitment_key(&c.id, a - 1))? {
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
        self.outbox.enqueue(
            &msg,
            std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64),
        )?;
        Ok(true)
    }

    /// Marks `sent` every active commitment whose latest delivery was acked.
    fn sync_acks(&self, now: i64) -> CliResult {
        let snap = self.commitments.snapshot()?;
        let mut sent = Vec::new();
        for c in snap
            .commitments
            .iter()
            .filter(|c| c.status.is_active() && c.attempts > 0)
        {
            if let Some(e) = self
                .outbox
                .get_by_key(&commitment_key(&c.id, c.attempts - 1))?
            {
                if e.status == Status::Delivered {
                    sent.push(c.id.clone());
                }
            }
        }
        if !sent.is_empty() {
            self.commitments.mark_status(
                &sent,
                TerminalStatus::Sent,
                super::commitments::at_ms(now),
            )?;
        }
        Ok(())
    }
}
