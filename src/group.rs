//! Group-commit handoff shared by the JSON store ([`crate::json`]) and the
//! SQLite stores ([`crate::stores::tasks`]).
//!
//! A batch is opened by the writer at the head of a store's FIFO queue; each
//! queued writer in turn runs its own mutation on its own thread inside the
//! batch and, when more writers are queued, leaves the batch open
//! ([`crate::writer::StoreEntry`]'s `batch` slot) for the next one. The writer
//! that finds no successor (or reaches the size bound) closes it: one durable
//! save / one COMMIT for every member. Members wait on [`BatchShared`] for the
//! outcome, so no caller returns before the save that contains its change.
//!
//! If the successor a member counted on gives up (deadline) after the batch was
//! left open, nobody would close it: [`BatchShared::wait`] therefore re-checks
//! every 10 ms whether the queue is free and, if so, takes the slot and closes
//! the open batch itself.
//!
//! Synchronization uses the [`crate::sync`] shim so the handoff is modelled
//! with shuttle and loom (loom-tests/, `batch_handoff`). Public only for
//! those models (`#[doc(hidden)]`).

use std::time::Duration;

use crate::sync::{self, Condvar, Mutex};
use crate::writer::Writer;

/// How often a waiting member re-checks for an abandoned open batch: 10 ms.
pub const ABANDONED_POLL: Duration = Duration::from_millis(10);

/// Completion of one group-commit batch, shared by its members: the closer
/// stores the outcome `O` once; every member waits for it.
pub struct BatchShared<O> {
    done: Mutex<Option<O>>,
    cv: Condvar,
}

impl<O> Default for BatchShared<O> {
    fn default() -> Self {
        BatchShared {
            done: Mutex::new(None),
            cv: Condvar::new(),
        }
    }
}

impl<O> BatchShared<O> {
    /// Records the batch outcome and wakes every member.
    pub fn finish(&self, outcome: O) {
        *sync::lock(&self.done) = Some(outcome);
        self.cv.notify_all();
    }

    /// Whether the batch has been closed.
    pub fn is_done(&self) -> bool {
        sync::lock(&self.done).is_some()
    }

    /// Waits until the batch is closed, then gives `take` the outcome. Every
    /// [`ABANDONED_POLL`] without an outcome it calls `close_if_abandoned`,
    /// which must close the open batch if the store's queue is free (the
    /// writer the batch was left open for gave up). Under loom (no time) the
    /// wait is untimed.
    pub fn wait_with<R>(
        &self,
        mut close_if_abandoned: impl FnMut() -> bool,
        take: impl FnOnce(&mut O) -> R,
    ) -> R {
        let mut g = sync::lock(&self.done);
        loop {
            if let Some(o) = g.as_mut() {
                return take(o);
            }
            g = sync::timed_wait(&self.cv, &self.done, g, ABANDONED_POLL);
            if g.is_none() {
                drop(g);
                close_if_abandoned();
                g = sync::lock(&self.done);
            }
        }
    }

    /// [`BatchShared::wait_with`] for a batch of `w`'s store.
    pub(crate) fn wait<R>(&self, w: &Writer, take: impl FnOnce(&mut O) -> R) -> R {
        self.wait_with(|| close_abandoned(w), take)
    }
}

/// Closes `w`'s open batch if the queue is free (no writer holds or waits for
/// the slot). Returns whether it took the slot.
pub(crate) fn close_abandoned(w: &Writer) -> bool {
    match w.entry().fifo.enter().try_now() {
        Ok(slot) => {
            w.close_open_batch();
            drop(slot);
            true
        }
        Err(_) => false,
    }
}
