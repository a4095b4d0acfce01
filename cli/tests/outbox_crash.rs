//! Crash matrix of the delivery worker (the real `lockstore outbox deliver`
//! process, aborted at a failpoint with a random hit count) and four worker
//! processes sharing one outbox.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use lockstore::outbox::{NewMessage, Outbox, OutboxOptions, Status};
use lockstore::Durability;

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");
const N: usize = 10;

fn opts() -> OutboxOptions {
    let mut o = OutboxOptions::default();
    o.sqlite.durability = Durability::Process;
    o
}

fn enqueue(state: &Path, n: usize) -> Outbox {
    let ob = Outbox::open_state(state, opts()).unwrap();
    for i in 0..n {
        ob.enqueue(
            &NewMessage {
                channel: "tg".into(),
                target: format!("u{i}"),
                payload: serde_json::json!({"n": i}),
                idempotency_key: Some(format!("m-{i}")),
                ..Default::default()
            },
            std::time::SystemTime::now(),
        )
        .unwrap();
    }
    ob
}

fn deliver(
    state: &Path,
    adapter: &str,
    extra: &[&str],
    fp: Option<(&str, usize)>,
) -> std::process::ExitStatus {
    let mut c = Command::new(BIN);
    c.arg("--state-dir")
        .arg(state)
        .args([
            "outbox",
            "deliver",
            "--once",
            "--durability",
            "process",
            "--adapter",
            adapter,
        ])
        .args(extra)
        .env_remove("LOCKSTORE_FAILPOINT");
    if let Some((name, skip)) = fp {
        c.env("LOCKSTORE_FAILPOINT", name)
            .env("LOCKSTORE_FAILPOINT_SKIP", skip.to_string());
    }
    c.stderr(std::process::Stdio::null()).status().unwrap()
}

fn key_counts(path: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let k = match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => v["key"].as_str().unwrap_or_default().to_string(),
            Err(_) => l.trim().to_string(),
        };
        *m.entry(k).or_default() += 1;
    }
    m
}

fn statuses(ob: &Outbox) -> HashMap<String, Status> {
    ob.list(None, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.idempotency_key.unwrap(), e.status))
        .collect()
}

#[derive(Default, Debug)]
struct Tally {
    runs: usize,
    killed: usize,
    resent: usize,
    unknown: usize,
}

/// One iteration: enqueue N, run the worker until the failpoint aborts it,
/// restart it, then check the invariants. Returns (killed, resends, unknown).
fn one(fp: &str, exec: bool, t: &mut Tally) {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let ob = enqueue(&state, N);
    let sink = d.path().join("sink.jsonl");
    let raw = d.path().join("sink.jsonl.raw");
    let exec_log = d.path().join("exec.log");
    let adapter = if exec {
        format!(
            "exec:echo \"$LOCKSTORE_IDEMPOTENCY_KEY\" >> '{}'",
            exec_log.display()
        )
    } else {
        format!("file:{}", sink.display())
    };
    // Hits available before the run ends: claim calls (batch 4 → 3 non-empty),
    // or one per entry for the send/ack failpoints.
    let hits = match fp {
        "before_claim_commit" | "after_claim" => 3,
        _ => N,
    };
    let skip = fastrand::usize(0..hits);
    let args = ["--concurrency", "1", "--batch", "4", "--lease", "2s"];
    let st = deliver(&state, &adapter, &args, Some((fp, skip)));
    t.runs += 1;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(6),
        "{fp}: the worker was not aborted at hit {skip}: {st:?}"
    );
    t.killed += 1;
    // Restart: rescue + drain.
    assert!(deliver(&state, &adapter, &args, None).success());

    let rows = statuses(&ob);
    let keys: Vec<String> = (0..N).map(|i| format!("m-{i}")).collect();
    let sent = if exec {
        key_counts(&exec_log)
    } else {
        key_counts(&raw)
    };
    let total: usize = sent.values().sum();
    t.resent += total.saturating_sub(N);
    if !exec {
        // At least once, deduplicated sink exactly once, all rows delivered.
        let sink = key_counts(&sink);
        for k in &keys {
            assert_eq!(rows[k], Status::Delivered, "{fp}: {k}");
            assert_eq!(
                sink.get(k),
                Some(&1),
                "{fp}: sink must hold {k} exactly once"
            );
            assert!(sent.get(k).copied().unwrap_or(0) >= 1);
        }
        let expect_resend = usize::from(fp == "after_send");
        assert_eq!(total, N + expect_resend, "{fp}: raw sends {sent:?}");
    } else {
        let unknown: Vec<&String> = keys
            .iter()
            .filter(|k| rows[*k] == Status::Unknown)
            .collect();
        t.unknown += unknown.len();
        let mid_send = matches!(fp, "after_send_started" | "after_send");
        assert_eq!(unknown.len(), usize::from(mid_send), "{fp}: {rows:?}");
        for k in &keys {
            let n = sent.get(k).copied().unwrap_or(0);
            if rows[k] == Status::Unknown {
                // Never blindly resent: sent once (after_send) or never (after_send_started).
                assert_eq!(
                    n,
                    usize::from(fp == "after_send"),
                    "{fp}: {k} sent {n} times"
                );
            } else {
                assert_eq!(rows[k], Status::Delivered, "{fp}: {k}");
                assert_eq!(n, 1, "{fp}: {k} sent {n} times");
            }
        }
    }
}

const FAILPOINTS: [&str; 5] = [
    "before_claim_commit", // (a)
    "after_claim",         // (b)
    "after_send_started",  // (c) send started, adapter not yet called
    "after_send",          // (c) adapter returned, not yet acked
    "after_ack",           // (d)
];

fn matrix(iterations: usize) {
    for exec in [false, true] {
        for fp in FAILPOINTS {
            let mut t = Tally::default();
            for _ in 0..iterations {
                one(fp, exec, &mut t);
            }
            eprintln!(
                "crash matrix: adapter={} failpoint={fp}: runs={} killed={} extra_raw_sends={} unknown={}",
                if exec { "exec" } else { "file" },
                t.runs,
                t.killed,
                t.resent,
                t.unknown
            );
        }
    }
}

#[test]
fn kill_matrix_short() {
    matrix(5);
}

#[test]
#[ignore = "long loop: 20 iterations per case"]
fn kill_matrix_long() {
    matrix(20);
}

/// Four worker processes, one outbox, 2,000 messages: each delivered exactly once
/// to the raw log (no double claim), all rows delivered.
#[test]
fn four_workers_deliver_each_message_exactly_once() {
    let n = 2000;
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let ob = enqueue(&state, n);
    let sink = d.path().join("sink.jsonl");
    let adapter = format!("file:{}", sink.display());
    let kids: Vec<_> = (0..4)
        .map(|_| {
            Command::new(BIN)
                .arg("--state-dir")
                .arg(&state)
                .args([
                    "outbox",
                    "deliver",
                    "--once",
                    "--durability",
                    "process",
                    "--concurrency",
                    "2",
                    "--batch",
                    "4",
                ])
                .arg("--adapter")
                .arg(&adapter)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let raw_text = std::fs::read_to_string(d.path().join("sink.jsonl.raw")).unwrap();
    let mut pids = HashSet::new();
    let mut seen = HashMap::<String, usize>::new();
    for l in raw_text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        pids.insert(v["pid"].as_u64().unwrap());
        *seen
            .entry(v["key"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), n);
    assert!(
        seen.values().all(|c| *c == 1),
        "a message was sent twice: double claim"
    );
    assert_eq!(key_counts(&sink).len(), n);
    let rows = statuses(&ob);
    assert!(rows.values().all(|s| *s == Status::Delivered));
    assert!(
        pids.len() >= 2,
        "the workers did not overlap (pids {pids:?}); the test proves nothing"
    );
    eprintln!(
        "four workers: {n} messages, {} delivering processes",
        pids.len()
    );
}
