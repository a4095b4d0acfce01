//! The seed regressions of openclaw #81145 (PRs #81153 / #81910): concurrent
//! mutators of the commitments store must never lose each other's updates.
//!
//! Each scenario runs against two implementations of the same operations:
//! * `Impl::Store` — [`CommitmentsStore`] (one exclusive section per mutator);
//! * `Impl::Naive` — a plain read → modify → atomic-write of the same file with
//!   no writer, as the incumbent did. Its optional hook makes every thread wait,
//!   after loading, until all have loaded (the interleaving JavaScript's
//!   `Promise.all` produced in the upstream repro, 20/20 lost).
//!
//! The store must lose nothing in every trial; the naive path with the hook must
//! lose an update in every trial (the demonstration that the tests can fail).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::commitments::{
    Candidate, CommitmentsConfig, CommitmentsStore, InferredItem, Kind, Scope, Sensitivity, Source,
    Status, StatusFilter, TerminalStatus,
};
use lockstore::write_atomic;
use lockstore::Durability;
use serde_json::Value;

const NOW: i64 = 1_780_000_000_000;
const TRIALS: usize = 20;

/// The instant `ms` Unix ms after the epoch.
fn t(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn scope() -> Scope {
    Scope {
        agent_id: "main".into(),
        session_key: "agent:main:telegram:dm:42".into(),
        channel: "telegram".into(),
        to: Some("42".into()),
        ..Default::default()
    }
}

fn cand(dedupe: &str) -> Candidate {
    Candidate {
        kind: Kind::EventCheckIn,
        sensitivity: Sensitivity::Routine,
        source: Source::InferredUserContext,
        reason: format!("reason {dedupe}"),
        suggested_text: format!("How did {dedupe} go?"),
        dedupe_key: dedupe.into(),
        confidence: 0.9,
        earliest_ms: NOW - 3_600_000,
        latest_ms: NOW + 3_600_000,
        timezone: "UTC".into(),
    }
}

fn cfg() -> CommitmentsConfig {
    CommitmentsConfig {
        durability: Durability::Process,
        ..Default::default()
    }
}

/// A fresh store with records for dedupe keys "a", "b"; returns their ids.
fn seeded(dir: &Path) -> (PathBuf, String, String) {
    let s = CommitmentsStore::open(dir, cfg()).unwrap();
    let item = InferredItem {
        scope: scope(),
        ..Default::default()
    };
    let made = s
        .upsert_inferred(&item, &[cand("a"), cand("b")], t(NOW - 1000))
        .unwrap();
    (
        s.path().to_path_buf(),
        made[0].id.clone(),
        made[1].id.clone(),
    )
}

#[derive(Clone, Debug)]
enum Op {
    Dismiss(String),
    Attempt(String),
    /// Upsert a new candidate with this dedupe key.
    Upsert(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Store,
    /// Naive load-modify-save; `true` = all threads load before any saves.
    Naive(bool),
}

fn naive_apply(path: &Path, op: &Op, after_load: &dyn Fn()) {
    let raw = std::fs::read(path).unwrap();
    let mut doc: Value = serde_json::from_slice(&raw).unwrap();
    after_load();
    let list = doc["commitments"].as_array_mut().unwrap();
    match op {
        Op::Dismiss(id) | Op::Attempt(id) => {
            let r = list.iter_mut().find(|r| r["id"] == id.as_str()).unwrap();
            if let Op::Dismiss(_) = op {
                if r["status"] == "pending" || r["status"] == "snoozed" {
                    r["status"] = "dismissed".into();
                    r["dismissedAtMs"] = NOW.into();
                    r["updatedAtMs"] = NOW.into();
                }
            } else {
                r["attempts"] = (r["attempts"].as_u64().unwrap() + 1).into();
                r["lastAttemptAtMs"] = NOW.into();
                r["updatedAtMs"] = NOW.into();
            }
        }
        Op::Upsert(key) => {
            let mut r = list[0].clone();
            r["id"] = format!("cm_naive_{key}").into();
            r["dedupeKey"] = key.as_str().into();
            r["status"] = "pending".into();
            r["attempts"] = 0.into();
            list.push(r);
        }
    }
    let bytes = serde_json::to_vec_pretty(&doc).unwrap();
    write_atomic(path, &bytes, Durability::Process).unwrap();
}

fn store_apply(dir: &Path, op: &Op) {
    let s = CommitmentsStore::open(dir, cfg()).unwrap();
    match op {
        Op::Dismiss(id) => {
            s.mark_status(&[id], TerminalStatus::Dismissed, t(NOW))
                .unwrap();
        }
        Op::Attempt(id) => {
            s.mark_attempted(&[id], t(NOW)).unwrap();
        }
        Op::Upsert(key) => {
            let item = InferredItem {
                scope: scope(),
                ..Default::default()
            };
            let made = s.upsert_inferred(&item, &[cand(key)], t(NOW)).unwrap();
            assert_eq!(made.len(), 1);
        }
    }
}

/// Runs `ops` concurrently (threads released together by a Barrier) and returns
/// the records afterwards as JSON values.
fn race(dir: &Path, path: &Path, ops: Vec<Op>, imp: Impl) -> Vec<Value> {
    let n = ops.len();
    let start = Arc::new(Barrier::new(n));
    let loaded = Arc::new(Barrier::new(n));
    std::thread::scope(|sc| {
        for op in ops {
            let (start, loaded) = (start.clone(), loaded.clone());
            sc.spawn(move || {
                start.wait();
                match imp {
                    Impl::Store => store_apply(dir, &op),
                    Impl::Naive(hook) => naive_apply(path, &op, &|| {
                        if hook {
                            loaded.wait();
                        }
                    }),
                }
            });
        }
    });
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    doc["commitments"].as_array().unwrap().clone()
}

fn rec<'a>(v: &'a [Value], id: &str) -> &'a Value {
    v.iter().find(|r| r["id"] == id).unwrap()
}

/// One trial of a seed scenario; `Err` describes the lost update.
fn trial(scenario: &str, imp: Impl) -> Result<(), String> {
    let d = tempfile::tempdir().unwrap();
    let (path, a, b) = seeded(d.path());
    let ops = match scenario {
        "disjoint_dismisses" => vec![Op::Dismiss(a.clone()), Op::Dismiss(b.clone())],
        "five_attempts" => vec![Op::Attempt(a.clone()); 5],
        "dismiss_vs_attempt" => vec![Op::Dismiss(a.clone()), Op::Attempt(a.clone())],
        "upsert_vs_status" => vec![Op::Upsert("new".into()), Op::Dismiss(b.clone())],
        _ => unreachable!(),
    };
    let after = race(d.path(), &path, ops, imp);
    let (ra, rb) = (rec(&after, &a), rec(&after, &b));
    let ok = match scenario {
        "disjoint_dismisses" => ra["status"] == "dismissed" && rb["status"] == "dismissed",
        "five_attempts" => ra["attempts"] == 5,
        "dismiss_vs_attempt" => ra["status"] == "dismissed" && ra["attempts"] == 1,
        "upsert_vs_status" => {
            rb["status"] == "dismissed" && after.iter().any(|r| r["dedupeKey"] == "new")
        }
        _ => unreachable!(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{scenario}: a={} b={} records={}",
            ra,
            rb,
            after.len()
        ))
    }
}

const SCENARIOS: [&str; 4] = [
    "disjoint_dismisses",
    "five_attempts",
    "dismiss_vs_attempt",
    "upsert_vs_status",
];

#[rstest::rstest]
#[case("disjoint_dismisses")]
#[case("five_attempts")]
#[case("dismiss_vs_attempt")]
#[case("upsert_vs_status")]
fn store_loses_nothing(#[case] scenario: &str) {
    let lost: Vec<String> = (0..TRIALS)
        .filter_map(|_| trial(scenario, Impl::Store).err())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {TRIALS} trials lost an update: {lost:?}",
        lost.len()
    );
}

/// The demonstration: the same scenarios on a naive load-modify-save lose an
/// update in every trial when all threads load before any saves (the upstream
/// repro's interleaving); without the hook the loss count is reported only.
#[test]
fn naive_load_modify_save_loses_updates() {
    for scenario in SCENARIOS {
        let lost = (0..TRIALS)
            .filter(|_| trial(scenario, Impl::Naive(true)).is_err())
            .count();
        let free = (0..TRIALS)
            .filter(|_| trial(scenario, Impl::Naive(false)).is_err())
            .count();
        eprintln!(
            "naive {scenario}: lost {lost}/{TRIALS} with all loads first, {free}/{TRIALS} free-running"
        );
        assert_eq!(
            lost, TRIALS,
            "{scenario}: the naive path should lose every time"
        );
    }
}

/// Many threads, mixed operations on a shared store: every bump counted, every
/// dismiss kept, every upsert kept.
#[test]
fn mixed_contention_counts_every_update() {
    let d = tempfile::tempdir().unwrap();
    let (_path, a, b) = seeded(d.path());
    let threads = 8;
    let per = 10;
    let start = Arc::new(Barrier::new(threads));
    std::thread::scope(|sc| {
        for t in 0..threads {
            let (start, a, b, dir) = (start.clone(), a.clone(), b.clone(), d.path());
            sc.spawn(move || {
                start.wait();
                for i in 0..per {
                    store_apply(
                        dir,
                        &Op::Attempt(if i % 2 == 0 { a.clone() } else { b.clone() }),
                    );
                    if t == 0 && i == per / 2 {
                        store_apply(dir, &Op::Dismiss(a.clone()));
                    }
                    if t == 1 {
                        store_apply(dir, &Op::Upsert(format!("t1-{i}")));
                    }
                }
            });
        }
    });
    let s = CommitmentsStore::open(d.path(), cfg()).unwrap();
    let all = s.list(StatusFilter::All, None, t(NOW)).unwrap();
    let ra = all.iter().find(|r| r.id == a).unwrap();
    let rb = all.iter().find(|r| r.id == b).unwrap();
    assert_eq!(ra.attempts, (threads * per / 2) as u64);
    assert_eq!(rb.attempts, (threads * per / 2) as u64);
    assert_eq!(ra.status, Status::Dismissed);
    assert_eq!(all.len(), 2 + per);
}
