//! Audit codes, thresholds, sort and summary (injected clock); maintenance
//! apply clears every repairable finding; schema: strict enums, migration from
//! v1, refusal of a newer schema; compare-and-set on version.

use lockstore::sqlite::SqliteOptions;
use lockstore::tasks::*;
use rstest::rstest;

#[macro_use]
mod tasks_support;
use std::time::{Duration, SystemTime};
use tasks_support::{Backend, Ledger};

const NOW: i64 = 1_780_000_000_000;
const MIN: i64 = 60_000;

/// Unix ms → the API's `SystemTime`.
fn at(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn rec(status: TaskStatus, age_ms: i64) -> TaskRecord {
    let at = NOW - age_ms;
    TaskRecord {
        task_id: format!("t{age_ms}"),
        runtime: Runtime::Subagent,
        task_kind: None,
        source_id: None,
        requester_session_key: "s".into(),
        owner_key: "s".into(),
        scope_kind: ScopeKind::Session,
        child_session_key: None,
        parent_flow_id: None,
        parent_task_id: None,
        agent_id: None,
        requester_agent_id: None,
        run_id: None,
        label: None,
        task: "x".into(),
        status,
        delivery_status: DeliveryStatus::Pending,
        notify_policy: NotifyPolicy::DoneOnly,
        created_at: at,
        started_at: None,
        ended_at: status.is_terminal().then_some(at),
        last_event_at: Some(at),
        cleanup_after: status.is_terminal().then_some(NOW + 1),
        error: None,
        progress_summary: None,
        terminal_summary: None,
        terminal_outcome: None,
        metadata: None,
        owner_pid: None,
        owner_start_time: None,
        owner_boot_id: None,
        version: 1,
        owner_host: None,
        lease_expires_at: None,
        fencing_token: 0,
    }
}

fn codes(t: TaskRecord) -> Vec<(&'static str, &'static str)> {
    audit(&[t], at(NOW), &AuditOptions::default())
        .findings
        .iter()
        .map(|f| (f.code.as_str(), f.severity.as_str()))
        .collect()
}

#[rstest]
#[case::queued_fresh(rec(TaskStatus::Queued, 10 * MIN - 1), vec![])]
#[case::queued_stale(rec(TaskStatus::Queued, 10 * MIN), vec![("stale_queued", "warn")])]
#[case::running_fresh(rec(TaskStatus::Running, 30 * MIN - 1), vec![])]
#[case::running_stale(rec(TaskStatus::Running, 30 * MIN), vec![("stale_running", "error")])]
#[case::lost_retained(rec(TaskStatus::Lost, MIN), vec![("lost", "warn")])]
#[case::lost_expired(TaskRecord { cleanup_after: Some(NOW), ..rec(TaskStatus::Lost, MIN) }, vec![("lost", "error")])]
#[case::lost_unstamped(TaskRecord { cleanup_after: None, ..rec(TaskStatus::Lost, MIN) }, vec![("lost", "error")])]
#[case::delivery_failed(TaskRecord { delivery_status: DeliveryStatus::Failed, ..rec(TaskStatus::Succeeded, MIN) }, vec![("delivery_failed", "warn")])]
#[case::delivery_failed_silent(TaskRecord { delivery_status: DeliveryStatus::Failed, notify_policy: NotifyPolicy::Silent, ..rec(TaskStatus::Succeeded, MIN) }, vec![])]
#[case::missing_cleanup(TaskRecord { cleanup_after: None, ..rec(TaskStatus::Failed, MIN) }, vec![("missing_cleanup", "warn")])]
#[case::started_before_created(TaskRecord { started_at: Some(NOW - 2 * MIN), ..rec(TaskStatus::Running, MIN) }, vec![("inconsistent_timestamps", "warn")])]
#[case::ended_before_started(TaskRecord { started_at: Some(NOW - MIN), ended_at: Some(NOW - 2 * MIN), ..rec(TaskStatus::Succeeded, MIN) }, vec![("inconsistent_timestamps", "warn")])]
#[case::active_with_end(TaskRecord { ended_at: Some(NOW), ..rec(TaskStatus::Queued, MIN) }, vec![("inconsistent_timestamps", "warn")])]
fn audit_codes_and_thresholds(#[case] t: TaskRecord, #[case] want: Vec<(&str, &str)>) {
    assert_eq!(codes(t), want);
}

#[test]
fn sort_and_summary_ignore_filters() {
    let a = rec(TaskStatus::Queued, 20 * MIN); // warn, age 20m
    let b = rec(TaskStatus::Running, 40 * MIN); // error, age 40m
    let c = rec(TaskStatus::Running, 31 * MIN); // error, age 31m
    let mut d = rec(TaskStatus::Queued, 20 * MIN); // warn, same age as a, created earlier
    d.task_id = "d".into();
    d.created_at -= 1;
    d.last_event_at = Some(NOW - 20 * MIN);
    let rep = audit(&[a, b, c, d], at(NOW), &AuditOptions::default());
    let order: Vec<_> = rep.findings.iter().map(|f| f.task_id.as_str()).collect();
    assert_eq!(
        order,
        vec![
            &*format!("t{}", 40 * MIN),
            &*format!("t{}", 31 * MIN),
            "d",
            &*format!("t{}", 20 * MIN)
        ]
    );
    assert_eq!(rep.summary.total, 4);
    assert_eq!(rep.summary.errors, 2);
    assert_eq!(rep.summary.warnings, 2);
    assert_eq!(rep.summary.by_code["stale_running"], 2);
    assert_eq!(rep.summary.by_code["delivery_failed"], 0);
    assert_eq!(rep.summary.by_code.len(), 6);
    let only = rep.filtered(Some(Severity::Warn), None);
    assert_eq!(only.len(), 2);
    assert_eq!(rep.summary.total, 4, "summary stays unfiltered");
    assert_eq!(rep.filtered(None, Some(AuditCode::StaleRunning)).len(), 2);
}

fn new(task: &str, owner: Option<lockstore::ProcessIdentity>) -> NewTask {
    NewTask {
        runtime: Some(Runtime::Subagent),
        task: task.into(),
        owner_key: "s".into(),
        owner,
        ..Default::default()
    }
}

fn raw(l: &Ledger, sql: &str, id: &str) {
    assert_eq!(l.exec(sql, id), 1, "{sql}");
}

#[rstest]
fn maintenance_apply_clears_every_repairable_finding(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let lg = ledger!(b, "maint_apply");
    let reg = &lg.reg;
    let t0 = NOW - 2 * 86_400_000;
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_id = lockstore::ProcessIdentity {
        pid: dead.id(),
        ..lockstore::ProcessIdentity::current()
    };
    dead.wait().unwrap();
    // stale_queued, no owner: unjudgeable and silent past the grace → lost.
    let q = reg.create(new("q", None), at(NOW - 11 * MIN)).unwrap().0;
    // stale_running, dead owner → lost at once.
    let r = reg
        .create(new("r", Some(dead_id)), at(NOW - 31 * MIN))
        .unwrap()
        .0;
    reg.mark_running(&r.task_id, at(NOW - 31 * MIN)).unwrap();
    // stale_running, live owner (this process) → stays: needs a person.
    let live = reg
        .create(
            new("live", Some(lockstore::ProcessIdentity::current())),
            at(NOW - 40 * MIN),
        )
        .unwrap()
        .0;
    reg.mark_running(&live.task_id, at(NOW - 40 * MIN)).unwrap();
    // lost past cleanupAfter → pruned.
    let l = reg.create(new("l", None), at(t0)).unwrap().0;
    reg.finish(
        &l.task_id,
        Finish::new(TaskStatus::Lost).with_error("gone"),
        at(t0),
    )
    .unwrap();
    // missing_cleanup → stamped.
    let m = reg.create(new("m", None), at(NOW - MIN)).unwrap().0;
    reg.finish(
        &m.task_id,
        Finish::new(TaskStatus::Succeeded),
        at(NOW - MIN),
    )
    .unwrap();
    raw(
        &lg,
        "UPDATE task_runs SET cleanup_after = NULL, version = version + 1 WHERE task_id = ?1",
        &m.task_id,
    );
    // inconsistent_timestamps → normalized.
    let i = reg.create(new("i", None), at(NOW - MIN)).unwrap().0;
    reg.finish(&i.task_id, Finish::new(TaskStatus::Failed), at(NOW - MIN))
        .unwrap();
    raw(
        &lg,
        &format!(
            "UPDATE task_runs SET started_at = {}, version = version + 1 WHERE task_id = ?1",
            NOW - MIN / 2
        ),
        &i.task_id,
    );
    // expired succeeded task → pruned.
    let old = reg
        .create(new("old", None), at(t0 - 8 * 86_400_000))
        .unwrap()
        .0;
    reg.finish(
        &old.task_id,
        Finish::new(TaskStatus::Succeeded),
        at(t0 - 8 * 86_400_000),
    )
    .unwrap();

    let before = reg.audit(at(NOW), &AuditOptions::default()).unwrap();
    for c in [
        "stale_queued",
        "stale_running",
        "lost",
        "missing_cleanup",
        "inconsistent_timestamps",
    ] {
        assert!(
            before.summary.by_code[c] >= 1,
            "{c} missing before: {:?}",
            before.summary
        );
    }
    let preview = reg
        .maintenance(
            MaintenanceMode::Preview,
            at(NOW),
            &MaintenanceOptions::default(),
        )
        .unwrap();
    assert_eq!(
        reg.audit(at(NOW), &AuditOptions::default())
            .unwrap()
            .summary,
        before.summary
    );
    let rep = reg
        .maintenance(
            MaintenanceMode::Apply,
            at(NOW),
            &MaintenanceOptions::default(),
        )
        .unwrap();
    assert_eq!(
        (preview.reconciled, preview.pruned, preview.normalized),
        (rep.reconciled, rep.pruned, rep.normalized)
    );
    assert_eq!(rep.reconciled, 2);
    assert_eq!(rep.pruned, 2);
    assert_eq!(rep.normalized, 1);
    assert!(rep.cleanup_stamped >= 1);

    let after = reg.audit(at(NOW), &AuditOptions::default()).unwrap();
    let left: Vec<_> = after
        .findings
        .iter()
        .map(|f| (f.code.as_str(), f.severity.as_str(), f.task_id.clone()))
        .collect();
    // Only what needs a person or is informational remains: the live owner's
    // stale_running, and the two freshly lost tasks (retained: warn).
    assert_eq!(after.summary.by_code["stale_queued"], 0, "{left:?}");
    assert_eq!(after.summary.by_code["missing_cleanup"], 0, "{left:?}");
    assert_eq!(
        after.summary.by_code["inconsistent_timestamps"], 0,
        "{left:?}"
    );
    assert_eq!(after.summary.by_code["stale_running"], 1, "{left:?}");
    assert!(left.contains(&("stale_running", "error", live.task_id.clone())));
    assert!(after
        .findings
        .iter()
        .filter(|f| f.code == AuditCode::Lost)
        .all(|f| f.severity == Severity::Warn));
    assert!(reg.get(&l.task_id).unwrap().is_none());
    assert!(reg.get(&old.task_id).unwrap().is_none());
    assert_eq!(
        reg.get(&q.task_id).unwrap().unwrap().status,
        TaskStatus::Lost
    );
    let rl = reg.get(&r.task_id).unwrap().unwrap();
    assert_eq!(rl.status, TaskStatus::Lost);
    assert!(rl.error.unwrap().contains("is dead"));
    assert_eq!(
        rl.cleanup_after,
        Some(NOW + LOST_TASK_RETENTION.as_millis() as i64)
    );
    // Idempotent: a second apply finds nothing.
    let again = reg
        .maintenance(
            MaintenanceMode::Apply,
            at(NOW),
            &MaintenanceOptions::default(),
        )
        .unwrap();
    assert!(again.actions.is_empty(), "{:?}", again.actions);
}

#[rstest]
fn registry_rules_dedupe_defaults_monotonicity_cleanup(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let l = ledger!(b, "rules");
    let reg = &l.reg;
    let mk = || NewTask {
        runtime: Some(Runtime::Subagent),
        task: "t".into(),
        owner_key: "s".into(),
        run_id: Some("run-1".into()),
        ..Default::default()
    };
    let (a, created) = reg.create(mk(), at(NOW)).unwrap();
    assert!(created);
    let (b, created) = reg.create(mk(), at(NOW + 1)).unwrap();
    assert!(!created);
    assert_eq!(a.task_id, b.task_id);
    assert_eq!(a.delivery_status, DeliveryStatus::Pending);
    assert_eq!(a.notify_policy, NotifyPolicy::DoneOnly);
    let sys = reg
        .create(
            NewTask {
                runtime: Some(Runtime::Subagent),
                task: "sys".into(),
                ..Default::default()
            },
            at(NOW),
        )
        .unwrap()
        .0;
    assert_eq!(sys.scope_kind, ScopeKind::System);
    assert_eq!(sys.delivery_status, DeliveryStatus::NotApplicable);
    assert_eq!(sys.notify_policy, NotifyPolicy::Silent);

    reg.finish(&a.task_id, Finish::new(TaskStatus::Cancelled), at(NOW + 10))
        .unwrap();
    let e = reg
        .finish(&a.task_id, Finish::new(TaskStatus::Succeeded), at(NOW + 20))
        .unwrap_err();
    assert!(matches!(e, TaskError::InvalidTransition { .. }), "{e}");
    assert!(reg.mark_running(&a.task_id, at(NOW + 30)).is_err());
    let t = reg.get(&a.task_id).unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Cancelled);
    assert_eq!(
        t.cleanup_after,
        Some(NOW + 10 + DEFAULT_TASK_RETENTION.as_millis() as i64)
    );
    // Normalization: a start before creation lowers createdAt.
    let n = reg.create(mk2(), at(NOW)).unwrap().0;
    let n = reg
        .update(&n.task_id, |t| {
            t.status = TaskStatus::Running;
            t.started_at = Some(NOW - 5);
            t.last_event_at = Some(NOW - 100);
            Ok(true)
        })
        .unwrap();
    assert_eq!(
        (n.created_at, n.started_at, n.last_event_at),
        (NOW - 100, Some(NOW - 5), Some(NOW - 5))
    );
}

fn mk2() -> NewTask {
    NewTask {
        runtime: Some(Runtime::Acp),
        task: "n".into(),
        ..Default::default()
    }
}

#[rstest]
fn strict_enum_parsing_names_task_and_column(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let l = ledger!(b, "strict_enum");
    let t = l.reg.create(mk2(), at(NOW)).unwrap().0;
    l.exec(
        "UPDATE task_runs SET notify_policy = 'loud' WHERE task_id = ?1",
        &t.task_id,
    );
    // A registry that loads the ledger, and the first registry's next read
    // (which reloads: another connection wrote), both refuse it.
    let e = l.reopen(RegistryOptions::default()).unwrap_err();
    let e2 = l.reg.list().unwrap_err();
    for e in [e, e2] {
        let msg = e.to_string();
        assert!(
            matches!(
                &e,
                TaskError::InvalidPersisted {
                    column: "notify_policy",
                    ..
                }
            ),
            "{msg}"
        );
        let names_db = match b {
            Backend::Sqlite => msg.contains("runs.sqlite"),
            Backend::Postgres => msg.contains("t_strict_enum"),
        };
        assert!(
            msg.contains(&t.task_id) && names_db && msg.contains("\"loud\""),
            "{msg}"
        );
    }
    // Left untouched, not treated as empty.
    assert_eq!(
        l.column("notify_policy", &t.task_id).as_deref(),
        Some("loud")
    );
}

#[test]
fn migrates_v1_and_refuses_newer() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("tasks/runs.sqlite");
    let c = lockstore::sqlite::open(&path, &SqliteOptions::default(), &store_v1()).unwrap();
    c.execute_batch(
        "INSERT INTO task_runs (task_id, runtime, requester_session_key, task, status, delivery_status, notify_policy, created_at)
           VALUES ('old1', 'cron', 'sess:9', 'nightly', 'succeeded', 'not-requested', 'silent', 1000);
         INSERT INTO task_delivery_state VALUES ('old1', '{\"channel\":\"c\"}', 5);
         INSERT INTO task_delivery_state VALUES ('orphan', NULL, NULL);",
    )
    .unwrap();
    drop(c);
    let reg = TaskRegistry::open(&path, RegistryOptions::default()).unwrap();
    let t = reg.get("old1").unwrap().unwrap();
    assert_eq!(t.delivery_status, DeliveryStatus::NotApplicable);
    assert_eq!(t.owner_key, "sess:9");
    assert_eq!(t.scope_kind, ScopeKind::Session);
    assert_eq!(t.version, 1);
    assert!(reg.delivery_state("old1").unwrap().is_some());
    assert!(reg.delivery_state("orphan").unwrap().is_none());
    let v: i64 = reg
        .store()
        .connection()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    // Cascade is in place after the migration.
    assert!(reg.delete("old1").unwrap());
    reg.store()
        .connection()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    drop(reg);
    let e = TaskRegistry::open(&path, RegistryOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            TaskError::Core(lockstore::Error::SchemaTooNew { found: 99, .. })
        ),
        "{e}"
    );
}

fn store_v1() -> Vec<&'static str> {
    lockstore::testing::TASK_MIGRATIONS[..1].to_vec()
}

#[rstest]
fn stale_copy_cannot_overwrite_a_newer_row(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let l = ledger!(b, "stale_copy");
    let reg = &l.reg;
    let t = reg.create(mk2(), at(NOW)).unwrap().0;
    let stale = t.clone();
    reg.mark_running(&t.task_id, at(NOW + 1)).unwrap(); // version 2
    let store = l.store();
    let mut s = stale;
    s.status = TaskStatus::Failed;
    assert_eq!(
        store.upsert_task_with_delivery_state(&s, None).unwrap(),
        WriteOutcome::Conflict(Some(2))
    );
    assert_eq!(
        store.load_snapshot().unwrap().tasks[&t.task_id].status,
        TaskStatus::Running
    );
    // The registry re-applies a patch on the durable row after another writer
    // (bypassing it) bumped the version.
    l.exec(
        "UPDATE task_runs SET progress_summary = 'ext', version = version + 1 WHERE task_id = ?1",
        &t.task_id,
    );
    let u = reg.bump_counter(&t.task_id, "k", at(NOW + 2)).unwrap();
    assert_eq!(u.progress_summary.as_deref(), Some("ext"));
    assert_eq!(u.version, 4);
}
