//! Seed regression (openclaw #88007): a failed SQLite write must leave the
//! registry's memory exactly as the database is. For update and delete under
//! each injected failure: TEMP trigger RAISE(ABORT), PRAGMA query_only,
//! max_page_count (SQLITE_FULL), a competing BEGIN IMMEDIATE holder with
//! busy_timeout 0 and a short retry deadline.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use lockstore::sqlite::SqliteOptions;
use lockstore::tasks::*;
use rstest::rstest;

#[macro_use]
mod tasks_support;
use tasks_support::Backend;

const T0: i64 = 1_780_000_000_000;

/// Unix ms → the API's `SystemTime`.
fn at(ms: i64) -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Trigger,
    QueryOnly,
    DiskFull,
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Update,
    Delete,
}

fn opts() -> RegistryOptions {
    RegistryOptions {
        sqlite: SqliteOptions {
            busy_timeout: Duration::from_millis(0),
            retry_deadline: Duration::from_millis(30),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn seed(reg: &TaskRegistry) -> TaskRecord {
    let (t, _) = reg
        .create(
            NewTask {
                runtime: Some(Runtime::Subagent),
                task: "summarize".into(),
                owner_key: "owner:a".into(),
                requester_origin: Some(serde_json::json!({"channel": "chat"})),
                ..Default::default()
            },
            at(T0),
        )
        .unwrap();
    reg.mark_running(&t.task_id, at(T0 + 1)).unwrap()
}

/// Direct read from a fresh connection (not the registry's).
fn db_status(path: &Path, id: &str) -> Option<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(
        "SELECT status FROM task_runs WHERE task_id = ?1",
        [id],
        |r| r.get(0),
    )
    .ok()
}

/// Compares what memory says with what SQLite says; `Err` carries a
/// vitest-style message.
fn check_agree(mem: Option<String>, db: Option<String>) -> Result<(), String> {
    if mem == db {
        Ok(())
    } else {
        Err(format!(
            "expected '{}' to be '{}'",
            mem.unwrap_or_else(|| "<deleted>".into()),
            db.unwrap_or_else(|| "<deleted>".into())
        ))
    }
}

/// Installs the failure; returns the guard that must live while it is active.
fn inject(reg: &TaskRegistry, f: Failure, op: Op) -> Option<rusqlite::Connection> {
    let c = reg.store().connection();
    match f {
        Failure::Trigger => {
            let when = if op == Op::Update { "UPDATE" } else { "DELETE" };
            c.execute_batch(&format!(
                "CREATE TEMP TRIGGER inject_fail BEFORE {when} ON main.task_runs \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ))
            .unwrap();
            None
        }
        Failure::QueryOnly => {
            c.execute_batch("PRAGMA query_only = 1").unwrap();
            None
        }
        Failure::DiskFull => {
            // A delete never needs a new page; give it one to write (a trigger
            // filling a ballast table) so the commit hits SQLITE_FULL for real.
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS ballast(b BLOB);
                 CREATE TEMP TRIGGER fill AFTER DELETE ON main.task_runs
                 BEGIN INSERT INTO ballast VALUES (zeroblob(200000)); END;",
            )
            .unwrap();
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))
                .unwrap();
            None
        }
        Failure::Busy => {
            let other = rusqlite::Connection::open(reg.path()).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            Some(other)
        }
    }
}

fn clear(reg: &TaskRegistry, f: Failure, guard: Option<rusqlite::Connection>) {
    let c = reg.store().connection();
    match f {
        Failure::Trigger => c.execute_batch("DROP TRIGGER temp.inject_fail").unwrap(),
        Failure::QueryOnly => c.execute_batch("PRAGMA query_only = 0").unwrap(),
        Failure::DiskFull => c
            .execute_batch("DROP TRIGGER temp.fill; PRAGMA max_page_count = 1073741823")
            .unwrap(),
        Failure::Busy => {
            guard.unwrap().execute_batch("ROLLBACK").unwrap();
        }
    }
}

fn mutate(reg: &TaskRegistry, id: &str, op: Op) -> Result<(), TaskError> {
    match op {
        Op::Update => reg
            .update(id, |t| {
                t.status = TaskStatus::Succeeded;
                t.ended_at = Some(T0 + 5);
                // Large enough to need new pages (SQLITE_FULL case).
                t.terminal_summary = Some("x".repeat(300_000));
                Ok(true)
            })
            .map(|_| ()),
        Op::Delete => reg.delete(id).map(|_| ()),
    }
}

#[rstest]
fn failed_write_leaves_memory_as_sqlite(
    #[values(Failure::Trigger, Failure::QueryOnly, Failure::DiskFull, Failure::Busy)] f: Failure,
    #[values(Op::Update, Op::Delete)] op: Op,
) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("tasks/runs.sqlite");
    let reg = TaskRegistry::open(&path, opts()).unwrap();
    let t = seed(&reg);
    let before = reg.get(&t.task_id).unwrap().unwrap();
    let before_ds = reg.delivery_state(&t.task_id).unwrap();

    let guard = inject(&reg, f, op);
    let err = mutate(&reg, &t.task_id, op).expect_err("the injected failure must surface");
    match f {
        Failure::DiskFull => assert!(
            matches!(&err, TaskError::Core(e) if e.is_no_space()),
            "{err}"
        ),
        Failure::Busy => assert!(matches!(&err, TaskError::Core(e) if e.is_busy()), "{err}"),
        _ => {}
    }
    assert!(
        err.to_string().contains("runs.sqlite"),
        "error names the file: {err}"
    );
    clear(&reg, f, guard);

    // Memory is exactly as before, and agrees with a direct SQLite read and
    // with the SQLite-direct reader.
    let mem = reg.get(&t.task_id).unwrap();
    assert_eq!(mem.as_ref(), Some(&before), "{f:?} {op:?}: memory changed");
    assert_eq!(reg.delivery_state(&t.task_id).unwrap(), before_ds);
    check_agree(
        mem.as_ref().map(|t| t.status.to_string()),
        db_status(&path, &t.task_id),
    )
    .unwrap();
    let fresh = reg
        .list_fresh_tasks_for_owner_key("owner:a", at(T0))
        .unwrap();
    assert_eq!(fresh, vec![before.clone()]);

    // A reload resurrects nothing and loses nothing.
    let reopened = TaskRegistry::open(&path, opts()).unwrap();
    assert_eq!(reopened.snapshot().unwrap(), reg.snapshot().unwrap());

    // With the failure gone the same mutation commits, and memory follows.
    mutate(&reg, &t.task_id, op).unwrap();
    let mem = reg.get(&t.task_id).unwrap();
    check_agree(
        mem.as_ref().map(|t| t.status.to_string()),
        db_status(&path, &t.task_id),
    )
    .unwrap();
    assert_eq!(
        TaskRegistry::open(&path, opts())
            .unwrap()
            .snapshot()
            .unwrap(),
        reg.snapshot().unwrap()
    );
    if op == Op::Delete {
        assert!(mem.is_none());
        // ON DELETE CASCADE took the delivery state too.
        let c = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM task_delivery_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}

/// openclaw's pre-#88008 shape: mutate memory, then an unguarded persist whose
/// error is only logged.
struct MemoryFirst {
    mem: HashMap<String, TaskRecord>,
    store: SqliteTaskStore,
}

impl MemoryFirst {
    fn update_status(&mut self, id: &str, s: TaskStatus) {
        let t = self.mem.get_mut(id).unwrap();
        t.status = s;
        let snapshot = t.clone();
        if let Err(e) = self.store.upsert_task_with_delivery_state(&snapshot, None) {
            eprintln!("warn: persist failed: {e}");
        }
    }
    fn delete(&mut self, id: &str) {
        self.mem.remove(id);
        if let Err(e) = self.store.delete_task_with_delivery_state(id) {
            eprintln!("warn: persist failed: {e}");
        }
    }
}

/// The same check fails on a memory-first registry: this is what the
/// regression test above guards against.
#[test]
fn memory_first_variant_diverges() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("tasks/runs.sqlite");
    let reg = TaskRegistry::open(&path, opts()).unwrap();
    let t = seed(&reg);
    let t2 = seed(&reg);
    drop(reg);
    let store = SqliteTaskStore::open(&path, SqliteOptions::default()).unwrap();
    let snap = store.load_snapshot().unwrap();
    let mut mf = MemoryFirst {
        mem: snap.tasks.into_iter().collect(),
        store,
    };
    mf.store
        .connection()
        .execute_batch("PRAGMA query_only = 1")
        .unwrap();
    mf.update_status(&t.task_id, TaskStatus::Succeeded);
    mf.delete(&t2.task_id);
    let upd = check_agree(
        mf.mem.get(&t.task_id).map(|t| t.status.to_string()),
        db_status(&path, &t.task_id),
    );
    let del = check_agree(
        mf.mem.get(&t2.task_id).map(|t| t.status.to_string()),
        db_status(&path, &t2.task_id),
    );
    eprintln!("memory-first update: {upd:?}");
    eprintln!("memory-first delete: {del:?}");
    assert_eq!(upd, Err("expected 'succeeded' to be 'running'".into()));
    assert_eq!(del, Err("expected '<deleted>' to be 'running'".into()));
    // And a reload resurrects the deleted task.
    let reloaded = TaskRegistry::open(&path, opts()).unwrap();
    assert!(reloaded.get(&t2.task_id).unwrap().is_some());
}

#[rstest]
fn observers_see_events_and_cannot_break_writes(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    use std::sync::{Arc, Mutex};
    let l = ledger!(b, "observers", opts());
    let reg = &l.reg;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    reg.add_observer(Arc::new(move |e: &TaskEvent| {
        s2.lock().unwrap().push(match e {
            TaskEvent::Restored { tasks } => format!("restored:{}", tasks.len()),
            TaskEvent::Upserted { task, previous } => {
                format!("upserted:{}:{}", task.status, previous.is_some())
            }
            TaskEvent::Deleted { previous, .. } => format!("deleted:{}", previous.status),
            other => format!("other:{other:?}"),
        });
        Ok::<_, ObserverError>(())
    }));
    reg.add_observer(Arc::new(|_: &TaskEvent| -> Result<(), ObserverError> {
        panic!("observer bug")
    }));
    reg.add_observer(Arc::new(|_: &TaskEvent| Err("observer error".into())));
    let t = seed(reg);
    assert!(reg.delete(&t.task_id).unwrap());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "restored:0",
            "upserted:queued:false",
            "upserted:running:true",
            "deleted:running"
        ]
    );
}

/// The seed regression on both backends with the failure both can inject: a
/// trigger that fails the UPDATE or DELETE of the row. Memory stays exactly
/// as the database is; with the trigger gone the same mutation commits.
#[rstest]
fn trigger_failure_leaves_memory_as_the_database(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
    #[values(Op::Update, Op::Delete)] op: Op,
) {
    let l = ledger!(b, "trigger_failure", opts());
    let reg = &l.reg;
    let t = seed(reg);
    let before = reg.get(&t.task_id).unwrap().unwrap();
    let before_ds = reg.delivery_state(&t.task_id).unwrap();
    let when = if op == Op::Update { "UPDATE" } else { "DELETE" };
    match b {
        Backend::Sqlite => {
            l.exec(
                &format!(
                    "CREATE TRIGGER inject_fail BEFORE {when} ON task_runs \
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                ),
                "",
            );
        }
        Backend::Postgres => {
            let mut c =
                postgres::Client::connect(l.url.as_deref().unwrap(), postgres::NoTls).unwrap();
            c.batch_execute(&format!(
                "CREATE FUNCTION inject_fail() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
                 CREATE TRIGGER inject_fail BEFORE {when} ON task_runs \
                 FOR EACH ROW EXECUTE FUNCTION inject_fail();"
            ))
            .unwrap();
        }
    }
    let err = mutate(reg, &t.task_id, op).expect_err("the injected failure must surface");
    let msg = tasks_support::chain(&err);
    assert!(msg.contains("injected failure"), "{msg}");
    assert_eq!(reg.get(&t.task_id).unwrap().as_ref(), Some(&before));
    assert_eq!(reg.delivery_state(&t.task_id).unwrap(), before_ds);
    assert_eq!(l.column("status", &t.task_id).as_deref(), Some("running"));
    let again = l.reopen(opts()).unwrap();
    assert_eq!(again.snapshot().unwrap(), reg.snapshot().unwrap());
    match b {
        Backend::Sqlite => l.exec("DROP TRIGGER inject_fail", ""),
        Backend::Postgres => l.exec("DROP TRIGGER inject_fail ON task_runs", ""),
    };
    mutate(reg, &t.task_id, op).unwrap();
    let mem = reg.get(&t.task_id).unwrap();
    assert_eq!(
        mem.as_ref().map(|t| t.status.to_string()),
        l.column("status", &t.task_id)
    );
    assert_eq!(
        l.reopen(opts()).unwrap().snapshot().unwrap(),
        reg.snapshot().unwrap()
    );
}
