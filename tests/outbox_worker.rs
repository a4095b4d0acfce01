//! Delivery worker in-process: adapters' classification, graceful shutdown,
//! startup budget, retry flow.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lockstore::outbox::adapters::{ExecAdapter, FileAdapter};
use lockstore::outbox::worker::{run, run_once, ChannelAdapter, Delivery, WorkerOptions};
use lockstore::outbox::{Entry, NewMessage, Outbox, Status};
use rstest::rstest;

#[path = "support/outbox_backend.rs"]
mod support;
use support::{Backend, Db};

/// A fresh outbox on `b` with `n` messages and worker options for it
/// (`None`: PostgreSQL missing, skip).
fn setup(b: Backend, n: usize) -> Option<(Db, WorkerOptions, Outbox)> {
    let d = Db::new(b)?;
    let mut w = WorkerOptions::new(&d.location);
    w.outbox.sqlite.durability = lockstore::Durability::Process;
    w.concurrency = 1;
    w.batch = 4;
    w.poll = Duration::from_millis(10);
    let ob = d.open_with(w.outbox.clone());
    for i in 0..n {
        let m = NewMessage {
            channel: "tg".into(),
            target: "u".into(),
            payload: serde_json::json!({"i": i}),
            idempotency_key: Some(format!("k{i}")),
            ..Default::default()
        };
        ob.enqueue(&m, std::time::UNIX_EPOCH).unwrap();
    }
    Some((d, w, ob))
}

fn entry(id: i64) -> Entry {
    Entry {
        id,
        idempotency_key: None,
        channel: "c".into(),
        target: "t".into(),
        account_id: None,
        payload: Some(serde_json::json!({"x": 1})),
        status: Status::InFlight,
        attempt_count: 0,
        next_attempt_at: 0,
        queued_at: 0,
        expires_at: None,
        last_attempt_at: None,
        last_error: None,
        error_class: None,
        backoff_jitter_ms: None,
        claim_token: None,
        claimed_by: None,
        lease_expires_at: None,
        send_started_at: None,
        delivered_at: None,
        terminal_reason: None,
        completed_at: None,
    }
}

#[test]
fn exec_adapter_classifies_exit_codes_and_timeouts() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let ex = |cmd: String, ms| ExecAdapter {
        command: cmd,
        timeout: Duration::from_millis(ms),
    };
    let ok = ex(
        format!(
            "cat > '{}'; echo \"$LOCKSTORE_IDEMPOTENCY_KEY\" >> '{}'",
            out.display(),
            out.display()
        ),
        5000,
    );
    assert_eq!(ok.deliver(&entry(7)), Delivery::Delivered);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"x\":1}lockstore-outbox-7\n"
    );
    assert!(!ok.idempotent());
    assert!(matches!(
        ex("exit 75".into(), 5000).deliver(&entry(1)),
        Delivery::Retry { .. }
    ));
    assert!(matches!(
        ex(
            "echo 'ECONNRESET: connection reset by peer' >&2; exit 1".into(),
            5000
        )
        .deliver(&entry(1)),
        Delivery::Retry { .. }
    ));
    match ex("echo 'chat not found' >&2; exit 2".into(), 5000).deliver(&entry(1)) {
        Delivery::Permanent { error } => assert!(
            error.contains("status 2") && error.contains("chat not found"),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ex("exec sleep 5".into(), 100).deliver(&entry(1)),
        Delivery::Unknown { .. }
    ));
}

#[test]
fn file_adapter_deduplicates_by_key_and_logs_every_attempt() {
    let d = tempfile::tempdir().unwrap();
    let sink = d.path().join("s.jsonl");
    let a = FileAdapter::new(sink.clone());
    for _ in 0..3 {
        assert_eq!(a.deliver(&entry(1)), Delivery::Delivered);
    }
    // A second adapter instance (another process) sees the first one's lines.
    let b = FileAdapter::new(sink.clone());
    assert_eq!(b.deliver(&entry(1)), Delivery::Delivered);
    assert_eq!(b.deliver(&entry(2)), Delivery::Delivered);
    // A torn last line (crash mid-append) does not swallow the next line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&sink)
        .map(|mut f| std::io::Write::write_all(&mut f, b"{\"key\":\"lockstore-outb"))
        .unwrap()
        .unwrap();
    assert_eq!(a.deliver(&entry(3)), Delivery::Delivered);
    let text = std::fs::read_to_string(&sink).unwrap();
    let keys: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "lockstore-outbox-1",
            "lockstore-outbox-2",
            "lockstore-outbox-3"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(a.raw_path())
            .unwrap()
            .lines()
            .count(),
        6
    );
}

/// Fails each delivery with a retryable error, counting calls.
struct Flaky(AtomicUsize);
impl ChannelAdapter for Flaky {
    fn deliver(&self, _: &Entry) -> Delivery {
        self.0.fetch_add(1, Ordering::SeqCst);
        Delivery::Retry {
            error: "ETIMEDOUT".into(),
            retry_after: None,
        }
    }
    fn idempotent(&self) -> bool {
        true
    }
}

#[rstest]
fn run_once_does_not_retry_what_is_not_yet_due(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let Some((_d, w, ob)) = setup(b, 5) else {
        return;
    };
    let a = Flaky(AtomicUsize::new(0));
    let r = run_once(&w, &a, &AtomicBool::new(false)).unwrap();
    assert_eq!((r.claimed, r.retried), (5, 5));
    assert_eq!(a.0.load(Ordering::SeqCst), 5, "each entry tried once");
    assert!(ob
        .list(None, 100)
        .unwrap()
        .iter()
        .all(|e| e.status == Status::Pending && e.attempt_count == 1));
}

/// Delivers, and asks the worker to stop after `after` deliveries.
struct StopAfter<'a>(AtomicUsize, usize, &'a AtomicBool);
impl ChannelAdapter for StopAfter<'_> {
    fn deliver(&self, _: &Entry) -> Delivery {
        if self.0.fetch_add(1, Ordering::SeqCst) + 1 >= self.1 {
            self.2.store(true, Ordering::SeqCst);
        }
        Delivery::Delivered
    }
    fn idempotent(&self) -> bool {
        false
    }
}

#[rstest]
fn graceful_shutdown_releases_unstarted_claims(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let Some((_d, w, ob)) = setup(b, 8) else {
        return;
    };
    let stop = AtomicBool::new(false);
    let a = StopAfter(AtomicUsize::new(0), 2, &stop);
    let r = run(&w, &a, &stop).unwrap();
    assert_eq!(r.delivered, 2);
    assert_eq!(
        r.released, 2,
        "the rest of the claimed batch of 4 is released"
    );
    let rows = ob.list(None, 100).unwrap();
    assert_eq!(
        rows.iter()
            .filter(|e| e.status == Status::Delivered)
            .count(),
        2
    );
    assert!(rows
        .iter()
        .filter(|e| e.status != Status::Delivered)
        .all(|e| e.status == Status::Pending && e.attempt_count == 0));
}

#[rstest]
fn spent_startup_budget_consumes_no_retry_and_the_loop_keeps_running(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let Some((_d, mut w, ob)) = setup(b, 6) else {
        return;
    };
    w.recovery_budget = Duration::ZERO;
    let stop = AtomicBool::new(false);
    // Budget 0: the startup drain delivers nothing; the continuous loop then
    // delivers all 6 and the adapter stops it.
    let a = StopAfter(AtomicUsize::new(0), 6, &stop);
    let r = run(&w, &a, &stop).unwrap();
    assert_eq!(r.delivered, 6);
    assert!(ob
        .list(None, 100)
        .unwrap()
        .iter()
        .all(|e| e.status == Status::Delivered && e.attempt_count == 0));
}

/// Polls (bounded) until `pid` is dead or a zombie: a SIGKILLed process
/// disappears once the kernel has run its exit, and an orphan's zombie waits
/// for its new parent to reap it.
fn dead_soon(pid: u32) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if lockstore::ProcessIdentity::of_pid(pid).liveness() == lockstore::Liveness::Dead {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `pid` when dropped (a failed assertion must not leak a sleeper).
struct KillOnDrop(Option<u32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Issue 11 item 9: the shell was killed on timeout but its child (holding
/// the stderr pipe) was not, and the adapter waited for that pipe's end.
#[test]
fn exec_timeout_kills_the_process_group_and_does_not_wait_on_its_pipes() {
    let d = tempfile::tempdir().unwrap();
    let pidf = d.path().join("grandchild.pid");
    let a = ExecAdapter {
        // The inner shell execs `sleep 20`: a grandchild holding stderr.
        command: format!("sh -c 'echo $$ > {}; exec sleep 20'; true", pidf.display()),
        timeout: Duration::from_secs(2),
    };
    let t0 = std::time::Instant::now();
    let d1 = a.deliver(&entry(1));
    let took = t0.elapsed();
    let pid: u32 = std::fs::read_to_string(&pidf)
        .expect("the command did not start within the 2 s timeout (machine overloaded?)")
        .trim()
        .parse()
        .unwrap();
    let _guard = KillOnDrop(Some(pid));
    match d1 {
        Delivery::Unknown { error } => assert!(error.contains("timed out"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "deliver took {took:?}: it waited for the grandchild's pipe"
    );
    assert!(dead_soon(pid), "grandchild {pid} survived the exec timeout");
}

/// An adapter whose send blocks until the test lets it go.
struct Gate {
    started: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ChannelAdapter for Gate {
    fn deliver(&self, _: &Entry) -> Delivery {
        let _ = self.started.lock().unwrap().send(());
        let _ = self.go.lock().unwrap().recv();
        Delivery::Delivered
    }
    fn idempotent(&self) -> bool {
        false
    }
}

/// Issue 11 item 10: a send longer than the lease, by a live worker, was
/// rescued by another worker to `unknown` (and the ack came back stale),
/// although it was delivered exactly once.
#[rstest]
fn sync_worker_renews_the_lease_while_a_send_outlives_it(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let Some((_d, mut w, ob)) = setup(b, 1) else {
        return;
    };
    w.lease = Duration::from_secs(3);
    w.batch = 1;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let gate = Gate {
        started: std::sync::Mutex::new(started_tx),
        go: std::sync::Mutex::new(go_rx),
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| run_once(&w, &gate, &stop).unwrap());
        started_rx.recv().unwrap();
        let lease0 = ob.get(1).unwrap().unwrap().lease_expires_at.unwrap();
        // Let the claim's first lease end (wall clock: leases are times).
        while lockstore_now_ms() <= lease0 + 1000 {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Another worker's rescue now.
        let r = ob.rescue(std::time::SystemTime::now(), false).unwrap();
        go_tx.send(()).unwrap();
        let rep = worker.join().unwrap();
        let e = ob.get(1).unwrap().unwrap();
        assert_eq!(
            (r.to_unknown, e.status, e.last_error.as_deref()),
            (0, Status::Delivered, None),
            "the live worker's claim was rescued mid-send"
        );
        assert!(rep.renewed >= 1, "{rep:?}");
        assert_eq!(rep.delivered, 1);
    });
}

fn lockstore_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Issue 11 item 13: the sink followed a planted symlink.
#[test]
fn file_sink_refuses_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, "").unwrap();
    let sink = d.path().join("sink.jsonl");
    std::os::unix::fs::symlink(&victim, &sink).unwrap();
    match FileAdapter::new(&sink).deliver(&entry(1)) {
        Delivery::Retry { error, .. } => {
            assert!(error.contains("symbolic link"), "{error}")
        }
        other => panic!("delivered through a symlink: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
    // The raw log refuses a symlink too.
    let sink2 = d.path().join("sink2.jsonl");
    std::os::unix::fs::symlink(&victim, d.path().join("sink2.jsonl.raw")).unwrap();
    assert!(matches!(
        FileAdapter::new(&sink2).deliver(&entry(1)),
        Delivery::Retry { .. }
    ));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
}

/// Issue 11 item 13: the sink (message payloads) was created 0644.
#[test]
fn file_sink_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let sink3 = d.path().join("sink3.jsonl");
    let a = FileAdapter::new(&sink3);
    assert_eq!(a.deliver(&entry(1)), Delivery::Delivered);
    for p in [sink3.clone(), a.raw_path().to_path_buf()] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} mode {mode:o}", p.display());
    }
}
