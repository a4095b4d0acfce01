//! Async lockstore on tokio (feature `tokio`): [`JsonStore`],
//! [`run_exclusive`], and (with features `tasks` / `outbox`) `TaskRegistry`
//! and `Outbox` mirror the blocking API the way `tokio::fs` mirrors
//! `std::fs`: the same methods, argument types and errors, as `async fn`s.
//!
//! What runs where:
//!
//! - Waiting for the store's in-process FIFO turn is an `.await` on the
//!   calling task: the task registers its waker in the same queue that
//!   blocking writers of the path use (one ticket order for threads and
//!   tasks, strict arrival order), so no runtime worker blocks while queued.
//! - Once the turn is won, the slot (an owned value) moves into
//!   [`tokio::task::spawn_blocking`]: the cross-process `flock` wait, the
//!   load, the closure and the fsync'd atomic save run on tokio's blocking
//!   pool, never on a runtime worker. Closures stay synchronous: nothing is
//!   awaited while the lock is held. Group commit batches async writers
//!   exactly like threads (one engine, [`crate::GroupCommit`]).
//!
//! Cancellation: dropping the future while it waits for its turn removes the
//! waiter (the writers behind it are not held up, also when its turn came at
//! that moment). Dropping it after its turn was won does not stop the
//! section: the blocking part runs to completion (the closure runs, the save
//! completes or fails as a whole, the lock and the slot are released) and
//! its result is dropped. No state in between is observable: the lock is
//! never left held and the file is never half-written.
//!
//! Re-entrancy: a closure runs on a blocking thread marked as inside the
//! store's section, so anything that thread reaches — a nested blocking
//! call, or `Handle::block_on` of an async call on the same store — gets
//! [`crate::Error::Reentrant`] instead of a deadlock. Two calls joined in
//! one task (`tokio::join!(a.update(..), b.update(..))`) are not nested:
//! they queue in FIFO order, like `Promise.all` should.
//!
//! The deadline ([`crate::LockOptions::deadline`]) covers the queue wait
//! (through the runtime's timer: the runtime needs its time driver, e.g.
//! `enable_all` or `#[tokio::main]`) and the OS lock wait. Every method must
//! be called inside a tokio runtime (they spawn blocking tasks). See
//! docs/async.md.

mod json;
mod writer;

pub use json::JsonStore;
pub use writer::run_exclusive;

// The async task registry (an `Arc` of the sync registry, each call on the
// blocking pool, so group commit still batches concurrent callers) and the
// async outbox (one connection on a dedicated thread, a command channel):
// docs/tasks.md and docs/outbox.md, "Async handles".
#[cfg(feature = "tasks")]
mod tasks;
#[cfg(feature = "outbox")]
pub use crate::stores::outbox::AsyncOutbox as Outbox;
#[cfg(feature = "tasks")]
pub use tasks::TaskRegistry;

use std::path::Path;

use crate::error::Error;

/// Runs `f` on tokio's blocking pool and awaits it. A panic in `f` resumes
/// in the awaiting task; a blocking task cancelled by a runtime shutdown is
/// an [`Error::Io`] naming `path`.
pub(crate) async fn blocking<R, E, F>(path: &Path, f: F) -> std::result::Result<R, E>
where
    F: FnOnce() -> std::result::Result<R, E> + Send + 'static,
    R: Send + 'static,
    E: From<Error> + Send + 'static,
{
    match ::tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::io(
            "tokio blocking task",
            path,
            std::io::Error::other(e.to_string()),
        )
        .into()),
    }
}
