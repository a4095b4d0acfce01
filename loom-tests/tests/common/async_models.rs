//! Model bodies of the queue with async waiters (shuttle only: it has async
//! executors). The waiters are shuttle tasks awaiting the real
//! `QueueWaiter::wait_async` future and shuttle threads blocking in the real
//! `QueueWaiter::wait`, on one real `FifoQueue` (its Mutex and Condvar are
//! shuttle's under `--cfg shuttle`, src/sync.rs). A lost wake-up leaves a
//! task pending forever, which shuttle reports as a deadlock.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use lockstore::queue::{self, FifoQueue};
use shuttle::future;
use shuttle::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;

/// The critical section: nobody else inside; a read/yield/write counter that
/// loses updates when two writers overlap.
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
    fn run(&self) {
        let was = self.inside.fetch_add(1, SeqCst);
        assert_eq!(was, 0, "two writers inside the queue's section");
        let n = self.count.load(SeqCst);
        thread::yield_now();
        self.count.store(n + 1, SeqCst);
        self.inside.fetch_sub(1, SeqCst);
    }
}

/// `tasks` async tasks and `threads` threads each take the queue `rounds`
/// times: nobody overlaps, nothing is lost, every waiter is woken.
pub fn mutual_exclusion_mixed(tasks: usize, threads: usize, rounds: usize) {
    let q = Arc::new(FifoQueue::new());
    let s = Section::new();
    let ths: Vec<_> = (0..threads)
        .map(|_| {
            let (q, s) = (q.clone(), s.clone());
            thread::spawn(move || {
                for _ in 0..rounds {
                    let slot = q.acquire();
                    s.run();
                    drop(slot);
                }
            })
        })
        .collect();
    let tks: Vec<_> = (0..tasks)
        .map(|_| {
            let (q, s) = (q.clone(), s.clone());
            future::spawn(async move {
                for _ in 0..rounds {
                    let slot = queue::enter(q.clone()).wait_async().await;
                    s.run();
                    drop(slot);
                }
            })
        })
        .collect();
    for t in ths {
        t.join().unwrap();
    }
    for t in tks {
        future::block_on(t).unwrap();
    }
    assert_eq!(s.count.load(SeqCst), (tasks + threads) * rounds);
    assert!(q.is_empty());
}

/// Tickets taken in a known order, alternately by a task and a thread; the
/// waiters start waiting in reverse order; they run in ticket order.
pub fn fifo_mixed(n: usize) {
    let q = Arc::new(FifoQueue::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..n).map(|_| queue::enter(q.clone())).collect();
    let mut ths = Vec::new();
    let mut tks = Vec::new();
    for (i, w) in waiters.into_iter().enumerate().rev() {
        let order = order.clone();
        if i % 2 == 0 {
            tks.push(future::spawn(async move {
                let t = w.ticket();
                let slot = w.wait_async().await;
                order.lock().unwrap().push(t);
                drop(slot);
            }));
        } else {
            ths.push(thread::spawn(move || {
                let t = w.ticket();
                let slot = w.wait();
                order.lock().unwrap().push(t);
                drop(slot);
            }));
        }
    }
    for t in ths {
        t.join().unwrap();
    }
    for t in tks {
        future::block_on(t).unwrap();
    }
    let got = order.lock().unwrap().clone();
    assert_eq!(
        got,
        (0..n as u64).collect::<Vec<_>>(),
        "ran out of FIFO order"
    );
}

/// An async waiter polled once (its waker registered) and then dropped while
/// the holder releases concurrently — its turn may come at that very moment.
/// The task and the thread behind it still run; no ticket is left behind.
pub fn cancelled_async_waiter() {
    let q = Arc::new(FifoQueue::new());
    let s = Section::new();
    let first = queue::enter(q.clone()).wait(); // ticket 0, running
    let cancelled = queue::enter(q.clone()); // ticket 1, dropped while queued
    let behind_task = queue::enter(q.clone()); // ticket 2
    let behind_thread = queue::enter(q.clone()); // ticket 3
    let canceller = {
        let s = s.clone();
        future::spawn(async move {
            let mut fut = cancelled.wait_async();
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
            if let Poll::Ready(slot) = polled {
                // Its turn had already come: it runs, then releases.
                s.run();
                drop(slot);
            }
            future::yield_now().await;
            drop(fut);
        })
    };
    let t = {
        let s = s.clone();
        future::spawn(async move {
            let slot = behind_task.wait_async().await;
            s.run();
            drop(slot);
        })
    };
    let th = {
        let s = s.clone();
        thread::spawn(move || {
            let slot = behind_thread.wait();
            s.run();
            drop(slot);
        })
    };
    let releaser = thread::spawn(move || drop(first));
    releaser.join().unwrap();
    th.join().unwrap();
    future::block_on(t).unwrap();
    future::block_on(canceller).unwrap();
    assert!(s.count.load(SeqCst) >= 2, "a writer behind never ran");
    assert!(q.is_empty(), "abandoned ticket left in the queue");
    drop(q.acquire());
}
