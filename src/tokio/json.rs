//! The async JSON store: [`JsonStore`] over the blocking one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::group::GroupCommitStats;
use crate::json::JsonOptions;

/// One JSON document in one file, updated from async code (feature `tokio`):
/// the async twin of [`crate::JsonStore`], with the same file format, options,
/// errors and guarantees, sharing the per-path FIFO queue (and group commit)
/// with every blocking handle and [`crate::Writer`] of the path in this
/// process.
///
/// Cloning is cheap and shares the handle (its group-commit batches and
/// statistics): clone it into each spawned task. Every method must be called
/// inside a tokio runtime; `update` / `try_update` need its time driver (the
/// queue wait honours [`crate::LockOptions::deadline`]). See the module docs
/// for what runs where and for cancellation.
///
/// ```
/// # #[derive(Default, Clone, serde::Serialize, serde::Deserialize)] struct D { n: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockstore::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store: lockstore::tokio::JsonStore<D> =
///     lockstore::tokio::JsonStore::open(dir.path().join("d.json"), Default::default()).await?;
/// let (a, b) = tokio::join!(store.update(|d| d.n += 1), store.update(|d| d.n += 1));
/// a?;
/// b?;
/// assert_eq!(store.load().await?.n, 2);
/// # Ok(())
/// # }
/// ```
pub struct JsonStore<T> {
    inner: Arc<crate::json::JsonStore<T>>,
}

impl<T> Clone for JsonStore<T> {
    fn clone(&self) -> Self {
        JsonStore {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JsonStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("tokio::JsonStore")
            .field(&self.inner)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned + Default + Clone + Send + 'static> JsonStore<T> {
    /// Opens the store at `path` (created on the first write), on the blocking
    /// pool. Creates the parent directory with mode 0700.
    ///
    /// Errors: [`Error::InvalidPath`], [`Error::Io`] (as
    /// [`crate::JsonStore::open`]).
    pub async fn open(path: impl AsRef<Path>, opts: JsonOptions) -> Result<Self> {
        let path: PathBuf = path.as_ref().to_path_buf();
        let p = path.clone();
        let inner = super::blocking(&path, move || crate::json::JsonStore::open(p, opts)).await?;
        Ok(JsonStore {
            inner: Arc::new(inner),
        })
    }

    /// The canonical path of the store file.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The options.
    pub fn options(&self) -> &JsonOptions {
        self.inner.options()
    }

    /// Group-commit statistics of this handle (and its clones): batches saved
    /// and the updates they held.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner.group_commit_stats()
    }

    /// Loads the document without taking the lock, on the blocking pool (an
    /// atomic save makes that safe). Missing file → `T::default()`.
    ///
    /// Errors: [`Error::Corrupt`], [`Error::Symlink`], [`Error::Io`].
    pub async fn load(&self) -> Result<T> {
        let inner = self.inner.clone();
        super::blocking(self.path(), move || inner.load()).await
    }

    /// Load → `f` → save inside the store's exclusive section: the infallible
    /// form of [`JsonStore::try_update`]. Returns `f`'s value once the save
    /// that contains the change is durable (writes only if the document
    /// changed).
    ///
    /// The FIFO turn is awaited on this task; the OS lock wait, the load, `f`
    /// and the fsync'd save run on tokio's blocking pool. Cancellation:
    /// dropping the future while it is queued gives its place up; dropping it
    /// after its turn was won does not stop the section — `f` runs and the
    /// save completes (or fails) as a whole, the lock is released — and only
    /// the result is dropped.
    ///
    /// Errors: as [`crate::JsonStore::update`]: [`Error::Corrupt`] (the file
    /// is left untouched), [`Error::LockTimeout`], [`Error::Reentrant`] (when
    /// polled from inside a section of this store on the same thread, e.g.
    /// `Handle::block_on` in a closure), save errors ([`Error::Io`]). A panic
    /// in `f` resumes in the awaiting task.
    pub async fn update<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut T) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.try_update(move |doc| Ok::<_, Error>(f(doc))).await
    }

    /// Load → `f` → save for a fallible closure with the caller's own error
    /// type: `f`'s error aborts without writing (in a group-commit batch it
    /// rolls back only this closure's change) and is returned as is. Where
    /// things run and cancellation: as [`JsonStore::update`].
    ///
    /// Errors: `f`'s error, and [`JsonStore::update`]'s converted with
    /// `E: From<lockstore::Error>`.
    pub async fn try_update<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut T) -> std::result::Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (slot, start, deadline, span) = super::writer::turn(self.inner.writer()).await?;
        // From here on the section runs to completion even if this future is
        // dropped: the slot lives in the blocking task.
        let inner = self.inner.clone();
        super::blocking(self.path(), move || {
            inner.update_slotted(slot, start, deadline, &span, |doc, _| f(doc))
        })
        .await
    }
}
