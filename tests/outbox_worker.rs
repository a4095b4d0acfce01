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
