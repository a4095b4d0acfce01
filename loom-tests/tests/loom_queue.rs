//! loom models of `lockstore::queue` (exhaustive within a preemption bound).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release -p loom-tests --test
//! loom_queue` (see loom-tests/run-models.sh). loom's Condvar always wakes the
//! oldest waiter, so a `notify_one` bug can hide from these models; the shuttle
//! twin (shuttle_queue.rs) covers that.
#![cfg(loom)]

mod rt {
    pub use loom::sync;
    pub use loom::thread;
}

#[path = "common/models.rs"]
mod models;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Runs `f` under loom with preemption bound `bound`, printing the number of
/// executions explored and the time taken.
fn check(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let start = Instant::now();
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(move || {
        r.fetch_add(1, Ordering::Relaxed);
        f()
    });
    println!(
        "loom model {name}: preemption bound {bound}, {} executions, {:.2?}",
        runs.load(Ordering::Relaxed),
        start.elapsed()
    );
}

#[test]
fn mutual_exclusion_3_threads() {
    check("mutual_exclusion(3 threads x 1)", 3, || {
        models::mutual_exclusion(3, 1)
    });
}

#[test]
fn mutual_exclusion_2_threads_2_rounds() {
    check("mutual_exclusion(2 threads x 2)", 3, || {
        models::mutual_exclusion(2, 2)
    });
}

#[test]
fn fifo_order_tickets_taken_first() {
    check("fifo_order(3)", 3, || models::fifo_order(3));
}

#[test]
fn fifo_order_chained_entries() {
    check("fifo_order_chained(3)", 3, || models::fifo_order_chained(3));
}

#[test]
fn error_and_panic_release_the_queue() {
    check(
        "error_and_panic_release",
        3,
        models::error_and_panic_release,
    );
}

#[test]
fn cancelled_waiter_does_not_block() {
    check("cancelled_waiter", 3, models::cancelled_waiter);
}

#[test]
fn registry_cleanup_races_new_get() {
    check("registry_cleanup(3 threads)", 3, || {
        models::registry_cleanup(2)
    });
}

// Without the quitter: under loom (no time) BatchShared's timed wait is a plain
// wait, so the abandoned-batch poll cannot be modelled; shuttle covers it.
#[test]
fn batch_handoff_two_members() {
    check("batch_handoff(2 members)", 3, || {
        models::batch_handoff(false)
    });
}
