//! `lockstore outbox` end to end on a fresh state dir.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");

fn ls(state: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("outbox")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    if let Some(s) = stdin {
        i.write_all(s.as_bytes()).unwrap();
    }
    drop(i);
    c.wait_with_output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn enqueue_deliver_list_retry_prune() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("state");
    let e = |args: &[&str], stdin| ls(&s, args, stdin);
    assert_eq!(
        out(&e(
            &[
                "enqueue",
                "--channel",
                "tg",
                "--target",
                "u1",
                "--key",
                "k1",
                "--payload",
                r#"{"t":1}"#
            ],
            None
        )),
        "created 1\n"
    );
    assert_eq!(
        out(&e(
            &[
                "enqueue",
                "--channel",
                "tg",
                "--target",
                "u1",
                "--key",
                "k1",
                "--payload",
                r#"{"t":1}"#
            ],
            None
        )),
        "existing 1\n"
    );
    assert_eq!(
        out(&e(
            &[
                "enqueue",
                "--channel",
                "tg",
                "--target",
                "bad",
                "--ttl",
                "30d"
            ],
            Some(r#"{"t":2}"#)
        )),
        "created 2\n"
    );
    let bad = e(
        &[
            "enqueue",
            "--channel",
            "tg",
            "--target",
            "u",
            "--payload",
            "{nope",
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    let bad = e(
        &[
            "enqueue",
            "--channel",
            "tg",
            "--target",
            "u",
            "--ttl",
            "5x",
            "--payload",
            "1",
        ],
        None,
    );
    assert!(!bad.status.success());

    let sink = d.path().join("exec.log");
    let cmd = format!(
        "exec:[ \"$LOCKSTORE_TARGET\" = bad ] && {{ echo 'Forbidden: bot was kicked' >&2; exit 1; }}; cat >> '{}'",
        sink.display()
    );
    assert!(e(&["deliver", "--adapter", &cmd, "--once"], None)
        .status
        .success());
    assert_eq!(std::fs::read_to_string(&sink).unwrap(), r#"{"t":1}"#);

    let v: serde_json::Value = serde_json::from_str(&out(&e(&["list", "--json"], None))).unwrap();
    assert_eq!(v[0]["status"], "delivered");
    assert_eq!(v[1]["status"], "dead");
    assert!(v[1]["last_error"]
        .as_str()
        .unwrap()
        .contains("bot was kicked"));
    let st: serde_json::Value = serde_json::from_str(&out(&e(&["stats", "--json"], None))).unwrap();
    assert_eq!(
        (
            st["by_status"]["delivered"].as_u64(),
            st["by_status"]["dead"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Retry: the dead letter goes back; the delivered one is refused by name.
    let r = e(&["retry", "2", "1"], None);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("1: not retried: status is delivered"));
    let f = d.path().join("sink.jsonl");
    assert!(e(
        &[
            "deliver",
            "--adapter",
            &format!("file:{}", f.display()),
            "--once"
        ],
        None
    )
    .status
    .success());
    assert!(std::fs::read_to_string(&f)
        .unwrap()
        .contains("\"target\":\"bad\""));
    assert!(out(&e(&["show", "2"], None)).contains("\"delivered\""));

    assert_eq!(
        e(&["prune", "--older-than", "0s"], None).status.code(),
        Some(1)
    );
    assert_eq!(
        out(&e(&["prune", "--older-than", "30d", "--dry-run"], None)),
        "would prune 0 delivered, 0 dead, 0 expired\n"
    );
    assert_eq!(e(&["show", "99"], None).status.code(), Some(1));
}
