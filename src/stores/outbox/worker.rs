//! The delivery worker: claims due batches, calls a [`ChannelAdapter`], and
//! acks or fails each claim.
//!
//! Per entry: `claim` → `mark_send_started` → `adapter.deliver` → `ack` / `fail`
//! / `mark_unknown`. Acks of the threads of one worker are group-committed:
//! the sends that finish while an ack transaction commits are acked together
//! in the next one ([`Outbox::ack_many`]), each thread waiting for its own. Concurrency is bounded by [`WorkerOptions::concurrency`]
//! threads, each with its own connection. A heartbeat thread renews the lease
//! of every claim a thread holds (claimed, sending, or waiting its turn in the
//! batch) every third of [`WorkerOptions::lease`], until its terminal
//! transition: a send longer than the lease is not rescued (moved to `unknown`
//! or resent) from under a live worker. On start the worker rescues orphaned
//! claims and drains what is due within [`WorkerOptions::recovery_budget`]
//! (default 60 s, openclaw's `maxRecoveryMs`); entries left when the budget is
//! spent are released unstarted, so the budget never consumes a retry (openclaw
//! #91212). Unlike openclaw generation 1 (recovery only at startup, #21722) the
//! loop then keeps running, rescuing every poll.
//!
//! Crash-test failpoints (env `LOCKSTORE_FAILPOINT`, abort()):
//! `before_claim_commit`, `after_claim`, `after_send_started`, `after_send`,
//! `after_ack`; `LOCKSTORE_FAILPOINT_SKIP=N` lets N hits pass first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{failpoint, Entry, Failure, Outbox, OutboxOptions, Outcome, Result, Status};

#[cfg(feature = "tokio")]
pub use super::worker_async::{run_async, AsyncChannelAdapter, Blocking};

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
    /// The longest a `deliver` call may take (e.g. the exec timeout), if the
    /// adapter bounds it. The worker warns when it exceeds
    /// [`WorkerOptions::lease`]. Default `None` (unbounded or unknown).
    fn send_timeout(&self) -> Option<Duration> {
        None
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Database file (normally [`crate::paths::outbox_db`]), or with
    /// feature `postgres` a `postgres://` / `postgresql://` URL.
    pub db: PathBuf,
    /// Store options.
    pub outbox: OutboxOptions,
    /// Delivery threads (bounded concurrency); with `run_async`, sends in
    /// flight at once (tasks). Default 4.
    pub concurrency: usize,
    /// Entries claimed per thread per round (`run_async`: per claim). Default 8.
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
    /// Lease renewals of held claims (heartbeat).
    pub renewed: u64,
}

/// Indices of [`Counters`] (the fields of [`RunReport`]).
pub(crate) mod count {
    pub(crate) const CLAIMED: usize = 0;
    pub(crate) const DELIVERED: usize = 1;
    pub(crate) const RETRIED: usize = 2;
    pub(crate) const DEAD: usize = 3;
    pub(crate) const UNKNOWN: usize = 4;
    pub(crate) const EXPIRED: usize = 5;
    pub(crate) const RELEASED: usize = 6;
    pub(crate) const STALE: usize = 7;
    pub(crate) const RESCUED_PENDING: usize = 8;
    pub(crate) const RESCUED_UNKNOWN: usize = 9;
    pub(crate) const RENEWED: usize = 10;
}

/// The counters of one run (sync and async worker).
#[derive(Default)]
pub(crate) struct Counters {
    c: [AtomicU64; 11],
}

impl Counters {
    pub(crate) fn add(&self, i: usize) {
        self.add_n(i, 1);
    }
    pub(crate) fn add_n(&self, i: usize, n: u64) {
        self.c[i].fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn report(&self) -> RunReport {
        let g = |i: usize| self.c[i].load(Ordering::Relaxed);
        RunReport {
            claimed: g(count::CLAIMED),
            delivered: g(count::DELIVERED),
            retried: g(count::RETRIED),
            dead: g(count::DEAD),
            unknown: g(count::UNKNOWN),
            expired: g(count::EXPIRED),
            released: g(count::RELEASED),
            stale: g(count::STALE),
            rescued_pending: g(count::RESCUED_PENDING),
            rescued_unknown: g(count::RESCUED_UNKNOWN),
            renewed: g(count::RENEWED),
        }
    }
}

/// The worker's decision logic, shared by [`run`] and `run_async`: what the
/// store must record for an adapter's answer.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// `ack`.
    Ack,
    /// `fail` (retry with backoff, or dead).
    Fail(Failure),
    /// `mark_unknown` with this error.
    Unknown(String),
}

impl Verdict {
    /// The transition an adapter's [`Delivery`] calls for.
    pub(crate) fn of(d: &Delivery) -> Self {
        match d {
            Delivery::Delivered => Verdict::Ack,
            Delivery::Retry { error, retry_after } => Verdict::Fail(Failure {
                error: error.clone(),
                permanent: false,
                retry_after: *retry_after,
            }),
            Delivery::Permanent { error } => Verdict::Fail(Failure {
                error: error.clone(),
                permanent: true,
                retry_after: None,
            }),
            Delivery::Unknown { error } => Verdict::Unknown(error.clone()),
        }
    }

    /// Records it for the claim (`id`, `token`) at `now`.
    pub(crate) fn apply(
        &self,
        ob: &Outbox,
        id: i64,
        token: &str,
        now: SystemTime,
    ) -> Result<Outcome> {
        match self {
            Verdict::Ack => ob.ack(id, token, now),
            Verdict::Fail(f) => ob.fail(id, token, f, now),
            Verdict::Unknown(error) => ob.mark_unknown(id, token, error, now),
        }
    }
}

/// Counts the outcome of `mark_send_started`; true if the send may start.
pub(crate) fn started(out: Outcome, c: &Counters) -> bool {
    match out {
        Outcome::Applied(Status::InFlight) => true,
        Outcome::Applied(_) => {
            c.add(count::EXPIRED);
            false
        }
        Outcome::Stale(_) => {
            c.add(count::STALE);
            false
        }
    }
}

/// Counts the outcome of the terminal transition of entry `id`.
pub(crate) fn finished(out: Outcome, id: i64, c: &Counters) {
    match out {
        Outcome::Applied(Status::Delivered) => {
            c.add(count::DELIVERED);
            failpoint("after_ack");
        }
        Outcome::Applied(Status::Pending) => c.add(count::RETRIED),
        Outcome::Applied(Status::Dead) => c.add(count::DEAD),
        Outcome::Applied(Status::Unknown) => c.add(count::UNKNOWN),
        Outcome::Applied(_) => {}
        Outcome::Stale(cur) => {
            tracing::warn!(id, current = ?cur, "late transition ignored: the claim was taken away");
            c.add(count::STALE);
        }
    }
}

/// Rescues orphaned claims on `ob` and counts them.
pub(crate) fn rescue_with(ob: &Outbox, idempotent: bool, c: &Counters) -> Result<()> {
    let r = ob.rescue_as_leader(SystemTime::now(), idempotent)?;
    c.add_n(count::RESCUED_PENDING, r.to_pending);
    c.add_n(count::RESCUED_UNKNOWN, r.to_unknown);
    if r.to_pending + r.to_unknown > 0 {
        tracing::info!(path = %ob.path().display(), to_pending = r.to_pending, to_unknown = r.to_unknown, "rescued orphaned claims");
    }
    Ok(())
}

/// Warns when an adapter's send timeout exceeds the claim lease: a send may
/// then outlive its lease. Both workers renew the leases of the claims they
/// hold (every third of the lease), which covers a live worker only: if it
/// stalls longer than the lease, a rescue (by any worker, in any process)
/// takes the claim away mid-send (a resend with an idempotent adapter,
/// `unknown` otherwise).
pub(crate) fn warn_timeout_vs_lease(timeout: Option<Duration>, lease: Duration) {
    if let Some(t) = timeout.filter(|t| *t > lease) {
        tracing::warn!(timeout_ms = t.as_millis() as u64, lease_ms = lease.as_millis() as u64,
            "the adapter's send timeout exceeds the claim lease: the lease is renewed every third of it while a send is in flight, but if this worker stalls longer than the lease a rescue takes the claim away mid-send (recorded unknown, or resent by an idempotent adapter); raise the lease above the timeout");
    }
}

/// The claims held by the threads of one drain (id → claim token), whose
/// leases the heartbeat renews; and the heartbeat's stop flag.
#[derive(Default)]
struct Held {
    claims: Mutex<HashMap<i64, String>>,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Held {
    fn add(&self, batch: &[Entry]) {
        let mut g = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        for e in batch {
            g.insert(e.id, e.claim_token.clone().unwrap_or_default());
        }
    }

    fn remove(&self, id: i64) {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn holds(&self, id: i64, token: &str) -> bool {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|t| t == token)
    }

    fn snapshot(&self) -> Vec<(i64, String)> {
        let g = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(i, t)| (*i, t.clone())).collect()
    }

    fn stop(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Sleeps `d` or until stopped; true when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// The heartbeat of one drain: every third of the lease, renews the lease of
/// each held claim ([`Outbox::renew`], on its own connection, opened when
/// first needed) until [`Held::stop`]. A stale renewal of a claim still held
/// (a rescue took it: this worker stalled longer than the lease) is logged;
/// the send goes on and its transition will be stale.
fn heartbeat(opts: &WorkerOptions, held: &Held, c: &Counters) {
    let every = (opts.lease / 3).max(Duration::from_millis(1));
    let mut ob: Option<Outbox> = None;
    while !held.sleep(every) {
        let claims = held.snapshot();
        if claims.is_empty() {
            continue;
        }
        if ob.is_none() {
            match Outbox::open_db(&opts.db, opts.outbox.clone()) {
                Ok(o) => ob = Some(o),
                Err(er) => {
                    tracing::warn!(path = %opts.db.display(), error = %er, "lease renewal: cannot open the outbox; retrying at the next tick");
                    continue;
                }
            }
        }
        let Some(o) = ob.as_ref() else { continue };
        for (id, token) in claims {
            match o.renew(id, &token, opts.lease, SystemTime::now()) {
                Ok(Outcome::Applied(_)) => c.add(count::RENEWED),
                Ok(Outcome::Stale(cur)) => {
                    // Finished meanwhile (no longer held): nothing to say.
                    if held.holds(id, &token) {
                        held.remove(id);
                        tracing::warn!(path = %opts.db.display(), id, current = ?cur,
                            "the claim was taken away while this worker held it (lease not renewed in time?); its outcome will be recorded as stale");
                    }
                }
                Err(er) => {
                    tracing::warn!(path = %opts.db.display(), id, error = %er, "lease renewal failed; retrying at the next tick")
                }
            }
        }
    }
}

/// The group ack of one drain (group commit for acks): a thread whose send
/// succeeded queues its claim and waits; the first waiter finding no ack
/// transaction in progress becomes the leader and acks everything queued so
/// far in ONE [`Outbox::ack_many`] on its own connection, while the acks
/// that finish meanwhile queue up for the next group. Every thread still
/// returns only after its own ack committed (a crash loses no more than
/// acking one by one would), and gets its own item's outcome, so the
/// [`RunReport`] counts stay exact. With one thread a group is one ack.
#[derive(Default)]
struct AckGroup {
    st: Mutex<AckState>,
    cv: Condvar,
}

#[derive(Default)]
struct AckState {
    /// Queued claims: (ticket, id, token).
    queue: Vec<(u64, i64, String)>,
    /// An ack transaction is in progress.
    committing: bool,
    next_ticket: u64,
    /// Outcomes by ticket; `None`: the group's transaction failed (the item
    /// is then acked alone, which reports its own error).
    done: HashMap<u64, Option<Outcome>>,
}

impl AckGroup {
    /// Acks the claim (`id`, `token`) together with whatever else is queued;
    /// returns its outcome once committed.
    fn ack(&self, ob: &Outbox, id: i64, token: &str) -> Result<Outcome> {
        let mut g = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.queue.push((ticket, id, token.to_string()));
        loop {
            if let Some(out) = g.done.remove(&ticket) {
                drop(g);
                return match out {
                    Some(o) => Ok(o),
                    None => ob.ack(id, token, SystemTime::now()),
                };
            }
            if !g.committing {
                // Lead: ack the whole queue (ours included) in one transaction.
                let group = std::mem::take(&mut g.queue);
                g.committing = true;
                drop(g);
                let claims: Vec<(i64, &str)> =
                    group.iter().map(|(_, i, t)| (*i, t.as_str())).collect();
                let r = ob.ack_many(&claims, SystemTime::now());
                if let Err(e) = &r {
                    tracing::warn!(path = %ob.path().display(), n = group.len(), error = %e, "group ack failed; acking its claims one by one");
                }
                let outs = r.ok();
                g = self.st.lock().unwrap_or_else(|p| p.into_inner());
                for (k, (t, _, _)) in group.iter().enumerate() {
                    let o = outs.as_ref().and_then(|v| v.get(k).copied());
                    g.done.insert(*t, o);
                }
                g.committing = false;
                self.cv.notify_all();
                continue;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
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
    held: &Held,
    acks: &AckGroup,
) -> Result<()> {
    if !started(ob.mark_send_started(e.id, token, SystemTime::now())?, c) {
        held.remove(e.id);
        return Ok(());
    }
    failpoint("after_send_started");
    let r = adapter.deliver(e);
    failpoint("after_send");
    // No renewal once the outcome is known (a renewal racing the terminal
    // transition would only come back stale).
    held.remove(e.id);
    let out = match Verdict::of(&r) {
        Verdict::Ack => acks.ack(ob, e.id, token)?,
        v => v.apply(ob, e.id, token, SystemTime::now())?,
    };
    finished(out, e.id, c);
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
    held: &Held,
    acks: &AckGroup,
) -> Result<()> {
    let ob = Outbox::open_db(&opts.db, opts.outbox.clone())?;
    loop {
        if stop() {
            return Ok(());
        }
        let batch = ob.claim(opts.batch.max(1), opts.lease, due_at())?;
        if batch.is_empty() {
            return Ok(());
        }
        held.add(&batch);
        let r = deliver_batch(&ob, opts, adapter, c, stop, held, acks, &batch);
        for e in &batch {
            held.remove(e.id);
        }
        if !r? {
            return Ok(());
        }
    }
}

/// Delivers a claimed batch in order; on stop, releases the claims not
/// started and returns false.
#[allow(clippy::too_many_arguments)] // the drain's shared parts, named
fn deliver_batch(
    ob: &Outbox,
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    c: &Counters,
    stop: &dyn Fn() -> bool,
    held: &Held,
    acks: &AckGroup,
    batch: &[Entry],
) -> Result<bool> {
    failpoint("after_claim");
    for (i, e) in batch.iter().enumerate() {
        let token = e.claim_token.as_deref().unwrap_or_default();
        if stop() {
            for r in &batch[i..] {
                held.remove(r.id);
                if ob
                    .release(r.id, r.claim_token.as_deref().unwrap_or_default())?
                    .applied()
                {
                    c.add(count::RELEASED);
                }
            }
            return Ok(false);
        }
        c.add(count::CLAIMED);
        deliver_one(ob, adapter, e, token, c, held, acks)?;
        if !opts.pacing.is_zero() {
            std::thread::sleep(opts.pacing);
        }
    }
    Ok(true)
}

fn drain(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    c: &Counters,
    due_at: &(dyn Fn() -> SystemTime + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    let n = opts.concurrency.max(1);
    let held = Held::default();
    let acks = AckGroup::default();
    std::thread::scope(|s| {
        let beat = s.spawn(|| heartbeat(opts, &held, c));
        let hs: Vec<_> = (0..n)
            .map(|_| s.spawn(|| drain_thread(opts, adapter, c, due_at, stop, &held, &acks)))
            .collect();
        let mut first = Ok(());
        let mut panicked = None;
        for h in hs {
            match h.join() {
                Ok(r) if first.is_ok() => first = r,
                Ok(_) => {}
                Err(p) => panicked = panicked.or(Some(p)),
            }
        }
        held.stop();
        let _ = beat.join();
        if let Some(p) = panicked {
            std::panic::resume_unwind(p);
        }
        first
    })
}

fn rescue(opts: &WorkerOptions, adapter: &dyn ChannelAdapter, c: &Counters) -> Result<()> {
    let ob = Outbox::open_db(&opts.db, opts.outbox.clone())?;
    rescue_with(&ob, adapter.idempotent(), c)
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
    warn_timeout_vs_lease(adapter.send_timeout(), opts.lease);
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
/// claims are released. Held claims' leases are renewed every third of
/// [`WorkerOptions::lease`] (see the module docs); a warning is logged at
/// start when the adapter's [`ChannelAdapter::send_timeout`] exceeds the lease.
///
/// Errors: store errors (SQLite, naming the file).
pub fn run(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    stop: &AtomicBool,
) -> Result<RunReport> {
    run_inner(opts, adapter, stop, None)
}

/// [`run`], calling `progress` with the counters so far every `every` (from
/// another thread, while the worker runs; not after it returned). For an
/// operator's progress line (`lockstore outbox deliver` prints one to stderr).
///
/// Errors: as [`run`].
pub fn run_with_progress(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    stop: &AtomicBool,
    every: Duration,
    progress: &(dyn Fn(&RunReport) + Sync),
) -> Result<RunReport> {
    run_inner(opts, adapter, stop, Some((every, progress)))
}

type Progress<'a> = (Duration, &'a (dyn Fn(&RunReport) + Sync));

fn run_inner(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    stop: &AtomicBool,
    progress: Option<Progress<'_>>,
) -> Result<RunReport> {
    let c = Counters::default();
    let ticker = Held::default();
    std::thread::scope(|s| {
        if let Some((every, f)) = progress {
            let (c, ticker) = (&c, &ticker);
            s.spawn(move || {
                while !ticker.sleep(every.max(Duration::from_millis(1))) {
                    f(&c.report());
                }
            });
        }
        let r = run_loop(opts, adapter, stop, &c);
        ticker.stop();
        r
    })?;
    Ok(c.report())
}

fn run_loop(
    opts: &WorkerOptions,
    adapter: &dyn ChannelAdapter,
    stop: &AtomicBool,
    c: &Counters,
) -> Result<()> {
    warn_timeout_vs_lease(adapter.send_timeout(), opts.lease);
    rescue(opts, adapter, c)?;
    let start = SystemTime::now();
    let budget_end = Instant::now() + opts.recovery_budget;
    drain(opts, adapter, c, &|| start, &|| {
        stop.load(Ordering::SeqCst) || Instant::now() >= budget_end
    })?;
    let stopped = || stop.load(Ordering::SeqCst);
    let idle = Outbox::open_db(&opts.db, opts.outbox.clone())?;
    while !stopped() {
        rescue(opts, adapter, c)?;
        drain(opts, adapter, c, &SystemTime::now, &stopped)?;
        let until = Instant::now() + opts.poll;
        while !stopped() && Instant::now() < until {
            if idle.wait_for_work(Duration::from_millis(20).min(opts.poll)) {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::NewMessage;

    /// A group carries every queued claim in one `ack_many` and hands each
    /// waiter its own item's outcome: the claims queued by (simulated)
    /// waiting threads are acked by the leader's transaction, a stale one
    /// among them is reported stale to its own ticket only.
    #[test]
    fn a_group_ack_reports_each_claim_its_own_outcome() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open(d.path().join("o.sqlite"), OutboxOptions::default()).unwrap();
        let now = SystemTime::now();
        for i in 0..3 {
            ob.enqueue(
                &NewMessage {
                    channel: "c".into(),
                    target: format!("t{i}"),
                    payload: serde_json::json!(i),
                    ..Default::default()
                },
                now,
            )
            .unwrap();
        }
        let v = ob.claim(3, Duration::from_secs(60), now).unwrap();
        let tok = |e: &Entry| e.claim_token.clone().unwrap();
        let g = AckGroup::default();
        {
            // Two waiters queued before the leader arrives: the second with
            // a stale token.
            let mut st = g.st.lock().unwrap();
            st.queue.push((0, v[0].id, tok(&v[0])));
            st.queue.push((1, v[1].id, "stale-token".into()));
            st.next_ticket = 2;
        }
        assert_eq!(
            g.ack(&ob, v[2].id, &tok(&v[2])).unwrap(),
            Outcome::Applied(Status::Delivered)
        );
        let mut st = g.st.lock().unwrap();
        assert!(st.queue.is_empty() && !st.committing);
        assert_eq!(
            st.done.remove(&0),
            Some(Some(Outcome::Applied(Status::Delivered)))
        );
        assert_eq!(
            st.done.remove(&1),
            Some(Some(Outcome::Stale(Some(Status::InFlight))))
        );
        assert!(st.done.is_empty());
        drop(st);
        assert_eq!(ob.get(v[0].id).unwrap().unwrap().status, Status::Delivered);
        assert_eq!(ob.get(v[1].id).unwrap().unwrap().status, Status::InFlight);
    }
}
