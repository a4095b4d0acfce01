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
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::sync::{self, Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    /// Next ticket to hand out.
    next: u64,
    /// Ticket allowed to run.
    serving: u64,
    /// Tickets whose waiters gave up before their turn.
    abandoned: BTreeSet<u64>,
    /// The condition variable of each waiter sleeping on its ticket.
    sleepers: BTreeMap<u64, Arc<Condvar>>,
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
    /// and wakes the waiter whose turn it now is (if it sleeps). Called with the
    /// queue's mutex held, so the waiter cannot miss the notification.
    fn advance_from(&mut self, ticket: u64) {
        debug_assert_eq!(self.serving, ticket);
        self.serving = ticket + 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
        if let Some(cv) = self.sleepers.get(&self.serving) {
            cv.notify_one();
        }
    }
}

/// A strict-FIFO mutual-exclusion queue (ticket lock with cancellation).
#[derive(Debug, Default)]
pub struct FifoQueue {
    state: Mutex<State>,
}

/// Returned by [`Waiter::wait_until`] when the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTimeout;

impl FifoQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters the queue: takes the next ticket. The returned [`Waiter`] must be
    /// waited on to run; dropping it gives the place up.
    pub fn enter(&self) -> Waiter<'_> {
        let mut st = sync::lock(&self.state);
        let ticket = st.next;
        st.next += 1;
        Waiter {
            queue: self,
            ticket,
            done: false,
        }
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
        sync::lock(&self.state).advance_from(ticket);
    }

    fn abandon(&self, ticket: u64) {
        let mut st = sync::lock(&self.state);
        if st.serving == ticket {
            // Our turn came as we gave up: pass it on.
            st.advance_from(ticket);
        } else {
            st.abandoned.insert(ticket);
        }
    }
}

/// A place in a [`FifoQueue`], not yet running. Dropping it gives the place up.
#[derive(Debug)]
pub struct Waiter<'a> {
    queue: &'a FifoQueue,
    ticket: u64,
    done: bool,
}

impl<'a> Waiter<'a> {
    /// This waiter's ticket (0-based order of entry).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Blocks until every writer that entered earlier has released or given up.
    pub fn wait(mut self) -> Slot<'a> {
        let q = self.queue;
        let mut st = sync::lock(&q.state);
        if st.serving != self.ticket {
            let cv = Arc::new(Condvar::new());
            st.sleepers.insert(self.ticket, cv.clone());
            while st.serving != self.ticket {
                st = sync::wait(&cv, st);
            }
            st.sleepers.remove(&self.ticket);
        }
        drop(st);
        self.done = true;
        Slot {
            queue: q,
            ticket: self.ticket,
        }
    }

    /// Like [`Waiter::wait`] but gives the place up at `deadline`.
    pub fn wait_until(mut self, deadline: Instant) -> Result<Slot<'a>, QueueTimeout> {
        let q = self.queue;
        let mut st = sync::lock(&q.state);
        if st.serving != self.ticket {
            let cv = Arc::new(Condvar::new());
            st.sleepers.insert(self.ticket, cv.clone());
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
        drop(st);
        self.done = true;
        Ok(Slot {
            queue: q,
            ticket: self.ticket,
        })
    }

    /// Non-blocking: the slot if it is this waiter's turn now, else the waiter back.
    pub fn try_now(mut self) -> Result<Slot<'a>, Waiter<'a>> {
        let st = sync::lock(&self.queue.state);
        if st.serving == self.ticket {
            drop(st);
            self.done = true;
            Ok(Slot {
                queue: self.queue,
                ticket: self.ticket,
            })
        } else {
            drop(st);
            Err(self)
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.queue.abandon(self.ticket);
        }
    }
}

/// The running turn in a [`FifoQueue`]; dropping it (also during a panic) lets the
/// next writer run.
#[derive(Debug)]
pub struct Slot<'a> {
    queue: &'a FifoQueue,
    ticket: u64,
}

impl Slot<'_> {
    /// The ticket this slot was granted for.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.queue.release(self.ticket);
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
