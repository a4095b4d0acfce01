//! The async exclusive section: the FIFO turn awaited on the task, the rest
//! on the blocking pool.

use std::path::Path;
use std::time::Instant;

use tracing::Instrument;

use crate::error::{Error, Result};
use crate::lock::LockOptions;
use crate::queue;
use crate::writer::{Exclusive, OwnedSlot, Writer};

/// Awaits `w`'s FIFO turn until `deadline` (the queue wait of a section that
/// began at `start`). Dropping the future gives the place up.
///
/// Errors: [`Error::LockTimeout`] at `deadline`.
pub(crate) async fn queue_slot(w: &Writer, start: Instant, deadline: Instant) -> Result<OwnedSlot> {
    let wait = w.enter_owned().wait_async();
    match ::tokio::time::timeout_at(::tokio::time::Instant::from_std(deadline), wait).await {
        Ok(slot) => Ok(slot),
        // The timed-out future was dropped: its ticket is abandoned.
        Err(_) => Err(w.lock_timeout(start)),
    }
}

/// `Err(Reentrant)` when this thread is inside `w`'s exclusive section (a
/// closure of that section polling this future through `block_on`).
pub(crate) fn not_reentrant(w: &Writer) -> Result<()> {
    if w.held_by_this_thread() {
        return Err(Error::Reentrant {
            path: w.path().to_path_buf(),
        });
    }
    Ok(())
}

/// Awaits the queue turn of `w`'s store under `w`'s `lock_wait` span:
/// returns the slot with the wait's start and deadline.
pub(crate) async fn turn(w: &Writer) -> Result<(OwnedSlot, Instant, Instant, tracing::Span)> {
    not_reentrant(w)?;
    let start = Instant::now();
    let deadline = queue::deadline_after(w.options().deadline);
    let span = w.lock_wait_span();
    let slot = queue_slot(w, start, deadline)
        .instrument(span.clone())
        .await?;
    Ok((slot, start, deadline, span))
}

/// Runs `f` inside the exclusive section of the store file `path`, like
/// [`crate::run_exclusive`]: the in-process FIFO turn is awaited on this task
/// (shared with the blocking writers of the path, strict arrival order),
/// then the cross-process lock on `<path>.lock`, `f` and the release run on
/// tokio's blocking pool. `f` is synchronous: nothing is awaited while the
/// lock is held. Feature `tokio`; must be called inside a tokio runtime with
/// its time driver enabled.
///
/// Cancellation: dropping the future while it waits for its turn gives the
/// place up; dropping it later does not stop the section (`f` runs, both
/// locks are released) — only its result is dropped.
///
/// Errors: [`Error::Reentrant`] when polled from inside a section of the same
/// store on this thread (e.g. `Handle::block_on` in a closure);
/// [`Error::LockTimeout`] after [`LockOptions::deadline`]; the errors of
/// [`crate::Writer::open`] and [`crate::Writer::run`]; and whatever `f`
/// returns. A panic in `f` resumes in the awaiting task.
pub async fn run_exclusive<T, E, F>(
    path: impl AsRef<Path>,
    opts: &LockOptions,
    f: F,
) -> std::result::Result<T, E>
where
    F: FnOnce(&mut Exclusive<'_>) -> std::result::Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let path = path.as_ref().to_path_buf();
    let (p, o) = (path.clone(), opts.clone());
    let writer = super::blocking(&path, move || Writer::open(&p, o)).await?;
    let (slot, start, deadline, span) = turn(&writer).await?;
    super::blocking(&path, move || {
        writer.run_slotted(slot, start, deadline, &span, f)
    })
    .await
}
