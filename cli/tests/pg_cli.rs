//! The CLI and the daemon on PostgreSQL (`--database-url` /
//! `LOCKSTORE_DATABASE_URL`): two daemons with distinct `LOCKSTORE_HOST_ID`s
//! (each its own state dir and sink) share one private cluster; messages
//! enqueued through the CLI are delivered exactly once across both sinks,
//! also across a `pg_ctl -m immediate` restart of the server mid-run; the
//! daemons' components notice the outage (not as a corrupt store), reconnect
//! with backoff and `status` shows them healthy again, with the backend and
//! the hosts holding leases.
//!
//! Needs PostgreSQL's server binaries: without them the tests print `SKIP:`
//! and pass, unless `LOCKSTORE_REQUIRE_PG=1` (set by `.ci/run`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockstore")
}

fn pg_available() -> bool {
    if lockstore_pg_cluster::available() {
        return true;
    }
    assert!(
        std::env::var_os("LOCKSTORE_REQUIRE_PG").is_none(),
        "LOCKSTORE_REQUIRE_PG is set but PostgreSQL is not installed"
    );
    eprintln!("SKIP: PostgreSQL is not installed");
    false
}

/// `lockstore --state-dir STATE ARGS` with `LOCKSTORE_DATABASE_URL=url`.
fn cmd(state: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        .env("LOCKSTORE_DATABASE_URL", url)
        .env("RUST_LOG", "warn");
    c
}

fn ok(c: &mut Command) -> String {
    let o: Output = c.output().expect("run lockstore");
    assert!(
        o.status.success(),
        "{c:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A daemon child (killed on drop) and its warnings and errors, line by line.
struct Daemon(Child, std::sync::mpsc::Receiver<String>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A daemon on `state` as host `host`, ready once it logs "daemon started";
/// its stderr is drained (warnings shown in the test's output).
fn start_daemon(state: &Path, url: &str, host: &str) -> Daemon {
    // A short lease: a claim left behind by a worker that failed during the
    // outage is rescued within seconds (not the default 5 min).
    let mut c = cmd(state, url, &["daemon", "--tick", "50ms", "--lease", "4s"]);
    c.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("LOCKSTORE_HOST_ID", host)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn daemon");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("daemon started") => break,
            Some(Ok(_)) => continue,
            other => panic!("daemon {host} exited before starting: {other:?}"),
        }
    }
    let host = host.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if !l.contains(" INFO ") {
                eprintln!("daemon {host}: {l}");
                let _ = tx.send(l);
            }
        }
    });
    Daemon(child, rx)
}

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

/// Outbox ids per delivery line across the sinks: id → times delivered.
fn deliveries(sinks: &[PathBuf]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for s in sinks {
        for l in std::fs::read_to_string(s).unwrap_or_default().lines() {
            if let Some(id) = serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["id"].as_u64())
            {
                *m.entry(id).or_default() += 1;
            }
        }
    }
    m
}

fn enqueue(state: &Path, url: &str, from: usize, to: usize) {
    for i in from..to {
        ok(&mut cmd(
            state,
            url,
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
        ));
    }
}

fn status(state: &Path, url: &str) -> Value {
    serde_json::from_str(&ok(&mut cmd(state, url, &["status", "--json"]))).expect("status --json")
}

#[test]
fn database_url_must_be_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--database-url", "mysql://x/y", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("PostgreSQL URL"), "{err}");
}

#[test]
fn two_daemons_deliver_once_across_a_postgres_restart() {
    if !pg_available() {
        return;
    }
    let cluster = lockstore_pg_cluster::Cluster::start().expect("start cluster");
    let url = cluster.create_database("pgcli_restart").expect("createdb");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sinks: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.path().join("deliveries.jsonl"))
        .collect();
    let (a, b) = (dirs[0].path(), dirs[1].path());
    // The flag (not only the env var) reaches `outbox enqueue`.
    ok(Command::new(bin()).arg("--state-dir").arg(a).args([
        "--database-url",
        &url,
        "outbox",
        "enqueue",
        "--channel",
        "c",
        "--target",
        "t",
        "--payload",
        "{\"n\":-1}",
    ]));
    let da = start_daemon(a, &url, "host-a");
    let db = start_daemon(b, &url, "host-b");
    let t0 = Instant::now();
    enqueue(b, &url, 0, 10);
    eprintln!("enqueued 10 in {:?}", t0.elapsed());
    poll_until(60, "first deliveries", || {
        (deliveries(&sinks).len() >= 3).then_some(())
    });

    eprintln!("first deliveries at {:?}", t0.elapsed());
    // Mid-run: the server dies without a checkpoint; each daemon hits the
    // outage (a failed transaction it retries, or a component restart).
    for d in [&da, &db] {
        while d.1.try_recv().is_ok() {}
    }
    cluster.stop_immediate().expect("stop_immediate");
    // The first daemon to hit the outage (a transaction it retries with
    // backoff, or a component restart) — within a poll period.
    let end = Instant::now() + Duration::from_secs(60);
    let noticed = loop {
        if let Some(l) = [&da, &db].iter().find_map(|d| d.1.try_recv().ok()) {
            break l;
        }
        assert!(Instant::now() < end, "no daemon noticed the outage");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!noticed.contains("corrupt"), "{noticed}");
    eprintln!("first daemon noticed at {:?}: {noticed}", t0.elapsed());
    let v = status(a, &url);
    assert!(v["backend"]["error"].is_string(), "backend down: {v}");
    eprintln!("outage noticed at {:?}", t0.elapsed());
    cluster.start_server().expect("start_server");
    enqueue(a, &url, 10, 20);
    eprintln!("restarted, enqueued at {:?}", t0.elapsed());

    let all = poll_until(90, "every message delivered", || {
        let m = deliveries(&sinks);
        (m.len() >= 21).then_some(m)
    });
    let dup: Vec<_> = all.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dup.is_empty(), "delivered more than once: {dup:?}");
    assert_eq!(all.len(), 21);
    eprintln!("all delivered at {:?}", t0.elapsed());
    // Both hosts' daemons delivered (FOR UPDATE SKIP LOCKED shares the work)
    // is likely but not guaranteed; exactly once across both sinks is.
    let out = ok(&mut cmd(
        a,
        &url,
        &["outbox", "list", "--status", "delivered", "--json"],
    ));
    let listed: Value = serde_json::from_str(&out).expect("outbox list --json");
    assert_eq!(listed.as_array().map(Vec::len), Some(21), "{out}");

    eprintln!("listed at {:?}", t0.elapsed());
    // Healthy again: every component running, backend postgres reachable.
    for (d, host) in [(a, "host-a"), (b, "host-b")] {
        let v = poll_until(60, "status healthy again", || {
            let v = status(d, &url);
            (v["daemon"]["state"] == "running" && v["backend"]["error"].is_null()).then_some(v)
        });
        assert_eq!(v["backend"]["name"], "postgres", "{v}");
        assert!(v["backend"]["lease_holders"].is_array(), "{v}");
        let text = ok(cmd(d, &url, &["status"]).env("LOCKSTORE_HOST_ID", host));
        assert!(
            text.contains(&format!("backend      postgres · this host {host}")),
            "{text}"
        );
    }
}
