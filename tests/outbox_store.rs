//! Outbox store: transition guards, backoff, classification, TTL, prune, retry,
//! idempotent enqueue across processes, legacy import.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::outbox::legacy::import_legacy;
use lockstore::outbox::{
    Enqueued, Entry, Failure, NewMessage, Outbox, OutboxError, OutboxOptions, Outcome, Retention,
    RetryPolicy, Status,
};
use rstest::rstest;
use serde_json::json;

#[path = "support/outbox_backend.rs"]
mod support;
use support::{Backend, Db};

const LEASE: Duration = Duration::from_secs(60);

/// The instant `ms` milliseconds after the Unix epoch (the tests' clock).
fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.try_into().unwrap())
}

/// A fresh outbox database on `b` (`None`: PostgreSQL missing, skip).
macro_rules! db_or_skip {
    ($b:expr) => {
        match Db::new($b) {
            Some(d) => d,
            None => return,
        }
    };
}

fn msg(key: Option<&str>) -> NewMessage {
    NewMessage {
        channel: "tg".into(),
        target: "u1".into(),
        payload: json!({"text": "hi"}),
        idempotency_key: key.map(String::from),
        ..Default::default()
    }
}

fn claim_one(ob: &Outbox, now: i64) -> (Entry, String) {
    let mut v = ob.claim(1, LEASE, at(now)).unwrap();
    assert_eq!(v.len(), 1, "expected one due entry at {now}");
    let e = v.remove(0);
    let t = e.claim_token.clone().unwrap();
    (e, t)
}

fn retryable(e: &str) -> Failure {
    Failure {
        error: e.into(),
        ..Default::default()
    }
}

#[rstest]
fn enqueue_is_idempotent_by_key(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let a = ob.enqueue(&msg(Some("k")), at(1000)).unwrap();
    let b = ob.enqueue(&msg(Some("k")), at(2000)).unwrap();
    assert!(matches!(a, Enqueued::Created(_)));
    assert_eq!(b, Enqueued::Existing(a.id()));
    // Still existing after delivery (the tombstone keeps the key).
    let (e, t) = claim_one(&ob, 1000);
    assert_eq!(
        ob.ack(e.id, &t, at(1001)).unwrap(),
        Outcome::Applied(Status::Delivered)
    );
    assert_eq!(
        ob.enqueue(&msg(Some("k")), at(3000)).unwrap(),
        Enqueued::Existing(a.id())
    );
    let tomb = ob.get(a.id()).unwrap().unwrap();
    assert_eq!(tomb.payload, None);
    assert_eq!(tomb.idempotency_key.as_deref(), Some("k"));
    // No key: always a new row.
    assert_ne!(
        ob.enqueue(&msg(None), at(1)).unwrap().id(),
        ob.enqueue(&msg(None), at(1)).unwrap().id()
    );
}

#[rstest]
fn claim_is_oldest_first_due_only_and_exclusive(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let ids: Vec<i64> = (0..5)
        .map(|i| ob.enqueue(&msg(None), at(100 + i)).unwrap().id())
        .collect();
    assert!(
        ob.claim(10, LEASE, at(99)).unwrap().is_empty(),
        "nothing due before enqueue time"
    );
    let a = ob.claim(2, LEASE, at(1000)).unwrap();
    let b = ob.claim(10, LEASE, at(1000)).unwrap();
    assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    assert!(a.iter().chain(&b).all(|e| e.status == Status::InFlight
        && e.claimed_by.as_ref().unwrap().pid == std::process::id()
        && e.lease_expires_at == Some(1000 + 60_000)));
    let tokens: std::collections::HashSet<_> =
        a.iter().chain(&b).map(|e| e.claim_token.clone()).collect();
    assert_eq!(tokens.len(), 5, "a fresh token per claimed entry");
    assert!(ob.claim(10, LEASE, at(1000)).unwrap().is_empty());
}

/// Every late or stale transition is a reported no-op and leaves the row as it was.
#[rstest]
fn transition_guards_are_reported_noops(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let check = |id: i64, f: &dyn Fn() -> Outcome, want: Outcome| {
        let before = ob.get(id).unwrap();
        assert_eq!(f(), want);
        assert_eq!(
            ob.get(id).unwrap(),
            before,
            "row changed by a stale transition"
        );
    };

    // Double ack; fail after ack (no resurrection of a delivered row).
    let id = ob.enqueue(&msg(Some("a")), at(0)).unwrap().id();
    let (_, t) = claim_one(&ob, 0);
    assert_eq!(
        ob.mark_send_started(id, &t, at(1)).unwrap(),
        Outcome::Applied(Status::InFlight)
    );
    assert_eq!(
        ob.ack(id, &t, at(2)).unwrap(),
        Outcome::Applied(Status::Delivered)
    );
    let del = Outcome::Stale(Some(Status::Delivered));
    check(id, &|| ob.ack(id, &t, at(3)).unwrap(), del);
    check(
        id,
        &|| ob.fail(id, &t, &retryable("late"), at(3)).unwrap(),
        del,
    );
    check(
        id,
        &|| {
            ob.fail(
                id,
                &t,
                &Failure {
                    permanent: true,
                    ..retryable("x")
                },
                at(3),
            )
            .unwrap()
        },
        del,
    );
    check(id, &|| ob.mark_unknown(id, &t, "x", at(3)).unwrap(), del);
    check(id, &|| ob.mark_send_started(id, &t, at(3)).unwrap(), del);
    check(id, &|| ob.release(id, &t).unwrap(), del);
    check(id, &|| ob.retry(id, at(3)).unwrap(), del);

    // Ack after rescue: the lease expired, rescue took the claim back.
    let id = ob.enqueue(&msg(Some("b")), at(10)).unwrap().id();
    let (_, t) = claim_one(&ob, 10);
    let r = ob.rescue(at(10 + 60_000), false).unwrap();
    assert_eq!((r.to_pending, r.to_unknown), (1, 0));
    check(
        id,
        &|| ob.ack(id, &t, at(70_001)).unwrap(),
        Outcome::Stale(Some(Status::Pending)),
    );
    check(
        id,
        &|| ob.fail(id, &t, &retryable("x"), at(70_001)).unwrap(),
        Outcome::Stale(Some(Status::Pending)),
    );
    assert_eq!(
        ob.get(id).unwrap().unwrap().attempt_count,
        0,
        "rescue consumes no attempt"
    );

    // Stale token: a newer claim exists; the old token moves nothing.
    let (_, t2) = claim_one(&ob, 70_002);
    assert_ne!(t, t2);
    let cur = Outcome::Stale(Some(Status::InFlight));
    check(id, &|| ob.ack(id, &t, at(70_003)).unwrap(), cur);
    check(
        id,
        &|| ob.mark_send_started(id, &t, at(70_003)).unwrap(),
        cur,
    );
    check(
        id,
        &|| ob.fail(id, &t, &retryable("x"), at(70_003)).unwrap(),
        cur,
    );
    check(id, &|| ob.ack(id, "bogus", at(70_003)).unwrap(), cur);
    assert_eq!(
        ob.ack(id, &t2, at(70_004)).unwrap(),
        Outcome::Applied(Status::Delivered)
    );

    // Fail after expire: the TTL passed at send time.
    let mut m = msg(Some("c"));
    m.ttl = Some(Duration::from_secs(1));
    let id = ob.enqueue(&m, at(100_000)).unwrap().id();
    let (_, t) = claim_one(&ob, 100_500);
    assert_eq!(
        ob.mark_send_started(id, &t, at(101_000)).unwrap(),
        Outcome::Applied(Status::Expired)
    );
    let exp = Outcome::Stale(Some(Status::Expired));
    check(
        id,
        &|| ob.fail(id, &t, &retryable("x"), at(101_001)).unwrap(),
        exp,
    );
    check(id, &|| ob.ack(id, &t, at(101_001)).unwrap(), exp);

    // Unknown row: stale for the worker; only the operator retry moves it.
    let id = ob.enqueue(&msg(Some("d")), at(200_000)).unwrap().id();
    let (_, t) = claim_one(&ob, 200_000);
    ob.mark_send_started(id, &t, at(200_001)).unwrap();
    let r = ob.rescue(at(200_000 + 60_000), false).unwrap();
    assert_eq!((r.to_pending, r.to_unknown), (0, 1));
    check(
        id,
        &|| ob.ack(id, &t, at(260_001)).unwrap(),
        Outcome::Stale(Some(Status::Unknown)),
    );
    assert_eq!(
        ob.retry(id, at(260_002)).unwrap(),
        Outcome::Applied(Status::Pending)
    );

    // No such row.
    assert_eq!(ob.ack(9999, "x", at(0)).unwrap(), Outcome::Stale(None));
}

#[rstest]
fn rescue_judges_claimer_liveness_and_lease(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    for k in ["alive", "dead-unstarted", "dead-started"] {
        ob.enqueue(&msg(Some(k)), at(0)).unwrap();
    }
    let v = ob.claim(3, LEASE, at(0)).unwrap();
    ob.mark_send_started(v[2].id, v[2].claim_token.as_deref().unwrap(), at(1))
        .unwrap();
    // Pretend rows 2 and 3 were claimed by a process that has exited.
    let mut child = Command::new("true").spawn().unwrap();
    let mut ghost = lockstore::ProcessIdentity::current();
    ghost.pid = child.id();
    ghost.start_time = None;
    child.wait().unwrap();
    d.exec(
        "UPDATE {t} SET claimed_by = {p1} WHERE id IN ({p2}, {p3})",
        &serde_json::to_string(&ghost).unwrap(),
        v[1].id,
        v[2].id,
    );
    // Lease not expired: only the dead claimer's rows are rescued.
    let r = ob.rescue(at(10), false).unwrap();
    assert_eq!((r.to_pending, r.to_unknown, r.left_alive), (1, 1, 1));
    assert_eq!(ob.get(v[0].id).unwrap().unwrap().status, Status::InFlight);
    assert_eq!(ob.get(v[1].id).unwrap().unwrap().status, Status::Pending);
    assert_eq!(ob.get(v[2].id).unwrap().unwrap().status, Status::Unknown);
    // Idempotent adapter: a started send goes back to pending after the lease.
    ob.mark_send_started(v[0].id, v[0].claim_token.as_deref().unwrap(), at(11))
        .unwrap();
    let r = ob.rescue(at(60_000), true).unwrap();
    assert_eq!((r.to_pending, r.to_unknown), (1, 0));
    assert_eq!(ob.get(v[0].id).unwrap().unwrap().attempt_count, 0);
}

#[rstest]
fn backoff_schedule_jitter_bounds_and_exhaustion(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let id = ob.enqueue(&msg(None), at(0)).unwrap().id();
    let mut now = 0;
    let table = [5_000, 25_000, 120_000, 600_000, 600_000];
    for (i, base) in table.iter().enumerate() {
        let (_, t) = claim_one(&ob, now);
        assert_eq!(
            ob.fail(id, &t, &retryable("ETIMEDOUT"), at(now)).unwrap(),
            Outcome::Applied(Status::Pending)
        );
        let e = ob.get(id).unwrap().unwrap();
        assert_eq!(e.attempt_count, i as i64 + 1);
        let j = e.backoff_jitter_ms.unwrap();
        assert!(
            (0..=base / 5).contains(&j),
            "jitter {j} outside [0, 20% of {base}]"
        );
        assert_eq!(e.next_attempt_at, now + base + j);
        assert!(
            ob.claim(1, LEASE, at(e.next_attempt_at - 1))
                .unwrap()
                .is_empty(),
            "claimed before due"
        );
        now = e.next_attempt_at;
    }
    // The sixth failure exceeds 5 retries: dead letter.
    let (_, t) = claim_one(&ob, now);
    assert_eq!(
        ob.fail(id, &t, &retryable("ETIMEDOUT"), at(now)).unwrap(),
        Outcome::Applied(Status::Dead)
    );
    let e = ob.get(id).unwrap().unwrap();
    assert_eq!(
        (e.attempt_count, e.terminal_reason.as_deref()),
        (6, Some("attempts_exhausted"))
    );
    assert!(e.payload.is_some(), "dead letters keep their payload");
}

#[rstest]
fn jitter_varies_and_policy_is_configurable(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let opts = OutboxOptions {
        retry: RetryPolicy {
            backoff: vec![Duration::from_secs(1)],
            max_retries: 1,
            jitter: 0.5,
        },
        ..Default::default()
    };
    let ob = d.open_with(opts);
    let mut js = std::collections::HashSet::new();
    for _ in 0..20 {
        let id = ob.enqueue(&msg(None), at(0)).unwrap().id();
        let (_, t) = claim_one(&ob, 0);
        ob.fail(id, &t, &retryable("x"), at(0)).unwrap();
        let e = ob.get(id).unwrap().unwrap();
        let j = e.backoff_jitter_ms.unwrap();
        assert!((0..=500).contains(&j));
        assert_eq!(e.next_attempt_at, 1000 + j);
        js.insert(j);
        let (_, t) = claim_one(&ob, 2000);
        assert_eq!(
            ob.fail(id, &t, &retryable("x"), at(2000)).unwrap(),
            Outcome::Applied(Status::Dead)
        );
    }
    assert!(js.len() > 5, "jitter does not vary: {js:?}");
}

#[rstest]
fn retry_after_wins_and_permanent_is_dead(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let id = ob.enqueue(&msg(None), at(0)).unwrap().id();
    let (_, t) = claim_one(&ob, 0);
    let f = Failure {
        retry_after: Some(Duration::from_secs(42)),
        ..retryable("429 Too Many Requests")
    };
    ob.fail(id, &t, &f, at(10)).unwrap();
    let e = ob.get(id).unwrap().unwrap();
    assert_eq!(
        (e.next_attempt_at, e.status, e.attempt_count),
        (42_010, Status::Pending, 1)
    );

    for (err, adapter_permanent) in [
        ("403 Forbidden: bot was blocked by the user", false),
        ("Bad Request: CHAT NOT FOUND", false),
        ("the bot is not a member of the channel", false),
        ("anything at all", true),
    ] {
        let id = ob.enqueue(&msg(None), at(0)).unwrap().id();
        let (_, t) = claim_one(&ob, 1);
        let f = Failure {
            permanent: adapter_permanent,
            ..retryable(err)
        };
        assert_eq!(
            ob.fail(id, &t, &f, at(1)).unwrap(),
            Outcome::Applied(Status::Dead),
            "{err}"
        );
        let e = ob.get(id).unwrap().unwrap();
        assert_eq!(e.error_class.as_deref(), Some("permanent"));
        assert_eq!(e.last_error.as_deref(), Some(err));
    }
}

#[rstest]
fn ttl_expiry(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let opts = OutboxOptions {
        default_ttl: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let ob = d.open_with(opts);
    let a = ob.enqueue(&msg(None), at(0)).unwrap().id(); // default TTL 5 s
    let mut m = msg(None);
    m.ttl = Some(Duration::from_secs(60));
    let b = ob.enqueue(&m, at(0)).unwrap().id();
    assert_eq!(ob.expire(at(4_999)).unwrap(), 0);
    assert_eq!(ob.expire(at(5_000)).unwrap(), 1);
    assert_eq!(ob.get(a).unwrap().unwrap().status, Status::Expired);
    // claim() expires first: nothing past its TTL is ever claimed.
    assert!(ob.claim(10, LEASE, at(60_000)).unwrap().is_empty());
    assert_eq!(ob.get(b).unwrap().unwrap().status, Status::Expired);
    // Operator retry of an expired row clears the passed TTL.
    assert_eq!(
        ob.retry(b, at(70_000)).unwrap(),
        Outcome::Applied(Status::Pending)
    );
    assert_eq!(ob.claim(10, LEASE, at(70_000)).unwrap().len(), 1);
    let bad = NewMessage {
        ttl: Some(Duration::ZERO),
        ..msg(None)
    };
    assert!(ob.enqueue(&bad, at(0)).is_err());
}

#[rstest]
fn prune_guards(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let day = 86_400_000;
    // One row per status, completed (or queued) at t = 0.
    let mk = |k: &str| ob.enqueue(&msg(Some(k)), at(0)).unwrap().id();
    let (pend, infl, deli, dead, unk) = (mk("p"), mk("i"), mk("d"), mk("x"), mk("u"));
    let v = ob.claim(5, LEASE, at(0)).unwrap();
    let tok = |id: i64| {
        v.iter()
            .find(|e| e.id == id)
            .unwrap()
            .claim_token
            .clone()
            .unwrap()
    };
    ob.ack(deli, &tok(deli), at(0)).unwrap();
    ob.fail(
        dead,
        &tok(dead),
        &Failure {
            permanent: true,
            ..retryable("x")
        },
        at(0),
    )
    .unwrap();
    ob.mark_unknown(unk, &tok(unk), "timeout", at(0)).unwrap();
    let mut m = msg(Some("e"));
    m.ttl = Some(Duration::from_millis(1));
    let exp = ob.enqueue(&m, at(0)).unwrap().id();
    ob.expire(at(1)).unwrap();
    // The pending row was claimed as well; give it back.
    assert!(ob.release(pend, &tok(pend)).unwrap().applied());
    let _ = infl;

    assert!(matches!(
        ob.prune(&Retention::all(Duration::ZERO), at(40 * day), false),
        Err(OutboxError::InvalidPruneAge {
            status: Status::Delivered,
            age: Duration::ZERO,
            ..
        })
    ));
    // Under 1 ms is as good as zero.
    assert!(ob
        .prune(
            &Retention::all(Duration::from_micros(500)),
            at(40 * day),
            false
        )
        .is_err());
    assert!(ob
        .prune(
            &Retention {
                dead: Duration::ZERO,
                ..Default::default()
            },
            at(40 * day),
            false
        )
        .is_err());
    // Default retention 30 days: nothing is old enough at day 29.
    let r = ob
        .prune(&Retention::default(), at(29 * day), false)
        .unwrap();
    assert_eq!((r.delivered, r.dead, r.expired), (0, 0, 0));
    let r = ob.prune(&Retention::default(), at(31 * day), true).unwrap();
    assert_eq!((r.delivered, r.dead, r.expired, r.dry_run), (1, 1, 1, true));
    assert_eq!(ob.list(None, 100).unwrap().len(), 6, "dry run deleted rows");
    let r = ob
        .prune(&Retention::default(), at(31 * day), false)
        .unwrap();
    assert_eq!((r.delivered, r.dead, r.expired), (1, 1, 1));
    let left: Vec<(i64, Status)> = ob
        .list(None, 100)
        .unwrap()
        .iter()
        .map(|e| (e.id, e.status))
        .collect();
    assert_eq!(
        left,
        [
            (pend, Status::Pending),
            (infl, Status::InFlight),
            (unk, Status::Unknown)
        ]
    );
    assert!(ob.get(exp).unwrap().is_none());
}

#[rstest]
fn stats_counts(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let ob = d.open();
    for i in 0..3 {
        ob.enqueue(&msg(None), at(i * 1000)).unwrap();
    }
    let (e, t) = claim_one(&ob, 5000);
    ob.fail(
        e.id,
        &t,
        &Failure {
            permanent: true,
            ..retryable("x")
        },
        at(5000),
    )
    .unwrap();
    let s = ob.stats(at(1500)).unwrap();
    assert_eq!(s.by_status[&Status::Pending], 2);
    assert_eq!(s.by_status[&Status::Dead], 1);
    assert_eq!(s.due_now, 1);
    assert_eq!(s.oldest_pending_queued_at, Some(at(1000)));
    assert_eq!(s.oldest_dead_at, Some(at(5000)));
}

const CHILD_ENV: &str = "OUTBOX_TEST_ENQUEUE_CHILD";

/// Child role: wait for "go" on stdin, enqueue keys 0..100, print created ids.
#[test]
fn enqueue_child_role() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ob = support::open_location(Path::new(&db), OutboxOptions::default(), None);
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for k in 0..100 {
        if let Enqueued::Created(id) = ob.enqueue(&msg(Some(&format!("key-{k}"))), at(0)).unwrap() {
            println!("created {id}");
        }
    }
}

#[rstest]
fn idempotent_enqueue_under_8_processes(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let db = d.location.clone();
    drop(d.open());
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = (0..8)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "enqueue_child_role",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &db)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outs: Vec<_> = kids
        .iter_mut()
        .map(|k| std::io::BufReader::new(k.stdout.take().unwrap()))
        .collect();
    for o in &mut outs {
        let mut l = String::new();
        while !l.trim_end().ends_with("ready") {
            l.clear();
            assert!(
                o.read_line(&mut l).unwrap() > 0,
                "child exited before ready"
            );
        }
    }
    for k in &mut kids {
        k.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let mut created = 0;
    for (k, o) in kids.iter_mut().zip(outs) {
        created += o
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("created "))
            .count();
        assert!(k.wait().unwrap().success());
    }
    assert_eq!(created, 100, "exactly one process creates each key");
    let ob = d.open();
    let rows = ob.list(None, 10_000).unwrap();
    assert_eq!(rows.len(), 100, "one row per key");
}

#[rstest]
fn legacy_import_twice_imports_nothing_twice(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let q = d.dir.path().join("legacy/delivery-queue");
    std::fs::create_dir_all(q.join("failed")).unwrap();
    let entry = |id: &str, retry: i64| {
        json!({"id": id, "enqueuedAt": 1_000, "channel": "telegram", "to": "123",
               "accountId": "acc", "payloads": [{"text": id}], "retryCount": retry,
               "lastAttemptAt": 2_000, "lastError": "ETIMEDOUT"})
        .to_string()
    };
    std::fs::write(q.join("a.json"), entry("a", 0)).unwrap();
    std::fs::write(q.join("b.json"), entry("b", 2)).unwrap();
    std::fs::write(q.join("failed/c.json"), entry("c", 5)).unwrap();
    std::fs::write(q.join("bad.json"), "{not json").unwrap();
    std::fs::write(
        q.join("noto.json"),
        r#"{"id":"x","enqueuedAt":1,"channel":"tg"}"#,
    )
    .unwrap();
    let backup: Vec<_> = ["a.json", "b.json", "failed/c.json"]
        .iter()
        .map(|f| (q.join(f), std::fs::read(q.join(f)).unwrap()))
        .collect();

    let ob = d.open();
    let r = import_legacy(&ob, d.dir.path().join("legacy"), at(10_000)).unwrap();
    assert_eq!(
        (r.imported, r.existing, r.renamed, r.malformed.len()),
        (3, 0, 3, 2)
    );
    assert!(
        q.join("bad.json").exists() && q.join("noto.json").exists(),
        "malformed files left in place"
    );
    assert!(q.join("a.json.imported").exists() && !q.join("a.json").exists());
    let a = ob.get_by_key("legacy:a").unwrap().unwrap();
    assert_eq!(
        (a.status, a.next_attempt_at, a.target.as_str()),
        (Status::Pending, 1_000, "123")
    );
    assert_eq!(a.payload.unwrap()["payloads"][0]["text"], "a");
    let b = ob.get_by_key("legacy:b").unwrap().unwrap();
    assert_eq!((b.attempt_count, b.next_attempt_at), (2, 2_000 + 25_000));
    assert_eq!(
        ob.get_by_key("legacy:c").unwrap().unwrap().status,
        Status::Dead
    );

    // Second import: the files are aside; put copies back to prove the key dedupe too.
    let r = import_legacy(&ob, d.dir.path().join("legacy"), at(20_000)).unwrap();
    assert_eq!((r.imported, r.existing), (0, 0));
    for (p, bytes) in &backup {
        std::fs::write(p, bytes).unwrap();
    }
    let r = import_legacy(&ob, &q, at(30_000)).unwrap();
    assert_eq!((r.imported, r.existing), (0, 3));
    assert_eq!(ob.list(None, 100).unwrap().len(), 3);
}

#[rstest]
fn bad_input_is_a_typed_error_naming_the_file(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let e = ob
        .enqueue(
            &NewMessage {
                target: String::new(),
                ..msg(None)
            },
            at(0),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            OutboxError::EmptyField {
                field: "target",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&*ob.path().to_string_lossy()), "{e}");
    let e = ob
        .prune(
            &Retention {
                dead: Duration::ZERO,
                ..Default::default()
            },
            at(0),
            false,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            OutboxError::InvalidPruneAge {
                status: Status::Dead,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        "inflight".parse::<Status>(),
        Err(OutboxError::UnknownStatus { value }) if value == "inflight"
    ));
    use lockstore::outbox::adapters::{from_spec, AdapterSpecError};
    let t = Duration::from_secs(1);
    assert!(
        matches!(from_spec("file:", t), Err(AdapterSpecError::MissingPath { spec }) if spec == "file:")
    );
    assert!(matches!(
        from_spec("exec:  ", t),
        Err(AdapterSpecError::MissingCommand { .. })
    ));
    assert!(
        matches!(from_spec("smtp:x", t), Err(AdapterSpecError::UnknownKind { spec }) if spec == "smtp:x")
    );
    assert!(from_spec("file:/dev/null", t).is_ok());
}

#[rstest]
fn renew_extends_the_lease_under_the_claim_token_only(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let id = ob.enqueue(&msg(Some("renew")), at(0)).unwrap().id();
    let (e, t) = claim_one(&ob, 0);
    assert_eq!(e.lease_expires_at, Some(60_000));
    ob.mark_send_started(id, &t, at(1)).unwrap();
    // Renewed at 50 s: the lease now ends at 110 s, so a rescue at 60 s (when
    // the original lease would have ended) leaves the claim alone.
    assert_eq!(
        ob.renew(id, &t, LEASE, at(50_000)).unwrap(),
        Outcome::Applied(Status::InFlight)
    );
    assert_eq!(ob.get(id).unwrap().unwrap().lease_expires_at, Some(110_000));
    let r = ob.rescue(at(60_000), false).unwrap();
    assert_eq!((r.to_pending, r.to_unknown, r.left_alive), (0, 0, 1));
    // A wrong token renews nothing.
    assert_eq!(
        ob.renew(id, "not-the-token", LEASE, at(70_000)).unwrap(),
        Outcome::Stale(Some(Status::InFlight))
    );
    assert_eq!(ob.get(id).unwrap().unwrap().lease_expires_at, Some(110_000));
    // Once the lease ends the claim is rescued; a late renewal is stale and
    // does not resurrect it.
    let r = ob.rescue(at(110_000), false).unwrap();
    assert_eq!(r.to_unknown, 1);
    assert_eq!(
        ob.renew(id, &t, LEASE, at(110_001)).unwrap(),
        Outcome::Stale(Some(Status::Unknown))
    );
    let row = ob.get(id).unwrap().unwrap();
    assert_eq!((row.status, row.lease_expires_at), (Status::Unknown, None));
    assert_eq!(
        ob.renew(9999, "x", LEASE, at(0)).unwrap(),
        Outcome::Stale(None)
    );
}
