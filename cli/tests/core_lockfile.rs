//! The lock file's inode check, corrupt and unknown-version stores, quarantine,
//! and re-entrancy.

mod common;

use std::io::BufReader;
use std::path::Path;
use std::process::Stdio;

use rstest::rstest;
use serde::{Deserialize, Serialize};

use common::*;
use lockstore::lock::lock_path as lock_path_for;
use lockstore::{run_exclusive, Error, JsonOptions, JsonStore, LockOptions, Writer};

/// Child role `hold`: holds the store's section until a line arrives on stdin.
#[test]
fn child_role() {
    if let Some((role, store)) = role() {
        if role == "hold" {
            let w = Writer::open(&store, LockOptions::default()).unwrap();
            w.run(|_| {
                signal("INSIDE");
                wait_for_parent();
                Ok::<_, Error>(())
            })
            .unwrap();
            signal("RELEASED");
        }
    }
}

/// The lock file is deleted or replaced while held, with a waiter (W, a
/// `lockstore json incr` process) already blocked on the old inode. A new
/// holder (X, this test) takes the lock on the file now at the path. When the
/// old holder releases, W's flock on the old inode succeeds, but the inode
/// check sees the mismatch (logged at warn), and W goes back to waiting — on
/// X's inode. Without the check W would run concurrently with X: X's
/// read-then-write of `/n` around W's whole cycle would lose W's increment
/// (and W would exit before X released, which this test also checks).
#[rstest]
fn inode_check_catches_deleted_or_replaced_lock_file(#[values("delete", "replace")] how: &str) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    let lock = lock_path_for(&store);
    let st = lockstore(["json", "set"])
        .arg(&store)
        .args(["/n", "0"])
        .status()
        .unwrap();
    assert!(st.success());

    let mut h = RoleChild::spawn("child_role", "hold", &store);
    h.expect("INSIDE");
    let mut w = lockstore(["json", "incr"])
        .arg(&store)
        .arg("/n")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w_err = BufReader::new(w.stderr.take().unwrap());
    wait_for_substring(&mut w_err, "Blocking waiting for file lock")
        .unwrap_or_else(|seen| panic!("W never waited: {seen:?}"));

    match how {
        "delete" => std::fs::remove_file(&lock).unwrap(),
        _ => {
            let fresh = d.path().join("fresh.lock");
            std::fs::write(&fresh, b"").unwrap();
            std::fs::rename(&fresh, &lock).unwrap();
        }
    }

    // X takes the lock on the file now at the path (the old holder still runs:
    // tampering with a held lock file cannot stop that holder, only the waiters).
    run_exclusive(&store, &LockOptions::default(), |_ctx| {
        let n = read_json(&store)["n"].as_i64().unwrap();
        h.send("go"); // the old holder releases the old inode
        h.expect("RELEASED");
        match wait_for_substring(&mut w_err, "deleted or replaced") {
            Ok(_) => {}
            Err(seen) => panic!("W was not stopped by the inode check: {seen:?}"),
        }
        assert!(
            w.try_wait().unwrap().is_none(),
            "W finished while X held the lock"
        );
        let doc = serde_json::json!({"n": n + 10});
        lockstore::write_atomic(
            &store,
            serde_json::to_string(&doc).unwrap().as_bytes(),
            lockstore::Durability::Full,
        )?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let st = w.wait().unwrap();
    assert!(st.success(), "W failed: {st}");
    h.wait_ok();
    assert_eq!(read_json(&store)["n"], 11, "an update was lost");
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Doc {
    n: u64,
}

fn versioned(p: &Path) -> JsonStore<Doc> {
    JsonStore::open(
        p,
        JsonOptions {
            version: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
}

/// A corrupt or unknown-version file is `Error::Corrupt` naming the file, for
/// load and update alike, and its bytes are left exactly as they were.
#[rstest]
#[case::garbage(&b"not json at all"[..])]
#[case::truncated(&b"{\"version\": 1, \"n\": 4"[..])]
#[case::empty(&b""[..])]
#[case::no_version(&b"{\"n\": 4}"[..])]
#[case::future_version(&b"{\"version\": 7, \"n\": 4}"[..])]
#[case::wrong_shape(&b"{\"version\": 1, \"n\": \"four\"}"[..])]
fn corrupt_store_is_an_error_and_untouched(#[case] bytes: &[u8]) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    std::fs::write(&p, bytes).unwrap();
    let s = versioned(&p);
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("c.json"), "{e}");
    let e = s
        .update(|d| {
            d.n += 1;
        })
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "corrupt file was modified"
    );
    assert!(temps(&p).is_empty());
}

/// Library quarantine: the file moves to `<file>.corrupt-<ms>` byte for byte and
/// the store starts fresh.
#[test]
fn quarantine_moves_aside_and_starts_fresh() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    std::fs::write(&p, b"{\"version\": 9}").unwrap();
    let s = versioned(&p);
    let aside = s.quarantine().unwrap().expect("moved");
    assert!(aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("c.json.corrupt-"));
    assert_eq!(std::fs::read(&aside).unwrap(), b"{\"version\": 9}");
    s.update(|d| {
        d.n = 1;
    })
    .unwrap();
    assert_eq!(s.load().unwrap(), Doc { n: 1 });
}

/// CLI: edits of a corrupt file exit 2 naming the file and leave it untouched;
/// `lockstore json quarantine` moves it aside; edits then work.
#[test]
fn cli_corrupt_exit_2_and_quarantine() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    let bad = b"{\"a\": [1, 2";
    std::fs::write(&p, bad).unwrap();
    for args in [
        vec!["incr", "/n"],
        vec!["set", "/n", "1"],
        vec!["del", "/a"],
        vec!["get", "/a"],
    ] {
        let out = lockstore(["json", args[0]])
            .arg(&p)
            .args(&args[1..])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("c.json") && err.contains("corrupt"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), bad, "{args:?} touched the file");
    }
    let out = lockstore(["json", "quarantine"]).arg(&p).output().unwrap();
    assert!(out.status.success());
    assert!(!p.exists());
    let moved: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("c.json.corrupt-")
        })
        .collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(std::fs::read(moved[0].path()).unwrap(), bad);
    let out = lockstore(["json", "incr"])
        .arg(&p)
        .arg("/n")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(read_json(&p)["n"], 1);
}

/// A nested exclusive section on the same store from inside a job is
/// `Error::Reentrant` at once (never a deadlock), also through another alias of
/// the path and through `JsonStore::update`; the outer section is unharmed.
#[test]
fn reentrancy_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("a")).unwrap();
    std::os::unix::fs::symlink(d.path().join("a"), d.path().join("alias")).unwrap();
    let p = d.path().join("a/s.json");
    let alias = d.path().join("alias/s.json");
    let s = versioned(&p);
    let o = LockOptions::default();
    s.try_update(|doc| {
        doc.n = 1;
        let inner = run_exclusive(&p, &o, |_| Ok::<_, Error>(()));
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        let inner = run_exclusive(&alias, &o, |_| Ok::<_, Error>(()));
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        let inner = versioned(&alias).update(|d| {
            d.n = 99;
        });
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(s.load().unwrap(), Doc { n: 1 });
}
