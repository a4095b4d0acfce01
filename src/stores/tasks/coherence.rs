//! Cross-process coherence: memory is reloaded whenever another connection
//! committed (`PRAGMA data_version` changed, SQLite docs), before every read
//! and inside every write's exclusive section; SQLite-direct readers wait out
//! an open group-commit batch.

use std::time::SystemTime;

use rusqlite::Connection;

use super::backend::Backend;
use super::index::Inner;
use super::observers::TaskEvent;
use super::record::TaskRecord;
use super::registry::TaskRegistry;
use super::TaskError;

impl TaskRegistry {
    /// Reloads when another connection committed since the last load
    /// (`PRAGMA data_version` changed). Returns the `restored` event to emit.
    /// Skipped while this registry's group-commit batch holds the write
    /// transaction (no other connection can commit then, and a reload inside
    /// it would read the batch's uncommitted rows).
    pub(super) fn refresh(
        &self,
        inner: &mut Inner,
        conn: &Connection,
    ) -> Result<Option<TaskEvent>, TaskError> {
        if inner.batch_open {
            return Ok(None);
        }
        let dv = self.core.store.sqlite().data_version(conn)?;
        if inner.data_version == Some(dv) {
            return Ok(None);
        }
        let (snap, dv) = self.core.store.sqlite().load_with_version(conn)?;
        tracing::debug!(path = %self.path().display(), tasks = snap.tasks.len(), "reloaded task ledger");
        inner.replace(snap);
        inner.data_version = Some(dv);
        Ok(self.core.has_observers().then(|| TaskEvent::Restored {
            tasks: inner.snap.tasks.values().cloned().collect(),
        }))
    }

    /// Runs a read under the registry mutex after a data_version check.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> Result<T, TaskError> {
        let (out, ev) = {
            let mut inner = self.core.lock_inner();
            let ev = match &self.core.store {
                Backend::Sqlite(s) => {
                    let conn = s.connection();
                    self.refresh(&mut inner, &conn)?
                }
                #[cfg(feature = "postgres")]
                Backend::Pg(pg) => self.refresh_pg(pg, &mut inner)?,
            };
            (f(&inner), ev)
        };
        self.emit(ev.as_slice());
        Ok(out)
    }

    /// SQLite-direct reader (see
    /// [`super::SqliteTaskStore::list_fresh_tasks_for_owner_key`]): tasks of
    /// `owner_key` not yet due for cleanup at `now`, newest first. Waits while
    /// this registry's group-commit batch has uncommitted rows on the
    /// connection.
    ///
    /// Errors: [`TaskError::Core`] (SQLite), [`TaskError::InvalidPersisted`].
    pub fn list_fresh_tasks_for_owner_key(
        &self,
        owner_key: &str,
        now: SystemTime,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        #[cfg(feature = "postgres")]
        if let Backend::Pg(pg) = &self.core.store {
            return pg.list_fresh_tasks_for_owner_key(owner_key, now);
        }
        let mut inner = self.core.lock_inner();
        while inner.batch_open {
            inner = self
                .core
                .idle
                .wait(inner)
                .unwrap_or_else(|p| p.into_inner());
        }
        let out = self
            .core
            .store
            .sqlite()
            .list_fresh_tasks_for_owner_key(owner_key, now);
        drop(inner);
        out
    }
}
