//! The outbox on PostgreSQL across hosts: fencing (a stale claimer's late
//! transitions are refused after a takeover), leases judged per host, claims
//! with `FOR UPDATE SKIP LOCKED` never shared, a paused (SIGSTOP) worker
//! process whose late ack is refused, and a PostgreSQL crash-restart
//! (`pg_ctl -m immediate`) mid-run that loses nothing acknowledged.
//!
//! "Hosts" are handles with distinct `PgOptions::host_id` in one process (or
//! a child process). Lease expiry is driven by the injected clock (`now`),
//! not by sleeping.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::outbox::worker::{run, ChannelAdapter, Delivery, WorkerOptions};
use lockstore::outbox::{Entry, Failure, NewMessage, Outbox, OutboxOptions, Outcome, Status};
use lockstore::postgres::PgOptions;

#[path = "support/outbox_backend.rs"]
mod support;
use support::{Backend, Db};

const LEASE: Duration = Duration::from_secs(1);

/// The child worker's lease (real clock): long enough that a loaded machine
/// never lets it lapse between the child's claim and the parent's checks.
const CHILD_LEASE: Duration = Duration::from_secs(30);

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.try_into().unwrap())
}

fn msg(key: &str) -> NewMessage {
    NewMessage {
        channel: "tg".into(),
        target: "u1".into(),
        payload: serde_json::json!({"text": key}),
        idempotency_key: Some(key.into()),
        ..Default::default()
    }
}

/// The fencing token a PostgreSQL claim token starts with.
fn fence(token: &str) -> i64 {
    token.split('-').next().unwrap().parse().unwrap()
}

macro_rules! pg_or_skip {
    () => {
        match Db::new(Backend::Postgres) {
            Some(d) => d,
            None => return,
        }
    };
}

#[test]
fn stale_ack_after_takeover_is_refused_and_the_fencing_token_increases() {
    let d = pg_or_skip!();
    let a = d.open_as_host("host-a");
    let b = d.open_as_host("host-b");
    assert_eq!((a.backend(), a.host_id()), ("postgres", Some("host-a")));
    let id = a.enqueue(&msg("k1"), at(0)).unwrap().id();
    let ea = a.claim(1, LEASE, at(0)).unwrap().remove(0);
    let ta = ea.claim_token.clone().unwrap();
    assert_eq!(
        a.mark_send_started(id, &ta, at(1)).unwrap(),
        Outcome::Applied(Status::InFlight)
    );
    // Host A is another host for B: judged by its lease only, still valid.
    let r = b.rescue(at(999), true).unwrap();
    assert_eq!((r.to_pending, r.left_alive), (0, 1));
    // Past the lease, B takes over and claims again with a newer token.
    let r = b.rescue(at(1001), true).unwrap();
    assert_eq!(r.to_pending, 1);
    let eb = b.claim(1, LEASE, at(1002)).unwrap().remove(0);
    let tb = eb.claim_token.clone().unwrap();
    assert_eq!(eb.id, id);
    assert!(fence(&tb) > fence(&ta), "{tb} after {ta}");
    // A's late transitions are refused and change nothing.
    let stale = Outcome::Stale(Some(Status::InFlight));
    assert_eq!(a.renew(id, &ta, LEASE, at(1003)).unwrap(), stale);
    assert_eq!(a.mark_send_started(id, &ta, at(1003)).unwrap(), stale);
    assert_eq!(a.ack(id, &ta, at(1003)).unwrap(), stale);
    let f = Failure {
        error: "x".into(),
        ..Default::default()
    };
    assert_eq!(a.fail(id, &ta, &f, at(1003)).unwrap(), stale);
    assert_eq!(a.mark_unknown(id, &ta, "?", at(1003)).unwrap(), stale);
    let now = a.get(id).unwrap().unwrap();
    assert_eq!(now.claim_token.as_deref(), Some(tb.as_str()));
    assert_eq!((now.status, now.send_started_at), (Status::InFlight, None));
    // B completes; A's ack after that is still refused: delivered once.
    assert_eq!(
        b.ack(id, &tb, at(1004)).unwrap(),
        Outcome::Applied(Status::Delivered)
    );
    assert_eq!(
        a.ack(id, &ta, at(1005)).unwrap(),
        Outcome::Stale(Some(Status::Delivered))
    );
    let done = a.get(id).unwrap().unwrap();
    assert_eq!((done.delivered_at, done.attempt_count), (Some(1004), 0));
}

#[test]
fn a_claimer_on_this_host_is_judged_exactly_one_on_another_by_its_lease() {
    let d = pg_or_skip!();
    let a = d.open_as_host("host-a");
    let b = d.open_as_host("host-b");
    let id = a.enqueue(&msg("k"), at(0)).unwrap().id();
    a.claim(1, Duration::from_secs(60), at(0)).unwrap();
    // The claimer (recorded under host-a) is a process that has exited.
    let mut child = Command::new("true").spawn().unwrap();
    let mut ghost = lockstore::ProcessIdentity::current();
    ghost.pid = child.id();
    ghost.start_time = None;
    child.wait().unwrap();
    d.exec(
        "UPDATE {t} SET claimed_by = {p1} WHERE id = {p2} OR id = {p3}",
        &serde_json::to_string(&ghost).unwrap(),
        id,
        id,
    );
    // Host B cannot see host A's processes: the lease (60 s) holds.
    let r = b.rescue(at(10), false).unwrap();
    assert_eq!((r.to_pending, r.left_alive), (0, 1));
    assert_eq!(b.get(id).unwrap().unwrap().status, Status::InFlight);
    // Host A knows its pid is gone: rescued at once.
    let r = a.rescue(at(10), false).unwrap();
    assert_eq!((r.to_pending, r.left_alive), (1, 0));
    assert_eq!(a.get(id).unwrap().unwrap().status, Status::Pending);
}

#[test]
fn concurrent_batched_claims_across_hosts_never_share_an_entry() {
    let d = pg_or_skip!();
    let ob = d.open();
    for i in 0..400 {
        ob.enqueue(&msg(&format!("k{i}")), at(0)).unwrap();
    }
    let seen = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for h in 0..4 {
            let (d, seen) = (&d, &seen);
            s.spawn(move || {
                let ob = d.open_as_host(&format!("host-{h}"));
                loop {
                    let v = ob.claim(64, LEASE, at(1)).unwrap();
                    if v.is_empty() {
                        return;
                    }
                    for e in v {
                        let t = e.claim_token.as_deref().unwrap();
                        assert!(ob.ack(e.id, t, at(2)).unwrap().applied());
                        seen.lock().unwrap().push(e.id);
                    }
                }
            });
        }
    });
    let seen = seen.into_inner().unwrap();
    let uniq: HashSet<_> = seen.iter().collect();
    assert_eq!(
        (seen.len(), uniq.len()),
        (400, 400),
        "every entry claimed exactly once"
    );
    let s = ob.stats(at(3)).unwrap();
    assert_eq!(s.by_status[&Status::Delivered], 400);
}

const CHILD_ENV: &str = "PG_OUTBOX_PAUSED_CHILD";

/// Child role (host "host-a"): claim one entry with a [`CHILD_LEASE`], start the
/// send, print "claimed <id> <token>", wait for a line on stdin, then ack and
/// print the outcome.
#[test]
fn paused_child_role() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut pg = PgOptions::default();
    pg.host_id = "host-a".into();
    let ob = Outbox::connect(&url, OutboxOptions::default(), pg).unwrap();
    let e = ob
        .claim(1, CHILD_LEASE, SystemTime::now())
        .unwrap()
        .remove(0);
    let t = e.claim_token.clone().unwrap();
    assert!(ob
        .mark_send_started(e.id, &t, SystemTime::now())
        .unwrap()
        .applied());
    println!("claimed {} {t}", e.id);
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let out = ob.ack(e.id, &t, SystemTime::now()).unwrap();
    println!("ack {}", serde_json::to_string(&out).unwrap());
}

#[test]
fn a_worker_paused_past_its_lease_cannot_ack_after_a_takeover() {
    let d = pg_or_skip!();
    let b = d.open_as_host("host-b");
    let id = b.enqueue(&msg("once"), SystemTime::now()).unwrap().id();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "paused_child_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &d.location)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // The harness prints "test paused_child_role ... " before the child's
    // own output on the same line.
    while !line.contains("claimed ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
    }
    let parts: Vec<&str> = line[line.find("claimed ").unwrap()..]
        .split_whitespace()
        .collect();
    assert_eq!(parts[1].parse::<i64>().unwrap(), id);
    let ta = parts[2].to_string();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // Past the child's lease (on the injected clock): host B takes over.
    let later = SystemTime::now() + CHILD_LEASE + Duration::from_secs(1);
    assert_eq!(b.rescue(later, true).unwrap().to_pending, 1);
    let e = b.claim(1, LEASE, later).unwrap().remove(0);
    let tb = e.claim_token.unwrap();
    assert!(fence(&tb) > fence(&ta));
    assert!(b.mark_send_started(id, &tb, later).unwrap().applied());
    // Resume the child while B's send is in flight: its late ack is refused
    // (the stale-completion bug class of River #1302).
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "child: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        rest.contains(r#"ack {"outcome":"stale","status":"in_flight"}"#),
        "child said: {rest}"
    );
    // B's claim is intact and completes: recorded delivered once, by B.
    assert_eq!(b.get(id).unwrap().unwrap().claim_token, Some(tb.clone()));
    assert_eq!(
        b.ack(id, &tb, later).unwrap(),
        Outcome::Applied(Status::Delivered)
    );
    let row = b.get(id).unwrap().unwrap();
    assert_eq!(row.status, Status::Delivered);
    assert_eq!(
        row.delivered_at,
        Some(later.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
    );
}

/// SIGKILL mid-send: a dead claimer is judged exactly on its own host (its
/// claim is taken at once, to `unknown` since the send had started and the
/// adapter is not idempotent), by its lease alone from another host.
#[test]
fn a_worker_killed_mid_send_is_rescued_at_once_on_its_host_only() {
    let d = pg_or_skip!();
    let same_host = d.open_as_host("host-a");
    let other_host = d.open_as_host("host-b");
    let id = other_host
        .enqueue(&msg("killed"), SystemTime::now())
        .unwrap()
        .id();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "paused_child_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &d.location)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("claimed ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let now = SystemTime::now();
    // Another host cannot judge host-a's pids: the lease still holds.
    let r = other_host.rescue(now, false).unwrap();
    assert_eq!((r.to_pending, r.to_unknown, r.left_alive), (0, 0, 1));
    // On host-a the claimer is certainly dead: rescued before its lease ends.
    let r = same_host.rescue(now, false).unwrap();
    assert_eq!((r.to_pending, r.to_unknown, r.left_alive), (0, 1, 0));
    let e = same_host.get(id).unwrap().unwrap();
    assert_eq!(e.status, Status::Unknown);
    assert!(e.last_error.unwrap().contains("claimer died"));
}

/// Delivers and records ids; at the `signal_at`-th delivery signals, and
/// from then on every delivery waits for the gate to open (so the crash
/// comes while sends are in flight and most entries are still pending).
struct Recorder {
    seen: Mutex<Vec<i64>>,
    n: AtomicUsize,
    signal_at: usize,
    tx: Mutex<Option<mpsc::Sender<()>>>,
    gate: (Mutex<bool>, std::sync::Condvar),
}

impl Recorder {
    fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

/// Opens the gate and stops the worker when dropped (also when an assertion
/// fails first, so the scoped worker thread ends and the test fails instead
/// of hanging).
struct Release<'a>(&'a Recorder, &'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.1.store(true, Ordering::SeqCst);
        self.0.open_gate();
    }
}

impl ChannelAdapter for Recorder {
    fn deliver(&self, e: &Entry) -> Delivery {
        self.seen.lock().unwrap().push(e.id);
        if self.n.fetch_add(1, Ordering::SeqCst) + 1 >= self.signal_at {
            if let Some(tx) = self.tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let (open, cv) = &self.gate;
            let _g = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
        }
        Delivery::Delivered
    }
    fn idempotent(&self) -> bool {
        true
    }
}

#[test]
fn postgres_crash_restart_mid_run_loses_nothing_acknowledged() {
    if !lockstore_pg_cluster::available() && std::env::var_os("LOCKSTORE_REQUIRE_PG").is_none() {
        eprintln!("SKIP: PostgreSQL is not installed");
        return;
    }
    let cluster = lockstore_pg_cluster::Cluster::start().unwrap();
    let url = cluster.create_database("restart").unwrap();
    const N: usize = 300;
    let ob = Outbox::connect(&url, OutboxOptions::default(), PgOptions::default()).unwrap();
    for i in 0..N {
        ob.enqueue(&msg(&format!("k{i}")), SystemTime::now())
            .unwrap();
    }
    let mut w = WorkerOptions::new(&url);
    w.concurrency = 2;
    w.batch = 16;
    w.lease = Duration::from_secs(3);
    w.poll = Duration::from_millis(50);
    let (tx, rx) = mpsc::channel();
    let a = Recorder {
        seen: Mutex::new(Vec::new()),
        n: AtomicUsize::new(0),
        signal_at: 60,
        tx: Mutex::new(Some(tx)),
        gate: (Mutex::new(false), std::sync::Condvar::new()),
    };
    let stop = AtomicBool::new(false);
    let delivered = |ob: &Outbox| -> HashSet<i64> {
        ob.list(Some(Status::Delivered), 10_000)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect()
    };
    let report = std::thread::scope(|s| {
        let h = s.spawn(|| run(&w, &a, &stop));
        let _release = Release(&a, &stop);
        rx.recv_timeout(Duration::from_secs(60))
            .expect("60 deliveries");
        let before = delivered(&ob);
        cluster.stop_immediate().unwrap();
        assert!(before.len() < N, "the crash comes mid-run");
        cluster.start_server().unwrap();
        // Every ack committed before the crash survived it.
        let after = delivered(&ob);
        a.open_gate();
        assert!(
            before.is_subset(&after),
            "acknowledged before the crash, lost after it"
        );
        // Workers reconnect and finish (bounded wait on the store's state).
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while delivered(&ob).len() < N {
            if h.is_finished() {
                panic!("the worker ended early: {:?}", h.join().unwrap());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not all delivered after the restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap()
    });
    let r = report.expect("the worker survives the restart");
    eprintln!("worker report across the restart: {r:?}");
    let seen: HashSet<i64> = a.seen.lock().unwrap().iter().copied().collect();
    assert_eq!(seen.len(), N, "every entry reached the adapter");
    assert_eq!(delivered(&ob).len(), N);
    assert!(r.delivered as usize + r.stale as usize >= N, "{r:?}");
}

/// A rough figure, not a bench: messages/s of enqueue → claim (batch 64) →
/// ack on one handle, SQLite (durable commits) vs PostgreSQL (the private
/// test cluster, fsync on), in whatever profile the tests are built.
/// `cargo test --test pg_outbox -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput_enqueue_claim64_ack() {
    const N: usize = 2000;
    for b in [Backend::Sqlite, Backend::Postgres] {
        let Some(d) = Db::new(b) else { continue };
        let ob = d.open();
        let t = std::time::Instant::now();
        for i in 0..N {
            ob.enqueue(&msg(&format!("k{i}")), at(0)).unwrap();
        }
        let mut acked = 0;
        loop {
            let v = ob.claim(64, LEASE, at(1)).unwrap();
            if v.is_empty() {
                break;
            }
            for e in v {
                let tok = e.claim_token.as_deref().unwrap();
                assert!(ob.ack(e.id, tok, at(2)).unwrap().applied());
                acked += 1;
            }
        }
        assert_eq!(acked, N);
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "{b:?}: {N} messages enqueue→claim(64)→ack in {s:.2} s = {:.0} msg/s",
            N as f64 / s
        );
    }
}

/// Counts deliveries and says when `n` distinct entries have arrived.
struct Counting {
    seen: Mutex<HashSet<i64>>,
    n: usize,
    done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl ChannelAdapter for Counting {
    fn deliver(&self, e: &Entry) -> Delivery {
        let mut s = self.seen.lock().unwrap();
        s.insert(e.id);
        if s.len() == self.n {
            if let Some(tx) = self.done.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        Delivery::Delivered
    }
    fn idempotent(&self) -> bool {
        false
    }
}

/// The async worker runs on PostgreSQL too (`WorkerOptions::db` a URL): all
/// delivered, then a graceful shutdown. (The sync handle, like the sync
/// `postgres` client under it, is used outside the runtime.)
#[test]
fn run_async_delivers_everything_on_postgres() {
    let Some(d) = Db::new(Backend::Postgres) else {
        return;
    };
    let n = 40;
    let ob = d.open();
    for i in 0..n {
        ob.enqueue(&msg(&format!("k{i}")), SystemTime::now())
            .unwrap();
    }
    let mut w = WorkerOptions::new(&d.location);
    w.concurrency = 4;
    w.batch = 8;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let a = std::sync::Arc::new(Counting {
        seen: Mutex::new(HashSet::new()),
        n,
        done: Mutex::new(Some(tx)),
    });
    let adapter = std::sync::Arc::new(lockstore::outbox::worker::Blocking(a.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rep = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                lockstore::outbox::worker::run_async(&w, adapter, async {
                    let _ = rx.await;
                }),
            )
            .await
        })
        .expect("every message arrived")
        .unwrap();
    assert_eq!(rep.delivered, n as u64);
    assert_eq!(
        ob.stats(SystemTime::now()).unwrap().by_status[&Status::Delivered],
        n as u64
    );
}
