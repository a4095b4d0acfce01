//! In-process FIFO writer queue: one queue per canonical store path.
//!
//! [`FifoQueue`] is a ticket lock: a writer takes the next ticket when it enters and
//! runs when the "now serving" counter reaches its ticket, so writers run one at a
//! time in the order they entered (strict FIFO). A waiter that gives up (timeout or
//! drop) marks its ticket abandoned; the releaser skips abandoned tickets, so a
//! cancelled waiter never blocks the ones behind it. Each sleeping waiter has its
//! own condition variable and a release wakes only the waiter whose ticket is now
//! served (no thundering herd: with 32 queued writers a hand-off wakes one thread,
//! not 31). The queue's mutex is held only for a few counter updates, never
//! across the cross-process lock call.
//!
//! A waiter is a thread or a task, in one ticket order: a thread blocks on its
//! condition variable ([`QueueWaiter::wait`]); a task awaits a [`WaitFuture`]
//! ([`QueueWaiter::wait_async`]) that registers its `Waker` under the queue's
//! mutex, so no runtime worker blocks while queued, and the releaser wakes
//! that one waker. Dropping the future while queued abandons its ticket
//! exactly like a thread that gives up. With an owned queue reference (an
//! `Arc`, or a cloned registry [`Handle`], see [`enter`]) the waiter, its
//! future and its slot are `'static`, so a slot won by a task can move into a
//! blocking thread.
//!
//! [`Registry`] maps a key (the canonical store path) to a reference-counted entry
//! and removes the entry when its last handle is dropped, so drained queues are
//! freed and the registry never grows without bound. (A `Weak`-based map would do
//! the same but loom has no `Weak`; explicit counts keep the model honest.)
//!
//! All synchronization goes through [`crate::sync`], so `loom-tests/` model this
//! exact code. Behavior follows openclaw's writer queues (`persistent-dedupe.ts`,
//! `store-writer-queue.ts`): per-path FIFO, a failed job releases the queue for the
//! next one, cancellation removes only a still-waiting job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::sync::{self, Arc, Condvar, Mutex};

/// How a queued writer sleeps until its ticket is served.
enum Sleeper {
    /// A thread blocked in [`QueueWaiter::wait`] / [`QueueWaiter::wait_until`]
    /// on its own condition variable.
    Thread(Arc<Condvar>),
    /// A task awaiting [`WaitFuture`]: the waker of its latest poll.
    Task(Waker),
}

#[derive(Default)]
struct State {
    /// Next ticket to hand out.
    next: u64,
    /// Ticket allowed to run.
    serving: u64,
    /// Tickets whose waiters gave up before their turn.
    abandoned: BTreeSet<u64>,
    /// How each sleeping waiter (thread or task) is woken, by ticket.
    sleepers: BTreeMap<u64, Sleeper>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("next", &self.next)
            .field("serving", &self.serving)
            .field("abandoned", &self.abandoned.len())
            .field("sleepers", &self.sleepers.len())
            .finish()
    }
}

impl State {
    /// Moves "now serving" past `ticket` and past any abandoned tickets after it,
    /// and wakes the waiter whose turn it now is (if it sleeps): a thread is
    /// notified here, with the queue's mutex held, so it cannot miss the
    /// notification; a task's waker is taken out and returned, to be woken by
    /// the caller after it unlocked (the task re-checks "now serving" when
    /// polled, so it cannot miss its turn either).
    #[must_use = "the returned waker must be woken"]
    fn advance_from(&mut self, ticket: u64) -> Option<Waker> {
        debug_assert_eq!(self.serving, ticket);
        self.serving = ticket + 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
        let serving = self.serving;
        match self.sleepers.get(&serving) {
            Some(Sleeper::Thread(cv)) => {
                cv.notify_one();
                None
            }
            Some(Sleeper::Task(_)) => match self.sleepers.remove(&serving) {
                Some(Sleeper::Task(w)) => Some(w),
                _ => None,
            },
            None => None,
        }
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// A strict-FIFO mutual-exclusion queue (ticket lock with cancellation). Its
/// waiters may be threads (blocking) and tasks (a future) in any mix: one
/// ticket order serves both.
#[derive(Debug, Default)]
pub struct FifoQueue {
    state: Mutex<State>,
}

/// Something that owns or borrows a [`FifoQueue`]: `&FifoQueue` (a waiter
/// borrowing the queue), an `Arc` of a queue-holding value, or a registry
/// [`Handle`] (an owned, `'static` waiter that keeps the queue registered).
pub trait HasQueue {
    /// The queue.
    fn queue(&self) -> &FifoQueue;
}

impl HasQueue for FifoQueue {
    fn queue(&self) -> &FifoQueue {
        self
    }
}

impl<Q: HasQueue + ?Sized> HasQueue for &Q {
    fn queue(&self) -> &FifoQueue {
        (**self).queue()
    }
}

impl<Q: HasQueue + ?Sized> HasQueue for Arc<Q> {
    fn queue(&self) -> &FifoQueue {
        (**self).queue()
    }
}

impl<K: Eq + Hash + Clone, V: HasQueue> HasQueue for Handle<'_, K, V> {
    fn queue(&self) -> &FifoQueue {
        self.value.queue()
    }
}

/// Returned by [`QueueWaiter::wait_until`] when the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTimeout;

/// A place in a queue borrowed for `'a`, not yet running.
pub type Waiter<'a> = QueueWaiter<&'a FifoQueue>;
/// The running turn in a queue borrowed for `'a`.
pub type Slot<'a> = QueueSlot<&'a FifoQueue>;

impl FifoQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters the queue: takes the next ticket. The returned [`Waiter`] must be
    /// waited on to run; dropping it gives the place up.
    pub fn enter(&self) -> Waiter<'_> {
        enter(self)
    }

    /// Enters and waits for the turn (no deadline).
    pub fn acquire(&self) -> Slot<'_> {
        self.enter().wait()
    }

    /// Number of writers that entered and have not yet released or given up,
    /// including the running one.
    pub fn len(&self) -> usize {
        let st = sync::lock(&self.state);
        (st.next - st.serving) as usize - st.abandoned.len()
    }

    /// True when no writer is running or waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, ticket: u64) {
        let w = sync::lock(&self.state).advance_from(ticket);
        wake(w);
    }

    fn abandon(&self, ticket: u64) {
        let mut st = sync::lock(&self.state);
        // A task's waker (a thread removes its own condvar before giving up).
        st.sleepers.remove(&ticket);
        let w = if st.serving == ticket {
            // Our turn came as we gave up: pass it on.
            st.advance_from(ticket)
        } else {
            st.abandoned.insert(ticket);
            None
        };
        drop(st);
        wake(w);
    }
}

/// Enters `owner`'s queue: takes the next ticket. With an owned `owner` (an
/// `Arc`, a registry [`Handle`]) the waiter, its future and its slot are
/// `'static` and can move into another thread or task.
pub fn enter<Q: HasQueue>(owner: Q) -> QueueWaiter<Q> {
    let ticket = {
        let mut st = sync::lock(&owner.queue().state);
        let t = st.next;
        st.next += 1;
        t
    };
    QueueWaiter {
        owner: Some(owner),
        ticket,
    }
}

/// A place in a [`FifoQueue`], not yet running. Dropping it gives the place up
/// (the writers behind it are not blocked).
#[derive(Debug)]
pub struct QueueWaiter<Q: HasQueue> {
    /// `None` once turned into a slot.
    owner: Option<Q>,
    ticket: u64,
}

impl<Q: HasQueue> QueueWaiter<Q> {
    /// This waiter's ticket (0-based order of entry).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    fn q(&self) -> &FifoQueue {
        match &self.owner {
            Some(o) => o.queue(),
            None => unreachable!("a waiter is consumed when it becomes a slot"),
        }
    }

    fn into_slot(mut self) -> QueueSlot<Q> {
        match self.owner.take() {
            Some(owner) => QueueSlot {
                owner,
                ticket: self.ticket,
            },
            None => unreachable!("a waiter is consumed when it becomes a slot"),
        }
    }

    /// Blocks this thread until every writer that entered earlier has released
    /// or given up.
    pub fn wait(self) -> QueueSlot<Q> {
        {
            let q = self.q();
            let mut st = sync::lock(&q.state);
            if st.serving != self.ticket {
                let cv = Arc::new(Condvar::new());
                st.sleepers.insert(self.ticket, Sleeper::Thread(cv.clone()));
                while st.serving != self.ticket {
                    st = sync::wait(&cv, st);
                }
                st.sleepers.remove(&self.ticket);
            }
        }
        self.into_slot()
    }

    /// Like [`QueueWaiter::wait`] but gives the place up at `deadline`.
    pub fn wait_until(self, deadline: Instant) -> Result<QueueSlot<Q>, QueueTimeout> {
        {
            let q = self.q();
            let mut st = sync::lock(&q.state);
            if st.serving != self.ticket {
                let cv = Arc::new(Condvar::new());
                st.sleepers.insert(self.ticket, Sleeper::Thread(cv.clone()));
                while st.serving != self.ticket {
                    let now = Instant::now();
                    if now >= deadline {
                        st.sleepers.remove(&self.ticket);
                        drop(st);
                        return Err(QueueTimeout); // Drop of `self` abandons the ticket.
                    }
                    st = sync::wait_timeout(&cv, st, deadline - now);
                }
                st.sleepers.remove(&self.ticket);
            }
        }
        Ok(self.into_slot())
    }

    /// Non-blocking: the slot if it is this waiter's turn now, else the waiter back.
    pub fn try_now(self) -> Result<QueueSlot<Q>, QueueWaiter<Q>> {
        let now = sync::lock(&self.q().state).serving == self.ticket;
        if now {
            Ok(self.into_slot())
        } else {
            Err(self)
        }
    }

    /// Waits as a task: the returned future resolves to the slot when every
    /// writer that entered earlier has released or given up. While pending it
    /// blocks no thread (the releaser wakes this task's latest waker). Dropping
    /// the future before it resolves gives the place up, like dropping the
    /// waiter.
    pub fn wait_async(self) -> WaitFuture<Q> {
        WaitFuture { waiter: Some(self) }
    }
}

impl<Q: HasQueue> Drop for QueueWaiter<Q> {
    fn drop(&mut self) {
        if let Some(o) = &self.owner {
            o.queue().abandon(self.ticket);
        }
    }
}

/// The future of [`QueueWaiter::wait_async`]. Dropping it while pending
/// abandons the ticket (the writers behind it are not blocked; if its turn
/// had just come, the turn passes on).
#[derive(Debug)]
#[must_use = "a queued writer runs only when awaited"]
pub struct WaitFuture<Q: HasQueue> {
    /// `None` once resolved.
    waiter: Option<QueueWaiter<Q>>,
}

impl<Q: HasQueue> WaitFuture<Q> {
    /// The ticket of this waiter, `None` once resolved.
    pub fn ticket(&self) -> Option<u64> {
        self.waiter.as_ref().map(|w| w.ticket)
    }
}

// The future holds no self-references.
impl<Q: HasQueue> Unpin for WaitFuture<Q> {}

impl<Q: HasQueue> Future for WaitFuture<Q> {
    type Output = QueueSlot<Q>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<QueueSlot<Q>> {
        let Some(w) = self.waiter.as_ref() else {
            panic!("queue WaitFuture polled after it resolved");
        };
        let ticket = w.ticket;
        {
            let mut st = sync::lock(&w.q().state);
            if st.serving != ticket {
                // Register (or refresh) this task's waker under the mutex the
                // releaser takes: a release after this point finds it.
                match st.sleepers.get_mut(&ticket) {
                    Some(Sleeper::Task(old)) if old.will_wake(cx.waker()) => {}
                    _ => {
                        st.sleepers
                            .insert(ticket, Sleeper::Task(cx.waker().clone()));
                    }
                }
                return Poll::Pending;
            }
            st.sleepers.remove(&ticket);
        }
        match self.waiter.take() {
            Some(w) => Poll::Ready(w.into_slot()),
            None => unreachable!(),
        }
    }
}

/// The running turn in a [`FifoQueue`]; dropping it (also during a panic) lets
/// the next writer run. Owned (`'static`) when `Q` is.
#[derive(Debug)]
pub struct QueueSlot<Q: HasQueue> {
    owner: Q,
    ticket: u64,
}

impl<Q: HasQueue> QueueSlot<Q> {
    /// The ticket this slot was granted for.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The queue this slot belongs to.
    pub fn queue(&self) -> &FifoQueue {
        self.owner.queue()
    }
}

impl<Q: HasQueue> Drop for QueueSlot<Q> {
    fn drop(&mut self) {
        self.owner.queue().release(self.ticket);
    }
}

/// Default deadline helper: `now + d`, saturating far in the future.
pub fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

struct Entry<V> {
    value: Arc<V>,
    users: usize,
}

/// A map from key to a shared, reference-counted value that is removed when its
/// last [`Handle`] drops.
pub struct Registry<K: Eq + Hash + Clone, V> {
    map: Mutex<HashMap<K, Entry<V>>>,
}

impl<K: Eq + Hash + Clone, V> Default for Registry<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Registry<K, V> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live value for `key`, created with `make` if there is none.
    pub fn get(&self, key: &K, make: impl FnOnce() -> V) -> Handle<'_, K, V> {
        let mut map = sync::lock(&self.map);
        let e = map.entry(key.clone()).or_insert_with(|| Entry {
            value: Arc::new(make()),
            users: 0,
        });
        e.users += 1;
        let value = e.value.clone();
        Handle {
            registry: self,
            key: key.clone(),
            value,
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        sync::lock(&self.map).len()
    }

    /// True when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put_back(&self, key: &K) {
        let mut map = sync::lock(&self.map);
        let remove = match map.get_mut(key) {
            Some(e) => {
                e.users -= 1;
                e.users == 0
            }
            None => false,
        };
        if remove {
            map.remove(key);
        }
    }
}

/// A counted reference to a registry value; the entry is freed when the last
/// handle for its key drops.
pub struct Handle<'r, K: Eq + Hash + Clone, V> {
    registry: &'r Registry<K, V>,
    key: K,
    value: Arc<V>,
}

impl<K: Eq + Hash + Clone, V> Clone for Handle<'_, K, V> {
    /// Another counted reference to the same entry.
    fn clone(&self) -> Self {
        let mut map = sync::lock(&self.registry.map);
        if let Some(e) = map.get_mut(&self.key) {
            e.users += 1;
        }
        drop(map);
        Handle {
            registry: self.registry,
            key: self.key.clone(),
            value: self.value.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Handle<'_, K, V> {
    /// The shared value (same `Arc` for every live handle of the key).
    pub fn arc(&self) -> &Arc<V> {
        &self.value
    }
}

impl<K: Eq + Hash + Clone, V> std::ops::Deref for Handle<'_, K, V> {
    type Target = V;
    fn deref(&self) -> &V {
        &self.value
    }
}

impl<K: Eq + Hash + Clone, V> Drop for Handle<'_, K, V> {
    fn drop(&mut self) {
        self.registry.put_back(&self.key);
    }
}
