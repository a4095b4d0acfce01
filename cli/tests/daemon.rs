//! `lockstore daemon` and `lockstore status` as processes: one daemon per state
//! dir, graceful SIGTERM, status while running, and the commitment → outbox
//! write-ahead across a crash window. Readiness is the daemon's "daemon started"
//! log line on its stderr pipe; no sleeps.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A daemon child, killed on drop if still running (a failing test leaves no
/// daemon behind).
struct DaemonChild(Child);

impl std::ops::Deref for DaemonChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for DaemonChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts a daemon and waits for its "daemon started" line.
fn start_daemon(state: &Path, extra: &[&str]) -> DaemonChild {
    start_daemon_with(state, extra, &[]).0
}

/// The lines a daemon wrote on stderr (collected by a drain thread).
type Log = Arc<Mutex<Vec<String>>>;

/// Starts a daemon with `--tick 50ms` (unless `extra` has a `--tick`), `extra` arguments and `env`; waits for
/// its "daemon started" line; returns it and its stderr lines.
fn start_daemon_with(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> (DaemonChild, Log) {
    let mut c = Command::new(bin());
    c.arg("--state-dir")
        .arg(state)
        .arg("daemon")
        .args(if extra.contains(&"--tick") {
            &[][..]
        } else {
            &["--tick", "50ms"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("LOCKSTORE_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = DaemonChild(c.spawn().expect("spawn daemon"));
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("daemon started") => break,
            Some(Ok(_)) => continue,
            other => panic!("daemon exited before starting: {other:?}"),
        }
    }
    // Keep draining stderr so the daemon never blocks on a full pipe; keep the
    // lines; show anything above info in the test's output.
    let log: Log = Arc::default();
    let keep = log.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if !l.contains(" INFO ") {
                eprintln!("daemon: {l}");
            }
            keep.lock().unwrap().push(l);
        }
    });
    (child, log)
}

/// Polls `f` until it returns `Some` or `secs` pass (then panics with `what`
/// and the last value seen by `last`).
fn poll_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_json(state: &Path) -> Value {
    serde_json::from_str(&ok(state, &["status", "--json"])).expect("status --json")
}

fn enqueue(state: &Path, n: usize) {
    for i in 0..n {
        ok(
            state,
            &[
                "outbox",
                "enqueue",
                "--channel",
                "c",
                "--target",
                "t",
                "--payload",
                &format!(r#"{{"n":{i}}}"#),
            ],
        );
    }
}

/// Lines (deliveries) in the default adapter's sink.
fn delivered(state: &Path) -> usize {
    sink_keys(&state.join("deliveries.jsonl")).len()
}

fn kill_term(child: &mut DaemonChild) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().unwrap()
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
    // Every component reports running (after the first tick's report).
    let st = poll_until(30, "all components running", || {
        let st = status_json(state);
        (st["daemon"]["state"] == "running").then_some(st)
    });
    for name in [
        "delivery",
        "commitments",
        "outbox_maintenance",
        "tasks_maintenance",
    ] {
        assert_eq!(
            st["daemon"]["components"][name]["health"], "running",
            "{st}"
        );
    }
    let text = ok(state, &["status"]);
    assert!(
        text.contains(&format!("daemon       running · pid {pid}")),
        "{text}"
    );

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

/// Issue 11 (6): a transient disk-full (injected SQLITE_FULL, failpoint
/// `sqlite_full`, active while a flag file exists) stopped the delivery worker
/// for good while `status` said "daemon running". Now the worker is restarted
/// with a capped backoff, `status` shows it restarting with the error (never
/// "running"), and once the space is "freed" the backlog is delivered.
#[test]
fn delivery_worker_restarts_after_disk_full() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let state = state.as_path();
    let full = d.path().join("disk-full");
    let full_s = full.display().to_string();
    let (mut daemon, log) = start_daemon_with(
        state,
        &[],
        &[
            ("LOCKSTORE_FAILPOINT", "sqlite_full"),
            ("LOCKSTORE_FAILPOINT_WHILE", &full_s),
        ],
    );
    // Healthy first: one message goes through.
    enqueue(state, 1);
    poll_until(30, "first delivery", || {
        (delivered(state) == 1).then_some(())
    });

    std::fs::write(&full, b"").unwrap();
    let st = poll_until(30, "delivery restarting on a full disk", || {
        let st = status_json(state);
        let c = &st["daemon"]["components"]["delivery"];
        (c["health"] == "restarting" && c["restarts"].as_u64() >= Some(1)).then_some(st)
    });
    let c = &st["daemon"]["components"]["delivery"];
    assert!(
        c["last_error"]
            .as_str()
            .unwrap()
            .contains("database or disk is full"),
        "{st}"
    );
    assert_eq!(st["daemon"]["state"], "degraded", "{st}");
    // The backoff is capped: the next try is never more than 5 s after the
    // failure, so delivery resumes within 10 s of the space coming back.
    let wait = c["next_attempt_at_ms"].as_i64().unwrap() - c["last_error_at_ms"].as_i64().unwrap();
    assert!(
        (0..=5_000).contains(&wait),
        "next try {wait} ms after the failure: {st}"
    );
    let text = ok(state, &["status"]);
    assert!(
        text.contains("daemon       DEGRADED (delivery restarting"),
        "{text}"
    );
    assert!(!text.contains("daemon       running"), "{text}");

    // 12 messages queue up while the disk is full (the CLI has no failpoint).
    enqueue(state, 12);
    assert_eq!(delivered(state), 1);
    let freed = Instant::now();
    std::fs::remove_file(&full).unwrap();
    poll_until(60, "12 deliveries after the space came back", || {
        (delivered(state) == 13).then_some(())
    });
    eprintln!(
        "disk full: 12 pending delivered {} ms after the space was freed",
        freed.elapsed().as_millis()
    );
    let st = poll_until(30, "delivery running again", || {
        let st = status_json(state);
        (st["daemon"]["state"] == "running").then_some(st)
    });
    assert!(st["daemon"]["components"]["delivery"]["restarts"].as_u64() >= Some(1));
    assert!(kill_term(&mut daemon).success());
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("component failed"), "{log}");
    assert!(log.contains("component restarted"), "{log}");
}

/// Issue 11 (6): deleting the outbox's WAL under a running daemon stopped the
/// delivery worker for good. Now the failed worker is restarted, the daemon's
/// other outbox connections are closed so the next open rebuilds the WAL index,
/// and new messages are delivered.
#[test]
fn delivery_resumes_after_the_wal_is_deleted() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let (mut daemon, _log) = start_daemon_with(state, &[], &[]);
    enqueue(state, 3);
    poll_until(30, "3 deliveries", || (delivered(state) == 3).then_some(()));
    let wal = lockstore::paths::outbox_db(state).with_extension("sqlite-wal");
    std::fs::remove_file(&wal).unwrap_or_else(|e| panic!("{}: {e}", wal.display()));
    // Enqueue 6 more; an enqueue may fail while the daemon still holds the old
    // WAL open (the CLI then sees "disk I/O error"): retry it.
    let mut queued = 0;
    let mut last_err = String::new();
    poll_until(30, "6 enqueues after the WAL was deleted", || {
        let o = run(
            state,
            &[
                "outbox",
                "enqueue",
                "--channel",
                "c",
                "--target",
                "t",
                "--payload",
                "{}",
            ],
        );
        if o.status.success() {
            queued += 1;
        } else {
            last_err = String::from_utf8_lossy(&o.stderr).into_owned();
        }
        (queued == 6).then_some(())
    });
    if !last_err.is_empty() {
        eprintln!("an enqueue failed while the WAL was gone: {last_err}");
    }
    let since = Instant::now();
    poll_until(30, "9 deliveries after the WAL was deleted", || {
        (delivered(state) == 9).then_some(())
    });
    eprintln!(
        "WAL deleted: 6 new messages delivered {} ms after the last enqueue",
        since.elapsed().as_millis()
    );
    let st = status_json(state);
    eprintln!("delivery: {}", st["daemon"]["components"]["delivery"]);
    assert!(kill_term(&mut daemon).success());
}

/// Issue 11 (6): a corrupt outbox made the daemon exit entirely. Now only the
/// components that need the outbox fail (and stay failed, with the error);
/// the task maintenance keeps running and so does the daemon.
#[test]
fn corrupt_outbox_fails_only_its_components() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let db = lockstore::paths::outbox_db(state);
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, vec![b'x'; 8192]).unwrap();
    outbox_failure_stays_local(state, "not a database");
    // The store was left untouched.
    assert_eq!(std::fs::read(&db).unwrap(), vec![b'x'; 8192]);
}

/// Same for an outbox of a newer schema version than this binary knows.
#[test]
fn future_version_outbox_fails_only_its_components() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let db = lockstore::paths::outbox_db(state);
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let c = lockstore::rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE future(x); PRAGMA user_version = 999;")
        .unwrap();
    drop(c);
    outbox_failure_stays_local(state, "newer than");
}

/// A daemon on `state` whose outbox cannot be used: delivery and
/// outbox_maintenance end `failed` with an error naming the file and
/// containing `want`; tasks_maintenance runs; the daemon stays up.
fn outbox_failure_stays_local(state: &Path, want: &str) {
    let db = lockstore::paths::outbox_db(state);
    let (mut daemon, _log) = start_daemon_with(state, &[], &[]);
    let st = poll_until(30, "delivery failed on the corrupt outbox", || {
        let st = status_json(state);
        (st["daemon"]["components"]["delivery"]["health"] == "failed"
            && st["daemon"]["components"]["tasks_maintenance"]["health"] == "running")
            .then_some(st)
    });
    let comps = &st["daemon"]["components"];
    let err = comps["delivery"]["last_error"].as_str().unwrap();
    assert!(err.contains(&db.display().to_string()), "{st}");
    assert!(err.contains(want), "{st}");
    assert_eq!(comps["outbox_maintenance"]["health"], "failed", "{st}");
    assert_eq!(st["daemon"]["state"], "degraded", "{st}");
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon keeps running"
    );
    assert!(kill_term(&mut daemon).success());
}

/// Issue 11 (7): the state dir deleted under a running daemon, recreated by a
/// CLI, and a second daemon started: two daemons delivered from one state dir.
/// Now the first one notices within a tick that its daemon.lock is no longer
/// the file at its path and exits with a clear message.
#[test]
fn daemon_exits_when_its_state_dir_is_deleted() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let state = state.as_path();
    let (mut first, log) = start_daemon_with(state, &["--tick", "200ms"], &[]);
    let gone = Instant::now();
    // The daemon may create a file while the dir is being deleted (ENOTEMPTY):
    // delete again until it is gone.
    poll_until(
        10,
        "the state dir deleted",
        || match std::fs::remove_dir_all(state) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(_) => None,
        },
    );
    // Any CLI recreates the dir; a second daemon starts on it.
    enqueue(state, 1);
    let (mut second, _) = start_daemon_with(state, &[], &[]);
    let code = poll_until(10, "the first daemon exits", || first.try_wait().unwrap());
    eprintln!(
        "state dir deleted: first daemon exited {} ms later",
        gone.elapsed().as_millis()
    );
    assert_eq!(code.code(), Some(4), "{code}");
    let log = log.lock().unwrap().join("\n");
    assert!(
        log.contains("the state dir was deleted or replaced under the running daemon"),
        "{log}"
    );
    // The second daemon is the only one, and delivers.
    poll_until(30, "the second daemon delivers", || {
        (delivered(state) == 1).then_some(())
    });
    assert_eq!(status_json(state)["daemon"]["pid"], second.id());
    assert!(kill_term(&mut second).success());
}

/// Issue 15: at the default log level the daemon logs one startup line (state
/// dir, pid, adapter, tick) and each component's start; its default adapter
/// is documented in `daemon --help`.
#[test]
fn startup_line_at_the_default_log_level() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let mut c = Command::new(bin());
    c.arg("--state-dir")
        .arg(state)
        .args(["daemon", "--tick", "50ms"])
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = DaemonChild(c.spawn().unwrap());
    // Lines through a channel, so that a missing line fails the test after a
    // deadline instead of blocking it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("a log line at the default level within 30 s")
    };
    let first = next();
    assert!(first.contains("daemon started"), "{first}");
    assert!(first.contains(&format!("pid={}", child.id())), "{first}");
    assert!(first.contains(&state.display().to_string()), "{first}");
    assert!(first.contains("deliveries.jsonl"), "{first}");
    assert!(first.contains("tick_ms=50"), "{first}");
    let mut started = Vec::new();
    while started.len() < 4 {
        let l = next();
        if l.contains("component started") {
            started.push(l);
        }
    }
    assert!(kill_term(&mut child).success());
    let help = ok(state, &["daemon", "--help"]);
    assert!(help.contains("file:<state-dir>/deliveries.jsonl"), "{help}");
}

/// Issue 15: `status --json` uses snake_case keys throughout.
#[test]
fn status_json_keys_are_snake_case() {
    fn walk(v: &Value, at: &str, bad: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let ok = k
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if !ok {
                        bad.push(format!("{at}/{k}"));
                    }
                    walk(v, &format!("{at}/{k}"), bad);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, bad)),
            _ => {}
        }
    }
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    enqueue(state, 1);
    add_commitment(state, "hi", None);
    ok(state, &["tasks", "audit"]);
    let mut daemon = start_daemon(state, &[]);
    let st = poll_until(30, "a report", || {
        let st = status_json(state);
        (st["daemon"]["state"] == "running").then_some(st)
    });
    let mut bad = Vec::new();
    walk(&st, "", &mut bad);
    assert!(bad.is_empty(), "keys not in snake_case: {bad:?}\n{st}");
    assert!(kill_term(&mut daemon).success());
}

/// The report carries a timestamp: a daemon that holds its lock but stopped
/// reporting (stuck, SIGSTOPped) is shown as such, never as "running". The
/// test holds `daemon.lock` itself and writes an old report under its pid.
#[test]
fn stale_report_is_not_shown_as_running() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let opts = lockstore::lock::LockOptions {
        max_retries: Some(0),
        ..Default::default()
    };
    let _held =
        lockstore::lock::HeldLock::acquire(lockstore::paths::daemon_lock(state), &opts).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let component = |name: &str| {
        serde_json::json!({"name": name, "health": "running", "since_ms": now - 60_000,
            "restarts": 0, "consecutive_failures": 0, "last_error": null,
            "last_error_at_ms": null, "next_attempt_at_ms": null})
    };
    let report = serde_json::json!({
        "version": 1, "pid": std::process::id(), "started_at_ms": now - 60_000,
        "updated_at_ms": now - 30_000, "stale_after_ms": 10_000, "tick_ms": 1000,
        "adapter": "file:x", "components": [component("delivery"), component("commitments")],
    });
    std::fs::write(
        state.join("daemon-status.json"),
        serde_json::to_vec(&report).unwrap(),
    )
    .unwrap();
    let st = status_json(state);
    assert_eq!(st["daemon"]["running"], true, "{st}");
    assert_eq!(st["daemon"]["state"], "not_reporting", "{st}");
    assert_eq!(st["daemon"]["report"]["stale"], true, "{st}");
    let text = ok(state, &["status"]);
    assert!(
        text.contains("daemon       NOT REPORTING (last report 30 s ago)"),
        "{text}"
    );
    // The same report, fresh: running.
    let mut fresh = report.clone();
    fresh["updated_at_ms"] = now.into();
    std::fs::write(
        state.join("daemon-status.json"),
        serde_json::to_vec(&fresh).unwrap(),
    )
    .unwrap();
    assert_eq!(status_json(state)["daemon"]["state"], "running");
}
