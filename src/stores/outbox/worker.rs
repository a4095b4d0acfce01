//! The delivery worker: claims due batches, calls a [`ChannelAdapter`], and
//! acks or fails each claim.
//!
//! Per entry: `claim` → `mark_send_started` → `adapter.deliver` → `ack` / `fail`
//! / `mark_unknown`. Concurrency is bounded by [`WorkerOptions::concurrency`]
//! threads, each with its own connection. On start the worker rescues orphaned
//! claims and drains what is due within [`WorkerOptions::recovery_budget`]
//! (default 60 s, openclaw's `maxRecoveryMs`); entries left when the budget is
//! spent are released unstarted, so the budget never consumes a retry (openclaw
//! #91212). Unlike openclaw generation 1 (recovery only at startup, #21722) the
//! loop then keeps running, rescuing every poll.
//!
//! Crash-test failpoints (env `LOCKSTORE_FAILPOINT`, abort()):
//! `before_claim_commit`, `after_claim`, `after_send_started`, `after_send`,
//! `after_ack`; `LOCKSTORE_FAILPOINT_SKIP=N` lets N hits pass first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{failpoint, Entry, Failure, Outbox, OutboxOptions, Outcome, Result, Status};

/// What an adapter reports for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// The channel accepted the message.
    Delivered,
    /// A transient failure; `retry_after` (from the channel) wins over the backoff.
    Retry {
        /// Error text.
        error: String,
        /// Channel-supplied delay before the next attempt.
        retry_after: Option<Duration>,
    },
    /// A permanent failure: the entry becomes a dead letter.
    Permanent {
        /// Error text.
        error: String,
    },
    /// The adapter cannot tell whether the message went out (e.g. a timeout after
    /// the request was sent): the entry becomes `unknown`, never resent blindly.
    Unknown {
        /// Error text.
        error: String,
    },
}

/// A channel the worker delivers to. Implementations must be thread-safe: the
/// worker calls `deliver` from up to [`WorkerOptions::concurrency`] threads.
pub trait ChannelAdapter: Send + Sync {
    /// Delivers one entry (its payload, channel, target and
    /// [`Entry::delivery_key`]).
    fn deliver(&self, entry: &Entry) -> Delivery;
    /// True if a resend of the same entry is deduplicated by the channel (it
    /// honours the idempotency key): rescue may then replay a claim whose send had
    /// started instead of moving it to `unknown`.
    fn idempotent(&self) -> bool;
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Database file (normally [`crate::paths::outbox_db`]).
    pub db: PathBuf,
    /// Store options.
    pub outbox: OutboxOptions,
    /// Delivery threads (bounded concurrency). Default 4.
    pub concurrency: usize,
    /// Entries claimed per thread per round. Default 8.
    pub batch: usize,
    /// Claim lease. Default 5 min.
    pub lease: Duration,
    /// Startup drain budget (openclaw's `maxRecoveryMs`). Default 60 s.
    pub recovery_budget: Duration,
    /// Sleep between polls when nothing is due. Default 1 s.
    pub poll: Duration,
    /// Pause between deliveries of one thread (pacing). Default 0.
    pub pacing: Duration,
}

impl WorkerOptions {
    /// Defaults for the database at `db`: 4 threads, batches of 8, 5 min
    /// lease, 60 s startup budget, 1 s poll, no pacing, default
    /// [`OutboxOptions`].
    pub fn new(db: impl AsRef<Path>) -> Self {
        WorkerOptions {
            db: db.as_ref().to_path_buf(),
            outbox: OutboxOptions::default(),
            concurrency: 4,
            batch: 8,
            lease: Duration::from_secs(300),
            recovery_budget: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            pacing: Duration::ZERO,
        }
    }
}

/// Counters of a worker run.
#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    /// Claimed entries.
    pub claimed: u64,
    /// Acked.
    pub delivered: u64,
    /// Failed and rescheduled.
    pub retried: u64,
    /// Failed terminally.
    pub dead: u64,
    /// Moved to `unknown` by the adapter.
    pub unknown: u64,
    /// Expired before send.
    pub expired: u64,
    /// Released unstarted (shutdown or budget).
    pub released: u64,
    /// Transitions that came back stale (claim taken away meanwhile).
    pub stale: u64,
    /// Rescued back to pending at start.
    pub rescued_pending: u64,
    /// Rescued to `unknown` at start.
    pub rescued_unknown: u64,
}

#[derive(Default)]
struct Counters {
    c: [AtomicU64; 10],
}

impl Counters {
    fn add(&self, i: usize) {
        self.c[i].fetch_add(1, Ordering::Relaxed);
    }
    fn report(&self) -> RunReport {
        let g = |i: usize| self.c[i].load(Ordering::Relaxed);
        RunReport {
            claimed: g(0),
            delivered: g(1),
            retried: g(2),
            dead: g(3),
            unknown: g(4),
            expired: g(5),
            released: g(6),
            stale: g(7),
            rescued_pending: g(8),
            rescued_unknown: g(9),
        }
    }
}

/// Delivers one claimed entry. Returns after the terminal store call.
fn deliver_one(
    ob: &Outbox,
    adapter: &dyn ChannelAdapter,
    e: &Entry,
    token: &str,
    c: &Counters,
) -> Result<()> {
    match ob.mark_send_started(e.id, token, SystemTime::now())? {
        Outcome::Applied(Status::InFlight) => {}
        Outcome::Applied(_) => {
            c.add(5);
            return Ok(());
        }
        Outcome::Stale(_) => {
            c.add(7);
            return Ok(());
        }
    }
    failpoint("after_send_started");
    let r = adapter.deliver(e);
    failpoint("after_send");
    let now = SystemTime::now();
    let out = match &r {
        Delivery::Delivered => ob.ack(e.id, token, now)?,
        Delivery::Retry { error, retry_after } => ob.fail(
            e.id,
            token,
            &Failure {
                error: error.clone(),
                permanent: false,
                retry_after: *retry_after,
            },
            now,
        )?,
        Delivery::Permanent { error } => ob.fail(
            e.id,
            token,
            &Failure {
                error: error.clone(),
                permanent: true,
                retry_after: None,
            },
            now,
        )?,
        Delivery::Unknown { error } => ob.mark_unknown(e.id, token, error, now)?,
    };
    match out {
        Outcome::Applied(Status::Delivered) => {
            c.add(1);
            failpoint("after_ack");
        }
        Outcome::Applied(Status::Pending) => c.add(2),
        Outcome::Applied(Status::Dead) => c.add(3),
        Outcome::Applied(Status::Unknown) => c.add(4),
        Outcome::Applied(_) => {}
        Outcome::Stale(cur) => {
            tracing::warn!(id = e.id, current = ?cur, "late transition ignored: the claim was taken away");
            c.add(7);
        }
    }
    Ok(())
}

/// One thread's loop: claim batches due at `due_at()` until none are due or
/// `stop()` says so; unstarted claims are released on stop.
fn drain_thread(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    c: &Counters,
    due_at: &dyn Fn() -> SystemTime,
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    let ob = Outbox::open(&opts.db, opts.outbox.clone())?;
    loop {
        if stop() {
            return Ok(());
        }
        let batch = ob.claim(opts.batch.max(1), opts.lease, due_at())?;
        if batch.is_empty() {
            return Ok(());
        }
        failpoint("after_claim");
        for (i, e) in batch.iter().enumerate() {
            let token = e.claim_token.as_deref().unwrap_or_default();
            if stop() {
                for r in &batch[i..] {
                    if ob
                        .release(r.id, r.claim_token.as_deref().unwrap_or_default())?
                        .applied()
                    {
                        c.add(6);
                    }
                }
                return Ok(());
            }
            c.add(0);
            deliver_one(&ob, adapter, e, token, c)?;
            if !opts.pacing.is_zero() {
                std::thread::sleep(opts.pacing);
            }
        }
    }
}

fn drain(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    c: &Counters,
    due_at: &(dyn Fn() -> SystemTime + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    let n = opts.concurrency.max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| s.spawn(|| drain_thread(opts, adapter, c, due_at, stop)))
            .collect();
        let mut first = Ok(());
        for h in hs {
            let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

fn rescue(opts: &WorkerOptions, adapter: &dyn ChannelAdapter, c: &Counters) -> Result<()> {
    let ob = Outbox::open(&opts.db, opts.outbox.clone())?;
    let r = ob.rescue(SystemTime::now(), adapter.idempotent())?;
    c.c[8].fetch_add(r.to_pending, Ordering::Relaxed);
    c.c[9].fetch_add(r.to_unknown, Ordering::Relaxed);
    if r.to_pending + r.to_unknown > 0 {
        tracing::info!(path = %opts.db.display(), to_pending = r.to_pending, to_unknown = r.to_unknown, "rescued orphaned claims");
    }
    Ok(())
}

/// Rescues, then delivers everything due at the moment of the call (entries
/// rescheduled during the run are not retried: they are not yet due), then
/// returns. `stop` ends the run early (claims not yet started are released).
///
/// Errors: store errors (SQLite, naming the file).
pub fn run_once(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    stop: &AtomicBool,
) -> Result<RunReport> {
    let c = Counters::default();
    rescue(opts, adapter, &c)?;
    let start = SystemTime::now();
    drain(opts, adapter, &c, &|| start, &|| {
        stop.load(Ordering::SeqCst)
    })?;
    Ok(c.report())
}

/// Runs the worker until `stop` is set: rescue; drain what is due within
/// [`WorkerOptions::recovery_budget`] (released unstarted when the budget ends —
/// no retry consumed); then loop: rescue, drain due entries, sleep
/// [`WorkerOptions::poll`]. On stop, in-progress deliveries finish and unstarted
/// claims are released.
///
/// Errors: store errors (SQLite, naming the file).
pub fn run(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    stop: &AtomicBool,
) -> Result<RunReport> {
    let c = Counters::default();
    rescue(opts, adapter, &c)?;
    let start = SystemTime::now();
    let budget_end = Instant::now() + opts.recovery_budget;
    drain(opts, adapter, &c, &|| start, &|| {
        stop.load(Ordering::SeqCst) || Instant::now() >= budget_end
    })?;
    let stopped = || stop.load(Ordering::SeqCst);
    while !stopped() {
        rescue(opts, adapter, &c)?;
        drain(opts, adapter, &c, &SystemTime::now, &stopped)?;
        let until = Instant::now() + opts.poll;
        while !stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(opts.poll));
        }
    }
    Ok(c.report())
}
