//! The backend seam of the task ledger: the registry's store is one of
//! [`Backend`] (an enum, not a trait object: the SQLite path keeps its
//! statically dispatched, allocation-free calls and its group commit; the
//! PostgreSQL arm exists only with feature `postgres`), and a mutation's body
//! reads and writes rows through [`LedgerTx`], one open write transaction on
//! either backend.

use std::path::Path;

use rusqlite::{params, Connection};

use super::record::{DeliveryState, TaskRecord};
use super::store::{self, SqliteTaskStore, WriteOutcome};
use super::TaskError;

/// A database error inside a mutation's transaction: the transaction is
/// retried (SQLite BUSY; PostgreSQL serialization failure, deadlock, broken
/// connection) or fails with it.
#[derive(Debug)]
pub(super) enum DbError {
    Sqlite(rusqlite::Error),
    #[cfg(feature = "postgres")]
    Pg(postgres::Error),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e)
    }
}

#[cfg(feature = "postgres")]
impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

impl DbError {
    /// Back into a rusqlite error on the SQLite path (a PostgreSQL error
    /// cannot arise there; it would be reported as a module error).
    pub(super) fn into_sqlite(self) -> rusqlite::Error {
        match self {
            DbError::Sqlite(e) => e,
            #[cfg(feature = "postgres")]
            DbError::Pg(e) => rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        }
    }

    /// The error for a caller: `op` on the ledger at `path`.
    pub(super) fn into_task_error(self, op: &'static str, path: &Path) -> TaskError {
        match self {
            DbError::Sqlite(e) => TaskError::sqlite(op, path, e),
            #[cfg(feature = "postgres")]
            DbError::Pg(e) => {
                TaskError::Core(crate::Error::postgres(op, &path.to_string_lossy(), e))
            }
        }
    }
}

/// What a mutation's body returns: a database error (the transaction is
/// retried or fails), or its domain result.
pub(super) type TxResult<T> = Result<Result<T, TaskError>, DbError>;

/// Row access inside one open write transaction of the ledger (SQLite
/// `BEGIN IMMEDIATE`; PostgreSQL READ COMMITTED holding the ledger's write
/// lock, see `pg.rs`).
pub(super) trait LedgerTx {
    /// The durable row of task `id` (strict parsing).
    fn read_task(&mut self, id: &str) -> TxResult<Option<TaskRecord>>;
    /// The oldest task with `t`'s create de-duplication key (run id, runtime,
    /// scope, owner, child session, parent flow, label, description).
    fn find_duplicate(&mut self, t: &TaskRecord) -> TxResult<Option<TaskRecord>>;
    /// Compare-and-set write of `t` (see [`store::write_task`]).
    fn write_task(&mut self, t: &TaskRecord) -> Result<WriteOutcome, DbError>;
    /// Inserts/updates (`Some`) or deletes (`None`) the delivery state.
    fn write_delivery(&mut self, id: &str, d: Option<&DeliveryState>) -> Result<(), DbError>;
    /// Deletes the delivery state and the task row iff its version is
    /// `version`; returns whether the row was deleted.
    fn delete_task(&mut self, id: &str, version: i64) -> Result<bool, DbError>;
}

/// [`LedgerTx`] over the registry's SQLite connection (inside its open
/// transaction).
pub(super) struct SqliteTx<'a> {
    pub(super) c: &'a Connection,
    pub(super) path: &'a Path,
}

impl LedgerTx for SqliteTx<'_> {
    fn read_task(&mut self, id: &str) -> TxResult<Option<TaskRecord>> {
        Ok(store::read_task(self.c, self.path, id))
    }

    fn find_duplicate(&mut self, t: &TaskRecord) -> TxResult<Option<TaskRecord>> {
        let Some(run_id) = &t.run_id else {
            return Ok(Ok(None));
        };
        Ok(store::query_tasks(
            self.c,
            self.path,
            "WHERE run_id = ?1 AND runtime = ?2 AND scope_kind = ?3 AND owner_key = ?4 \
             AND child_session_key IS ?5 AND parent_flow_id IS ?6 AND label IS ?7 AND task = ?8 \
             ORDER BY created_at LIMIT 1",
            params![
                run_id,
                t.runtime.as_str(),
                t.scope_kind.as_str(),
                t.owner_key,
                t.child_session_key,
                t.parent_flow_id,
                t.label,
                t.task
            ],
        )
        .map(|v| v.into_iter().next()))
    }

    fn write_task(&mut self, t: &TaskRecord) -> Result<WriteOutcome, DbError> {
        Ok(store::write_task(self.c, t)?)
    }

    fn write_delivery(&mut self, id: &str, d: Option<&DeliveryState>) -> Result<(), DbError> {
        Ok(store::write_delivery(self.c, id, d)?)
    }

    fn delete_task(&mut self, id: &str, version: i64) -> Result<bool, DbError> {
        self.c
            .execute("DELETE FROM task_delivery_state WHERE task_id = ?1", [id])?;
        let n = self.c.execute(
            "DELETE FROM task_runs WHERE task_id = ?1 AND version = ?2",
            params![id, version],
        )?;
        Ok(n == 1)
    }
}

/// The registry's store: SQLite (default) or PostgreSQL (feature `postgres`).
pub(super) enum Backend {
    Sqlite(SqliteTaskStore),
    #[cfg(feature = "postgres")]
    Pg(super::pg::PgTaskStore),
}

impl Backend {
    /// The database file (SQLite) or the redacted database URL (PostgreSQL),
    /// as errors name it.
    pub(super) fn path(&self) -> &Path {
        match self {
            Backend::Sqlite(s) => s.path(),
            #[cfg(feature = "postgres")]
            Backend::Pg(p) => p.path(),
        }
    }

    /// The SQLite store. Only the SQLite-only paths call it (group commit,
    /// `data_version` coherence, the SQLite test hooks).
    ///
    /// # Panics
    /// On a PostgreSQL registry (a lockstore bug: those paths are never
    /// taken there).
    pub(super) fn sqlite(&self) -> &SqliteTaskStore {
        match self {
            Backend::Sqlite(s) => s,
            #[cfg(feature = "postgres")]
            Backend::Pg(_) => unreachable!("a SQLite-only path on a PostgreSQL task ledger"),
        }
    }
}
