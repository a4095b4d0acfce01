//! Synchronization shim: std types normally, loom types under `--cfg loom`, shuttle
//! types under `--cfg shuttle`.
//!
//! The in-process queue ([`crate::queue`]) uses only these names, so the models in
//! `loom-tests/` check the real queue code, not a copy (the pattern of tokio's
//! `loom` module).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(any(loom, shuttle)))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: the queue's state is updated in small
/// non-panicking critical sections, so a poisoned mutex still holds a consistent
/// state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Waits on `cv`, ignoring poisoning (see [`lock`]).
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(g) {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Waits on `cv` for at most `dur`, ignoring poisoning. Under loom, which has no
/// notion of time, this is a plain wait (timeouts are modelled by cancellation).
#[cfg(not(loom))]
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(g, dur) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

#[cfg(loom)]
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    _dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    wait(cv, g)
}

/// A timed wait on `cv` with `g` locked from `m`, as the group-commit handoff
/// uses it ([`crate::group`]): may return before `dur` without a notification
/// (callers re-check and loop). Under shuttle, whose `wait_timeout` never
/// times out, it is modelled as "release, yield, re-acquire" — a timeout that
/// can happen at any point — so the models explore the timeout path; under
/// loom it is a plain wait.
#[cfg(not(any(loom, shuttle)))]
pub(crate) fn timed_wait<'a, T>(
    cv: &Condvar,
    _m: &'a Mutex<T>,
    g: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    wait_timeout(cv, g, dur)
}

#[cfg(loom)]
pub(crate) fn timed_wait<'a, T>(
    cv: &Condvar,
    _m: &'a Mutex<T>,
    g: MutexGuard<'a, T>,
    _dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    wait(cv, g)
}

#[cfg(all(shuttle, not(loom)))]
pub(crate) fn timed_wait<'a, T>(
    _cv: &Condvar,
    m: &'a Mutex<T>,
    g: MutexGuard<'a, T>,
    _dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    drop(g);
    shuttle::thread::yield_now();
    lock(m)
}
