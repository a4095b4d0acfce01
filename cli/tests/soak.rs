//! The soak harness in CI: `lockstore soak` for 8 s with 4 clients and a daemon
//! SIGKILLed every 0.6–1.2 s must report zero violations; then the same state
//! dir, tampered (an acknowledged counter increment erased, a sink line
//! duplicated), must fail `soak --verify-only` — the checker can see a loss.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");

fn report(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn short_soak_loses_nothing_and_the_checker_sees_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["soak", "--seconds", "8", "--clients", "4", "--json"])
        .args(["--kill-daemon-every-ms", "600-1200", "--seed", "42"])
        .output()
        .unwrap();
    let rep = report(&out);
    let pretty = serde_json::to_string_pretty(&rep).unwrap();
    for (k, v) in rep["violations"].as_object().unwrap() {
        assert_eq!(v.as_u64(), Some(0), "violation {k}:\n{pretty}");
    }
    assert_eq!(rep["ok"], true, "{pretty}");
    assert!(out.status.success(), "{pretty}");
    assert!(rep["daemon_kills"].as_u64().unwrap() >= 3, "{pretty}");
    assert!(
        rep["acknowledged_total"].as_u64().unwrap() >= 20,
        "{pretty}"
    );
    let incr = rep["acknowledged"]["incr"].as_u64().unwrap_or(0);
    assert!(incr > 0, "{pretty}");
    // The chaos phase reports progress every 5 s: plain lines in a pipe.
    let err = String::from_utf8_lossy(&out.stderr);
    let status = err
        .lines()
        .find(|l| l.starts_with("soak: chaos"))
        .unwrap_or_else(|| panic!("no status line during the chaos phase; stderr:\n{err}"));
    let acked: u64 = status
        .split(": ")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        acked <= rep["acknowledged_total"].as_u64().unwrap(),
        "{status}"
    );
    assert!(status.contains("violations so far"), "{status}");

    // Tamper: erase every increment, duplicate one delivery.
    std::fs::write(state.join("counter.json"), r#"{"count": 0, "by": {}}"#).unwrap();
    let sink = state.join("sink.jsonl");
    let text = std::fs::read_to_string(&sink).unwrap();
    let first = text.lines().next().expect("the soak delivered something");
    std::fs::write(&sink, format!("{text}{first}\n")).unwrap();
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["soak", "--verify-only", "--json"])
        .output()
        .unwrap();
    let rep = report(&out);
    let pretty = serde_json::to_string_pretty(&rep).unwrap();
    assert!(!out.status.success(), "{pretty}");
    assert!(
        rep["lost"]["counter_incr"].as_u64().unwrap() >= incr,
        "{pretty}"
    );
    assert_eq!(
        rep["duplicates"]["sink_duplicate_keys"].as_u64(),
        Some(1),
        "{pretty}"
    );
}

/// A non-empty state dir from `$LOCKSTORE_STATE_DIR` is refused, and the
/// error says where the directory came from.
#[test]
fn soak_names_lockstore_state_dir_when_refusing_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x"), b"").unwrap();
    let out = Command::new(BIN)
        .env("LOCKSTORE_STATE_DIR", tmp.path())
        .args(["soak", "--seconds", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not empty") && err.contains("LOCKSTORE_STATE_DIR"),
        "{err}"
    );
}

/// `soak --backend postgres` for 8 s: three daemons (soak-host-1..3) on a
/// private cluster, chaos kills, one daemon SIGSTOPped past its lease and
/// one `pg_ctl -m immediate` restart; zero violations, stale completions
/// accepted included. Skips (SKIP) without PostgreSQL unless
/// `LOCKSTORE_REQUIRE_PG=1`.
#[test]
fn short_postgres_soak_loses_nothing_across_hosts() {
    if !lockstore_pg_cluster::available() {
        assert!(
            std::env::var_os("LOCKSTORE_REQUIRE_PG").is_none(),
            "LOCKSTORE_REQUIRE_PG is set but PostgreSQL is not installed"
        );
        eprintln!("SKIP: PostgreSQL is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["soak", "--backend", "postgres", "--seconds", "8"])
        .args(["--clients", "3", "--json", "--seed", "7"])
        .args(["--kill-daemon-every-ms", "1500-2500"])
        .env_remove("LOCKSTORE_DATABASE_URL")
        .output()
        .unwrap();
    let rep = report(&out);
    let pretty = serde_json::to_string_pretty(&rep).unwrap();
    for (k, v) in rep["violations"].as_object().unwrap() {
        assert_eq!(v.as_u64(), Some(0), "violation {k}:\n{pretty}");
    }
    assert!(rep["violations"]
        .as_object()
        .unwrap()
        .contains_key("stale_completions_accepted"));
    assert_eq!(rep["ok"], true, "{pretty}");
    assert!(out.status.success(), "{pretty}");
    assert_eq!(rep["backend"], "postgres", "{pretty}");
    assert_eq!(rep["hosts"].as_array().map(Vec::len), Some(3), "{pretty}");
    assert_eq!(rep["daemon_stops_past_lease"], 1, "{pretty}");
    assert_eq!(rep["database_restarts"], 1, "{pretty}");
    assert!(rep["daemon_kills"].as_u64().unwrap() >= 1, "{pretty}");
    assert!(
        rep["acknowledged"]["outbox_enqueue"].as_u64().unwrap_or(0) > 0,
        "{pretty}"
    );
}

/// The PostgreSQL checker sees a stale completion: two messages delivered by
/// `daemon --once` verify clean (`soak --verify-only --database-url`); after
/// one delivered row's `claimed_by` is rewritten to a process that never
/// called the adapter (what an older claim's late ack applied after a
/// takeover leaves), `stale_completions_accepted` is 1 and the run fails.
#[test]
fn postgres_checker_sees_a_stale_completion() {
    let Some(bin) = lockstore_pg_cluster::pg_bin_dir() else {
        assert!(
            std::env::var_os("LOCKSTORE_REQUIRE_PG").is_none(),
            "LOCKSTORE_REQUIRE_PG is set but PostgreSQL is not installed"
        );
        eprintln!("SKIP: PostgreSQL is not installed");
        return;
    };
    let cluster = lockstore_pg_cluster::Cluster::start().expect("cluster");
    let url = cluster.create_database("soak_tamper").expect("createdb");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    std::fs::create_dir_all(state.join("soak")).unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env("LOCKSTORE_DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    for p in ["{\"n\":1}", "{\"n\":2}"] {
        let o = run(&[
            "outbox",
            "enqueue",
            "--channel",
            "c",
            "--target",
            "t",
            "--payload",
            p,
        ]);
        assert!(o.status.success(), "{o:?}");
    }
    let sink = format!("file:{}", state.join("sink.jsonl").display());
    let o = run(&["daemon", "--once", "--adapter", &sink]);
    assert!(o.status.success(), "{o:?}");
    let verify = || {
        let o = run(&["soak", "--verify-only", "--json"]);
        (o.status.code(), report(&o))
    };
    let (code, rep) = verify();
    assert_eq!(rep["backend"], "postgres", "{rep}");
    assert_eq!(rep["stale_completions_accepted"], 0, "{rep}");
    assert_eq!(code, Some(0), "{rep}");
    let sql = "UPDATE outbox_entries SET claimed_by = (claimed_by::jsonb || '{\"pid\": 1}')::text \
               WHERE id = (SELECT min(id) FROM outbox_entries WHERE status = 'delivered')";
    let o = Command::new(bin.join("psql"))
        .arg("-h")
        .arg(cluster.dir())
        .args([
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "soak_tamper",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "psql: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("UPDATE 1"),
        "{o:?}"
    );
    let (code, rep) = verify();
    assert_eq!(rep["stale_completions_accepted"], 1, "{rep}");
    assert_eq!(rep["violations"]["stale_completions_accepted"], 1, "{rep}");
    assert_eq!(code, Some(1), "{rep}");
}
