//! The task ledger across registries and hosts: coherence (a registry sees
//! every other writer's commits before it answers), ownership with a lease
//! and a fencing token (a stale owner's writes are refused after a takeover),
//! lease expiry judged on another host, a dead local owner lost at once, one
//! maintenance leader, and a PostgreSQL crash restart (`pg_ctl -m
//! immediate`) with reconnect. Hosts are played by registries with distinct
//! `PgOptions::host_id` in one process; an owner process is a re-exec of this
//! test binary (`child_claims_and_waits`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

use lockstore::tasks::*;
use rstest::rstest;

#[macro_use]
mod tasks_support;
use tasks_support::{pg_opts, Backend};

const NOW: i64 = 1_780_000_000_000;
const SEC: i64 = 1000;

fn at(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn queued(reg: &TaskRegistry, what: &str) -> TaskRecord {
    reg.create(
        NewTask {
            runtime: Some(Runtime::Subagent),
            task: what.into(),
            owner_key: "s".into(),
            ..Default::default()
        },
        at(NOW),
    )
    .unwrap()
    .0
}

#[rstest]
fn other_writers_commits_are_seen_before_reads(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let l = ledger!(b, "coherence");
    let a = &l.reg;
    let other = l.reopen_as("host-b", RegistryOptions::default()).unwrap();
    let t = queued(a, "c");
    assert!(
        other.get(&t.task_id).unwrap().is_some(),
        "B sees A's create"
    );
    other
        .record_progress(&t.task_id, Some("from B"), at(NOW + SEC))
        .unwrap();
    assert_eq!(
        a.get(&t.task_id)
            .unwrap()
            .unwrap()
            .progress_summary
            .as_deref(),
        Some("from B"),
        "A's memory follows B's commit"
    );
    // A write that bypasses lockstore is seen too.
    l.exec(
        "UPDATE task_runs SET label = 'raw', version = version + 1 WHERE task_id = ?1",
        &t.task_id,
    );
    assert_eq!(
        a.get(&t.task_id).unwrap().unwrap().label.as_deref(),
        Some("raw")
    );
    assert_eq!(
        other.by_owner_key("s").unwrap()[0].label.as_deref(),
        Some("raw")
    );
}

#[rstest]
fn a_reclaim_fences_the_previous_token(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let l = ledger!(b, "reclaim");
    let reg = &l.reg;
    let t = queued(reg, "r");
    let c1 = reg
        .claim(&t.task_id, Duration::from_secs(30), at(NOW))
        .unwrap();
    assert_eq!(c1.status, TaskStatus::Running);
    assert_eq!(c1.fencing_token, 1);
    assert_eq!(c1.lease_expires_at, Some(NOW + 30 * SEC));
    assert_eq!(c1.owner_host.as_deref(), reg.host_id());
    let r = reg
        .renew(&t.task_id, 1, Duration::from_secs(30), at(NOW + 10 * SEC))
        .unwrap();
    assert_eq!(r.lease_expires_at, Some(NOW + 40 * SEC));
    // The same process claims again (e.g. a restarted worker loop): new token.
    let c2 = reg
        .claim(&t.task_id, Duration::from_secs(30), at(NOW + 11 * SEC))
        .unwrap();
    assert_eq!(c2.fencing_token, 2);
    for e in [
        reg.record_progress_fenced(&t.task_id, 1, Some("late"), at(NOW + 12 * SEC))
            .unwrap_err(),
        reg.finish_fenced(
            &t.task_id,
            1,
            Finish::new(TaskStatus::Succeeded),
            at(NOW + 12 * SEC),
        )
        .unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                TaskError::Stale {
                    token: 1,
                    current: 2,
                    ..
                }
            ),
            "{e}"
        );
    }
    let done = reg
        .finish_fenced(
            &t.task_id,
            2,
            Finish::new(TaskStatus::Succeeded),
            at(NOW + 13 * SEC),
        )
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.lease_expires_at, None);
    assert!(matches!(
        reg.renew(&t.task_id, 2, Duration::from_secs(1), at(NOW + 14 * SEC))
            .unwrap_err(),
        TaskError::Stale { .. }
    ));
    assert_eq!(l.column("status", &t.task_id).as_deref(), Some("succeeded"));
}

/// Host A claims with a short lease and goes quiet (paused, cut off); host B
/// takes over once the lease has expired; A's late progress and finish are
/// refused and B's result stands.
#[test]
fn stale_owner_finish_is_refused_after_another_host_took_over() {
    let l = ledger!(Backend::Postgres, "takeover");
    let a = &l.reg;
    let hb = l.reopen_as("host-b", RegistryOptions::default()).unwrap();
    let t = queued(a, "x");
    let ca = a
        .claim(&t.task_id, Duration::from_secs(5), at(NOW))
        .unwrap();
    assert_eq!(
        (ca.fencing_token, ca.owner_host.as_deref()),
        (1, Some("host-a"))
    );
    // Lease still live: B may not take it (A's process is alive here, but B
    // judges another host's owner only by its lease).
    let e = hb
        .claim(&t.task_id, Duration::from_secs(5), at(NOW + 4 * SEC))
        .unwrap_err();
    assert!(matches!(e, TaskError::Held { .. }), "{e}");
    let cb = hb
        .claim(&t.task_id, Duration::from_secs(5), at(NOW + 6 * SEC))
        .unwrap();
    assert_eq!(
        (cb.fencing_token, cb.owner_host.as_deref()),
        (2, Some("host-b"))
    );
    // A wakes up.
    let e = a
        .renew(&t.task_id, 1, Duration::from_secs(5), at(NOW + 7 * SEC))
        .unwrap_err();
    assert!(
        matches!(
            e,
            TaskError::Stale {
                token: 1,
                current: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = a
        .finish_fenced(
            &t.task_id,
            1,
            Finish::new(TaskStatus::Failed).with_error("A's late result"),
            at(NOW + 7 * SEC),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            TaskError::Stale {
                token: 1,
                current: 2,
                ..
            }
        ),
        "{e}"
    );
    // Nothing of A's reached the row.
    assert_eq!(l.column("status", &t.task_id).as_deref(), Some("running"));
    assert_eq!(
        l.column("owner_host", &t.task_id).as_deref(),
        Some("host-b")
    );
    hb.finish_fenced(
        &t.task_id,
        2,
        Finish::new(TaskStatus::Succeeded),
        at(NOW + 8 * SEC),
    )
    .unwrap();
    let end = a.get(&t.task_id).unwrap().unwrap();
    assert_eq!(end.status, TaskStatus::Succeeded);
    assert_eq!(end.error, None);
}

/// A's lease expires; maintenance on host B marks the task lost exactly as
/// SQLite's maintenance marks a dead owner's task (status, error, endedAt,
/// the lost retention); A's own host would not (its process is alive). A's
/// late finish is then refused.
#[test]
fn lease_expiry_is_judged_on_another_host() {
    let l = ledger!(Backend::Postgres, "lease_expiry");
    let a = &l.reg;
    let hb = l.reopen_as("host-b", RegistryOptions::default()).unwrap();
    let t = queued(a, "x");
    a.claim(&t.task_id, Duration::from_secs(5), at(NOW))
        .unwrap();
    let opts = MaintenanceOptions::default();
    // Before expiry nobody marks it.
    let rep = hb
        .maintenance(MaintenanceMode::Apply, at(NOW + 4 * SEC), &opts)
        .unwrap();
    assert_eq!(rep.reconciled, 0, "{:?}", rep.actions);
    // After expiry: A's host still sees a live local owner ...
    let rep = a
        .maintenance(MaintenanceMode::Preview, at(NOW + 6 * SEC), &opts)
        .unwrap();
    assert_eq!(rep.reconciled, 0, "{:?}", rep.actions);
    // ... host B judges by the lease.
    let rep = hb
        .maintenance(MaintenanceMode::Apply, at(NOW + 6 * SEC), &opts)
        .unwrap();
    assert!(rep.leader);
    assert_eq!(rep.reconciled, 1, "{:?}", rep.actions);
    assert_eq!(rep.actions[0].action, "mark_lost");
    let lost = a.get(&t.task_id).unwrap().unwrap();
    assert_eq!(lost.status, TaskStatus::Lost);
    assert_eq!(lost.ended_at, Some(NOW + 6 * SEC));
    assert_eq!(
        lost.cleanup_after,
        Some(NOW + 6 * SEC + LOST_TASK_RETENTION.as_millis() as i64)
    );
    assert_eq!(lost.lease_expires_at, None);
    assert!(lost.error.as_deref().unwrap().contains("lease"), "{lost:?}");
    let e = a
        .finish_fenced(
            &t.task_id,
            1,
            Finish::new(TaskStatus::Succeeded),
            at(NOW + 7 * SEC),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            TaskError::Stale {
                status: TaskStatus::Lost,
                ..
            }
        ),
        "{e}"
    );
}

const CHILD_ENV: &str = "LOCKSTORE_TEST_TASK_CHILD";

/// Not a test on its own: the owner process of
/// `a_dead_local_owner_is_lost_at_once` (re-exec of this binary with
/// `LOCKSTORE_TEST_TASK_CHILD=<sqlite path or postgres url>|<task id>`):
/// claims the task with a one-hour lease, says so on stdout and waits.
#[test]
fn child_claims_and_waits() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (db, id) = spec.split_once('|').unwrap();
    let reg = if db.starts_with("postgres") {
        TaskRegistry::connect(db, RegistryOptions::default(), pg_opts("host-a")).unwrap()
    } else {
        TaskRegistry::open(db, RegistryOptions::default()).unwrap()
    };
    let c = reg.claim(id, Duration::from_secs(3600), at(NOW)).unwrap();
    // Its own line, past libtest's "test … " prefix and output capture.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nCLAIMED {}", c.fencing_token).unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line); // until killed
}

/// An owner process on this host is judged exactly: killed, it is lost at
/// the next sweep although its lease has an hour left; another host (which
/// can only judge the lease) leaves it alone.
#[rstest]
fn a_dead_local_owner_is_lost_at_once(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let l = ledger!(b, "dead_owner");
    let t = queued(&l.reg, "x");
    let db = l
        .url
        .clone()
        .unwrap_or_else(|| l.path.display().to_string());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_claims_and_waits",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{db}|{}", t.task_id))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut claimed = false;
    for line in out.lines() {
        let line = line.unwrap();
        if line.contains("CLAIMED ") {
            claimed = true;
            break;
        }
    }
    if !claimed {
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("child did not claim: {err}");
    }
    let owner = l.reg.get(&t.task_id).unwrap().unwrap();
    assert_eq!(owner.owner_pid, Some(child.id()));
    let opts = MaintenanceOptions::default();
    // Alive: nobody marks it.
    let rep = l
        .reg
        .maintenance(MaintenanceMode::Apply, at(NOW + SEC), &opts)
        .unwrap();
    assert_eq!(rep.reconciled, 0, "{:?}", rep.actions);
    child.kill().unwrap();
    child.wait().unwrap();
    if b == Backend::Postgres {
        let hb = l.reopen_as("host-b", RegistryOptions::default()).unwrap();
        let rep = hb
            .maintenance(MaintenanceMode::Apply, at(NOW + SEC), &opts)
            .unwrap();
        assert_eq!(
            rep.reconciled, 0,
            "another host judges only the lease: {:?}",
            rep.actions
        );
    }
    let rep = l
        .reg
        .maintenance(MaintenanceMode::Apply, at(NOW + SEC), &opts)
        .unwrap();
    assert_eq!(rep.reconciled, 1, "{:?}", rep.actions);
    let lost = l.reg.get(&t.task_id).unwrap().unwrap();
    assert_eq!(lost.status, TaskStatus::Lost);
    assert!(
        lost.error.as_deref().unwrap().contains("is dead"),
        "{lost:?}"
    );
}

/// While host A's sweep runs (held inside it by an observer), host B's sweep
/// is not the leader and does nothing; after A's sweep B leads.
#[test]
fn maintenance_has_one_leader_across_hosts() {
    let l = ledger!(Backend::Postgres, "leader");
    let a = Arc::new(l.reopen(RegistryOptions::default()).unwrap());
    let hb = l.reopen_as("host-b", RegistryOptions::default()).unwrap();
    // Work for a sweep: a terminal task without cleanupAfter.
    let t = queued(&l.reg, "x");
    l.reg
        .finish(&t.task_id, Finish::new(TaskStatus::Succeeded), at(NOW))
        .unwrap();
    l.exec(
        "UPDATE task_runs SET cleanup_after = NULL, version = version + 1 WHERE task_id = ?1",
        &t.task_id,
    );
    let (in_tx, in_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(Some(go_rx));
    let in_tx = Mutex::new(Some(in_tx));
    a.add_observer(Arc::new(move |e: &TaskEvent| {
        if let TaskEvent::Upserted { .. } = e {
            if let Some(tx) = in_tx.lock().unwrap().take() {
                tx.send(()).unwrap();
                go_rx.lock().unwrap().take().unwrap().recv().unwrap();
            }
        }
        Ok::<_, ObserverError>(())
    }));
    let opts = MaintenanceOptions::default();
    let a2 = a.clone();
    let o2 = opts.clone();
    let sweep = std::thread::spawn(move || {
        a2.maintenance(MaintenanceMode::Apply, at(NOW + SEC), &o2)
            .unwrap()
    });
    in_rx.recv().unwrap();
    let rep_b = hb
        .maintenance(MaintenanceMode::Apply, at(NOW + SEC), &opts)
        .unwrap();
    go_tx.send(()).unwrap();
    let rep_a = sweep.join().unwrap();
    assert!(rep_a.leader);
    assert_eq!(rep_a.cleanup_stamped, 1);
    assert!(!rep_b.leader, "B swept while A led: {:?}", rep_b.actions);
    assert!(rep_b.actions.is_empty());
    let rep_b = hb
        .maintenance(MaintenanceMode::Apply, at(NOW + SEC), &opts)
        .unwrap();
    assert!(rep_b.leader, "the lock is released after A's sweep");
}

/// `pg_ctl -m immediate` and a restart while a registry is in use: the
/// mutation issued while the server is down waits (reconnect with backoff)
/// and succeeds once it is back; every committed task is still there.
#[test]
fn a_postgres_crash_restart_loses_nothing_committed() {
    if tasks_support::pg_url("restart_probe").is_none() {
        return;
    }
    let cluster = lockstore_pg_cluster::Cluster::start().unwrap();
    let url = cluster.create_database("restart").unwrap();
    // A short pool wait: the registry's own backoff must bridge the outage
    // (r2d2's wait alone would hide it).
    let mut o = pg_opts("host-a");
    o.connect_timeout = Duration::from_millis(100);
    let reg = Arc::new(TaskRegistry::connect(&url, RegistryOptions::default(), o).unwrap());
    let mut ids = Vec::new();
    for i in 0..20 {
        let t = queued(&reg, &format!("t{i}"));
        reg.record_progress(&t.task_id, Some("before"), at(NOW + SEC))
            .unwrap();
        ids.push(t.task_id);
    }
    cluster.stop_immediate().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let r2 = reg.clone();
    let id0 = ids[0].clone();
    let writer = std::thread::spawn(move || {
        started_tx.send(()).unwrap();
        r2.record_progress(&id0, Some("during restart"), at(NOW + 2 * SEC))
    });
    started_rx.recv().unwrap();
    cluster.start_server().unwrap();
    let w = writer.join().unwrap();
    w.expect("the write issued while PostgreSQL was down succeeds after the restart");
    let fresh = TaskRegistry::connect(&url, RegistryOptions::default(), pg_opts("host-c")).unwrap();
    for reg in [&*reg, &fresh] {
        let all = reg.list().unwrap();
        assert_eq!(all.len(), 20);
        for t in &all {
            let want = if t.task_id == ids[0] {
                "during restart"
            } else {
                "before"
            };
            assert_eq!(t.progress_summary.as_deref(), Some(want), "{t:?}");
        }
    }
}

/// A quick figure, not a gate: `update`s per second on one task in a loop
/// (one registry, one thread), SQLite (synchronous FULL, group commit on)
/// vs PostgreSQL (the test cluster). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn updates_per_second_sqlite_vs_postgres() {
    const N: usize = 300;
    for b in [Backend::Sqlite, Backend::Postgres] {
        let l = ledger!(b, "bench");
        let t = queued(&l.reg, "bench");
        let start = std::time::Instant::now();
        for i in 0..N {
            l.reg
                .record_progress(&t.task_id, Some("p"), at(NOW + i as i64))
                .unwrap();
        }
        let el = start.elapsed();
        println!(
            "BENCH {b:?}: {N} updates in {:.2} s = {:.0} updates/s",
            el.as_secs_f64(),
            N as f64 / el.as_secs_f64()
        );
    }
}
