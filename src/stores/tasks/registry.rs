//! [`TaskRegistry`]: the handle on one ledger — its options, its shared state
//! ([`Core`]: SQLite store, in-memory index, observers, group commit) and
//! accessors. The registry's behaviour is split by concept:
//! [`super::index`] (the in-memory map and its indexes),
//! [`super::coherence`] (reloads on `PRAGMA data_version`),
//! [`super::batch`] (persist-before-commit and group commit),
//! [`super::mutations`], [`super::queries`], [`super::maintenance`] and
//! [`super::observers`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::backend::Backend;
use super::batch::TaskBatch;
use super::index::Inner;
use super::observers::TaskObserver;
use super::store::SqliteTaskStore;
use super::TaskError;
use crate::group::{Group, GroupCommitStats};
use crate::json::GroupCommit;
use crate::lock::LockOptions;
use crate::sqlite::SqliteOptions;
use crate::writer::Writer;

/// Options of [`TaskRegistry::open`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// SQLite options (busy timeout 5 s, retry deadline 30 s, synchronous FULL).
    pub sqlite: SqliteOptions,
    /// Lock options for the exclusive section on the ledger path (60 s deadline).
    pub lock: LockOptions,
    /// Group commit of queued mutations (on by default): several mutations
    /// queued on this registry in this process run in one `BEGIN IMMEDIATE`
    /// transaction, each in its own `SAVEPOINT`, with one COMMIT (one WAL
    /// fsync with synchronous FULL). See [`TaskRegistry`]. Flock protocol only.
    pub group_commit: GroupCommit,
}

/// The registry's shared state (also held by an open group-commit batch,
/// which commits and updates memory when it is closed).
pub(super) struct Core {
    pub(super) store: Backend,
    /// The host id owners claim under (PostgreSQL); `None` on SQLite (one
    /// host: every owner is judged exactly).
    pub(super) host: Option<String>,
    pub(super) inner: Mutex<Inner>,
    /// Signalled when a group-commit batch closes (`Inner::batch_open` false).
    pub(super) idle: std::sync::Condvar,
    pub(super) observers: RwLock<Vec<Arc<dyn TaskObserver>>>,
    pub(super) cas_misses: AtomicU64,
}

impl Core {
    pub(super) fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The task registry. `Send + Sync`; share it with `Arc`.
///
/// Group commit ([`RegistryOptions::group_commit`], on by default): when
/// several threads of this process have mutations queued on this registry,
/// the writer at the head of the FIFO queue takes the flock and opens one
/// `BEGIN IMMEDIATE` transaction; each queued mutation then runs in turn, on
/// its own thread, inside its own `SAVEPOINT` (SQLite docs, "SAVEPOINT"): an
/// error or panic rolls back only that savepoint and reaches only its caller.
/// The last one commits. Memory changes only after that COMMIT and only for
/// the mutations that succeeded; no caller returns before the COMMIT that
/// contains its change (persist-before-commit, openclaw PR #88008). If the
/// COMMIT fails every member of the batch gets the error (with its SQLite
/// code: [`crate::Error::is_no_space`] for `SQLITE_FULL`) and memory is
/// unchanged. While a batch is open, registry reads see the last committed
/// state. Another registry opened on the same path in this process shares
/// the FIFO queue; it commits this registry's open batch before its own.
pub struct TaskRegistry {
    pub(super) core: Arc<Core>,
    /// The FIFO queue and flock of the ledger file (SQLite only).
    pub(super) writer: Option<Writer>,
    pub(super) group_opts: GroupCommit,
    pub(super) group: Arc<Group<TaskBatch, Vec<super::observers::TaskEvent>>>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("path", &self.core.store.path())
            .finish()
    }
}

impl TaskRegistry {
    /// Opens the ledger at `<state_dir>/tasks/runs.sqlite` and loads it.
    ///
    /// Errors: as [`TaskRegistry::open`].
    pub fn open_state_dir(
        state_dir: impl AsRef<Path>,
        opts: RegistryOptions,
    ) -> Result<Self, TaskError> {
        Self::open(crate::paths::tasks_db(state_dir.as_ref()), opts)
    }

    /// Opens the ledger at `path`, migrates it and loads every task. A load
    /// failure (corrupt value, newer schema, unreadable file) is returned — the
    /// registry never starts empty over a ledger it could not read (openclaw
    /// only logged it, reference §7.4).
    ///
    /// Errors: [`TaskError::Core`] ([`crate::Error::SchemaTooNew`],
    /// [`crate::Error::Sqlite`]), [`TaskError::InvalidPersisted`].
    pub fn open(path: impl AsRef<Path>, opts: RegistryOptions) -> Result<Self, TaskError> {
        let path = path.as_ref();
        let store = SqliteTaskStore::open(path, opts.sqlite)?;
        let writer = Writer::open(path, opts.lock)?;
        let reg = TaskRegistry {
            core: Arc::new(Core {
                store: Backend::Sqlite(store),
                host: None,
                inner: Mutex::new(Inner::default()),
                idle: std::sync::Condvar::new(),
                observers: RwLock::new(Vec::new()),
                cas_misses: AtomicU64::new(0),
            }),
            writer: Some(writer),
            group_opts: opts.group_commit,
            group: Group::new(),
        };
        {
            let mut inner = reg.core.lock_inner();
            let conn = reg.core.store.sqlite().connection();
            reg.refresh(&mut inner, &conn)?;
        }
        Ok(reg)
    }

    /// The underlying store, for failure injection in lockstore's own tests
    /// (TEMP triggers, `PRAGMA query_only` on the registry's connection;
    /// feature `testing`). SQLite-direct reads on this connection may see an
    /// open group-commit batch's rows.
    ///
    /// # Panics
    /// On a PostgreSQL registry.
    #[cfg(any(test, feature = "testing"))]
    pub fn store(&self) -> &SqliteTaskStore {
        self.core.store.sqlite()
    }

    /// Test hook (feature `testing`): writers of this process queued on the
    /// ledger (see [`Writer::queued`]).
    #[cfg(any(test, feature = "testing"))]
    pub fn queued_writers(&self) -> usize {
        self.writer.as_ref().map_or(0, Writer::queued)
    }

    /// The ledger file's writer (the SQLite paths only).
    ///
    /// # Panics
    /// On a PostgreSQL registry (a lockstore bug: those paths are not taken).
    pub(super) fn writer(&self) -> &Writer {
        match &self.writer {
            Some(w) => w,
            None => unreachable!("a SQLite-only path on a PostgreSQL task ledger"),
        }
    }

    /// The ledger path; on PostgreSQL the database URL with any password
    /// replaced by `***` (what every error names; no file exists).
    pub fn path(&self) -> &Path {
        self.core.store.path()
    }

    /// The path of the ledger's lock file (`<runs.sqlite>.lock`). On
    /// PostgreSQL no lock file is used (writers serialize on a row lock in
    /// the database); the value is then only a name.
    pub fn lock_path(&self) -> std::path::PathBuf {
        crate::lock::lock_path_for(self.path())
    }

    /// Number of compare-and-set misses so far (a stale memory copy was
    /// reloaded and the patch re-applied on the fresh row).
    pub fn cas_misses(&self) -> u64 {
        self.core.cas_misses.load(Ordering::Relaxed)
    }

    /// Group-commit statistics of this registry (see [`GroupCommitStats`]). A
    /// mutation outside group commit counts as neither.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.group.stats()
    }
}
