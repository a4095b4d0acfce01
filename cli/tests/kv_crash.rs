//! Crashes and bad files under `lockstore kv`: SIGKILL during updates loses
//! no acknowledged update and leaves a database that passes
//! `PRAGMA integrity_check`; a corrupt record and a foreign database are
//! refused (exit 2) and left untouched.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;

use lockstore::rusqlite::Connection;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use common::*;

fn spawn_incr(store: &Path, key: &str, durability: &str) -> Child {
    lockstore(["kv", "incr"])
        .arg(store)
        .args([key, "/n", "--repeat", "1000000", "--durability", durability])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockstore kv incr")
}

fn stored(store: &Path, key: &str) -> i64 {
    let c = Connection::open(store).unwrap();
    c.query_row(
        "SELECT json_extract(value, '$.n') FROM records WHERE key = ?1",
        [key],
        |r| r.get::<_, Option<i64>>(0),
    )
    .unwrap_or(None)
    .unwrap_or(0)
}

/// Rounds of: 3 processes incrementing their own keys and 2 the shared key;
/// once each has acknowledged (printed) a few updates, all are SIGKILLed
/// mid-stream. Every acknowledged value is in the database (own key: the last
/// printed value or one more, committed but not yet printed; shared key: at
/// least the highest printed value), `integrity_check` is ok, and the next
/// round's writers proceed (the dead holders' locks are reclaimed).
#[test]
fn sigkill_during_updates_keeps_every_acknowledged_update() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.sqlite");
    let keys = ["own:0", "own:1", "own:2", "shared", "shared"];
    for (round, durability) in ["full", "process", "full"].iter().enumerate() {
        let children: Vec<Child> = keys
            .iter()
            .map(|k| spawn_incr(&store, k, durability))
            .collect();
        // One reader thread per child: every line it printed (acknowledged).
        let (tx, rx) = mpsc::channel::<(usize, i64)>();
        let mut readers = Vec::new();
        let mut kids = Vec::new();
        for (i, mut c) in children.into_iter().enumerate() {
            let out = c.stdout.take().unwrap();
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                let mut last = None;
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { break };
                    let v: i64 = l.trim().parse().expect("a number per line");
                    last = Some(v);
                    let _ = tx.send((i, v));
                }
                last
            }));
            kids.push(c);
        }
        drop(tx);
        // Kill once every child has acknowledged `want` updates.
        let want = 5 + 3 * round;
        let mut seen = vec![0usize; keys.len()];
        while seen.iter().any(|&n| n < want) {
            let (i, _) = rx.recv().expect("a child ended early");
            seen[i] += 1;
        }
        for c in &kids {
            kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL).unwrap();
        }
        let mut stderr = Vec::new();
        for mut c in kids {
            let st = c.wait().unwrap();
            let mut e = String::new();
            use std::io::Read;
            c.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            stderr.push(format!("{st}: {e}"));
        }
        let lasts: Vec<Option<i64>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        for (i, k) in keys.iter().enumerate().take(3) {
            let last = lasts[i].unwrap();
            let got = stored(&store, k);
            assert!(
                got == last || got == last + 1,
                "round {round}: {k} stored {got}, last acknowledged {last}; stderr {stderr:?}"
            );
        }
        let shared_max = lasts[3].max(lasts[4]).unwrap();
        assert!(
            stored(&store, "shared") >= shared_max,
            "round {round}: shared"
        );
        let c = Connection::open(&store).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "round {round}");
    }
    // Still usable.
    let before = stored(&store, "shared");
    let out = lockstore(["kv", "incr"])
        .arg(&store)
        .args(["shared", "/n"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored(&store, "shared"), before + 1);
}

/// A record that does not decode: get, incr, set with a pointer, list and
/// export exit 2 naming the file and the key; the row is left as it was.
#[test]
fn corrupt_record_is_refused_untouched() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.sqlite");
    for k in ["a", "b"] {
        let st = lockstore(["kv", "set"])
            .arg(&store)
            .args([k, "/n", "1"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let c = Connection::open(&store).unwrap();
    c.execute("UPDATE records SET value = '{\"n\": 1' WHERE key = 'b'", [])
        .unwrap();
    let row = || -> (String, i64, i64) {
        c.query_row(
            "SELECT value, version, updated_ms FROM records WHERE key = 'b'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let before = row();
    for args in [
        vec!["get", "FILE", "b"],
        vec!["incr", "FILE", "b", "/n"],
        vec!["set", "FILE", "b", "/n", "5"],
        vec!["list", "FILE"],
        vec!["export", "FILE"],
    ] {
        let out = lockstore(["kv"])
            .args(args.iter().map(|a| {
                if *a == "FILE" {
                    store.as_os_str()
                } else {
                    a.as_ref()
                }
            }))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("c.sqlite") && err.contains("\"b\""),
            "{args:?}: {err}"
        );
    }
    assert_eq!(row(), before, "the corrupt record was changed");
    // The other record is still served.
    let out = lockstore(["kv", "get"])
        .arg(&store)
        .args(["a", "/n"])
        .output()
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), 1);
}

/// A database another program created, and a file that is not a database:
/// exit 2 naming the file, bytes unchanged.
#[test]
fn foreign_database_and_non_database_are_refused_untouched() {
    let d = tempfile::tempdir().unwrap();
    let foreign = d.path().join("app.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch(
            "CREATE TABLE users(id INTEGER PRIMARY KEY); INSERT INTO users DEFAULT VALUES;",
        )
        .unwrap();
    let junk = d.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    for f in [&foreign, &junk] {
        let before = std::fs::read(f).unwrap();
        for args in [
            vec!["get", "k"],
            vec!["set", "k", "1"],
            vec!["incr", "k", "/n"],
        ] {
            let out = lockstore(["kv", args[0]])
                .arg(f)
                .args(&args[1..])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{} {args:?}: {err}",
                f.display()
            );
            let name = f.file_name().unwrap().to_string_lossy();
            assert!(err.contains(name.as_ref()), "{err}");
        }
        assert_eq!(std::fs::read(f).unwrap(), before, "{} changed", f.display());
    }
}

/// Bad input is exit 1: a missing key, a bad pointer, a non-number.
#[test]
fn bad_input_and_missing_keys_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.sqlite");
    let st = lockstore(["kv", "set"])
        .arg(&store)
        .args(["--string", "k", "/s", "text"])
        .status()
        .unwrap();
    assert!(st.success());
    let missing = d.path().join("missing.sqlite");
    let out = lockstore(["kv", "get"])
        .arg(&missing)
        .arg("k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists(), "a read created the file");
    for args in [
        vec!["get", "nope"],
        vec!["del", "nope"],
        vec!["incr", "k", "/s"],
        vec!["incr", "k", "no-slash"],
    ] {
        let out = lockstore(["kv", args[0]])
            .arg(&store)
            .args(&args[1..])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `kv list` into a pipe whose reader is gone ends quietly with 141.
#[test]
fn broken_pipe_exits_141_quietly() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.sqlite");
    let st = lockstore(["kv", "set"])
        .arg(&store)
        .args(["k0", "1"])
        .status()
        .unwrap();
    assert!(st.success());
    // A pipe whose read end is closed before the child starts.
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let out = lockstore(["kv", "list"])
        .arg(&store)
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(141),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
