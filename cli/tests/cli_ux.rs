//! The CLI as an operator uses it (issue 15): exit codes of usage errors,
//! completions and man page, copyable ids and git-style prefixes, one report
//! per problem, snoozes and attempt counts in lists, no colour codes in a
//! file, and the lock-wait line at most once per process and store.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use lockstore::{run_exclusive, Error, LockOptions};

fn run(state: &Path, args: &[&str]) -> Output {
    lockstore(["--state-dir"])
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    o
}

#[test]
fn usage_errors_exit_1_help_and_version_exit_0() {
    let d = tempfile::tempdir().unwrap();
    let o = run(d.path(), &["no-such-command"]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("unrecognized subcommand"));
    let o = run(d.path(), &["tasks", "list", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));

    let o = ok(run(d.path(), &["--help"]));
    let help = stdout(&o);
    assert!(help.contains("Exit codes:"), "{help}");
    for line in [
        "  1    usage error",
        "  2    a store is corrupt",
        "  3    a lock",
    ] {
        assert!(help.contains(line), "exit table lacks {line:?}:\n{help}");
    }
    let o = ok(run(d.path(), &["--version"]));
    assert!(stdout(&o).starts_with("lockstore "));
}

#[test]
fn env_values_are_not_shown_in_help() {
    let o = lockstore(["tasks", "--help"])
        .env("LOCKSTORE_STATE_DIR", "")
        .output()
        .unwrap();
    let help = stdout(&o);
    assert!(help.contains("[env: LOCKSTORE_STATE_DIR]"), "{help}");
    assert!(!help.contains("LOCKSTORE_STATE_DIR="), "{help}");
}

#[test]
fn completions_parse_and_name_the_subcommands() {
    let d = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = ok(run(d.path(), &["completions", shell]));
        let script = stdout(&o);
        for sub in ["commitments", "outbox", "tasks", "completions"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
        if shell == "bash" {
            let f = d.path().join("lockstore.bash");
            std::fs::write(&f, &script).unwrap();
            let o = std::process::Command::new("bash")
                .arg("-n")
                .arg(&f)
                .output()
                .unwrap();
            assert!(o.status.success(), "bash -n: {}", stderr(&o));
        }
    }
}

#[test]
fn man_page_has_a_title_and_the_subcommands() {
    let d = tempfile::tempdir().unwrap();
    let page = stdout(&ok(run(d.path(), &["man"])));
    assert!(page.contains(".TH lockstore 1"), "{page}");
    for sub in ["commitments", "outbox", "tasks", "daemon"] {
        assert!(page.contains(sub), "man page lacks {sub}");
    }
    let dir = d.path().join("man");
    ok(run(d.path(), &["man", "--out", dir.to_str().unwrap()]));
    let tasks_run = std::fs::read_to_string(dir.join("lockstore-tasks-run.1")).unwrap();
    assert!(
        tasks_run.contains(".TH lockstore-tasks-run 1"),
        "{tasks_run}"
    );
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

#[test]
fn tasks_list_shows_full_ids_and_commands_take_unique_prefixes() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path();
    let create = |t: &str| {
        let o = ok(run(
            s,
            &["tasks", "create", "--runtime", "cli", "--task", t],
        ));
        stdout(&o).trim().to_string()
    };
    let (a, b) = (create("first"), create("second"));
    let list = stdout(&ok(run(s, &["tasks", "list"])));
    assert!(
        list.contains(&a) && list.contains(&b),
        "ids not shown in full:\n{list}"
    );

    // Ids start with the creation time in hex: two tasks made now share a
    // prefix of well over 4 characters.
    let l = common_prefix(&a, &b);
    assert!(l >= 4, "{a} {b}");
    let o = run(s, &["tasks", "show", &a[..l]]);
    assert_eq!(o.status.code(), Some(1), "ambiguous prefix: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("ambiguous") && err.contains(&a) && err.contains(&b),
        "{err}"
    );

    let o = ok(run(s, &["tasks", "show", &a[..l + 1], "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["taskId"], a.as_str());
    ok(run(s, &["tasks", "cancel", &b[..l + 1]]));
    let o = ok(run(s, &["tasks", "show", &b, "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "cancelled");

    let o = run(s, &["tasks", "show", "ffffffffffff"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Task not found"), "{}", stderr(&o));
}

#[test]
fn commitments_take_prefixes_report_unknown_ids_once_and_list_snoozes() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ids = seed_commitments(s, &["a", "b"], now);
    let (a, b) = (&ids[0], &ids[1]);
    let l = common_prefix(a, b);

    let o = run(s, &["commitments", "dismiss", &a[..l]]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ambiguous"), "{}", stderr(&o));

    let o = ok(run(s, &["commitments", "dismiss", &a[..a.len() - 1]]));
    assert!(stdout(&o).contains(a.as_str()), "{}", stdout(&o));

    // An unknown id: one report (stderr, exit 1), not also on stdout.
    let o = run(s, &["commitments", "dismiss", "cm_nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!stdout(&o).contains("cm_nope"), "stdout: {}", stdout(&o));
    assert_eq!(stderr(&o).matches("cm_nope").count(), 1, "{}", stderr(&o));

    // A snooze shows in the text list, not only in --json.
    let o = ok(run(
        s,
        &[
            "commitments",
            "snooze",
            b,
            "--until",
            "2099-01-02T03:04:05Z",
        ],
    ));
    assert!(stdout(&o).contains("2099-01-02T03:04:05"), "{}", stdout(&o));
    let list = stdout(&ok(run(s, &["commitments"])));
    assert!(list.contains("Snoozed until"), "{list}");
    let row = list.lines().find(|l| l.contains(b.as_str())).unwrap();
    assert!(row.contains("2099-01-02T03:04:05"), "{list}");
}

#[test]
fn outbox_list_counts_the_delivering_attempt() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path();
    let sink = d.path().join("sink.jsonl");
    let o = ok(run(
        s,
        &[
            "outbox",
            "enqueue",
            "--channel",
            "tg",
            "--target",
            "u1",
            "--payload",
            "{}",
        ],
    ));
    assert_eq!(stdout(&o), "created 1\n");
    let adapter = format!("file:{}", sink.display());
    ok(run(
        s,
        &["outbox", "deliver", "--adapter", &adapter, "--once"],
    ));
    let list = stdout(&ok(run(s, &["outbox", "list"])));
    let row = list.lines().find(|l| l.contains("delivered")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    // ID STATUS CHANNEL TARGET TRY ...
    assert_eq!(cols[4], "1", "delivered on the first attempt:\n{list}");

    // Each problem reported once: one error line naming both ids.
    let o = run(s, &["outbox", "retry", "1", "99"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("1: not retried: status is delivered"), "{err}");
    assert!(err.contains("99: no such entry"), "{err}");
}

/// A log line on stderr (the info-level "Blocking waiting" event of a
/// contended lock) carries no ANSI colour codes when stderr is a pipe.
#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    let mut child = None;
    run_exclusive(&store, &LockOptions::default(), |_| {
        let mut c = lockstore(["json", "incr"])
            .arg(&store)
            .arg("/n")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(c.stderr.take().unwrap());
        let line = wait_for_substring(&mut err, "INFO")
            .unwrap_or_else(|seen| panic!("no info log: {seen:?}"));
        child = Some((c, err, line));
        Ok::<_, Error>(())
    })
    .unwrap();
    let (mut c, mut err, mut all) = child.unwrap();
    std::io::Read::read_to_string(&mut err, &mut all).unwrap();
    assert!(c.wait().unwrap().success(), "{all}");
    assert!(!all.contains('\x1b'), "colour codes in a pipe: {all:?}");
}

/// The test process holds the store's lock; a `json incr --repeat 20` child
/// waits past the 100 ms threshold and prints the wait line, naming the
/// holder (this process); after the release its 20 increments run, and the
/// line is never printed again.
#[test]
fn lock_wait_line_names_the_holder_once() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    let mut child = None;
    run_exclusive(&store, &LockOptions::default(), |_| {
        let mut c = lockstore(["json", "incr"])
            .arg(&store)
            .args(["/n", "--repeat", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(c.stderr.take().unwrap());
        let line = wait_for_substring(&mut err, "Blocking waiting for file lock on")
            .unwrap_or_else(|seen| panic!("no wait line: {seen:?}"));
        assert!(
            line.contains(&format!("pid {}", std::process::id())),
            "{line}"
        );
        child = Some((c, err));
        Ok::<_, Error>(())
    })
    .unwrap();
    let (mut c, mut err) = child.unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(c.wait().unwrap().success(), "{rest}");
    assert!(!rest.contains("Blocking waiting"), "printed again: {rest}");
    assert_eq!(read_json(&store)["n"], 20);
}

/// Two processes incrementing one store 200 times each contend on nearly
/// every round; each prints the wait line at most once (the issue saw 135
/// per process).
#[test]
fn contending_repeat_loops_print_the_wait_line_at_most_once() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    let spawn = || {
        lockstore(["json", "incr"])
            .arg(&store)
            .args(["/n", "--repeat", "200", "--durability", "process"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kids = [spawn(), spawn()];
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let n = BufReader::new(&o.stderr[..])
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("Blocking waiting"))
            .count();
        assert!(n <= 1, "{n} wait lines:\n{}", stderr(&o));
    }
    assert_eq!(read_json(&store)["n"], 400);
}
