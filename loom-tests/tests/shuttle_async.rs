//! shuttle models of the FIFO queue with async waiters (src/queue/: tasks
//! awaiting `wait_async` beside threads blocking in `wait`): mutual exclusion,
//! FIFO across sync and async waiters, a dropped async waiter, no lost
//! wake-up (a pending task never woken is a shuttle deadlock).
//!
//! Run with `RUSTFLAGS="--cfg shuttle" cargo test --release -p loom-tests --test
//! shuttle_async` (see loom-tests/run-models.sh). `SHUTTLE_ITERATIONS`
//! overrides the iteration count (default 5000 per scheduler per model).
#![cfg(shuttle)]

#[path = "common/async_models.rs"]
mod async_models;

#[path = "common/shuttle_check.rs"]
mod shuttle_check;
use shuttle_check::check;

#[test]
fn mutual_exclusion_tasks_and_threads() {
    check("async mutual_exclusion(2 tasks + 2 threads x 2)", || {
        async_models::mutual_exclusion_mixed(2, 2, 2)
    });
}

#[test]
fn fifo_across_tasks_and_threads() {
    check("async fifo_mixed(4)", || async_models::fifo_mixed(4));
}

#[test]
fn dropped_async_waiter_does_not_block() {
    check(
        "async cancelled_waiter",
        async_models::cancelled_async_waiter,
    );
}
