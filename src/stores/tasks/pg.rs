//! The task ledger on PostgreSQL (feature `postgres`): [`PgTaskStore`] (the
//! same [`TaskStore`] seam as [`super::SqliteTaskStore`], the same columns)
//! and the registry's PostgreSQL paths — [`TaskRegistry::connect`], the
//! write transaction, coherence across hosts and the maintenance leader.
//!
//! Isolation per operation:
//! * Every write (a registry mutation, `save_snapshot`, `upsert…`,
//!   `delete…`) is one READ COMMITTED transaction whose first statement is
//!   `SELECT change_seq FROM lockstore_tasks_meta … FOR UPDATE`: that row lock
//!   is the ledger's write lock (the analogue of SQLite's `BEGIN IMMEDIATE`),
//!   held to COMMIT, so writers of every host take turns and each statement
//!   after it sees everything committed before. Row writes stay a
//!   compare-and-set on `version`.
//! * Coherence: statement triggers on `task_runs` and `task_delivery_state`
//!   bump `change_seq` in every transaction that writes them (also writes
//!   that bypass lockstore). A read first compares `change_seq` (one
//!   autocommit query) with the value memory reflects and reloads on a
//!   change — the analogue of SQLite's `PRAGMA data_version`; a write checks
//!   it under the write lock and reloads inside its transaction.
//! * A reload runs in one REPEATABLE READ READ ONLY transaction (rows and
//!   `change_seq` from one snapshot).
//! * Maintenance leader: a session-level advisory lock
//!   (`pg_try_advisory_lock`) on a pooled connection held for the whole
//!   applied sweep and released after it; a crashed or cut-off leader's
//!   session ends and PostgreSQL drops its lock.
//!
//! Retry: connection failures (the server restarted, the pool could not
//! connect), serialization failures and deadlocks are retried whole with
//! exponential backoff (10 ms doubling to 1 s, jittered) until
//! `PgOptions::retry_deadline`. A COMMIT whose connection broke has an
//! unknown outcome: it is not retried (the patch might apply twice); the
//! error is returned and memory reloads on the next call.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{IsolationLevel, Row, Transaction};

use super::backend::{Backend, DbError, LedgerTx, TxResult};
use super::index::{apply, Change, Inner, View};
use super::observers::TaskEvent;
use super::record::{DeliveryState, TaskRecord};
use super::registry::{Core, RegistryOptions, TaskRegistry};
use super::store::{parse_task, RawTask, Snapshot, TaskStore, WriteOutcome, COLS};
use super::TaskError;
use crate::postgres::{PgOptions, Pool};

/// Schema v1 of the PostgreSQL ledger: SQLite schema v3's columns (TEXT,
/// BIGINT), the change counter and its triggers.
const PG_V1: &str = "
CREATE TABLE task_runs (
  task_id TEXT PRIMARY KEY,
  runtime TEXT NOT NULL,
  task_kind TEXT,
  source_id TEXT,
  requester_session_key TEXT NOT NULL DEFAULT '',
  owner_key TEXT NOT NULL DEFAULT '',
  scope_kind TEXT NOT NULL DEFAULT 'session',
  child_session_key TEXT,
  parent_flow_id TEXT,
  parent_task_id TEXT,
  agent_id TEXT,
  requester_agent_id TEXT,
  run_id TEXT,
  label TEXT,
  task TEXT NOT NULL,
  status TEXT NOT NULL,
  delivery_status TEXT NOT NULL,
  notify_policy TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  started_at BIGINT,
  ended_at BIGINT,
  last_event_at BIGINT,
  cleanup_after BIGINT,
  error TEXT,
  progress_summary TEXT,
  terminal_summary TEXT,
  terminal_outcome TEXT,
  metadata_json TEXT,
  owner_pid BIGINT,
  owner_start_time BIGINT,
  owner_boot_id TEXT,
  version BIGINT NOT NULL DEFAULT 1,
  owner_host TEXT,
  lease_expires_at BIGINT,
  fencing_token BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE task_delivery_state (
  task_id TEXT PRIMARY KEY REFERENCES task_runs(task_id) ON DELETE CASCADE,
  requester_origin_json TEXT,
  last_notified_event_at BIGINT
);
CREATE INDEX idx_task_runs_run_id ON task_runs(run_id);
CREATE INDEX idx_task_runs_status ON task_runs(status);
CREATE INDEX idx_task_runs_owner_key ON task_runs(owner_key);
CREATE INDEX idx_task_runs_cleanup_after ON task_runs(cleanup_after);
CREATE INDEX idx_task_runs_lease ON task_runs(lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE TABLE lockstore_tasks_meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  change_seq BIGINT NOT NULL
);
INSERT INTO lockstore_tasks_meta VALUES (1, 0);
CREATE FUNCTION lockstore_tasks_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE lockstore_tasks_meta SET change_seq = change_seq + 1 WHERE id = 1;
  RETURN NULL;
END $$;
CREATE TRIGGER task_runs_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON task_runs
  FOR EACH STATEMENT EXECUTE FUNCTION lockstore_tasks_bump();
CREATE TRIGGER task_delivery_state_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON task_delivery_state
  FOR EACH STATEMENT EXECUTE FUNCTION lockstore_tasks_bump();
";

/// The PostgreSQL ledger's migrations (component `tasks` in
/// `lockstore_schema`).
const PG_MIGRATIONS: &[&str] = &[PG_V1];

/// The ledger's write lock and the change counter it guards.
const WRITE_LOCK: &str = "SELECT change_seq FROM lockstore_tasks_meta WHERE id = 1 FOR UPDATE";
const CHANGE_SEQ: &str = "SELECT change_seq FROM lockstore_tasks_meta WHERE id = 1";
/// Advisory lock key of the maintenance leader (per database).
const LEADER_KEY: i64 = 7_251_300_101;

/// Why one attempt failed.
enum Fail {
    Pool(r2d2::Error),
    Db(postgres::Error),
    Commit(postgres::Error),
    Domain(TaskError),
}

/// [`TaskStore`] over a PostgreSQL database shared by several hosts (feature
/// `postgres`): an r2d2 pool of `postgres` connections, schema in
/// `lockstore_schema` component `tasks`. See the module docs of
/// `docs/postgres.md` ("Task ledger") for isolation and retry.
pub struct PgTaskStore {
    url: String,
    redacted: PathBuf,
    pool: Pool,
    opts: PgOptions,
}

impl std::fmt::Debug for PgTaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTaskStore")
            .field("database", &self.redacted)
            .finish()
    }
}

fn pg_raw(r: &Row) -> Result<RawTask, postgres::Error> {
    let mut text = Vec::with_capacity(25);
    let mut ints = [None; 10];
    for i in 0..18 {
        text.push(r.try_get(i)?);
    }
    for (k, i) in (18..23).enumerate() {
        ints[k] = r.try_get(i)?;
    }
    for i in 23..28 {
        text.push(r.try_get(i)?);
    }
    ints[5] = r.try_get(28)?;
    ints[6] = r.try_get(29)?;
    text.push(r.try_get(30)?);
    ints[7] = r.try_get(31)?;
    text.push(r.try_get(32)?);
    ints[8] = r.try_get(33)?;
    ints[9] = r.try_get(34)?;
    Ok(RawTask { text, ints })
}

fn parse_rows(path: &Path, rows: &[Row]) -> TxResult<Vec<TaskRecord>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        match parse_task(path, pg_raw(r)?) {
            Ok(t) => out.push(t),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}

fn read_task_pg(tx: &mut Transaction<'_>, path: &Path, id: &str) -> TxResult<Option<TaskRecord>> {
    let rows = tx.query(
        &format!("SELECT {COLS} FROM task_runs WHERE task_id = $1"),
        &[&id],
    )?;
    Ok(parse_rows(path, &rows)?.map(|v| v.into_iter().next()))
}

fn load_all_pg(tx: &mut Transaction<'_>, path: &Path) -> TxResult<Snapshot> {
    let mut snap = Snapshot::default();
    let rows = tx.query(&format!("SELECT {COLS} FROM task_runs"), &[])?;
    match parse_rows(path, &rows)? {
        Ok(v) => {
            for t in v {
                snap.tasks.insert(t.task_id.clone(), t);
            }
        }
        Err(e) => return Ok(Err(e)),
    }
    for r in tx.query(
        "SELECT task_id, requester_origin_json, last_notified_event_at FROM task_delivery_state",
        &[],
    )? {
        let id: String = r.try_get(0)?;
        let origin: Option<String> = r.try_get(1)?;
        let last: Option<i64> = r.try_get(2)?;
        let requester_origin = match origin {
            None => None,
            Some(s) => match serde_json::from_str(&s) {
                Ok(v) => Some(v),
                Err(_) => {
                    return Ok(Err(TaskError::InvalidPersisted {
                        path: path.to_path_buf(),
                        task_id: id,
                        column: "requester_origin_json",
                        value: s,
                    }))
                }
            },
        };
        snap.delivery_states.insert(
            id.clone(),
            DeliveryState {
                task_id: id,
                requester_origin,
                last_notified_event_at: last,
            },
        );
    }
    Ok(Ok(snap))
}

/// Compare-and-set write (see the SQLite `write_task`): `version + 1` iff
/// the row's version is `task.version` (0: no row).
fn write_task_pg(tx: &mut Transaction<'_>, task: &TaskRecord) -> Result<WriteOutcome, DbError> {
    let cur: Option<i64> = tx
        .query_opt(
            "SELECT version FROM task_runs WHERE task_id = $1",
            &[&task.task_id],
        )?
        .map(|r| r.get(0));
    let expected = (task.version > 0).then_some(task.version);
    if cur != expected {
        return Ok(WriteOutcome::Conflict(cur));
    }
    let meta = task
        .metadata
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()));
    let next = task.version + 1;
    let owner_pid = task.owner_pid.map(i64::from);
    let owner_start = task.owner_start_time.map(|t| t as i64);
    let outcome = task.terminal_outcome.map(|o| o.as_str());
    let vals: [&(dyn ToSql + Sync); 35] = [
        &task.task_id,
        &task.runtime.as_str(),
        &task.task_kind,
        &task.source_id,
        &task.requester_session_key,
        &task.owner_key,
        &task.scope_kind.as_str(),
        &task.child_session_key,
        &task.parent_flow_id,
        &task.parent_task_id,
        &task.agent_id,
        &task.requester_agent_id,
        &task.run_id,
        &task.label,
        &task.task,
        &task.status.as_str(),
        &task.delivery_status.as_str(),
        &task.notify_policy.as_str(),
        &task.created_at,
        &task.started_at,
        &task.ended_at,
        &task.last_event_at,
        &task.cleanup_after,
        &task.error,
        &task.progress_summary,
        &task.terminal_summary,
        &outcome,
        &meta,
        &owner_pid,
        &owner_start,
        &task.owner_boot_id,
        &next,
        &task.owner_host,
        &task.lease_expires_at,
        &task.fencing_token,
    ];
    let n = if expected.is_none() {
        let ph: Vec<String> = (1..=35).map(|i| format!("${i}")).collect();
        tx.execute(
            &format!("INSERT INTO task_runs ({COLS}) VALUES ({})", ph.join(",")),
            &vals,
        )?
    } else {
        tx.execute(
            "UPDATE task_runs SET runtime=$2, task_kind=$3, source_id=$4, requester_session_key=$5, \
             owner_key=$6, scope_kind=$7, child_session_key=$8, parent_flow_id=$9, parent_task_id=$10, \
             agent_id=$11, requester_agent_id=$12, run_id=$13, label=$14, task=$15, status=$16, \
             delivery_status=$17, notify_policy=$18, created_at=$19, started_at=$20, ended_at=$21, \
             last_event_at=$22, cleanup_after=$23, error=$24, progress_summary=$25, terminal_summary=$26, \
             terminal_outcome=$27, metadata_json=$28, owner_pid=$29, owner_start_time=$30, \
             owner_boot_id=$31, version=$32::bigint, owner_host=$33, lease_expires_at=$34, fencing_token=$35 \
             WHERE task_id=$1 AND version=$32::bigint - 1",
            &vals,
        )?
    };
    Ok(if n == 1 {
        WriteOutcome::Written(next)
    } else {
        WriteOutcome::Conflict(cur)
    })
}

fn write_delivery_pg(
    tx: &mut Transaction<'_>,
    task_id: &str,
    d: Option<&DeliveryState>,
) -> Result<(), DbError> {
    match d {
        None => {
            tx.execute(
                "DELETE FROM task_delivery_state WHERE task_id = $1",
                &[&task_id],
            )?;
        }
        Some(d) => {
            let origin = d.requester_origin.as_ref().map(|v| v.to_string());
            tx.execute(
                "INSERT INTO task_delivery_state (task_id, requester_origin_json, last_notified_event_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (task_id) DO UPDATE SET \
                 requester_origin_json = EXCLUDED.requester_origin_json, \
                 last_notified_event_at = EXCLUDED.last_notified_event_at",
                &[&task_id, &origin, &d.last_notified_event_at],
            )?;
        }
    }
    Ok(())
}

/// [`LedgerTx`] over an open PostgreSQL write transaction (holding the
/// ledger's write lock).
struct PgTx<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    path: &'a Path,
}

impl LedgerTx for PgTx<'_, '_> {
    fn read_task(&mut self, id: &str) -> TxResult<Option<TaskRecord>> {
        read_task_pg(self.tx, self.path, id)
    }

    fn find_duplicate(&mut self, t: &TaskRecord) -> TxResult<Option<TaskRecord>> {
        let Some(run_id) = &t.run_id else {
            return Ok(Ok(None));
        };
        let rows = self.tx.query(
            &format!(
                "SELECT {COLS} FROM task_runs WHERE run_id = $1 AND runtime = $2 AND scope_kind = $3 \
                 AND owner_key = $4 AND child_session_key IS NOT DISTINCT FROM $5 \
                 AND parent_flow_id IS NOT DISTINCT FROM $6 AND label IS NOT DISTINCT FROM $7 \
                 AND task = $8 ORDER BY created_at LIMIT 1"
            ),
            &[
                run_id,
                &t.runtime.as_str(),
                &t.scope_kind.as_str(),
                &t.owner_key,
                &t.child_session_key,
                &t.parent_flow_id,
                &t.label,
                &t.task,
            ],
        )?;
        Ok(parse_rows(self.path, &rows)?.map(|v| v.into_iter().next()))
    }

    fn write_task(&mut self, t: &TaskRecord) -> Result<WriteOutcome, DbError> {
        write_task_pg(self.tx, t)
    }

    fn write_delivery(&mut self, id: &str, d: Option<&DeliveryState>) -> Result<(), DbError> {
        write_delivery_pg(self.tx, id, d)
    }

    fn delete_task(&mut self, id: &str, version: i64) -> Result<bool, DbError> {
        self.tx
            .execute("DELETE FROM task_delivery_state WHERE task_id = $1", &[&id])?;
        let n = self.tx.execute(
            "DELETE FROM task_runs WHERE task_id = $1 AND version = $2",
            &[&id, &version],
        )?;
        Ok(n == 1)
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 10u64.saturating_mul(1 << attempt.min(7)).min(1000);
    Duration::from_millis(base / 2 + fastrand::u64(0..=base / 2))
}

impl PgTaskStore {
    /// Connects to the database at `url` (`postgres://user@host/db`, or the
    /// key=value form), creating and migrating the ledger's tables (component
    /// `tasks` in `lockstore_schema`, under an advisory lock so concurrent
    /// hosts migrate once). Feature `postgres`.
    ///
    /// Errors: [`TaskError::Core`] wrapping [`crate::Error::PgConnect`]
    /// (unreachable, authentication), [`crate::Error::Postgres`] (bad URL, a
    /// migration step failed) or [`crate::Error::SchemaTooNew`]; each names
    /// the URL with its password redacted.
    pub fn connect(url: &str, opts: PgOptions) -> Result<Self, TaskError> {
        let pool = crate::postgres::pool(url, &opts)?;
        let mut c = pool.get().map_err(|e| crate::Error::pool(url, e))?;
        crate::postgres::migrate(&mut c, url, "tasks", PG_MIGRATIONS)?;
        drop(c);
        Ok(PgTaskStore {
            url: url.to_string(),
            redacted: PathBuf::from(crate::postgres::redact(url)),
            pool,
            opts,
        })
    }

    /// The database URL with its password redacted (what errors name).
    pub fn path(&self) -> &Path {
        &self.redacted
    }

    /// The connection options.
    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// Runs `once` until it succeeds, fails for good, or the retry deadline
    /// passes (see the module docs).
    fn retry<T>(
        &self,
        op: &'static str,
        mut once: impl FnMut() -> Result<T, Fail>,
    ) -> Result<T, TaskError> {
        let until = Instant::now() + self.opts.retry_deadline;
        let mut attempt = 0u32;
        loop {
            let e = match once() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retryable = match &e {
                Fail::Pool(_) => true,
                Fail::Db(e) => crate::postgres::is_retryable(e),
                // Nothing was committed on these; a broken connection's
                // COMMIT may have been.
                Fail::Commit(e) => matches!(
                    e.code(),
                    Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                        || *c == SqlState::T_R_DEADLOCK_DETECTED
                ),
                Fail::Domain(_) => false,
            };
            if !retryable || Instant::now() >= until {
                return Err(match e {
                    Fail::Pool(p) => TaskError::Core(crate::Error::pool(&self.url, p)),
                    Fail::Db(d) => TaskError::Core(crate::Error::postgres(op, &self.url, d)),
                    Fail::Commit(d) => TaskError::Core(crate::Error::postgres(
                        "commit (outcome unknown if the connection broke)",
                        &self.url,
                        d,
                    )),
                    Fail::Domain(t) => t,
                });
            }
            attempt += 1;
            let pause = backoff(attempt);
            let why = match &e {
                Fail::Pool(p) => p.to_string(),
                Fail::Db(d) | Fail::Commit(d) => d.to_string(),
                Fail::Domain(_) => String::new(),
            };
            tracing::warn!(database = %self.redacted.display(), op, attempt, backoff_ms = pause.as_millis() as u64, error = %why, "task ledger: PostgreSQL unavailable or conflict; retrying");
            std::thread::sleep(pause);
        }
    }

    /// One transaction at `iso` (retried whole; see [`PgTaskStore::retry`]).
    fn transaction<T>(
        &self,
        op: &'static str,
        iso: IsolationLevel,
        read_only: bool,
        mut f: impl FnMut(&mut Transaction<'_>) -> TxResult<T>,
    ) -> Result<T, TaskError> {
        let path = self.redacted.clone();
        self.retry(op, || {
            let mut c = self.pool.get().map_err(Fail::Pool)?;
            let mut tx = c
                .build_transaction()
                .isolation_level(iso)
                .read_only(read_only)
                .start()
                .map_err(Fail::Db)?;
            match f(&mut tx) {
                Err(DbError::Pg(e)) => Err(Fail::Db(e)),
                Err(e @ DbError::Sqlite(_)) => Err(Fail::Domain(e.into_task_error(op, &path))),
                Ok(Err(domain)) => Err(Fail::Domain(domain)),
                Ok(Ok(v)) => {
                    tx.commit().map_err(Fail::Commit)?;
                    Ok(v)
                }
            }
        })
    }

    /// A write transaction: READ COMMITTED holding the ledger's write lock
    /// (taken first). `f` gets the committed `change_seq` before it.
    fn write<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut Transaction<'_>, i64) -> TxResult<T>,
    ) -> Result<T, TaskError> {
        self.transaction(op, IsolationLevel::ReadCommitted, false, |tx| {
            let seq: i64 = tx.query_one(WRITE_LOCK, &[])?.try_get(0)?;
            f(tx, seq)
        })
    }

    /// The committed change counter (one autocommit query).
    fn change_seq(&self) -> Result<i64, TaskError> {
        self.retry("read change counter", || {
            let mut c = self.pool.get().map_err(Fail::Pool)?;
            let r = c.query_one(CHANGE_SEQ, &[]).map_err(Fail::Db)?;
            r.try_get(0).map_err(Fail::Db)
        })
    }

    /// Every task and delivery state with the change counter they reflect
    /// (one REPEATABLE READ snapshot).
    fn load_with_seq(&self) -> Result<(Snapshot, i64), TaskError> {
        let path = self.redacted.clone();
        self.transaction(
            "load task ledger",
            IsolationLevel::RepeatableRead,
            true,
            |tx| {
                let seq: i64 = tx.query_one(CHANGE_SEQ, &[])?.try_get(0)?;
                Ok(load_all_pg(tx, &path)?.map(|s| (s, seq)))
            },
        )
    }

    /// Database-direct reader (as
    /// [`super::SqliteTaskStore::list_fresh_tasks_for_owner_key`]): tasks of
    /// `owner_key` not yet due for cleanup at `now`, newest first.
    ///
    /// Errors: [`TaskError::Core`] ([`crate::Error::Postgres`],
    /// [`crate::Error::PgConnect`]), [`TaskError::InvalidPersisted`].
    pub fn list_fresh_tasks_for_owner_key(
        &self,
        owner_key: &str,
        now: SystemTime,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let now_ms = crate::timefmt::to_ms(now);
        let path = self.redacted.clone();
        self.transaction(
            "read tasks",
            IsolationLevel::ReadCommitted,
            true,
            |tx| {
                let rows = tx.query(
                    &format!(
                        "SELECT {COLS} FROM task_runs WHERE owner_key = $1 AND \
                         (cleanup_after IS NULL OR cleanup_after > $2) ORDER BY created_at DESC, task_id"
                    ),
                    &[&owner_key, &now_ms],
                )?;
                parse_rows(&path, &rows)
            },
        )
    }

    /// Database-direct read of one task.
    pub fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, TaskError> {
        let path = self.redacted.clone();
        self.transaction("read task", IsolationLevel::ReadCommitted, true, |tx| {
            read_task_pg(tx, &path, task_id)
        })
    }

    /// Tries to become the maintenance leader: a session advisory lock on a
    /// connection held by the returned guard (released when it drops).
    /// `Ok(None)`: another session (host) leads now.
    pub(super) fn try_lead(&self) -> Result<Option<LeaderGuard>, TaskError> {
        self.retry("take the maintenance leader lock", || {
            let mut c = self.pool.get().map_err(Fail::Pool)?;
            let got: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_KEY])
                .and_then(|r| r.try_get(0))
                .map_err(Fail::Db)?;
            Ok(got.then_some(LeaderGuard { conn: Some(c) }))
        })
    }
}

/// The maintenance leader's session lock; unlocked on drop (a connection
/// that cannot unlock is closed, which drops the lock too).
pub(super) struct LeaderGuard {
    conn: Option<r2d2::PooledConnection<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            if let Err(e) = c.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_KEY]) {
                // The connection broke (and its session's lock with it); the
                // pool's check-out test discards it.
                tracing::warn!(error = %e, "task ledger: maintenance leader unlock failed");
            }
        }
    }
}

impl TaskStore for PgTaskStore {
    fn load_snapshot(&self) -> Result<Snapshot, TaskError> {
        Ok(self.load_with_seq()?.0)
    }

    fn save_snapshot(&self, snap: &Snapshot) -> Result<(), TaskError> {
        self.write("save task ledger", |tx, _| {
            tx.execute("DELETE FROM task_runs", &[])?;
            for t in snap.tasks.values() {
                let mut t = t.clone();
                let v = t.version.max(1);
                t.version = 0;
                write_task_pg(tx, &t)?;
                tx.execute(
                    "UPDATE task_runs SET version = $2 WHERE task_id = $1",
                    &[&t.task_id, &v],
                )?;
                write_delivery_pg(tx, &t.task_id, snap.delivery_states.get(&t.task_id))?;
            }
            Ok(Ok(()))
        })
    }

    fn upsert_task_with_delivery_state(
        &self,
        task: &TaskRecord,
        delivery: Option<&DeliveryState>,
    ) -> Result<WriteOutcome, TaskError> {
        self.write("upsert task", |tx, _| {
            let o = write_task_pg(tx, task)?;
            if let WriteOutcome::Written(_) = o {
                write_delivery_pg(tx, &task.task_id, delivery)?;
            }
            Ok(Ok(o))
        })
    }

    fn delete_task_with_delivery_state(&self, task_id: &str) -> Result<bool, TaskError> {
        self.write("delete task", |tx, _| {
            tx.execute(
                "DELETE FROM task_delivery_state WHERE task_id = $1",
                &[&task_id],
            )?;
            let n = tx.execute("DELETE FROM task_runs WHERE task_id = $1", &[&task_id])?;
            Ok(Ok(n == 1))
        })
    }

    fn close(self) -> Result<(), TaskError> {
        drop(self.pool);
        Ok(())
    }
}

impl TaskRegistry {
    /// Connects to the task ledger in the PostgreSQL database at `url`
    /// (feature `postgres`), migrates it and loads every task. The registry
    /// then behaves as one opened with [`TaskRegistry::open`], shared by
    /// every host connected to the database: writers of all hosts take turns
    /// on the ledger's write lock (a row lock), every read first checks the
    /// ledger's change counter and reloads when another host (or process)
    /// wrote, and owners are judged across hosts by their lease
    /// ([`TaskRegistry::claim`]). `opts.sqlite`, `opts.lock` and
    /// `opts.group_commit` do not apply (each mutation is its own
    /// transaction; [`TaskRegistry::group_commit_stats`] stays zero);
    /// `pg.host_id` names this host in leases.
    ///
    /// Errors: as [`PgTaskStore::connect`], plus
    /// [`TaskError::InvalidPersisted`] when a row does not parse.
    pub fn connect(url: &str, opts: RegistryOptions, pg: PgOptions) -> Result<Self, TaskError> {
        let host = pg.host_id.clone();
        let store = PgTaskStore::connect(url, pg)?;
        let reg = TaskRegistry {
            core: std::sync::Arc::new(Core {
                store: Backend::Pg(store),
                host: Some(host),
                inner: std::sync::Mutex::new(Inner::default()),
                idle: std::sync::Condvar::new(),
                observers: std::sync::RwLock::new(Vec::new()),
                cas_misses: std::sync::atomic::AtomicU64::new(0),
            }),
            writer: None,
            group_opts: crate::json::GroupCommit {
                enabled: false,
                ..opts.group_commit
            },
            group: crate::group::Group::new(),
        };
        {
            let Backend::Pg(pg) = &reg.core.store else {
                unreachable!()
            };
            let mut inner = reg.core.lock_inner();
            reg.refresh_pg(pg, &mut inner)?;
        }
        Ok(reg)
    }

    /// Reloads when the ledger's change counter moved since memory's copy
    /// (see the module docs). Returns the `restored` event to emit.
    pub(super) fn refresh_pg(
        &self,
        pg: &PgTaskStore,
        inner: &mut Inner,
    ) -> Result<Option<TaskEvent>, TaskError> {
        if let Some(seen) = inner.data_version {
            if pg.change_seq()? == seen {
                return Ok(None);
            }
        }
        let (snap, seq) = pg.load_with_seq()?;
        tracing::debug!(database = %pg.path().display(), tasks = snap.tasks.len(), change_seq = seq, "reloaded task ledger");
        inner.replace(snap);
        inner.data_version = Some(seq);
        Ok(self.core.has_observers().then(|| TaskEvent::Restored {
            tasks: inner.snap.tasks.values().cloned().collect(),
        }))
    }

    /// The PostgreSQL path of [`TaskRegistry::mutate`]: one write transaction
    /// (write lock → reload if the counter moved → `f` → COMMIT) → memory →
    /// observers. In this process, mutations and reads take turns on the
    /// registry's memory mutex for the whole transaction (as on SQLite).
    pub(super) fn mutate_pg<T>(
        &self,
        pg: &PgTaskStore,
        mut f: impl FnMut(&mut dyn LedgerTx, &View<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, TaskError> {
        let started = Instant::now();
        let mut inner = self.core.lock_inner();
        let _span = tracing::debug_span!("task_ledger_commit", database = %pg.path().display(), pid = std::process::id(), waited_ms = started.elapsed().as_millis() as u64).entered();
        let has = self.core.has_observers();
        let mut restored = None;
        let path = pg.path().to_path_buf();
        let r = pg.write("task ledger write", |tx, seq| {
            if inner.data_version != Some(seq) {
                // Committed by others: valid whatever becomes of this write.
                match load_all_pg(tx, &path)? {
                    Ok(snap) => {
                        inner.replace(snap);
                        inner.data_version = Some(seq);
                        restored = has.then(|| TaskEvent::Restored {
                            tasks: inner.snap.tasks.values().cloned().collect(),
                        });
                    }
                    Err(e) => return Ok(Err(e)),
                }
            }
            let out = match f(
                &mut PgTx { tx, path: &path },
                &View {
                    inner: &inner,
                    pending: &[],
                },
            )? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let after: i64 = tx.query_one(CHANGE_SEQ, &[])?.try_get(0)?;
            Ok(Ok((out, after)))
        });
        let mut events: Vec<TaskEvent> = restored.into_iter().collect();
        let out = match r {
            Ok(((out, changes), after)) => {
                // Committed: only now does memory change.
                events.extend(apply(&mut inner, changes, has));
                inner.data_version = Some(after);
                Ok(out)
            }
            Err(e) => {
                if matches!(e, TaskError::Core(_)) {
                    // The outcome may be unknown (a broken COMMIT): reload
                    // before the next read or write.
                    inner.data_version = None;
                }
                Err(e)
            }
        };
        drop(inner);
        self.emit(&events);
        out
    }

    /// The maintenance leader lock on PostgreSQL (`None` on SQLite: one host,
    /// every sweep may run). `Ok(Some(None))`: another host leads now.
    pub(super) fn lead_maintenance(&self) -> Result<Option<Option<LeaderGuard>>, TaskError> {
        match &self.core.store {
            Backend::Pg(pg) => pg.try_lead().map(Some),
            Backend::Sqlite(_) => Ok(None),
        }
    }
}
