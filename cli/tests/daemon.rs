//! `lockstore daemon` and `lockstore status` as processes: one daemon per state
//! dir, graceful SIGTERM, status while running, and the commitment → outbox
//! write-ahead across a crash window. Readiness is the daemon's "daemon started"
//! log line on its stderr pipe; no sleeps.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockstore")
}

fn cmd(state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn");
    c
}

fn run(state: &Path, args: &[&str]) -> Output {
    cmd(state, args).output().expect("run lockstore")
}

fn ok(state: &Path, args: &[&str]) -> String {
    let o = run(state, args);
    assert!(
        o.status.success(),
        "lockstore {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts a daemon and waits for its "daemon started" line.
fn start_daemon(state: &Path, extra: &[&str]) -> Child {
    let mut c = Command::new(bin());
    c.arg("--state-dir")
        .arg(state)
        .arg("daemon")
        .args(["--tick", "50ms"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn daemon");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("daemon started") => break,
            Some(Ok(_)) => continue,
            other => panic!("daemon exited before starting: {other:?}"),
        }
    }
    // Keep draining stderr so the daemon never blocks on a full pipe; show
    // anything above info in the test's output.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if !l.contains(" INFO ") {
                eprintln!("daemon: {l}");
            }
        }
    });
    child
}

#[test]
fn one_daemon_per_state_dir_status_and_graceful_stop() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let mut first = start_daemon(state, &[]);
    let pid = first.id();

    let second = run(state, &["daemon", "--once"]);
    assert_eq!(second.status.code(), Some(3), "second daemon must refuse");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("pid {pid}")), "{err}");

    let st: Value = serde_json::from_str(&ok(state, &["status", "--json"])).unwrap();
    assert_eq!(st["daemon"]["running"], true, "{st}");
    assert_eq!(st["daemon"]["pid"], pid, "{st}");
    assert_eq!(st["locks"]["daemon"]["held"], true, "{st}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = first.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status}");
    let st: Value = serde_json::from_str(&ok(state, &["status", "--json"])).unwrap();
    assert_eq!(st["daemon"]["running"], false, "{st}");
}

/// `lockstore commitments add` of a commitment due now; returns its id.
fn add_commitment(state: &Path, text: &str, to: Option<&str>) -> String {
    let mut args = vec![
        "commitments",
        "add",
        "--agent",
        "a",
        "--session",
        "s",
        "--channel",
        "c",
    ];
    if let Some(to) = to {
        args.extend(["--to", to]);
    }
    args.extend(["--text", text, "--dedupe-key", "k"]);
    let out = ok(state, &args);
    out.split_whitespace()
        .nth(1)
        .expect("created id")
        .to_string()
}

fn sink_keys(sink: &Path) -> Vec<String> {
    std::fs::read_to_string(sink)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect()
}

fn commitment(state: &Path, id: &str) -> Value {
    let v: Value =
        serde_json::from_str(&ok(state, &["commitments", "list", "--all", "--json"])).unwrap();
    v["commitments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .expect("commitment present")
}

#[test]
fn crash_between_enqueue_and_bump_delivers_once() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let sink = state.join("sink.jsonl");
    let adapter = format!("file:{}", sink.display());
    let id = add_commitment(state, "hello", Some("u"));
    // The crash window: the daemon enqueued attempt 0 and died before bumping.
    let key = format!("commitment:{id}:0");
    ok(
        state,
        &[
            "outbox",
            "enqueue",
            "--channel",
            "c",
            "--target",
            "u",
            "--key",
            &key,
            "--payload",
            r#"{"text":"hello"}"#,
        ],
    );
    let once = [
        "daemon",
        "--once",
        "--commitments-enabled",
        "--adapter",
        &adapter,
    ];
    ok(state, &once);
    ok(state, &once);
    assert_eq!(sink_keys(&sink), vec![key], "delivered exactly once");
    let c = commitment(state, &id);
    assert_eq!(c["attempts"], 1, "bumped once: {c}");
    assert_eq!(c["status"], "sent", "{c}");
}

#[test]
fn due_commitment_is_delivered_once_across_ticks() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let sink = state.join("sink.jsonl");
    let adapter = format!("file:{}", sink.display());
    let id = add_commitment(state, "ping", None);
    // Without the heartbeat flag nothing is sent (openclaw's enabled=false).
    ok(state, &["daemon", "--once", "--adapter", &adapter]);
    assert!(sink_keys(&sink).is_empty());
    for _ in 0..3 {
        ok(
            state,
            &[
                "daemon",
                "--once",
                "--commitments-enabled",
                "--adapter",
                &adapter,
            ],
        );
    }
    assert_eq!(sink_keys(&sink), vec![format!("commitment:{id}:0")]);
    assert_eq!(commitment(state, &id)["status"], "sent");
}

#[test]
fn pending_delivery_is_not_enqueued_again() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let id = add_commitment(state, "ping", None);
    // The channel is down: every send asks to be retried later (exit 75).
    let once = [
        "daemon",
        "--once",
        "--commitments-enabled",
        "--adapter",
        "exec:exit 75",
    ];
    ok(state, &once);
    ok(state, &once);
    let rows: Value = serde_json::from_str(&ok(state, &["outbox", "list", "--json"])).unwrap();
    let keys: Vec<&str> = rows
        .as_array()
        .or_else(|| rows["entries"].as_array())
        .expect("list")
        .iter()
        .filter_map(|e| {
            e["idempotency_key"]
                .as_str()
                .or_else(|| e["idempotencyKey"].as_str())
        })
        .collect();
    assert_eq!(
        keys,
        vec![format!("commitment:{id}:0")],
        "one delivery in flight, not one per tick"
    );
    let c = commitment(state, &id);
    assert_eq!(c["attempts"], 1, "{c}");
    assert_eq!(c["status"], "pending", "{c}");
}
