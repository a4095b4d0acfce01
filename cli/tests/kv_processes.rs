//! No lost update across processes: N `lockstore kv incr` processes × M
//! increments, on one key and on disjoint keys of one collection; the final
//! counts are exact.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};

use rstest::rstest;
use serde_json::Value;

use common::*;

fn incr(store: &Path, key: &str, m: usize, durability: &str) -> Child {
    lockstore(["kv", "incr"])
        .arg(store)
        .args([
            key,
            "/n",
            "--repeat",
            &m.to_string(),
            "--durability",
            durability,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockstore kv incr")
}

fn get(store: &Path, key: &str) -> Value {
    let out = lockstore(["kv", "get"])
        .arg(store)
        .args([key, "/n"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kv get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_all(children: Vec<Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kv incr failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// N processes × M increments of one key.
#[rstest]
#[case::p2(2, 100, "full")]
#[case::p8(8, 40, "process")]
#[case::p16(16, 20, "process")]
fn processes_on_one_key_count_exactly(
    #[case] n: usize,
    #[case] m: usize,
    #[case] durability: &str,
) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.sqlite");
    wait_all(
        (0..n)
            .map(|_| incr(&store, "shared", m, durability))
            .collect(),
    );
    assert_eq!(get(&store, "shared"), Value::from(n * m), "lost updates");
}

/// N processes × M increments, each of its own key.
#[rstest]
#[case::p2(2, 100, "full")]
#[case::p8(8, 40, "process")]
#[case::p16(16, 20, "process")]
fn processes_on_disjoint_keys_count_exactly(
    #[case] n: usize,
    #[case] m: usize,
    #[case] durability: &str,
) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.sqlite");
    wait_all(
        (0..n)
            .map(|i| incr(&store, &format!("own:{i}"), m, durability))
            .collect(),
    );
    for i in 0..n {
        assert_eq!(get(&store, &format!("own:{i}")), Value::from(m), "own:{i}");
    }
    let out = lockstore(["kv", "list"]).arg(&store).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
}
