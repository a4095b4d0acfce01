//! `lockstore daemon`: the long-running process that shares the state dir with
//! CLI invocations.
//!
//! One daemon per state dir: it holds an exclusive flock on
//! `<state-dir>/daemon.lock` (with the usual owner record) for its lifetime; a
//! second daemon exits at once naming the running one's pid. SIGINT/SIGTERM stop
//! it gracefully: the current tick finishes, the worker releases its claims, the
//! locks are released, exit 0.
//!
//! The daemon supervises four components (docs/daemon.md):
//! * `delivery`: the outbox worker thread (rescue, claim → deliver → ack/fail);
//! * `commitments` (each tick): expiry pass; for each due session, write-ahead a
//!   delivery to the outbox with idempotency key `commitment:<id>:<attempt>`
//!   *before* bumping the commitment's attempts (a crash in between re-enqueues
//!   the same key, which the outbox de-duplicates); an outbox ack later marks
//!   it sent;
//! * `outbox_maintenance` (each tick): TTL expiry; daily prune;
//! * `tasks_maintenance`: the ledger's sweep every `--maintenance-every`.
//!
//! A component that fails is restarted after a capped exponential backoff with
//! jitter and reopens its stores; one on a corrupt store stays `failed` while
//! the others keep running ([`supervisor`]). Each tick the daemon publishes the
//! components' health to `<state-dir>/daemon-status.json` ([`report`]) for
//! `lockstore status`, and checks that `daemon.lock` is still the file it
//! holds: if the state dir was deleted or replaced it exits (code 4) so that
//! two daemons never deliver from one state dir.

pub mod passes;
pub mod report;
pub mod supervisor;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use lockstore::lock::{HeldLock, LockOptions};
use lockstore::outbox::worker::{self, ChannelAdapter, WorkerOptions};
use lockstore::outbox::{adapters, OutboxError};
use lockstore::Error;

use self::passes::{CommitmentsPass, OutboxMaintenance, Pass, TasksMaintenance};
use self::report::{DaemonReport, REPORT_VERSION};
use self::supervisor::Component;
use super::{now_ms, parse_duration, CliError, CliResult};

/// Arguments of `lockstore daemon`.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Tick period (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,
    /// Delivery adapter: file:PATH (append one JSON line per delivery) or
    /// exec:CMD (run CMD per delivery, the message on stdin). Default:
    /// file:<state-dir>/deliveries.jsonl.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Run one tick and exit.
    #[arg(long)]
    pub once: bool,
    /// Period of the task-ledger maintenance sweep.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub maintenance_every: Duration,
    /// Lease of the delivery worker's claims (renewed every third of it while
    /// the daemon runs; a daemon paused or cut off longer loses its claims to
    /// another host's rescue on PostgreSQL).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lease: Duration,
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

/// Default log filter of the daemon when `RUST_LOG` is unset: warnings, plus
/// its own lifecycle lines (startup, each component's start, failure and
/// restart) at info.
pub const DEFAULT_LOG_FILTER: &str = "warn,lockstore::cli::daemon=info";

/// The identity (device, inode) of the `daemon.lock` this daemon holds, to
/// notice when the file at its path is no longer that file (state dir deleted
/// or replaced under the running daemon).
struct LockIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
    // Kept open: the inode cannot be reused while we hold it.
    _file: std::fs::File,
}

impl LockIdentity {
    /// Opens the lock file just taken and records its identity.
    fn of(held: &HeldLock) -> CliResult<Self> {
        let path = held.path().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| CliError {
            code: super::exit::IO,
            msg: format!("cannot open {}: {e}", path.display()),
        })?;
        let m = file.metadata().map_err(|e| CliError {
            code: super::exit::IO,
            msg: format!("cannot stat {}: {e}", path.display()),
        })?;
        Ok(LockIdentity {
            path,
            dev: m.dev(),
            ino: m.ino(),
            _file: file,
        })
    }

    /// Errors (exit 4, a clear message) if the path no longer names the held
    /// lock file. Other stat errors are logged and tolerated.
    fn check(&self) -> CliResult {
        let gone = |why: String| CliError {
            code: super::exit::IO,
            msg: format!(
                "{} {why}: the state dir was deleted or replaced under the running daemon; \
                 stopping so that two daemons never deliver from one state dir \
                 (start a new daemon on the new state dir)",
                self.path.display()
            ),
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => Ok(()),
            Ok(m) => Err(gone(format!(
                "is no longer the lock file this daemon holds (held dev {} inode {}, found dev {} inode {})",
                self.dev,
                self.ino,
                m.dev(),
                m.ino()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(gone("no longer exists".into()))
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot check the daemon lock file");
                Ok(())
            }
        }
    }
}

/// Runs `lockstore daemon`.
pub fn run(a: DaemonArgs, state_dir: &Path) -> CliResult {
    let daemon_lock = take_daemon_lock(state_dir)?;
    let identity = LockIdentity::of(&daemon_lock)?;
    install_signal_handlers()?;
    let adapter_spec = a
        .adapter
        .clone()
        .unwrap_or_else(|| format!("file:{}", state_dir.join("deliveries.jsonl").display()));
    let adapter = adapters::from_spec(&adapter_spec, Duration::from_secs(30))
        .map_err(|e| CliError::usage(format!("--adapter {adapter_spec}: {e}")))?;
    let wopts = WorkerOptions {
        poll: a.tick.min(Duration::from_secs(1)),
        lease: a.lease,
        ..WorkerOptions::new(super::backend::outbox_db(state_dir))
    };
    tracing::info!(
        state_dir = %state_dir.display(),
        pid = std::process::id(),
        adapter = %adapter_spec,
        tick_ms = a.tick.as_millis() as u64,
        once = a.once,
        "daemon started"
    );
    let started = Instant::now();
    let result = if a.once {
        run_once(&a, state_dir, &wopts, adapter.as_ref())
    } else {
        Supervisor::new(&a, state_dir, adapter_spec, identity).run(&wopts, adapter.as_ref())
    };
    tracing::info!(
        pid = std::process::id(),
        uptime_s = started.elapsed().as_secs(),
        "daemon stopping"
    );
    drop(daemon_lock);
    result
}

/// `--once`: each pass once, then deliver everything due now and sync acks
/// back; the first error ends the run (no supervision).
fn run_once(
    a: &DaemonArgs,
    state: &Path,
    wopts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
) -> CliResult {
    let now = now_ms();
    let mut commitments = CommitmentsPass::new(state, a);
    commitments.step(now)?;
    OutboxMaintenance::new(state).step(now)?;
    TasksMaintenance::new(state, a).step(now)?;
    worker::run_once(wopts, adapter, &STOP)?;
    commitments.sync_acks(now_ms())
}

/// The long-running daemon: the delivery worker thread and the tick passes,
/// each a supervised [`Component`].
struct Supervisor {
    state: PathBuf,
    tick: Duration,
    adapter_spec: String,
    identity: LockIdentity,
    started_at_ms: i64,
    delivery: Component,
    passes: Vec<(Box<dyn Pass>, Component)>,
    last_report_error: Option<String>,
}

type WorkerResult = Result<worker::RunReport, OutboxError>;

impl Supervisor {
    fn new(a: &DaemonArgs, state: &Path, adapter_spec: String, identity: LockIdentity) -> Self {
        let passes: Vec<Box<dyn Pass>> = vec![
            Box::new(CommitmentsPass::new(state, a)),
            Box::new(OutboxMaintenance::new(state)),
            Box::new(TasksMaintenance::new(state, a)),
        ];
        Supervisor {
            state: state.to_path_buf(),
            tick: a.tick,
            adapter_spec,
            identity,
            started_at_ms: now_ms(),
            delivery: Component::new("delivery"),
            passes: passes
                .into_iter()
                .map(|p| {
                    let c = Component::new(p.name());
                    (p, c)
                })
                .collect(),
            last_report_error: None,
        }
    }

    fn run(mut self, wopts: &WorkerOptions, adapter: &dyn ChannelAdapter) -> CliResult {
        self.publish();
        let result = std::thread::scope(|s| {
            let mut worker: Option<std::thread::ScopedJoinHandle<'_, WorkerResult>> = None;
            let result = loop {
                let tick_start = Instant::now();
                if let Err(e) = self.identity.check() {
                    break Err(e);
                }
                // The delivery worker: reap it if it ended, restart when due.
                if worker.as_ref().is_some_and(|w| w.is_finished()) {
                    let r = worker.take().expect("checked above").join();
                    if !stop_requested() {
                        self.close_stores();
                        self.delivery.failed(&match r {
                            Ok(Ok(_)) => CliError {
                                code: super::exit::IO,
                                msg: "the delivery worker returned without a stop request".into(),
                            },
                            Ok(Err(e)) => CliError::from(e),
                            Err(p) => CliError {
                                code: super::exit::IO,
                                msg: format!("the delivery worker panicked: {}", panic_text(&p)),
                            },
                        });
                    }
                } else if worker.is_some() {
                    self.delivery.still_running();
                }
                if worker.is_none() && !stop_requested() && self.delivery.due(Instant::now()) {
                    self.delivery.starting();
                    worker = Some(s.spawn(|| worker::run(wopts, adapter, &STOP)));
                }
                // The tick passes, in order.
                let mut failed = false;
                for (pass, comp) in &mut self.passes {
                    if stop_requested() || !comp.due(Instant::now()) {
                        continue;
                    }
                    if comp.health() != report::Health::Running {
                        comp.starting();
                    }
                    match pass.step(now_ms()) {
                        Ok(()) => comp.succeeded(),
                        Err(e) => {
                            comp.failed(&e);
                            failed = true;
                        }
                    }
                }
                if failed {
                    self.close_stores();
                }
                self.publish();
                while tick_start.elapsed() < self.tick && !stop_requested() {
                    std::thread::sleep(Duration::from_millis(20).min(self.tick));
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
        if result.is_ok() {
            // Graceful stop: the last report says so.
            self.delivery.stopped();
            for (_, c) in &mut self.passes {
                c.stopped();
            }
            self.publish();
        }
        result
    }

    /// Drops every store handle the passes hold (each reopens on its next
    /// run). Called after any component fails: a restarted component then
    /// reopens its store with no connection of this process left open on the
    /// old files, so SQLite rebuilds its WAL index on that open (after the WAL
    /// was deleted, connections kept open would go on using the deleted file
    /// while new ones fail with "disk I/O error").
    fn close_stores(&mut self) {
        for (pass, _) in &mut self.passes {
            pass.reset();
        }
    }

    /// Writes `daemon-status.json` (a failure is logged once per distinct
    /// error; the next tick tries again).
    fn publish(&mut self) {
        let mut components = vec![self.delivery.report()];
        components.extend(self.passes.iter().map(|(_, c)| c.report()));
        let tick_ms = self.tick.as_millis() as u64;
        let rep = DaemonReport {
            version: REPORT_VERSION,
            pid: std::process::id(),
            started_at_ms: self.started_at_ms,
            updated_at_ms: now_ms(),
            stale_after_ms: (5 * tick_ms).max(10_000),
            tick_ms,
            adapter: self.adapter_spec.clone(),
            components,
        };
        let path = report::report_path(&self.state);
        match rep.save(&path) {
            Ok(()) => self.last_report_error = None,
            Err(e) => {
                let msg = e.to_string();
                if self.last_report_error.as_deref() != Some(&msg) {
                    tracing::warn!(path = %path.display(), error = %msg, "cannot write the daemon status report");
                    self.last_report_error = Some(msg);
                }
            }
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
