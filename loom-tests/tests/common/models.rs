//! Model bodies shared by the loom and shuttle suites.
//!
//! Each test file defines a module `rt` re-exporting `thread` and `sync` from
//! loom or shuttle, and runs these bodies under its checker. The bodies exercise
//! the real `lockstore::queue` code, which under `--cfg loom` / `--cfg shuttle`
//! uses the checker's Mutex and Condvar (src/sync.rs).
//!
//! Threads need `'static` borrows of the queue (a `Waiter` borrows it); neither
//! checker needs scoped threads for that: each model leaks one small queue per
//! execution (a few hundred bytes × iterations).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Instant;

use lockstore::queue::{FifoQueue, Registry, Slot};

use super::rt::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use super::rt::sync::{Arc, Mutex};
use super::rt::thread;

fn leak_queue() -> &'static FifoQueue {
    Box::leak(Box::new(FifoQueue::new()))
}

/// The critical section: asserts nobody else is inside, then bumps a counter
/// with a read/yield/write pattern that loses updates if two threads overlap.
struct Section {
    inside: AtomicUsize,
    count: AtomicUsize,
}

impl Section {
    fn new() -> Arc<Self> {
        Arc::new(Section {
            inside: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
        })
    }
    fn run(&self, _slot: &Slot<'_>) {
        let was = self.inside.fetch_add(1, SeqCst);
        assert_eq!(was, 0, "two writers inside the queue's section");
        let n = self.count.load(SeqCst);
        thread::yield_now();
        self.count.store(n + 1, SeqCst);
        self.inside.fetch_sub(1, SeqCst);
    }
}

/// `threads` threads each acquire the queue `rounds` times; nobody overlaps, no
/// update is lost and every waiter runs (a lost wakeup is a deadlock, which the
/// checker reports).
pub fn mutual_exclusion(threads: usize, rounds: usize) {
    let q = leak_queue();
    let s = Section::new();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let s = s.clone();
            thread::spawn(move || {
                for _ in 0..rounds {
                    let slot = q.acquire();
                    s.run(&slot);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(s.count.load(SeqCst), threads * rounds);
    assert!(q.is_empty());
}

/// Writers whose tickets were taken in a known order (sequentially, before the
/// threads exist) run in exactly that order, whatever order the threads start
/// waiting in.
pub fn fifo_order(threads: usize) {
    let q = leak_queue();
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..threads).map(|_| q.enter()).collect();
    // Spawn in reverse entry order so late tickets tend to wait first.
    let hs: Vec<_> = waiters
        .into_iter()
        .rev()
        .map(|w| {
            let order = order.clone();
            thread::spawn(move || {
                let t = w.ticket();
                let slot = w.wait();
                order.lock().unwrap().push(t);
                drop(slot);
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let got = order.lock().unwrap().clone();
    let want: Vec<u64> = (0..threads as u64).collect();
    assert_eq!(got, want, "writers ran out of FIFO order");
}

/// Like [`fifo_order`] with the entries taken by the threads themselves, chained
/// so each enters only after the previous one entered (entry order = spawn
/// order), and the running order must equal the entry order.
pub fn fifo_order_chained(threads: usize) {
    let q = leak_queue();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    for _ in 0..threads {
        let w = q.enter();
        let order = order.clone();
        hs.push(thread::spawn(move || {
            let t = w.ticket();
            let _slot = w.wait();
            order.lock().unwrap().push(t);
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    let got = order.lock().unwrap().clone();
    assert_eq!(got, (0..threads as u64).collect::<Vec<_>>());
}

#[derive(Debug)]
struct JobPanic;

/// One job returns an error and one panics (the panic is caught by its own
/// caller only); the queue is released both times and the remaining writers run.
pub fn error_and_panic_release() {
    error_and_panic_release_with(true, true)
}

/// [`error_and_panic_release`] with only some of the failing jobs (shuttle
/// cannot switch threads while one unwinds, see shuttle_queue.rs).
pub fn error_and_panic_release_with(erring_job: bool, panicking_job: bool) {
    let q = leak_queue();
    let s = Section::new();
    let mut hs = Vec::new();
    if erring_job {
        let s1 = s.clone();
        hs.push(thread::spawn(move || {
            let r: Result<(), &str> = (|| {
                let slot = q.acquire();
                s1.run(&slot);
                Err("job failed")
            })();
            assert!(r.is_err());
        }));
    }
    if panicking_job {
        let s2 = s.clone();
        hs.push(thread::spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| {
                let slot = q.acquire();
                s2.run(&slot);
                // resume_unwind skips the panic hook: quiet in every iteration.
                resume_unwind(Box::new(JobPanic));
            }));
            assert!(r.is_err(), "the panic must reach its own caller");
        }));
    }
    let slot = q.acquire();
    s.run(&slot);
    drop(slot);
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(
        s.count.load(SeqCst),
        1 + erring_job as usize + panicking_job as usize
    );
    assert!(q.is_empty());
}

/// A waiter that gives up (dropped `Waiter`, or `wait_until` with a passed
/// deadline) never blocks the writers behind it, also when its turn comes at
/// the very moment it gives up.
pub fn cancelled_waiter() {
    let q = leak_queue();
    let s = Section::new();
    let first = q.acquire(); // ticket 0, running
    let cancelled = q.enter(); // ticket 1, will give up
    let timed_out = q.enter(); // ticket 2, passed deadline
    let behind = q.enter(); // ticket 3 must still run
    let canceller = thread::spawn(move || drop(cancelled));
    let impatient = {
        let s = s.clone();
        thread::spawn(move || {
            // Deadline already passed: runs only if its turn has come.
            if let Ok(slot) = timed_out.wait_until(Instant::now()) {
                s.run(&slot);
            }
        })
    };
    let runner = {
        let s = s.clone();
        thread::spawn(move || {
            let slot = behind.wait();
            s.run(&slot);
        })
    };
    drop(first);
    canceller.join().unwrap();
    impatient.join().unwrap();
    runner.join().unwrap();
    assert!(s.count.load(SeqCst) >= 1, "the writer behind never ran");
    assert!(q.is_empty(), "abandoned tickets left in the queue");
    // The queue still works afterwards.
    drop(q.acquire());
}

/// Value stored in the registry in [`registry_cleanup`]: counts live values.
struct Val {
    id: usize,
    live: Arc<AtomicUsize>,
}
impl Drop for Val {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

/// Which value the live handles of the key refer to: (id, handles).
type Tracker = Arc<Mutex<Option<(usize, usize)>>>;

fn use_key(reg: &Registry<u32, Val>, live: &Arc<AtomicUsize>, next_id: &AtomicUsize, tr: &Tracker) {
    let h = reg.get(&7, || {
        live.fetch_add(1, SeqCst);
        Val {
            id: next_id.fetch_add(1, SeqCst),
            live: live.clone(),
        }
    });
    {
        let mut t = tr.lock().unwrap();
        *t = match *t {
            None => Some((h.id, 1)),
            Some((id, n)) => {
                assert_eq!(id, h.id, "two live values for one key");
                Some((id, n + 1))
            }
        };
    }
    thread::yield_now();
    {
        let mut t = tr.lock().unwrap();
        *t = match *t {
            Some((id, 1)) if id == h.id => None,
            Some((id, n)) if id == h.id => Some((id, n - 1)),
            other => panic!("tracker out of sync: {other:?}"),
        };
    }
    drop(h);
}

/// Handles for one key are taken and dropped concurrently (cleanup of the last
/// handle races with a new get): all live handles share one value, and once the
/// last handle is gone the entry is freed (registry empty, every value dropped).
pub fn registry_cleanup(threads: usize) {
    let reg: Arc<Registry<u32, Val>> = Arc::new(Registry::new());
    let live = Arc::new(AtomicUsize::new(0));
    let next_id = Arc::new(AtomicUsize::new(0));
    let tr: Tracker = Arc::new(Mutex::new(None));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (reg, live, next_id, tr) = (reg.clone(), live.clone(), next_id.clone(), tr.clone());
            thread::spawn(move || use_key(&reg, &live, &next_id, &tr))
        })
        .collect();
    use_key(&reg, &live, &next_id, &tr);
    for h in hs {
        h.join().unwrap();
    }
    assert!(reg.is_empty(), "entry not freed after the last handle");
    assert_eq!(live.load(SeqCst), 0, "a value outlived its last handle");
}

/// Group-commit handoff (src/group.rs, the pattern of `JsonStore` and
/// `TaskRegistry` group commit) with the real `FifoQueue` and `BatchShared`:
/// a leader takes the slot, opens a batch, leaves it open when someone is
/// queued behind it, and waits; a member takes the slot, joins the open batch
/// and leaves it open or closes it; with `quitter`, a third writer queues and
/// gives up (drops its ticket, as a deadline does) — possibly after a batch
/// was left open for it, so a waiting member must close it. Checks: every
/// writer returns, the batch is closed exactly once, both members are told
/// the outcome (the number of members committed), and no batch stays open.
pub fn batch_handoff(quitter: bool) {
    use lockstore::group::BatchShared;

    struct Open {
        shared: Arc<BatchShared<usize>>,
        members: usize,
    }
    struct Store {
        q: &'static FifoQueue,
        open: Mutex<Option<Open>>,
        closes: AtomicUsize,
    }
    impl Store {
        fn close(&self, b: Open) {
            self.closes.fetch_add(1, SeqCst);
            b.shared.finish(b.members);
        }
        fn close_open(&self) {
            let b = self.open.lock().unwrap().take();
            if let Some(b) = b {
                self.close(b);
            }
        }
        /// One grouped write: returns the outcome its batch reported.
        fn write(&self) -> usize {
            let slot = self.q.acquire();
            let open = self.open.lock().unwrap().take();
            let mut b = open.unwrap_or_else(|| Open {
                shared: Arc::new(BatchShared::default()),
                members: 0,
            });
            b.members += 1;
            let shared = b.shared.clone();
            if self.q.len() > 1 {
                *self.open.lock().unwrap() = Some(b);
            } else {
                self.close(b);
            }
            drop(slot);
            shared.wait_with(
                || match self.q.enter().try_now() {
                    Ok(s) => {
                        self.close_open();
                        drop(s);
                        true
                    }
                    Err(_) => false,
                },
                |o| *o,
            )
        }
    }

    let st: &'static Store = Box::leak(Box::new(Store {
        q: leak_queue(),
        open: Mutex::new(None),
        closes: AtomicUsize::new(0),
    }));
    let a = thread::spawn(move || st.write());
    let b = thread::spawn(move || st.write());
    let c = quitter.then(|| {
        thread::spawn(move || {
            let w = st.q.enter();
            thread::yield_now();
            drop(w);
        })
    });
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    if let Some(c) = c {
        c.join().unwrap();
    }
    assert!(st.open.lock().unwrap().is_none(), "a batch was left open");
    let closes = st.closes.load(SeqCst);
    // Either one batch of both members, or two batches of one each.
    match closes {
        1 => assert_eq!((ra, rb), (2, 2)),
        2 => assert_eq!((ra, rb), (1, 1)),
        n => panic!("{n} closes"),
    }
}
