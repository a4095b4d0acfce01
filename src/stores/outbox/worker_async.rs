//! The async delivery worker (features `outbox` and `tokio`), reached as
//! [`super::worker::run_async`]: the sync worker's decisions (what an adapter's
//! [`Delivery`] means, backoff, dead letters, rescue, the startup budget)
//! driven by tokio tasks instead of threads.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::resume_unwind;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use ::tokio::sync::{OwnedSemaphorePermit, Semaphore};
use ::tokio::task::{JoinError, JoinSet};

use super::worker::{
    count, finished, rescue_with, started, warn_timeout_vs_lease, ChannelAdapter, Counters,
    Delivery, RunReport, Verdict, WorkerOptions,
};
use super::AsyncOutbox;
use super::{failpoint, Entry, Outcome, Result};

/// An async channel the worker delivers to (feature `tokio`), e.g. an HTTP
/// client of a chat API. Implement `deliver` as an `async fn`:
///
/// ```
/// use lockstore::outbox::{worker::{AsyncChannelAdapter, Delivery}, Entry};
///
/// struct Chat;
///
/// impl AsyncChannelAdapter for Chat {
///     async fn deliver(&self, entry: &Entry) -> Delivery {
///         // e.g. POST entry.payload with the header Idempotency-Key: entry.delivery_key()
///         let _ = entry.delivery_key();
///         Delivery::Delivered
///     }
///     fn idempotent(&self) -> bool {
///         true // the API deduplicates by the idempotency key
///     }
/// }
/// ```
///
/// The future `deliver` returns must be `Send` (the worker spawns one task per
/// send; with `async fn`, the compiler checks this at the impl: hold no
/// `Rc` or `std::sync::MutexGuard` across an `.await`). The trait is not
/// object-safe; [`run_async`] is generic over it. A sync [`ChannelAdapter`]
/// (the shipped `file:` and `exec:` adapters) runs through [`Blocking`].
pub trait AsyncChannelAdapter: Send + Sync {
    /// Delivers one entry (its payload, channel, target and
    /// [`Entry::delivery_key`]). Cancel-safety is not needed: the worker
    /// always drives a started send to its end.
    fn deliver(&self, entry: &Entry) -> impl Future<Output = Delivery> + Send;
    /// True if a resend of the same entry is deduplicated by the channel (see
    /// [`ChannelAdapter::idempotent`]).
    fn idempotent(&self) -> bool;
    /// The longest a `deliver` call may take, if the adapter bounds it; the
    /// worker warns when it exceeds [`WorkerOptions::lease`]. Default `None`.
    fn send_timeout(&self) -> Option<Duration> {
        None
    }
}

/// A sync [`ChannelAdapter`] run by [`run_async`] on tokio's blocking pool
/// (`spawn_blocking` per send), e.g. `Blocking(Arc::from(adapters::from_spec(spec, t)?))`.
/// A panic in the adapter is resumed in the worker.
#[derive(Debug)]
pub struct Blocking<A: ?Sized>(pub Arc<A>);

impl<A: ChannelAdapter + ?Sized + 'static> AsyncChannelAdapter for Blocking<A> {
    async fn deliver(&self, entry: &Entry) -> Delivery {
        let (a, e) = (self.0.clone(), entry.clone());
        match ::tokio::task::spawn_blocking(move || a.deliver(&e)).await {
            Ok(d) => d,
            Err(j) if j.is_panic() => resume_unwind(j.into_panic()),
            Err(_) => Delivery::Retry {
                error: "the tokio runtime shut down before the send ran".into(),
                retry_after: None,
            },
        }
    }

    fn idempotent(&self) -> bool {
        self.0.idempotent()
    }

    fn send_timeout(&self) -> Option<Duration> {
        self.0.send_timeout()
    }
}

/// Either of two futures (see [`race`]).
enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Polls `a` first, then `b`; the first ready wins (the other is dropped).
async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let (mut a, mut b) = (pin!(a), pin!(b));
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        b.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// The caller's shutdown future, sticky once it completed.
struct Shutdown<'a, F: Future<Output = ()>> {
    fut: Pin<&'a mut F>,
    done: bool,
}

impl<F: Future<Output = ()>> Shutdown<'_, F> {
    fn poll_done(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && self.fut.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
        self.done
    }

    /// Whether shutdown was requested (checked now, without waiting).
    fn requested(&mut self) -> bool {
        self.poll_done(&mut Context::from_waker(Waker::noop()))
    }

    /// `f`'s output, or `None` if shutdown is requested first (checked first).
    async fn or<T>(&mut self, f: impl Future<Output = T>) -> Option<T> {
        let mut f = pin!(f);
        poll_fn(|cx| {
            if self.poll_done(cx) {
                return Poll::Ready(None);
            }
            f.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

/// Keeps the first error; a panicked task's panic is resumed.
fn merge(first: &mut Result<()>, r: std::result::Result<Result<()>, JoinError>) {
    let r = match r {
        Ok(r) => r,
        Err(j) if j.is_panic() => resume_unwind(j.into_panic()),
        Err(_) => Ok(()), // aborted: never done by the worker
    };
    if first.is_ok() {
        *first = r;
    }
}

/// Awaits `send`; every third of the lease renews the claim's lease (the send
/// keeps being polled meanwhile). A stale renewal (the claim was rescued or
/// taken) is logged once; the send is still driven to its end and its
/// transition will be stale.
async fn send_renewing(
    ob: &AsyncOutbox,
    send: impl Future<Output = Delivery>,
    e: &Entry,
    token: &str,
    lease: Duration,
    c: &Counters,
) -> Delivery {
    let mut send = pin!(send);
    let every = (lease / 3).max(Duration::from_millis(1));
    let mut lost = false;
    loop {
        if let Either::Left(d) = race(send.as_mut(), ::tokio::time::sleep(every)).await {
            return d;
        }
        if lost {
            continue;
        }
        match race(
            send.as_mut(),
            ob.renew(e.id, token, lease, SystemTime::now()),
        )
        .await
        {
            Either::Left(d) => return d,
            Either::Right(Ok(Outcome::Applied(_))) => c.add(count::RENEWED),
            Either::Right(Ok(Outcome::Stale(cur))) => {
                lost = true;
                tracing::warn!(path = %ob.path().display(), id = e.id, current = ?cur,
                    "the claim was taken away while its send was in flight (lease not renewed in time?); its outcome will be recorded as stale");
            }
            Either::Right(Err(er)) => {
                tracing::warn!(path = %ob.path().display(), id = e.id, error = %er, "lease renewal failed; retrying at the next tick")
            }
        }
    }
}

/// One delivery task: `mark_send_started` → `deliver` (lease renewed) → the
/// transition [`Verdict`] says. Holds its concurrency permit until done.
async fn deliver_task<A: AsyncChannelAdapter>(
    ob: AsyncOutbox,
    adapter: Arc<A>,
    e: Entry,
    opts: Arc<WorkerOptions>,
    c: Arc<Counters>,
    _permit: OwnedSemaphorePermit,
) -> Result<()> {
    let token = e.claim_token.clone().unwrap_or_default();
    if !started(
        ob.mark_send_started(e.id, &token, SystemTime::now())
            .await?,
        &c,
    ) {
        return Ok(());
    }
    failpoint("after_send_started");
    let d = send_renewing(&ob, adapter.deliver(&e), &e, &token, opts.lease, &c).await;
    failpoint("after_send");
    let verdict = Verdict::of(&d);
    let (id, t) = (e.id, token.clone());
    let out = ob
        .call(move |o| verdict.apply(o, id, &t, SystemTime::now()))
        .await?;
    finished(out, e.id, &c);
    if !opts.pacing.is_zero() {
        ::tokio::time::sleep(opts.pacing).await;
    }
    Ok(())
}

/// Claims and delivers what is due at `due` (or now, each claim, if `None`)
/// until nothing is due, `deadline` passes or shutdown is requested; at most
/// `concurrency` sends at once. Claims not started are released; sends in
/// flight finish before it returns.
#[allow(clippy::too_many_arguments)]
async fn drain<A: AsyncChannelAdapter + 'static, F: Future<Output = ()>>(
    ob: &AsyncOutbox,
    opts: &Arc<WorkerOptions>,
    adapter: &Arc<A>,
    c: &Arc<Counters>,
    sem: &Arc<Semaphore>,
    due: Option<SystemTime>,
    deadline: Option<Instant>,
    stop: &mut Shutdown<'_, F>,
) -> Result<()> {
    let mut buf: VecDeque<Entry> = VecDeque::new();
    let mut set = JoinSet::new();
    let mut res = Ok(());
    loop {
        while let Some(r) = set.try_join_next() {
            merge(&mut res, r);
        }
        if res.is_err() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Wait for a free slot; shutdown wins over a slot that is also free.
        let Some(Ok(permit)) = stop.or(sem.clone().acquire_owned()).await else {
            break;
        };
        if buf.is_empty() {
            let claimed = match ob
                .claim(
                    opts.batch.max(1),
                    opts.lease,
                    due.unwrap_or_else(SystemTime::now),
                )
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    merge(&mut res, Ok(Err(e)));
                    break;
                }
            };
            if claimed.is_empty() {
                break;
            }
            failpoint("after_claim");
            buf.extend(claimed);
        }
        if stop.requested() {
            break;
        }
        let Some(e) = buf.pop_front() else { break };
        c.add(count::CLAIMED);
        set.spawn(deliver_task(
            ob.clone(),
            adapter.clone(),
            e,
            opts.clone(),
            c.clone(),
            permit,
        ));
    }
    for e in buf.drain(..) {
        match ob
            .release(e.id, e.claim_token.as_deref().unwrap_or_default())
            .await
        {
            Ok(o) if o.applied() => c.add(count::RELEASED),
            Ok(_) => {}
            Err(er) => merge(&mut res, Ok(Err(er))),
        }
    }
    while let Some(r) = set.join_next().await {
        merge(&mut res, r);
    }
    res
}

/// Runs the delivery worker on the current tokio runtime until `shutdown`
/// completes (feature `tokio`); the async twin of [`super::worker::run`].
///
/// Rescue (orphaned claims of dead claimers or ended leases); drain what is
/// due within [`WorkerOptions::recovery_budget`] (claims left when the budget
/// ends are released unstarted — no retry consumed); then loop: rescue, drain
/// what is due, wait [`WorkerOptions::poll`]. Each claim takes up to
/// [`WorkerOptions::batch`] entries; at most [`WorkerOptions::concurrency`]
/// sends run at once, each in its own task (no thread per send). While a send
/// is in flight its claim's lease is renewed every third of
/// [`WorkerOptions::lease`] ([`crate::outbox::Outbox::renew`]), so a send
/// longer than the lease is not rescued from under a live worker; a warning is
/// logged when the adapter's [`AsyncChannelAdapter::send_timeout`] exceeds the
/// lease. What each [`Delivery`] means (ack, backoff, dead letter, `unknown`)
/// is decided exactly as in the sync worker.
///
/// Graceful shutdown: once `shutdown` completes, no new send starts; sends in
/// flight finish and are recorded; claimed entries whose send has not started
/// are released (back to `pending`, no attempt consumed); then it returns the
/// counters. Dropping the returned future instead is not graceful: tasks
/// already spawned finish their send, but unstarted claims stay `in_flight`
/// until their lease ends.
///
/// Store calls go through one [`crate::tokio::Outbox`] (one connection on its
/// own thread); adapters run on the runtime. Needs a runtime with the time
/// driver (`#[tokio::main]`, or `Builder::enable_time`).
///
/// Errors: store errors (SQLite, naming the file). After an error no new send
/// starts; sends in flight finish first.
pub async fn run_async<A: AsyncChannelAdapter + 'static>(
    options: &WorkerOptions,
    adapter: Arc<A>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport> {
    let opts = Arc::new(options.clone());
    let c = Arc::new(Counters::default());
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let shutdown = pin!(shutdown);
    let mut stop = Shutdown {
        fut: shutdown,
        done: false,
    };
    warn_timeout_vs_lease(adapter.send_timeout(), opts.lease);
    let ob = AsyncOutbox::open(&opts.db, opts.outbox.clone()).await?;
    let rescue = |ob: &AsyncOutbox| {
        let (c, idem) = (c.clone(), adapter.idempotent());
        let ob = ob.clone();
        async move { ob.call(move |o| rescue_with(o, idem, &c)).await }
    };
    rescue(&ob).await?;
    let start = SystemTime::now();
    let budget_end = Instant::now() + opts.recovery_budget;
    drain(
        &ob,
        &opts,
        &adapter,
        &c,
        &sem,
        Some(start),
        Some(budget_end),
        &mut stop,
    )
    .await?;
    while !stop.requested() {
        rescue(&ob).await?;
        drain(&ob, &opts, &adapter, &c, &sem, None, None, &mut stop).await?;
        stop.or(ob.wait_for_work(opts.poll)).await;
    }
    Ok(c.report())
}
