//! No lost update: many processes and threads increment one JSON counter plus
//! their own tallies; the final counts are exact and no temp file is left.
//!
//! Each process runs `lockstore json incr FILE /count /tally/<i> --repeat M`
//! (both pointers in one locked cycle), so a lost update shows up as a short
//! `/count` or a short tally. The naive twin (`#[ignore]`d,
//! `naive_processes_lose_updates`) runs the same workload with an unlocked
//! load-modify-save and shows the counter coming up short.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use rstest::rstest;
use serde::{Deserialize, Serialize};

use common::*;
use lockstore::{Durability, JsonOptions, JsonStore};

fn incr_child(
    store: &Path,
    i: usize,
    m: usize,
    threads: usize,
    durability: &str,
) -> (Child, StderrLog) {
    let err = StderrLog::new();
    let c = lockstore(["json", "incr"])
        .arg(store)
        .args([
            "/count".to_string(),
            format!("/tally/{i}"),
            "--repeat".into(),
            m.to_string(),
            "--threads".into(),
            threads.to_string(),
            "--durability".into(),
            durability.into(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(err.stdio())
        .spawn()
        .expect("spawn lockstore");
    (c, err)
}

fn check_counts(store: &Path, procs: usize, threads: usize, m: usize) {
    let doc = read_json(store);
    assert_eq!(
        doc["count"].as_u64(),
        Some((procs * threads * m) as u64),
        "lost updates on /count: {doc}"
    );
    for i in 0..procs {
        assert_eq!(
            doc["tally"][i.to_string()].as_u64(),
            Some((threads * m) as u64),
            "lost updates on /tally/{i}"
        );
    }
    assert!(
        temps(store).is_empty(),
        "temp files left: {:?}",
        temps(store)
    );
}

fn run_procs(procs: usize, threads: usize, m: usize, durability: &str) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("counter.json");
    let start = Instant::now();
    let children: Vec<_> = (0..procs)
        .map(|i| incr_child(&store, i, m, threads, durability))
        .collect();
    for (mut c, err) in children {
        let st = c.wait().unwrap();
        assert!(
            st.success(),
            "lockstore json incr failed: {st}; stderr:\n{}",
            err.text()
        );
    }
    eprintln!(
        "{procs} processes x {threads} threads x {m} updates ({durability}): {:.2?}",
        start.elapsed()
    );
    check_counts(&store, procs, threads, m);
}

/// N processes × M locked cycles each.
#[rstest]
#[case::p2_full(2, 200, "full")]
#[case::p8_full(8, 50, "full")]
#[case::p8(8, 150, "process")]
#[case::p16(16, 100, "process")]
fn processes_count_exactly(#[case] procs: usize, #[case] m: usize, #[case] durability: &str) {
    run_procs(procs, 1, m, durability);
}

/// T threads in one process (`--threads`), all on the same pointers.
#[rstest]
#[case::t2(2, 200, "full")]
#[case::t8(8, 100, "process")]
#[case::t16(16, 60, "process")]
fn threads_in_one_process_count_exactly(
    #[case] threads: usize,
    #[case] m: usize,
    #[case] durability: &str,
) {
    run_procs(1, threads, m, durability);
}

/// Threads and processes mixed: P processes of T threads.
#[rstest]
#[case::p2_t4(2, 4, 50, "full")]
#[case::p4_t4(4, 4, 50, "process")]
#[case::p8_t2(8, 2, 50, "process")]
fn threads_and_processes_count_exactly(
    #[case] procs: usize,
    #[case] threads: usize,
    #[case] m: usize,
    #[case] durability: &str,
) {
    run_procs(procs, threads, m, durability);
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
struct Counter {
    count: u64,
    tally: Vec<u64>,
}

/// Library level: T threads released by one barrier, each through its own
/// `JsonStore` handle (one queue per path is shared), M updates each.
#[rstest]
fn library_threads_count_exactly(#[values(2, 8)] threads: usize) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("c.json");
    let m = 25;
    let barrier = Arc::new(Barrier::new(threads));
    std::thread::scope(|s| {
        for i in 0..threads {
            let barrier = barrier.clone();
            let store = &store;
            s.spawn(move || {
                let js: JsonStore<Counter> = JsonStore::open(
                    store,
                    JsonOptions {
                        durability: Durability::Process,
                        version: Some(1),
                        ..Default::default()
                    },
                )
                .unwrap();
                barrier.wait();
                for _ in 0..m {
                    js.try_update(|c| {
                        c.count += 1;
                        if c.tally.len() <= i {
                            c.tally.resize(i + 1, 0);
                        }
                        c.tally[i] += 1;
                        Ok::<_, lockstore::Error>(())
                    })
                    .unwrap();
                }
            });
        }
    });
    let doc = read_json(&store);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["count"].as_u64(), Some((threads * m) as u64));
    for i in 0..threads {
        assert_eq!(doc["tally"][i].as_u64(), Some(m as u64));
    }
    assert!(temps(&store).is_empty());
}

/// Child role for the naive demonstration: the same increments with a plain
/// read / modify / write-temp + rename and no lock.
fn naive_incr(store: &Path, i: usize, m: usize) {
    for _ in 0..m {
        let mut doc: serde_json::Value = std::fs::read(store)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        let c = doc["count"].as_u64().unwrap_or(0);
        doc["count"] = (c + 1).into();
        let t = doc["tally"][i.to_string()].as_u64().unwrap_or(0);
        doc["tally"][i.to_string()] = (t + 1).into();
        let tmp = store.with_extension(format!("{}.naive.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&serde_json::to_vec_pretty(&doc).unwrap())
            .unwrap();
        drop(f);
        std::fs::rename(&tmp, store).unwrap();
    }
}

#[test]
fn child_role() {
    if let Some((role, store)) = role() {
        if let Some(rest) = role.strip_prefix("naive_incr:") {
            let (i, m) = rest.split_once(':').unwrap();
            naive_incr(&store, i.parse().unwrap(), m.parse().unwrap());
        }
    }
}

/// Demonstration that the workload above detects lost updates: with the same
/// sizes but no lock and no queue, processes lose increments. Ignored because it
/// asserts a race happens (it does, every time on a 2-core machine, but it is
/// the mechanism-free path); run with `cargo test --test core_counter -- --ignored`.
#[rstest]
#[case::p8(8, 150)]
#[case::p16(16, 100)]
#[ignore]
fn naive_processes_lose_updates(#[case] procs: usize, #[case] m: usize) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("counter.json");
    std::fs::write(&store, b"{}").unwrap();
    let children: Vec<Child> = (0..procs)
        .map(|i| spawn_role("child_role", &format!("naive_incr:{i}:{m}"), &store))
        .collect();
    for mut c in children {
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success());
    }
    let doc = read_json(&store);
    let got = doc["count"].as_u64().unwrap_or(0);
    let want = (procs * m) as u64;
    eprintln!("naive: {procs} processes x {m} updates: count {got} of {want}");
    assert!(got < want, "the naive path happened not to lose an update");
}
