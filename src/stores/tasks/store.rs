//! SQLite persistence of the task ledger: schema migrations, row ↔ record
//! conversion with strict enum parsing, the [`TaskStore`] interface (openclaw
//! `src/tasks/task-registry.store.ts`, reference §5.4) and [`SqliteTaskStore`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::record::*;
use super::TaskError;
use crate::sqlite::{self, SqliteOptions};

/// Schema v1: openclaw's task ledger schema v1 (PR #57361).
const V1: &str = "
CREATE TABLE task_runs (
  task_id TEXT PRIMARY KEY,
  runtime TEXT NOT NULL,
  source_id TEXT,
  requester_session_key TEXT NOT NULL DEFAULT '',
  parent_flow_id TEXT,
  child_session_key TEXT,
  parent_task_id TEXT,
  agent_id TEXT,
  run_id TEXT,
  label TEXT,
  task TEXT NOT NULL,
  status TEXT NOT NULL,
  delivery_status TEXT NOT NULL,
  notify_policy TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  started_at INTEGER,
  ended_at INTEGER,
  last_event_at INTEGER,
  cleanup_after INTEGER,
  error TEXT,
  progress_summary TEXT,
  terminal_summary TEXT,
  terminal_outcome TEXT
);
CREATE TABLE task_delivery_state (
  task_id TEXT PRIMARY KEY,
  requester_origin_json TEXT,
  last_notified_event_at INTEGER
);
CREATE INDEX idx_task_runs_run_id ON task_runs(run_id);
CREATE INDEX idx_task_runs_status ON task_runs(status);
CREATE INDEX idx_task_runs_runtime_status ON task_runs(runtime, status);
CREATE INDEX idx_task_runs_cleanup_after ON task_runs(cleanup_after);
CREATE INDEX idx_task_runs_last_event_at ON task_runs(last_event_at);
CREATE INDEX idx_task_runs_parent_flow_id ON task_runs(parent_flow_id);
CREATE INDEX idx_task_runs_child_session_key ON task_runs(child_session_key);
";

/// Schema v2: the current columns (§5.3) plus owner process and row version;
/// delivery state gains `ON DELETE CASCADE`; legacy `not-requested` becomes
/// `not_applicable`.
const V2: &str = "
ALTER TABLE task_runs ADD COLUMN task_kind TEXT;
ALTER TABLE task_runs ADD COLUMN owner_key TEXT NOT NULL DEFAULT '';
ALTER TABLE task_runs ADD COLUMN scope_kind TEXT NOT NULL DEFAULT 'session';
ALTER TABLE task_runs ADD COLUMN requester_agent_id TEXT;
ALTER TABLE task_runs ADD COLUMN metadata_json TEXT;
ALTER TABLE task_runs ADD COLUMN owner_pid INTEGER;
ALTER TABLE task_runs ADD COLUMN owner_start_time INTEGER;
ALTER TABLE task_runs ADD COLUMN owner_boot_id TEXT;
ALTER TABLE task_runs ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
UPDATE task_runs SET owner_key = requester_session_key;
UPDATE task_runs SET scope_kind = 'system' WHERE owner_key = '';
UPDATE task_runs SET delivery_status = 'not_applicable' WHERE delivery_status = 'not-requested';
CREATE TABLE task_delivery_state_v2 (
  task_id TEXT PRIMARY KEY REFERENCES task_runs(task_id) ON DELETE CASCADE,
  requester_origin_json TEXT,
  last_notified_event_at INTEGER
);
INSERT INTO task_delivery_state_v2
  SELECT d.task_id, d.requester_origin_json, d.last_notified_event_at
  FROM task_delivery_state d JOIN task_runs t ON t.task_id = d.task_id;
DROP TABLE task_delivery_state;
ALTER TABLE task_delivery_state_v2 RENAME TO task_delivery_state;
CREATE INDEX idx_task_runs_owner_key ON task_runs(owner_key);
CREATE INDEX idx_task_runs_runtime_source ON task_runs(runtime, source_id, ended_at, created_at, task_id);
CREATE INDEX idx_task_runs_runtime_ended ON task_runs(runtime, ended_at, created_at, task_id);
";

/// Schema v3: lease and fencing columns (see
/// [`crate::tasks::TaskRegistry::claim`]); the same columns as the PostgreSQL
/// ledger.
const V3: &str = "
ALTER TABLE task_runs ADD COLUMN owner_host TEXT;
ALTER TABLE task_runs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE task_runs ADD COLUMN fencing_token INTEGER NOT NULL DEFAULT 0;
";

/// The ledger's migrations: `MIGRATIONS[i]` takes user_version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// Current schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) const COLS: &str =
    "task_id, runtime, task_kind, source_id, requester_session_key, owner_key, \
scope_kind, child_session_key, parent_flow_id, parent_task_id, agent_id, requester_agent_id, \
run_id, label, task, status, delivery_status, notify_policy, created_at, started_at, ended_at, \
last_event_at, cleanup_after, error, progress_summary, terminal_summary, terminal_outcome, \
metadata_json, owner_pid, owner_start_time, owner_boot_id, version, owner_host, lease_expires_at, \
fencing_token";

/// The full in-memory state: tasks and delivery states by task id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Tasks by id.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Delivery states by task id.
    pub delivery_states: BTreeMap<String, DeliveryState>,
}

/// Result of a versioned write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the row now has this version.
    Written(i64),
    /// Compare-and-set miss: the row's version (None: no row) was not the one
    /// expected. Nothing was written.
    Conflict(Option<i64>),
}

/// Persistence interface of the registry (openclaw `TaskRegistryStore`).
///
/// Every method is one `BEGIN IMMEDIATE` transaction; on error nothing of the
/// call is persisted.
pub trait TaskStore {
    /// Loads every task and delivery state (strict parsing:
    /// [`TaskError::InvalidPersisted`] names the task and column).
    fn load_snapshot(&self) -> Result<Snapshot, TaskError>;
    /// Replaces the whole ledger with `snap` in one transaction (rows not in
    /// `snap` are deleted; each written row's version is the one in `snap`).
    fn save_snapshot(&self, snap: &Snapshot) -> Result<(), TaskError>;
    /// Inserts or updates `task` and its delivery state (`None` deletes the
    /// delivery-state row) in one transaction. Compare-and-set: `task.version`
    /// is the version the caller based its change on (0 = must not exist); the
    /// row is written with `task.version + 1`.
    fn upsert_task_with_delivery_state(
        &self,
        task: &TaskRecord,
        delivery: Option<&DeliveryState>,
    ) -> Result<WriteOutcome, TaskError>;
    /// Deletes a task and its delivery state in one transaction (cascade).
    /// Returns whether a row was deleted.
    fn delete_task_with_delivery_state(&self, task_id: &str) -> Result<bool, TaskError>;
    /// Checkpoints the WAL and closes the connection.
    fn close(self) -> Result<(), TaskError>
    where
        Self: Sized;
}

/// [`TaskStore`] over `<state>/tasks/runs.sqlite` (one connection).
#[derive(Debug)]
pub struct SqliteTaskStore {
    path: PathBuf,
    opts: SqliteOptions,
    conn: Mutex<Connection>,
}

fn opt_str(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    r.get(i)
}

/// Raw row, before strict parsing (shared with the PostgreSQL store, which
/// selects the same columns in the same order).
pub(super) struct RawTask {
    pub(super) text: Vec<Option<String>>, // by column index where TEXT
    pub(super) ints: [Option<i64>; 10],
}

fn read_raw(r: &Row<'_>) -> rusqlite::Result<RawTask> {
    let mut text = Vec::with_capacity(32);
    for i in 0..18 {
        text.push(opt_str(r, i)?);
    }
    // 18 created_at .. 22 cleanup_after
    let mut ints = [None; 10];
    for (k, i) in (18..23).enumerate() {
        ints[k] = r.get(i)?;
    }
    for i in 23..28 {
        text.push(opt_str(r, i)?); // error, progress, terminal_summary, terminal_outcome, metadata
    }
    ints[5] = r.get(28)?; // owner_pid
    ints[6] = r.get(29)?; // owner_start_time
    text.push(opt_str(r, 30)?); // owner_boot_id
    ints[7] = r.get(31)?; // version
    text.push(opt_str(r, 32)?); // owner_host
    ints[8] = r.get(33)?; // lease_expires_at
    ints[9] = r.get(34)?; // fencing_token
    Ok(RawTask { text, ints })
}

pub(super) fn parse_task(path: &Path, raw: RawTask) -> Result<TaskRecord, TaskError> {
    let t = raw.text;
    let task_id = t[0].clone().unwrap_or_default();
    let bad = |column: &'static str, value: Option<&String>| TaskError::InvalidPersisted {
        path: path.to_path_buf(),
        task_id: task_id.clone(),
        column,
        value: value.cloned().unwrap_or_else(|| "NULL".into()),
    };
    /// Strict parse of a persisted enum spelling (exact match only).
    fn need<T: std::str::FromStr>(
        v: Option<&String>,
        col: &'static str,
        bad: &dyn Fn(&'static str, Option<&String>) -> TaskError,
    ) -> Result<T, TaskError> {
        v.and_then(|s| s.parse().ok()).ok_or_else(|| bad(col, v))
    }
    let runtime: Runtime = need(t[1].as_ref(), "runtime", &bad)?;
    let scope_kind: ScopeKind = need(t[6].as_ref(), "scope_kind", &bad)?;
    let status: TaskStatus = need(t[15].as_ref(), "status", &bad)?;
    let delivery_status: DeliveryStatus = need(t[16].as_ref(), "delivery_status", &bad)?;
    let notify_policy: NotifyPolicy = need(t[17].as_ref(), "notify_policy", &bad)?;
    let terminal_outcome: Option<TerminalOutcome> = match t[21].as_ref() {
        None => None,
        Some(s) => Some(need(Some(s), "terminal_outcome", &bad)?),
    };
    let metadata = match t[22].as_ref() {
        None => None,
        Some(s) => Some(parse_metadata(s).map_err(|_| bad("metadata_json", Some(s)))?),
    };
    let created_at = raw.ints[0].ok_or_else(|| bad("created_at", None))?;
    let version = raw.ints[7].ok_or_else(|| bad("version", None))?;
    Ok(TaskRecord {
        task_id: task_id.clone(),
        runtime,
        task_kind: t[2].clone(),
        source_id: t[3].clone(),
        requester_session_key: t[4].clone().unwrap_or_default(),
        owner_key: t[5].clone().unwrap_or_default(),
        scope_kind,
        child_session_key: t[7].clone(),
        parent_flow_id: t[8].clone(),
        parent_task_id: t[9].clone(),
        agent_id: t[10].clone(),
        requester_agent_id: t[11].clone(),
        run_id: t[12].clone(),
        label: t[13].clone(),
        task: t[14].clone().unwrap_or_default(),
        status,
        delivery_status,
        notify_policy,
        created_at,
        started_at: raw.ints[1],
        ended_at: raw.ints[2],
        last_event_at: raw.ints[3],
        cleanup_after: raw.ints[4],
        error: t[18].clone(),
        progress_summary: t[19].clone(),
        terminal_summary: t[20].clone(),
        terminal_outcome,
        metadata,
        owner_pid: raw.ints[5].map(|p| p as u32),
        owner_start_time: raw.ints[6].map(|p| p as u64),
        owner_boot_id: t[23].clone(),
        version,
        owner_host: t[24].clone(),
        lease_expires_at: raw.ints[8],
        fencing_token: raw.ints[9].unwrap_or(0),
    })
}

/// Reads one task inside `tx` (strict parsing).
pub(crate) fn read_task(
    c: &Connection,
    path: &Path,
    task_id: &str,
) -> Result<Option<TaskRecord>, TaskError> {
    // Cached statements: parsing the SQL cost as much as running it.
    let raw = c
        .prepare_cached(&format!("SELECT {COLS} FROM task_runs WHERE task_id = ?1"))
        .and_then(|mut st| st.query_row([task_id], read_raw).optional())
        .map_err(|e| TaskError::sqlite("read task", path, e))?;
    raw.map(|r| parse_task(path, r)).transpose()
}

/// Reads the tasks matching `where_sql` (with `params`), strictly parsed.
pub(crate) fn query_tasks(
    c: &Connection,
    path: &Path,
    where_sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<TaskRecord>, TaskError> {
    let q = |e| TaskError::sqlite("read tasks", path, e);
    let mut st = c
        .prepare_cached(&format!("SELECT {COLS} FROM task_runs {where_sql}"))
        .map_err(q)?;
    let raws = st
        .query_map(p, read_raw)
        .map_err(q)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(q)?;
    raws.into_iter().map(|r| parse_task(path, r)).collect()
}

pub(crate) fn load_all(c: &Connection, path: &Path) -> Result<Snapshot, TaskError> {
    let q = |e| TaskError::sqlite("read delivery states", path, e);
    let mut snap = Snapshot::default();
    for t in query_tasks(c, path, "", [])? {
        snap.tasks.insert(t.task_id.clone(), t);
    }
    let mut st = c
        .prepare("SELECT task_id, requester_origin_json, last_notified_event_at FROM task_delivery_state")
        .map_err(q)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .map_err(q)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(q)?;
    for (id, origin, last) in rows {
        let requester_origin = match origin {
            None => None,
            Some(s) => Some(
                serde_json::from_str(&s).map_err(|_| TaskError::InvalidPersisted {
                    path: path.to_path_buf(),
                    task_id: id.clone(),
                    column: "requester_origin_json",
                    value: s.clone(),
                })?,
            ),
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
    Ok(snap)
}

/// Writes `task` with version `task.version + 1` iff the row's version is
/// `task.version` (0: no row). Returns the outcome; runs inside the caller's tx.
pub(crate) fn write_task(tx: &Connection, task: &TaskRecord) -> rusqlite::Result<WriteOutcome> {
    let cur: Option<i64> = tx
        .prepare_cached("SELECT version FROM task_runs WHERE task_id = ?1")?
        .query_row([&task.task_id], |r| r.get(0))
        .optional()?;
    let expected = (task.version > 0).then_some(task.version);
    if cur != expected {
        return Ok(WriteOutcome::Conflict(cur));
    }
    let meta = task
        .metadata
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()));
    let next = task.version + 1;
    let vals = params![
        task.task_id,
        task.runtime.as_str(),
        task.task_kind,
        task.source_id,
        task.requester_session_key,
        task.owner_key,
        task.scope_kind.as_str(),
        task.child_session_key,
        task.parent_flow_id,
        task.parent_task_id,
        task.agent_id,
        task.requester_agent_id,
        task.run_id,
        task.label,
        task.task,
        task.status.as_str(),
        task.delivery_status.as_str(),
        task.notify_policy.as_str(),
        task.created_at,
        task.started_at,
        task.ended_at,
        task.last_event_at,
        task.cleanup_after,
        task.error,
        task.progress_summary,
        task.terminal_summary,
        task.terminal_outcome.map(|o| o.as_str()),
        meta,
        task.owner_pid,
        task.owner_start_time.map(|t| t as i64),
        task.owner_boot_id,
        next,
        task.owner_host,
        task.lease_expires_at,
        task.fencing_token,
    ];
    let n = if expected.is_none() {
        tx.prepare_cached(
            &format!(
                "INSERT INTO task_runs ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26,?27,?28,?29,?30,?31,?32,?33,?34,?35)"
            ),
        )?.execute(vals)?
    } else {
        // Compare-and-set on version: a stale copy can never overwrite a newer row.
        tx.prepare_cached(
            "UPDATE task_runs SET runtime=?2, task_kind=?3, source_id=?4, requester_session_key=?5, \
             owner_key=?6, scope_kind=?7, child_session_key=?8, parent_flow_id=?9, parent_task_id=?10, \
             agent_id=?11, requester_agent_id=?12, run_id=?13, label=?14, task=?15, status=?16, \
             delivery_status=?17, notify_policy=?18, created_at=?19, started_at=?20, ended_at=?21, \
             last_event_at=?22, cleanup_after=?23, error=?24, progress_summary=?25, terminal_summary=?26, \
             terminal_outcome=?27, metadata_json=?28, owner_pid=?29, owner_start_time=?30, \
             owner_boot_id=?31, version=?32, owner_host=?33, lease_expires_at=?34, fencing_token=?35 \
             WHERE task_id=?1 AND version=?32 - 1",
        )?.execute(vals)?
    };
    Ok(if n == 1 {
        WriteOutcome::Written(next)
    } else {
        WriteOutcome::Conflict(cur)
    })
}

pub(crate) fn write_delivery(
    tx: &Connection,
    task_id: &str,
    d: Option<&DeliveryState>,
) -> rusqlite::Result<()> {
    match d {
        None => {
            tx.execute(
                "DELETE FROM task_delivery_state WHERE task_id = ?1",
                [task_id],
            )?;
        }
        Some(d) => {
            tx.execute(
                "INSERT INTO task_delivery_state (task_id, requester_origin_json, last_notified_event_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT(task_id) DO UPDATE SET \
                 requester_origin_json = excluded.requester_origin_json, \
                 last_notified_event_at = excluded.last_notified_event_at",
                params![
                    task_id,
                    d.requester_origin.as_ref().map(|v| v.to_string()),
                    d.last_notified_event_at
                ],
            )?;
        }
    }
    Ok(())
}

impl SqliteTaskStore {
    /// Opens (creating and migrating) the ledger at `path` — normally
    /// [`crate::paths::tasks_db`]. See [`crate::sqlite::open`] for the
    /// connection conventions.
    ///
    /// Errors: [`TaskError::Core`] wrapping [`crate::Error::SchemaTooNew`],
    /// [`crate::Error::Sqlite`] (naming the file), [`crate::Error::Io`].
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self, TaskError> {
        let path = path.as_ref();
        let conn = sqlite::open(path, &opts, MIGRATIONS)?;
        Ok(SqliteTaskStore {
            path: path.to_path_buf(),
            opts,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite options.
    pub fn options(&self) -> &SqliteOptions {
        &self.opts
    }

    /// The connection (for diagnostics and failure-injection tests: TEMP
    /// triggers, `PRAGMA query_only`, `max_page_count` are per connection).
    pub fn connection(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (retried whole on BUSY).
    /// `f` returns a domain result; a domain error commits nothing written so
    /// far only if `f` wrote nothing — callers check before writing.
    pub(crate) fn immediate<T>(
        &self,
        conn: &Connection,
        mut f: impl FnMut(&Transaction<'_>) -> rusqlite::Result<Result<T, TaskError>>,
    ) -> Result<T, TaskError> {
        sqlite::immediate(conn, &self.path, &self.opts, |tx| f(tx))?
    }

    /// SQLite-direct reader: tasks of `owner_key` not yet due for cleanup at
    /// `now` (cleanupAfter unset or in the future), newest first. Reads the
    /// database, not memory (openclaw `listFreshTasksForOwnerKey`).
    ///
    /// Errors: [`TaskError::Core`] (SQLite), [`TaskError::InvalidPersisted`].
    pub fn list_fresh_tasks_for_owner_key(
        &self,
        owner_key: &str,
        now: std::time::SystemTime,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let now_ms = crate::timefmt::to_ms(now);
        let c = self.connection();
        query_tasks(
            &c,
            &self.path,
            "WHERE owner_key = ?1 AND (cleanup_after IS NULL OR cleanup_after > ?2) ORDER BY created_at DESC, task_id",
            params![owner_key, now_ms],
        )
    }

    /// SQLite-direct read of one task.
    pub fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, TaskError> {
        let c = self.connection();
        read_task(&c, &self.path, task_id)
    }

    /// `PRAGMA data_version` of this connection: changes when another
    /// connection commits (SQLite docs, "PRAGMA data_version").
    pub fn data_version(&self, c: &Connection) -> Result<i64, TaskError> {
        c.prepare_cached("PRAGMA data_version")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(|e| TaskError::sqlite("read data_version", &self.path, e))
    }

    /// Loads inside one read transaction and returns the snapshot with the
    /// data_version it reflects.
    pub(crate) fn load_with_version(&self, c: &Connection) -> Result<(Snapshot, i64), TaskError> {
        let tx = c
            .unchecked_transaction()
            .map_err(|e| TaskError::sqlite("begin read", &self.path, e))?;
        let dv = self.data_version(&tx)?;
        let snap = load_all(&tx, &self.path)?;
        tx.commit()
            .map_err(|e| TaskError::sqlite("end read", &self.path, e))?;
        Ok((snap, dv))
    }
}

impl TaskStore for SqliteTaskStore {
    fn load_snapshot(&self) -> Result<Snapshot, TaskError> {
        let c = self.connection();
        Ok(self.load_with_version(&c)?.0)
    }

    fn save_snapshot(&self, snap: &Snapshot) -> Result<(), TaskError> {
        let c = self.connection();
        self.immediate(&c, |tx| {
            tx.execute("DELETE FROM task_runs", [])?; // cascades to delivery state
            for t in snap.tasks.values() {
                let mut t = t.clone();
                let v = t.version.max(1);
                t.version = 0;
                write_task(tx, &t)?;
                tx.execute(
                    "UPDATE task_runs SET version = ?2 WHERE task_id = ?1",
                    params![t.task_id, v],
                )?;
                write_delivery(tx, &t.task_id, snap.delivery_states.get(&t.task_id))?;
            }
            Ok(Ok(()))
        })
    }

    fn upsert_task_with_delivery_state(
        &self,
        task: &TaskRecord,
        delivery: Option<&DeliveryState>,
    ) -> Result<WriteOutcome, TaskError> {
        let c = self.connection();
        self.immediate(&c, |tx| {
            let o = write_task(tx, task)?;
            if let WriteOutcome::Written(_) = o {
                write_delivery(tx, &task.task_id, delivery)?;
            }
            Ok(Ok(o))
        })
    }

    fn delete_task_with_delivery_state(&self, task_id: &str) -> Result<bool, TaskError> {
        let c = self.connection();
        self.immediate(&c, |tx| {
            tx.execute(
                "DELETE FROM task_delivery_state WHERE task_id = ?1",
                [task_id],
            )?;
            let n = tx.execute("DELETE FROM task_runs WHERE task_id = ?1", [task_id])?;
            Ok(Ok(n == 1))
        })
    }

    fn close(self) -> Result<(), TaskError> {
        let c = self.conn.into_inner().unwrap_or_else(|p| p.into_inner());
        let _ = c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        c.close()
            .map_err(|(_, e)| TaskError::sqlite("close", &self.path, e))
    }
}
