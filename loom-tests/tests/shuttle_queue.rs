//! shuttle twin of loom_queue.rs: the same model bodies under shuttle's random
//! and PCT schedulers. Unlike loom's Condvar (which always wakes the oldest
//! waiter), shuttle's `notify_one` wakes an arbitrary waiter, so a queue that
//! used `notify_one` where every waiter must re-check its ticket deadlocks here.
//!
//! Run with `RUSTFLAGS="--cfg shuttle" cargo test --release -p loom-tests --test
//! shuttle_queue` (see loom-tests/run-models.sh). `SHUTTLE_ITERATIONS` overrides
//! the iteration count (default 5000 per scheduler per model).
#![cfg(shuttle)]

mod rt {
    pub use shuttle::sync;
    pub use shuttle::thread;
}

#[path = "common/models.rs"]
mod models;

#[path = "common/shuttle_check.rs"]
mod shuttle_check;
use shuttle_check::check;

#[test]
fn mutual_exclusion_4_threads() {
    check("mutual_exclusion(4 threads x 2)", || {
        models::mutual_exclusion(4, 2)
    });
}

#[test]
fn fifo_order_tickets_taken_first() {
    check("fifo_order(4)", || models::fifo_order(4));
}

#[test]
fn fifo_order_chained_entries() {
    check("fifo_order_chained(4)", || models::fifo_order_chained(4));
}

#[test]
fn error_releases_the_queue() {
    check("error_release", || {
        models::error_and_panic_release_with(true, false)
    });
}

// No panicking-job twin: shuttle deliberately skips its scheduler while a thread
// unwinds (`ExecutionState::should_stop` returns true when
// `std::thread::panicking()`; a MutexGuard dropped during unwinding is not
// released), so a Slot dropped during a panic cannot be modelled here. The loom
// model `error_and_panic_release_the_queue` covers it.

#[test]
fn cancelled_waiter_does_not_block() {
    check("cancelled_waiter", models::cancelled_waiter);
}

#[test]
fn registry_cleanup_races_new_get() {
    check("registry_cleanup(3)", || models::registry_cleanup(3));
}

#[test]
fn batch_handoff_two_members() {
    check("batch_handoff(2 members)", || models::batch_handoff(false));
}

#[test]
fn batch_handoff_with_a_quitter() {
    check("batch_handoff(2 members + 1 quitter)", || {
        models::batch_handoff(true)
    });
}
