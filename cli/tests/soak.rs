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
    assert!(rep["daemonKills"].as_u64().unwrap() >= 3, "{pretty}");
    assert!(rep["acknowledgedTotal"].as_u64().unwrap() >= 20, "{pretty}");
    let incr = rep["acknowledged"]["incr"].as_u64().unwrap_or(0);
    assert!(incr > 0, "{pretty}");

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
        rep["lost"]["counterIncr"].as_u64().unwrap() >= incr,
        "{pretty}"
    );
    assert_eq!(
        rep["duplicates"]["sinkDuplicateKeys"].as_u64(),
        Some(1),
        "{pretty}"
    );
}
