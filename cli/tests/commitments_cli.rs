//! `lockstore commitments` through the real binary: output shapes, exit codes,
//! and the cross-process race (a CLI `dismiss` against a heartbeat process).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::SystemTime;

mod common;

use lockstore::commitments::{CommitmentsConfig, CommitmentsStore, Status, StatusFilter};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");

fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("commitments")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// 2026-05-12T06:13:20Z, before the windows used below.
const NOW_S: &str = "1778566400000";

fn cli_at(state: &Path, args: &[&str]) -> Output {
    let mut v = args.to_vec();
    v.extend(["--now-ms", NOW_S]);
    cli(state, &v)
}

#[test]
fn fresh_state_dir_list_add_dismiss_snooze() {
    let d = tempfile::tempdir().unwrap();
    let st = d.path();
    let o = cli_at(st, &["--json"]);
    assert!(o.status.success());
    let v = json_of(&o);
    assert_eq!(v["count"], 0);
    assert_eq!(v["status"], "pending");
    assert!(v["agentId"].is_null());
    assert!(v["store"]
        .as_str()
        .unwrap()
        .ends_with("commitments/commitments.json"));

    let o = cli_at(
        st,
        &[
            "add",
            "--agent",
            "main",
            "--session",
            "s1",
            "--channel",
            "telegram",
            "--text",
            "Ask about the interview",
            "--earliest",
            "2026-05-12T09:00:00Z",
            "--latest",
            "2026-05-12T18:00:00+02:00",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_of(&o);
    let id = v["created"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        v["created"][0]["dueWindow"]["earliestMs"],
        1_778_576_400_000_i64
    );
    assert_eq!(
        v["created"][0]["dueWindow"]["latestMs"],
        1_778_601_600_000_i64
    );

    // Same scope + dedupe key via stdin merges.
    let mut child = Command::new(BIN)
        .arg("--state-dir")
        .arg(st)
        .args(["commitments", "add", "--stdin", "--json", "--now-ms", NOW_S])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        br#"{"agentId":"main","sessionKey":"s1","channel":"telegram","suggestedText":"Ask about the interview","confidence":0.5,"dueWindow":{"earliestMs":1778500000000,"latestMs":1778601600000,"timezone":"Europe/Berlin"}}"#,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(json_of(&o)["merged"], true);

    let o = cli_at(st, &["snooze", &id, "--until", "+2h", "--json"]);
    assert!(o.status.success());
    assert_eq!(json_of(&o)["snoozed"][0], id.as_str());

    let text = String::from_utf8(cli_at(st, &["list"]).stdout).unwrap();
    assert!(text.starts_with("Commitments: 1\nStore: "), "{text}");
    assert!(text.contains("snoozed"), "{text}");
    assert!(text.contains("2026-05-11T11:46:40.000Z"), "{text}"); // widened earliest

    // dismiss: known + unknown → exit 1, reported separately.
    let o = cli_at(st, &["dismiss", &id, "cm_nope", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_of(&o);
    assert_eq!(v["dismissed"][0], id.as_str());
    assert_eq!(v["unknown"][0], "cm_nope");
    // Already terminal → exit 0, reported as not active.
    let o = cli_at(st, &["dismiss", &id, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v = json_of(&o);
    assert_eq!(v["dismissed"].as_array().unwrap().len(), 0);
    assert_eq!(v["notActive"][0], id.as_str());

    assert_eq!(json_of(&cli_at(st, &["--json"]))["count"], 0);
    assert_eq!(json_of(&cli_at(st, &["--all", "--json"]))["count"], 1);
    assert_eq!(
        json_of(&cli_at(st, &["--status", "dismissed", "--json"]))["count"],
        1
    );
}

#[test]
fn usage_errors_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let o = cli(d.path(), &["--status", "done"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Unknown commitment status: done. Use one of: pending, sent, dismissed, snoozed, expired"),
        "{err}"
    );
    let o = cli(d.path(), &["snooze", "x", "--until", "tomorrow"]);
    assert_eq!(o.status.code(), Some(1));
    // clap: dismiss needs at least one id.
    assert_ne!(cli(d.path(), &["dismiss"]).status.code(), Some(0));
}

#[test]
fn invalid_record_exits_2_and_leaves_the_file_alone() {
    let d = tempfile::tempdir().unwrap();
    let ids = common::seed_commitments(
        d.path(),
        &["a"],
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let path = lockstore::paths::commitments_file(d.path());
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut bad = doc["commitments"][0].clone();
    bad["id"] = "cm_bad".into();
    bad["status"] = "done".into();
    doc["commitments"].as_array_mut().unwrap().push(bad);
    let before = serde_json::to_vec_pretty(&doc).unwrap();
    std::fs::write(&path, &before).unwrap();

    let o = cli(d.path(), &["dismiss", &ids[0]]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("commitments.json") && err.contains("record #1 (cm_bad): field status"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let o = cli(d.path(), &["dismiss", &ids[0], "--quarantine-invalid"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let side: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".invalid-"))
        .collect();
    assert_eq!(side.len(), 1);
    let q: Value = serde_json::from_slice(&std::fs::read(side[0].path()).unwrap()).unwrap();
    assert_eq!(q["records"][0]["record"]["id"], "cm_bad");
    assert_eq!(q["records"][0]["field"], "status");
}

#[test]
fn openclaw_fixture_lists_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let path = lockstore::paths::commitments_file(d.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/openclaw-commitments.json"
        ),
        &path,
    )
    .unwrap();
    let o = cli(d.path(), &["--all", "--json", "--now-ms", "1778000000000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_of(&o);
    assert_eq!(v["count"], 6);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("sourceUserText") && !text.contains("sourceAssistantText"));
}

/// The cross-process race: per round, a "heartbeat" process bumps the attempts
/// of A and B in a loop (K separate locked sections) and then marks B sent,
/// while a CLI `dismiss A C` process runs at the same time. Nothing may be lost:
/// A dismissed with K attempts, B sent with K attempts, C dismissed with 0.
#[test]
fn cli_dismiss_races_heartbeat_process_50_rounds() {
    const ROUNDS: usize = 50;
    const K: usize = 10;
    let started = std::time::Instant::now();
    let mut lost = 0;
    let mut interleaved = 0;
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let d = tempfile::tempdir().unwrap();
        let st = d.path().to_path_buf();
        let ids = common::seed_commitments(
            &st,
            &["a", "b", "c"],
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        );
        let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
        let go = Arc::new(Barrier::new(2));
        let (hb, dis) = std::thread::scope(|sc| {
            let heartbeat = {
                let (go, st, a, b) = (go.clone(), st.clone(), a.clone(), b.clone());
                sc.spawn(move || {
                    go.wait();
                    let k = K.to_string();
                    let o = cli(
                        &st,
                        &[
                            "mark-attempted",
                            &a,
                            &b,
                            "--repeat",
                            &k,
                            "--json",
                            "--durability",
                            "process",
                        ],
                    );
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    let sent = cli(&st, &["mark-sent", &b, "--json", "--durability", "process"]);
                    assert!(sent.status.success());
                    (json_of(&o), json_of(&sent))
                })
            };
            let dismiss = {
                let (go, st, a, c) = (go.clone(), st.clone(), a.clone(), c.clone());
                sc.spawn(move || {
                    go.wait();
                    let o = cli(
                        &st,
                        &["dismiss", &a, &c, "--json", "--durability", "process"],
                    );
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    json_of(&o)
                })
            };
            (heartbeat.join().unwrap(), dismiss.join().unwrap())
        });
        assert_eq!(dis["dismissed"].as_array().unwrap().len(), 2, "{dis}");
        assert_eq!(hb.1["sent"][0], b.as_str());
        let s = CommitmentsStore::open(&st, CommitmentsConfig::default()).unwrap();
        let all = s.list(StatusFilter::All, None, SystemTime::now()).unwrap();
        let get = |id: &str| all.iter().find(|r| r.id == id).unwrap().clone();
        let (ra, rb, rc) = (get(&a), get(&b), get(&c));
        let checks = [
            ra.status == Status::Dismissed,
            ra.attempts == K as u64,
            rb.status == Status::Sent && rb.sent_at_ms.is_some(),
            rb.attempts == K as u64,
            rc.status == Status::Dismissed,
            rc.attempts == 0,
        ];
        let bad = checks.iter().filter(|ok| !**ok).count();
        if bad > 0 {
            failures.push(format!("round {round}: {ra:?} {rb:?} {rc:?}"));
        }
        lost += bad;
        // The dismiss committed strictly between the heartbeat's first and last
        // bump: the two processes really interleaved in this round.
        let dm = ra.dismissed_at_ms.unwrap_or(0);
        if hb.0["firstMs"].as_i64().unwrap() < dm && dm < hb.0["lastMs"].as_i64().unwrap() {
            interleaved += 1;
        }
    }
    eprintln!(
        "cross-process: {ROUNDS} rounds, {lost} lost updates, {interleaved} rounds with the dismiss between heartbeat bumps, {:?}",
        started.elapsed()
    );
    assert_eq!(lost, 0, "lost updates: {failures:#?}");
}
