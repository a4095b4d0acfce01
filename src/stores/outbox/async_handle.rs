//! [`Outbox`]: the async handle on the delivery outbox (features `tokio` and
//! `outbox`).
//!
//! Design: one connection per handle, owned by a dedicated thread (tokio-rusqlite
//! style). The sync [`crate::outbox::Outbox`] is one `rusqlite::Connection`:
//! `Send` but not `Sync`, so it cannot be shared behind an `Arc` across
//! `spawn_blocking` calls without a mutex that would park blocking-pool threads
//! on each other. The outbox has no group commit to preserve (every operation
//! is its own short `BEGIN IMMEDIATE` transaction and SQLite admits one writer
//! at a time anyway), so one thread per handle serving a command channel in
//! order costs nothing in throughput and never waits on SQLite's busy handler
//! against itself. Each call sends a closure to the thread and awaits its reply
//! on a oneshot: no runtime worker blocks on SQLite.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use ::tokio::sync::oneshot;

use super::{
    Enqueued, Entry, Failure, NewMessage, OutboxError, OutboxOptions, OutboxStats, Outcome,
    PruneReport, RescueReport, Result, Retention, Status,
};

type SyncOutbox = super::Outbox;
type Job = Box<dyn FnOnce(&SyncOutbox) + Send>;

/// The async handle on one outbox connection (features `tokio` and `outbox`):
/// the methods of [`crate::outbox::Outbox`] with the same names, argument types
/// and errors, as `async fn`s.
///
/// One connection per handle, owned by a dedicated thread; calls are served in
/// the order they are made. `Clone` is cheap and shares that connection (and
/// its thread); open another handle for a second connection. The thread ends
/// when the last clone is dropped (after the calls already sent).
///
/// Cancellation: dropping a call's future does not cancel it. The operation
/// still runs on the connection thread as one transaction (it commits or rolls
/// back as a whole) and its result is discarded; e.g. entries claimed by a
/// dropped [`Outbox::claim`] stay `in_flight` until their lease ends and a
/// rescue returns them to `pending`.
///
/// A panic inside the sync operation is caught on the connection thread and
/// resumed in the caller, as the sync handle would have panicked.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Job>,
    /// PostgreSQL: the `LISTEN` hub and the generation this handle has seen.
    #[cfg(feature = "postgres")]
    hub: Option<(Arc<crate::postgres::Hub>, Arc<std::sync::atomic::AtomicU64>)>,
    path: Arc<PathBuf>,
    opts: Arc<OutboxOptions>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tokio::Outbox")
            .field("path", &self.path)
            .finish()
    }
}

fn gone(path: &Path) -> OutboxError {
    OutboxError::Core(crate::Error::io(
        "outbox connection thread",
        path,
        std::io::Error::other("the outbox connection thread is gone"),
    ))
}

impl Outbox {
    /// Opens (creating, migrating) the outbox database at `path` on a new
    /// connection thread. See [`crate::outbox::Outbox::open`]. With feature
    /// `postgres`, a `postgres://` / `postgresql://` URL as `path` connects
    /// to PostgreSQL with the default `PgOptions` (see `Outbox::connect`).
    ///
    /// Errors: as [`crate::outbox::Outbox::open`]; [`OutboxError::Core`]
    /// ([`crate::Error::Io`]) if the thread cannot be spawned.
    pub async fn open(path: impl AsRef<Path>, opts: OutboxOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (tx, rx) = mpsc::channel::<Job>();
        #[cfg(feature = "postgres")]
        type Hub = Option<(Arc<crate::postgres::Hub>, u64)>;
        #[cfg(not(feature = "postgres"))]
        type Hub = Option<std::convert::Infallible>;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Hub>>();
        let (p, o) = (path.clone(), opts.clone());
        std::thread::Builder::new()
            .name("lockstore-outbox".into())
            .spawn(move || {
                let ob = match SyncOutbox::open_db(&p, o) {
                    Ok(ob) => ob,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                #[cfg(feature = "postgres")]
                let hub = ob.work_hub();
                #[cfg(not(feature = "postgres"))]
                let hub = None;
                let _ = ready_tx.send(Ok(hub));
                while let Ok(job) = rx.recv() {
                    job(&ob);
                }
            })
            .map_err(|e| OutboxError::Core(crate::Error::io("spawn thread", &path, e)))?;
        #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
        let hub = ready_rx.await.map_err(|_| gone(&path))??;
        Ok(Outbox {
            tx,
            #[cfg(feature = "postgres")]
            hub: hub.map(|(h, g)| (h, Arc::new(std::sync::atomic::AtomicU64::new(g)))),
            path: Arc::new(path),
            opts: Arc::new(opts),
        })
    }

    /// Opens `<state>/outbox/outbox.sqlite` ([`crate::paths::outbox_db`]).
    ///
    /// Errors: as [`Outbox::open`].
    pub async fn open_state(state: impl AsRef<Path>, opts: OutboxOptions) -> Result<Self> {
        Self::open(crate::paths::outbox_db(state.as_ref()), opts).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &OutboxOptions {
        &self.opts
    }

    /// Waits up to `max` for work that may be due, without holding the
    /// connection thread: on PostgreSQL until a `NOTIFY` (see the sync
    /// handle's `wait_for_work`; the wait runs on tokio's blocking pool),
    /// on SQLite it sleeps `max` (false).
    pub(crate) async fn wait_for_work(&self, max: Duration) -> bool {
        #[cfg(feature = "postgres")]
        if let Some((hub, seen)) = &self.hub {
            let (hub, seen) = (hub.clone(), seen.clone());
            return ::tokio::task::spawn_blocking(move || {
                use std::sync::atomic::Ordering;
                let mut s = seen.load(Ordering::SeqCst);
                let woke = hub.wait(&mut s, max);
                seen.store(s, Ordering::SeqCst);
                woke
            })
            .await
            .unwrap_or(false);
        }
        ::tokio::time::sleep(max).await;
        false
    }

    /// Runs `f` on the connection thread and returns its result.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SyncOutbox) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        type Reply<T> = std::result::Result<Result<T>, Box<dyn Any + Send>>;
        let (tx, rx) = oneshot::channel::<Reply<T>>();
        let job: Job = Box::new(move |ob| {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| f(ob))));
        });
        self.tx.send(job).map_err(|_| gone(&self.path))?;
        match rx.await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(gone(&self.path)),
        }
    }

    /// See [`crate::outbox::Outbox::enqueue`].
    pub async fn enqueue(&self, msg: &NewMessage, now: SystemTime) -> Result<Enqueued> {
        let msg = msg.clone();
        self.call(move |o| o.enqueue(&msg, now)).await
    }

    /// See [`crate::outbox::Outbox::claim`].
    pub async fn claim(
        &self,
        batch: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<Entry>> {
        self.call(move |o| o.claim(batch, lease, now)).await
    }

    /// See [`crate::outbox::Outbox::mark_send_started`].
    pub async fn mark_send_started(
        &self,
        id: i64,
        token: &str,
        now: SystemTime,
    ) -> Result<Outcome> {
        let token = token.to_string();
        self.call(move |o| o.mark_send_started(id, &token, now))
            .await
    }

    /// See [`crate::outbox::Outbox::renew`].
    pub async fn renew(
        &self,
        id: i64,
        token: &str,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Outcome> {
        let token = token.to_string();
        self.call(move |o| o.renew(id, &token, lease, now)).await
    }

    /// See [`crate::outbox::Outbox::ack`].
    pub async fn ack(&self, id: i64, token: &str, now: SystemTime) -> Result<Outcome> {
        let token = token.to_string();
        self.call(move |o| o.ack(id, &token, now)).await
    }

    /// See [`crate::outbox::Outbox::fail`].
    pub async fn fail(
        &self,
        id: i64,
        token: &str,
        failure: &Failure,
        now: SystemTime,
    ) -> Result<Outcome> {
        let (token, failure) = (token.to_string(), failure.clone());
        self.call(move |o| o.fail(id, &token, &failure, now)).await
    }

    /// See [`crate::outbox::Outbox::mark_unknown`].
    pub async fn mark_unknown(
        &self,
        id: i64,
        token: &str,
        error: &str,
        now: SystemTime,
    ) -> Result<Outcome> {
        let (token, error) = (token.to_string(), error.to_string());
        self.call(move |o| o.mark_unknown(id, &token, &error, now))
            .await
    }

    /// See [`crate::outbox::Outbox::release`].
    pub async fn release(&self, id: i64, token: &str) -> Result<Outcome> {
        let token = token.to_string();
        self.call(move |o| o.release(id, &token)).await
    }

    /// See [`crate::outbox::Outbox::retry`].
    pub async fn retry(&self, id: i64, now: SystemTime) -> Result<Outcome> {
        self.call(move |o| o.retry(id, now)).await
    }

    /// See [`crate::outbox::Outbox::expire`].
    pub async fn expire(&self, now: SystemTime) -> Result<u64> {
        self.call(move |o| o.expire(now)).await
    }

    /// See [`crate::outbox::Outbox::rescue`].
    pub async fn rescue(&self, now: SystemTime, adapter_idempotent: bool) -> Result<RescueReport> {
        self.call(move |o| o.rescue(now, adapter_idempotent)).await
    }

    /// See [`crate::outbox::Outbox::prune`].
    pub async fn prune(
        &self,
        retention: &Retention,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<PruneReport> {
        let retention = *retention;
        self.call(move |o| o.prune(&retention, now, dry_run)).await
    }

    /// See [`crate::outbox::Outbox::stats`].
    pub async fn stats(&self, now: SystemTime) -> Result<OutboxStats> {
        self.call(move |o| o.stats(now)).await
    }

    /// See [`crate::outbox::Outbox::get`].
    pub async fn get(&self, id: i64) -> Result<Option<Entry>> {
        self.call(move |o| o.get(id)).await
    }

    /// See [`crate::outbox::Outbox::get_by_key`].
    pub async fn get_by_key(&self, key: &str) -> Result<Option<Entry>> {
        let key = key.to_string();
        self.call(move |o| o.get_by_key(&key)).await
    }

    /// See [`crate::outbox::Outbox::list`].
    pub async fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<Entry>> {
        self.call(move |o| o.list(status, limit)).await
    }
}
