//! lockstore benchmarks: every row is a ratio against a baseline measured in the
//! same run on the same file system (see docs/performance.md).
//!
//! ```text
//! cargo run --release --example bench [-- --json] [--quick] [--dir DIR] [--only async|outbox-async|collections|postgres]
//! ```
//!
//! Rows: (1) the physical limit — a bare loop of flock + read + modify + write
//! temp + fsync + rename + fsync dir, and a bare fsync loop; (2) JsonStore, one
//! writer, durability full and process; (3) 8 and 32 in-process writers with and
//! without group commit, with the mean batch size; (4) 4 and 16 processes:
//! ops/s, p50/p99 lock wait, fairness (max/min completions); (5) document size
//! scaling 100 … 100k records with the slope; (6) the task ledger through
//! `TaskRegistry` (1 writer; 8 and 32 threads with and without group commit)
//! against a bare rusqlite BEGIN IMMEDIATE loop writing the same row, and the
//! outbox end to end (enqueue → claim → deliver to a file adapter → ack,
//! durability process) with 1 and 4 workers, and the async worker
//! (`run_async`, 4 tasks on a 2-worker runtime) against the sync one on the
//! same 10,000 messages; (7) the peak memory (VmHWM) of the child process
//! that ran each measurement of rows 5 and 6; (8) async (`lockstore::tokio`,
//! feature `tokio`): 100 tasks on a 2-worker runtime updating one store
//! against 100 threads, and the worst stall of a 5 ms heartbeat task while
//! they run (p99 and max). `--only async` runs rows 1 and 8, `--only
//! outbox-async` the async worker row. (9) collections (`lockstore::Collection`,
//! `--only collections` runs rows 1 and 9): one-record update p50/p99 in
//! collections of 1k, 100k and 1M records (override with
//! `LOCKSTORE_BENCH_KV_SIZES=1000,20000`) against `JsonStore` at 100k (or the
//! middle size), 4 processes updating disjoint keys against the physical
//! per-save loop, and the peak RSS of a child process scanning the smallest and
//! the largest collection. (10) PostgreSQL (`--only postgres`, a private
//! cluster; skipped when the binaries are missing): the outbox end to end
//! batched (`enqueue_many` → `claim` → null adapter → `ack_many`, 64 a batch)
//! and through the sync worker (per-message send mark, group ack), and
//! task-ledger updates, each with 1 worker and 4 workers in 2 processes, on
//! PostgreSQL against SQLite (durability full) in the same run, with the
//! ratio PG/SQLite and against the 5,000 msgs/s target.

use std::io::{BufRead, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockstore::tasks::{NewTask, RegistryOptions, Runtime, TaskRegistry};
use lockstore::GroupCommit;
use lockstore::{Durability, Error, JsonOptions, JsonStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Doc {
    counter: u64,
    records: Vec<Rec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rec {
    id: String,
    status: String,
    attempts: u32,
    text: String,
}

fn records(n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            id: format!("cm_{i:08}"),
            status: "pending".into(),
            attempts: 0,
            text: "check in after the interview on Friday".into(),
        })
        .collect()
}

fn seed(path: &Path, n: usize) {
    let _ = std::fs::remove_file(path);
    let s = store(path, Durability::Process, false);
    s.update(|d| {
        d.records = records(n);
    })
    .expect("seed");
}

fn store(path: &Path, durability: Durability, group: bool) -> JsonStore<Doc> {
    JsonStore::open(
        path,
        JsonOptions {
            durability,
            group_commit: GroupCommit {
                enabled: group,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("open store")
}

/// One bump of the store (the unit of work in every row).
fn bump(s: &JsonStore<Doc>) -> Duration {
    s.update_ctx(|d, ctx| {
        d.counter += 1;
        if let Some(r) = d.records.first_mut() {
            r.attempts += 1;
        }
        Ok::<_, Error>(ctx.waited())
    })
    .expect("update")
}

/// Row 1: the physical per-save limit, no framework.
fn physical_loop(path: &Path, secs: f64) -> f64 {
    let lock_path = path.with_extension("json.rawlock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .expect("lock file");
    let dir = path.parent().expect("dir");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        lock.lock().expect("flock");
        let bytes = std::fs::read(path).expect("read");
        let mut doc: Doc = serde_json::from_slice(&bytes).expect("parse");
        doc.counter += 1;
        let out = serde_json::to_vec_pretty(&doc).expect("ser");
        let tmp = dir.join(format!(".raw.{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp).expect("tmp");
        f.write_all(&out).expect("write");
        f.sync_all().expect("fsync");
        std::fs::rename(&tmp, path).expect("rename");
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .expect("fsync dir");
        lock.unlock().expect("unlock");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn fsync_loop(dir: &Path, secs: f64) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync.bin")).expect("create");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.write_all(&n.to_le_bytes()).expect("write");
        f.sync_all().expect("fsync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn timed_single(s: &JsonStore<Doc>, secs: f64) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        bump(s);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn threads(path: &Path, t: usize, per: u64, group: bool) -> (f64, f64) {
    let s = store(path, Durability::Full, group);
    let lockstore::GroupCommitStats {
        batches: b0,
        batched_updates: u0,
        ..
    } = s.group_commit_stats();
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..t {
            sc.spawn(|| {
                for _ in 0..per {
                    bump(&s);
                }
            });
        }
    });
    let ops = (t as u64 * per) as f64 / start.elapsed().as_secs_f64();
    let lockstore::GroupCommitStats {
        batches: b1,
        batched_updates: u1,
        ..
    } = s.group_commit_stats();
    let mean = if b1 > b0 {
        (u1 - u0) as f64 / (b1 - b0) as f64
    } else {
        1.0
    };
    (ops, mean)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Row 4 child: waits for "go" on stdin, bumps for `ms` milliseconds, prints
/// each lock wait in µs.
fn child_procs(path: &Path, ms: u64) {
    let s = store(path, Durability::Full, true);
    println!("ready");
    std::io::stdout().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok();
    let mut waits = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        waits.push(bump(&s).as_micros().to_string());
    }
    println!("{}", waits.join(" "));
}

fn procs(path: &Path, n: usize, per: u64) -> (f64, f64, f64, f64) {
    let exe = std::env::current_exe().expect("exe");
    let mut kids: Vec<_> = (0..n)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--child-procs",
                    &path.display().to_string(),
                    &per.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut outs: Vec<_> = kids
        .iter_mut()
        .map(|k| std::io::BufReader::new(k.stdout.take().expect("stdout")))
        .collect();
    for o in outs.iter_mut() {
        let mut l = String::new();
        o.read_line(&mut l).expect("ready");
    }
    let start = Instant::now();
    for k in kids.iter_mut() {
        writeln!(k.stdin.as_mut().expect("stdin"), "go").expect("go");
    }
    let mut waits = Vec::new();
    let mut counts = Vec::new();
    for (k, o) in kids.iter_mut().zip(outs.iter_mut()) {
        let mut s = String::new();
        o.read_to_string(&mut s).expect("out");
        k.wait().expect("wait");
        let w: Vec<f64> = s
            .split_whitespace()
            .filter_map(|x| x.parse::<f64>().ok())
            .map(|us| us / 1000.0)
            .collect();
        counts.push(w.len() as f64);
        waits.extend(w);
    }
    let el = start.elapsed().as_secs_f64();
    let total: f64 = counts.iter().sum();
    let fair = counts.iter().cloned().fold(0.0, f64::max)
        / counts.iter().cloned().fold(f64::MAX, f64::min).max(1.0);
    let p50 = percentile(&mut waits, 0.5);
    let p99 = percentile(&mut waits, 0.99);
    (total / el, p50, p99, fair)
}

/// Row 5 child: seeds `n` records, times `k` updates, prints ms/update and VmHWM kB.
fn child_size(path: &Path, n: usize, k: u64) {
    seed(path, n);
    let s = store(path, Durability::Full, true);
    let start = Instant::now();
    for _ in 0..k {
        bump(&s);
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / k as f64;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    println!("{ms} {hwm}");
}

/// Row 6: a bare rusqlite loop: BEGIN IMMEDIATE, read the whole row, write
/// every column back with `last_event_at`, the metadata counter and `version`
/// changed (compare-and-set on version), COMMIT — the statements the registry
/// runs (cached), without the framework (no flock, no memory, no observers).
fn bare_sqlite_loop(path: &Path, id: &str, durability: Durability, secs: f64) -> f64 {
    use rusqlite::types::Value;
    let opts = lockstore::sqlite::SqliteOptions {
        durability,
        ..Default::default()
    };
    let c = lockstore::sqlite::open(path, &opts, lockstore::testing::TASK_MIGRATIONS)
        .expect("open sqlite");
    let cols: Vec<String> = c
        .prepare("SELECT * FROM task_runs LIMIT 0")
        .expect("cols")
        .column_names()
        .map(|s| s.to_string())
        .collect();
    let idx = |n: &str| cols.iter().position(|c| c == n).expect("column");
    let (i_id, i_last, i_meta, i_ver) = (
        idx("task_id"),
        idx("last_event_at"),
        idx("metadata_json"),
        idx("version"),
    );
    let sets: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect();
    let update = format!(
        "UPDATE task_runs SET {} WHERE task_id = ?{} AND version = ?{}",
        sets.join(", "),
        cols.len() + 1,
        cols.len() + 2
    );
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let tx = rusqlite::Transaction::new_unchecked(&c, rusqlite::TransactionBehavior::Immediate)
            .expect("begin");
        let mut row: Vec<Value> = tx
            .prepare_cached("SELECT * FROM task_runs WHERE task_id = ?1")
            .expect("prepare")
            .query_row([id], |r| {
                (0..cols.len()).map(|i| r.get::<_, Value>(i)).collect()
            })
            .expect("read");
        let Value::Integer(v) = row[i_ver] else {
            panic!("version")
        };
        let mut m: serde_json::Map<String, serde_json::Value> = match &row[i_meta] {
            Value::Text(s) => serde_json::from_str(s).unwrap_or_default(),
            _ => Default::default(),
        };
        let k = m.get("n").and_then(|x| x.as_i64()).unwrap_or(0);
        m.insert("n".into(), (k + 1).into());
        row[i_meta] = Value::Text(serde_json::to_string(&m).expect("ser"));
        row[i_last] = Value::Integer(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        );
        row[i_ver] = Value::Integer(v + 1);
        let key = row[i_id].clone();
        row.push(key);
        row.push(Value::Integer(v));
        let changed = tx
            .prepare_cached(&update)
            .expect("prepare")
            .execute(rusqlite::params_from_iter(row.iter()))
            .expect("update");
        assert_eq!(changed, 1);
        tx.commit().expect("commit");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn registry(path: &Path, durability: Durability, group: bool) -> TaskRegistry {
    TaskRegistry::open(
        path,
        RegistryOptions {
            sqlite: lockstore::sqlite::SqliteOptions {
                durability,
                ..Default::default()
            },
            group_commit: GroupCommit {
                enabled: group,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("open registry")
}

fn seed_task(reg: &TaskRegistry) -> String {
    reg.create(
        NewTask {
            runtime: Some(Runtime::Cli),
            task: "bench".into(),
            owner_key: "bench".into(),
            ..Default::default()
        },
        std::time::SystemTime::now(),
    )
    .expect("create")
    .0
    .task_id
}

/// Registry updates/s with `t` threads (`per` updates each, one task per
/// thread); returns (ops/s, mean batch size).
fn registry_threads(path: &Path, t: usize, per: u64, group: bool, secs: f64) -> (f64, f64) {
    let reg = registry(path, Durability::Full, group);
    let ids: Vec<String> = (0..t).map(|_| seed_task(&reg)).collect();
    let lockstore::GroupCommitStats {
        batches: b0,
        batched_updates: u0,
        ..
    } = reg.group_commit_stats();
    let start = Instant::now();
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        for id in &ids {
            let (reg, total) = (&reg, &total);
            sc.spawn(move || {
                let mut n = 0;
                while n < per && start.elapsed().as_secs_f64() < secs {
                    reg.bump_counter(id, "n", std::time::SystemTime::now())
                        .expect("update");
                    n += 1;
                }
                total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    let ops = total.into_inner() as f64 / start.elapsed().as_secs_f64();
    let lockstore::GroupCommitStats {
        batches: b1,
        batched_updates: u1,
        ..
    } = reg.group_commit_stats();
    let mean = if b1 > b0 {
        (u1 - u0) as f64 / (b1 - b0) as f64
    } else {
        1.0
    };
    (ops, mean)
}

/// Row 6: outbox end to end with durability process: enqueue N messages, then
/// one worker run (`concurrency` threads) claims, delivers to a file adapter
/// and acks each. Returns (messages/s end to end, enqueues/s alone).
fn outbox_run(dir: &Path, concurrency: usize, secs: f64) -> (f64, f64) {
    use lockstore::outbox::{adapters::FileAdapter, worker, NewMessage, Outbox, OutboxOptions};
    let db = dir.join(format!("outbox-{concurrency}.sqlite"));
    let oopts = OutboxOptions {
        sqlite: lockstore::sqlite::SqliteOptions {
            durability: Durability::Process,
            ..Default::default()
        },
        ..Default::default()
    };
    let n = (5_000.0 * secs) as usize;
    let ob = Outbox::open(&db, oopts.clone()).expect("open outbox");
    let start = Instant::now();
    for i in 0..n {
        ob.enqueue(
            &NewMessage {
                channel: "bench".into(),
                target: "user".into(),
                payload: serde_json::json!({"text": "check in after the interview", "i": i}),
                idempotency_key: Some(format!("bench-{i}")),
                ..Default::default()
            },
            std::time::SystemTime::now(),
        )
        .expect("enqueue");
    }
    let enq = start.elapsed().as_secs_f64();
    let mut wopts = worker::WorkerOptions::new(db.clone());
    wopts.outbox = oopts;
    wopts.concurrency = concurrency;
    wopts.batch = 32;
    let adapter = FileAdapter::new(dir.join(format!("sink-{concurrency}.jsonl")));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rep = worker::run_once(&wopts, &adapter, &stop).expect("worker");
    assert_eq!(rep.delivered as usize, n, "every message delivered");
    let total = start.elapsed().as_secs_f64();
    (n as f64 / total, n as f64 / enq)
}

/// Async outbox row: the same `n` messages delivered by the sync worker
/// (`worker::run_once`, `concurrency` threads) and by `worker::run_async`
/// (`concurrency` tasks on a 2-worker tokio runtime), both to the file adapter
/// (the async one through `worker::Blocking`), durability process. Only the
/// delivery is timed (enqueue excluded). Returns (sync msgs/s, async msgs/s).
fn outbox_async_cmp(dir: &Path, n: usize, concurrency: usize) -> (f64, f64) {
    use lockstore::outbox::worker::{
        self, run_async, AsyncChannelAdapter, Blocking, Delivery, WorkerOptions,
    };
    use lockstore::outbox::{adapters::FileAdapter, Entry, NewMessage, Outbox, OutboxOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let oopts = OutboxOptions {
        sqlite: lockstore::sqlite::SqliteOptions {
            durability: Durability::Process,
            ..Default::default()
        },
        ..Default::default()
    };
    let prepare = |name: &str| -> WorkerOptions {
        let db = dir.join(format!("outbox-cmp-{name}.sqlite"));
        let ob = Outbox::open(&db, oopts.clone()).expect("open outbox");
        for i in 0..n {
            ob.enqueue(
                &NewMessage {
                    channel: "bench".into(),
                    target: "user".into(),
                    payload: serde_json::json!({"text": "check in after the interview", "i": i}),
                    idempotency_key: Some(format!("bench-{i}")),
                    ..Default::default()
                },
                std::time::SystemTime::now(),
            )
            .expect("enqueue");
        }
        let mut w = WorkerOptions::new(db);
        w.outbox = oopts.clone();
        w.concurrency = concurrency;
        w.batch = 32;
        w
    };

    let w = prepare("sync");
    let adapter = FileAdapter::new(dir.join("sink-cmp-sync.jsonl"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let rep = worker::run_once(&w, &adapter, &stop).expect("sync worker");
    let sync = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(rep.delivered as usize, n, "sync: every message delivered");

    /// The file sink, counting deliveries; fires `done` at `n`.
    struct Counting {
        inner: Blocking<FileAdapter>,
        sent: AtomicUsize,
        n: usize,
        done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    }
    impl AsyncChannelAdapter for Counting {
        async fn deliver(&self, e: &Entry) -> Delivery {
            let d = self.inner.deliver(e).await;
            if self.sent.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                if let Some(tx) = self.done.lock().expect("done").take() {
                    let _ = tx.send(());
                }
            }
            d
        }
        fn idempotent(&self) -> bool {
            true
        }
    }
    let w = prepare("async");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let adapter = Arc::new(Counting {
        inner: Blocking(Arc::new(FileAdapter::new(dir.join("sink-cmp-async.jsonl")))),
        sent: AtomicUsize::new(0),
        n,
        done: Mutex::new(Some(tx)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let rep = rt
        .block_on(run_async(&w, adapter, async {
            let _ = rx.await;
        }))
        .expect("async worker");
    let asy = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(rep.delivered as usize, n, "async: every message delivered");
    (sync, asy)
}

/// Peak resident set (VmHWM) of this process, in kB.
fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
}

/// Row 6/7 child: runs one ledger measurement in a fresh process and prints
/// "<ops/s> <mean batch> <VmHWM kB>".
fn child_ledger(dir: &Path, which: &str, secs: f64) {
    let p = dir.join(format!("ledger-{which}.sqlite"));
    let (ops, mean) = match which {
        "bare" | "bare-process" => {
            let d = if which == "bare" {
                Durability::Full
            } else {
                Durability::Process
            };
            let id = seed_task(&registry(&p, d, false));
            (bare_sqlite_loop(&p, &id, d, secs), 1.0)
        }
        "reg1" | "reg1-process" => {
            let d = if which == "reg1" {
                Durability::Full
            } else {
                Durability::Process
            };
            let reg = registry(&p, d, true);
            let id = seed_task(&reg);
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                reg.bump_counter(&id, "n", std::time::SystemTime::now())
                    .expect("update");
                n += 1;
            }
            (n as f64 / start.elapsed().as_secs_f64(), 1.0)
        }
        "outbox-1" | "outbox-4" => {
            let (ops, enq) = outbox_run(dir, if which == "outbox-1" { 1 } else { 4 }, secs);
            (ops, enq)
        }
        other => {
            // "reg8-on", "reg8-off", "reg32-on", ...
            let (t, g) = other
                .strip_prefix("reg")
                .and_then(|r| r.split_once('-'))
                .expect("ledger child role");
            registry_threads(&p, t.parse().expect("threads"), u64::MAX, g == "on", secs)
        }
    };
    println!("{ops} {mean} {}", vm_hwm_kb());
}

fn run_child(args: &[&str]) -> Vec<f64> {
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(&exe).args(args).output().expect("child");
    if !out.status.success() {
        eprintln!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect()
}

/// Row 8: 100 threads, then 100 tokio tasks on a 2-worker runtime, each doing
/// `per` updates of one store (durability full, group commit on), with a 5 ms
/// heartbeat task on the same runtime. Returns (threads ops/s, tasks ops/s,
/// tasks mean batch, heartbeat lateness p99 ms, max ms, samples, idle max ms).
fn async_vs_threads(path: &Path, per: u64) -> (f64, f64, f64, f64, f64, usize, f64) {
    const N: usize = 100;
    seed(path, 100);
    let (threads_ops, _) = threads(path, N, per, true);
    seed(path, 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let beat = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
        let mut late = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            let over = t.elapsed().saturating_sub(Duration::from_millis(5));
            late.push(over.as_secs_f64() * 1000.0);
        }
        late
    };
    rt.block_on(async {
        let opts = JsonOptions {
            durability: Durability::Full,
            ..Default::default()
        };
        let store: lockstore::tokio::JsonStore<Doc> = lockstore::tokio::JsonStore::open(path, opts)
            .await
            .expect("open");
        // Idle heartbeat: the timer's own lateness, for reference.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let idle = tokio::spawn(beat(stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut idle = idle.await.expect("idle heartbeat");
        let idle_max = percentile(&mut idle, 1.0);

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hb = tokio::spawn(beat(stop.clone()));
        let s0 = store.group_commit_stats();
        let start = Instant::now();
        let hs: Vec<_> = (0..N)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move {
                    for _ in 0..per {
                        s.update(|d| {
                            d.counter += 1;
                            if let Some(r) = d.records.first_mut() {
                                r.attempts += 1;
                            }
                        })
                        .await
                        .expect("async update");
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.expect("task");
        }
        let ops = (N as u64 * per) as f64 / start.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut late = hb.await.expect("heartbeat");
        let s1 = store.group_commit_stats();
        let mean = if s1.batches > s0.batches {
            (s1.batched_updates - s0.batched_updates) as f64 / (s1.batches - s0.batches) as f64
        } else {
            1.0
        };
        assert_eq!(
            store.load().await.expect("load").counter,
            N as u64 * per,
            "async updates lost"
        );
        let p99 = percentile(&mut late, 0.99);
        let max = percentile(&mut late, 1.0);
        (threads_ops, ops, mean, p99, max, late.len(), idle_max)
    })
}

struct Row {
    name: String,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
    note: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 4 && args[1] == "--child-procs" {
        child_procs(Path::new(&args[2]), args[3].parse().unwrap_or(100));
        return;
    }
    if args.len() >= 5 && args[1] == "--child-size" {
        child_size(
            Path::new(&args[2]),
            args[3].parse().unwrap_or(100),
            args[4].parse().unwrap_or(10),
        );
        return;
    }
    if args.len() >= 7 && args[1] == "--child-pg" {
        child_pg(&args[2..]);
        return;
    }
    if args.len() >= 3 && args[1] == "--child-kv" {
        child_kv(&args[2..]);
        return;
    }
    if args.len() >= 5 && args[1] == "--child-ledger" {
        child_ledger(
            Path::new(&args[2]),
            &args[3],
            args[4].parse().unwrap_or(1.0),
        );
        return;
    }
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let base_dir: PathBuf = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base_dir).expect("tempdir");
    let dir = tmp.path();
    let secs = if quick { 0.5 } else { 2.0 };
    let mut rows: Vec<Row> = Vec::new();
    let p = dir.join("bench.json");

    // `--only outbox-async`: just the async-outbox row (sync vs async worker).
    if args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|v| v == "outbox-async")
    {
        let (sync, asy) = outbox_async_cmp(dir, 10_000, 4);
        println!(
            "outbox worker, 10000 msgs -> file sink, 4 threads (sync run_once): {sync:.0} msgs/s"
        );
        println!(
            "outbox worker, 10000 msgs -> file sink, 4 tasks on 2 workers (run_async): {asy:.0} msgs/s ({:.2}x sync)",
            asy / sync
        );
        return;
    }

    // `--only-processes N`: just row 4 with N processes (for tuning the lock wait).
    if let Some(n) = args
        .iter()
        .position(|a| a == "--only-processes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
    {
        seed(&p, 100);
        let (ops, p50, p99, fair) = procs(&p, n, (secs * 1000.0) as u64);
        println!("{n} processes: {ops:.0} ops/s, lock wait p50 {p50:.2} ms p99 {p99:.2} ms, fairness {fair:.2}");
        return;
    }

    seed(&p, 100);
    let phys = physical_loop(&p, secs);
    let fs = fsync_loop(dir, secs);
    rows.push(Row {
        name: "physical: flock+read+modify+temp+fsync+rename+fsync dir (baseline)".into(),
        value: phys,
        unit: "saves/s",
        ratio: Some(1.0),
        note: "100 records".into(),
    });
    rows.push(Row {
        name: "physical: bare fsync loop".into(),
        value: fs,
        unit: "fsyncs/s",
        ratio: Some(fs / phys),
        note: String::new(),
    });

    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if only.as_deref() == Some("postgres") {
        postgres_rows(dir, phys, quick, &mut rows);
        print_rows(&rows, json);
        return;
    }
    if only.is_none() || only.as_deref() == Some("collections") {
        collection_rows(dir, phys, quick, &mut rows);
    }
    if only.as_deref() == Some("collections") {
        print_rows(&rows, json);
        return;
    }
    if only.is_none() || only.as_deref() == Some("async") {
        let per = if quick { 10 } else { 30 };
        let (t_ops, a_ops, mean, p99, max, beats, idle_max) = async_vs_threads(&p, per);
        rows.push(Row {
            name: "JsonStore 100 threads (baseline of the async rows)".into(),
            value: t_ops,
            unit: "ops/s",
            ratio: Some(t_ops / phys),
            note: format!("{per} updates each, group commit on, durability full"),
        });
        rows.push(Row {
            name: "lockstore::tokio 100 tasks, 2-worker runtime".into(),
            value: a_ops,
            unit: "ops/s",
            ratio: Some(a_ops / phys),
            note: format!(
                "{:.2}x 100 threads; mean batch {mean:.1}; {per} updates each",
                a_ops / t_ops
            ),
        });
        rows.push(Row {
            name: "5 ms heartbeat during the 100 tasks: worst stall".into(),
            value: max,
            unit: "ms",
            ratio: None,
            note: format!(
                "p99 {p99:.2} ms over {beats} beats; idle max {idle_max:.2} ms; target < 10 ms"
            ),
        });
    }
    if only.as_deref() == Some("async") {
        print_rows(&rows, json);
        return;
    }

    for (d, name) in [(Durability::Full, "full"), (Durability::Process, "process")] {
        seed(&p, 100);
        let s = store(&p, d, true);
        let ops = timed_single(&s, secs);
        let note = if d == Durability::Full {
            "target >= 0.8"
        } else {
            ""
        };
        rows.push(Row {
            name: format!("JsonStore 1 writer, durability {name}"),
            value: ops,
            unit: "ops/s",
            ratio: Some(ops / phys),
            note: note.into(),
        });
    }

    let per = if quick { 40 } else { 150 };
    for t in [8usize, 32] {
        for group in [false, true] {
            seed(&p, 100);
            let (ops, mean) = threads(&p, t, per, group);
            rows.push(Row {
                name: format!(
                    "JsonStore {t} threads, group commit {}",
                    if group { "on" } else { "off" }
                ),
                value: ops,
                unit: "ops/s",
                ratio: Some(ops / phys),
                note: if group {
                    format!(
                        "mean batch {mean:.1}; target >= {}",
                        if t == 8 { 5 } else { 10 }
                    )
                } else {
                    String::new()
                },
            });
        }
    }

    let pms = (secs * 1000.0) as u64;
    for n in [4usize, 16] {
        seed(&p, 100);
        let (ops, p50, p99, fair) = procs(&p, n, pms);
        rows.push(Row {
            name: format!("JsonStore {n} processes, {pms} ms each"),
            value: ops,
            unit: "ops/s",
            ratio: Some(ops / phys),
            note: format!(
                "lock wait p50 {p50:.2} ms p99 {p99:.2} ms; fairness max/min {fair:.2}{}",
                if n == 4 {
                    "; target >= 0.7, p99 < 5 ms, fairness <= 2"
                } else {
                    ""
                }
            ),
        });
    }

    let exe = std::env::current_exe().expect("exe");
    let sizes: &[usize] = if quick {
        &[100, 1_000, 10_000]
    } else {
        &[100, 1_000, 10_000, 100_000]
    };
    let mut pts = Vec::new();
    // Row 7: peak RSS (VmHWM) of each child process of rows 5 and 6.
    let mut peak: Vec<(String, f64)> = Vec::new();
    for &n in sizes {
        let k = if n >= 100_000 {
            10
        } else if n >= 10_000 {
            30
        } else {
            100
        };
        let sp = dir.join(format!("size{n}.json"));
        let out = Command::new(&exe)
            .args([
                "--child-size",
                &sp.display().to_string(),
                &n.to_string(),
                &k.to_string(),
            ])
            .output()
            .expect("size child");
        let s = String::from_utf8_lossy(&out.stdout);
        let mut it = s.split_whitespace();
        let ms: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let hwm: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        pts.push((n as f64, ms));
        peak.push((format!("JsonStore size {n} records"), hwm / 1024.0));
        rows.push(Row {
            name: format!("JsonStore size {n} records: time per update"),
            value: ms,
            unit: "ms",
            ratio: Some(ms / (1000.0 / phys)),
            note: if n == 100_000 {
                "target < 100 ms".into()
            } else {
                String::new()
            },
        });
    }
    if pts.len() >= 2 {
        let (a, b) = (pts[0], pts[pts.len() - 1]);
        let slope_us = (b.1 - a.1) / (b.0 - a.0) * 1000.0;
        rows.push(Row {
            name: "size scaling slope".into(),
            value: slope_us,
            unit: "us/record",
            ratio: None,
            note: "O(n) per save".into(),
        });
    }

    // Row 6 (+ row 7: each measurement in its own child, reporting VmHWM).
    // Each ledger measurement runs `reps` times (fresh child, fresh file) and
    // keeps the best ops/s: with synchronous FULL the rows are bound by the
    // WAL fsync, whose latency swings several-fold when other processes do
    // I/O; best-of-N keeps that interference out of the ratios.
    let reps = if quick { 1 } else { 3 };
    let ledger = |role: &str| -> (f64, f64, f64) {
        let mut best = (f64::NAN, f64::NAN, 0.0f64);
        for rep in 0..reps {
            let d = dir.join(format!("{role}-{rep}"));
            std::fs::create_dir_all(&d).expect("dir");
            let v = run_child(&[
                "--child-ledger",
                &d.display().to_string(),
                role,
                &secs.to_string(),
            ]);
            let ops = v.first().copied().unwrap_or(f64::NAN);
            let mem = v.get(2).copied().unwrap_or(f64::NAN) / 1024.0;
            if best.0.is_nan() || ops > best.0 {
                best.0 = ops;
                best.1 = v.get(1).copied().unwrap_or(f64::NAN);
            }
            best.2 = best.2.max(mem);
        }
        best
    };
    let (bare, _, bare_mem) = ledger("bare");
    peak.push(("ledger bare rusqlite loop".into(), bare_mem));
    rows.push(Row {
        name: "ledger: bare rusqlite BEGIN IMMEDIATE read+CAS update (baseline)".into(),
        value: bare,
        unit: "updates/s",
        ratio: Some(bare / phys),
        note: "synchronous FULL".into(),
    });
    let (r1, _, r1_mem) = ledger("reg1");
    peak.push(("ledger TaskRegistry 1 writer".into(), r1_mem));
    rows.push(Row {
        name: "ledger: TaskRegistry 1 writer".into(),
        value: r1,
        unit: "updates/s",
        ratio: Some(r1 / phys),
        note: format!("{:.2}x bare; target >= 0.8x bare", r1 / bare),
    });
    let (bp, _, _) = ledger("bare-process");
    let (rp, _, _) = ledger("reg1-process");
    rows.push(Row {
        name: "ledger: TaskRegistry 1 writer, synchronous NORMAL".into(),
        value: rp,
        unit: "updates/s",
        ratio: Some(rp / phys),
        note: format!("{:.2}x bare NORMAL ({bp:.0}/s)", rp / bp),
    });
    for w in [1usize, 4] {
        let (ops, enq, mem) = ledger(&format!("outbox-{w}"));
        peak.push((
            format!("outbox {w} worker(s), {} msgs", (5_000.0 * secs) as usize),
            mem,
        ));
        rows.push(Row {
            name: format!("outbox enqueue->claim->deliver(file)->ack, {w} worker(s)"),
            value: ops,
            unit: "msgs/s",
            ratio: Some(ops / phys),
            note: format!(
                "durability process; enqueue alone {enq:.0}/s{}",
                if w == 1 { "; target >= 5000 msg/s" } else { "" }
            ),
        });
    }
    {
        let n = if quick { 2_000 } else { 10_000 };
        let (sync, asy) = outbox_async_cmp(dir, n, 4);
        rows.push(Row {
            name: format!("outbox worker, {n} msgs -> file sink: sync run_once, 4 threads"),
            value: sync,
            unit: "msgs/s",
            ratio: Some(1.0),
            note: "baseline of the next row; durability process".into(),
        });
        rows.push(Row {
            name: format!("outbox worker, {n} msgs -> file sink: run_async, 4 tasks, 2 workers"),
            value: asy,
            unit: "msgs/s",
            ratio: Some(asy / sync),
            note: "ratio against the sync worker in this run".into(),
        });
    }
    for t in [8usize, 32] {
        for g in ["off", "on"] {
            let (ops, mean, mem) = ledger(&format!("reg{t}-{g}"));
            peak.push((
                format!("ledger TaskRegistry {t} threads, group commit {g}"),
                mem,
            ));
            rows.push(Row {
                name: format!("ledger: TaskRegistry {t} threads, group commit {g}"),
                value: ops,
                unit: "updates/s",
                ratio: Some(ops / phys),
                note: format!(
                    "{:.2}x bare{}",
                    ops / bare,
                    if g == "on" {
                        format!("; mean batch {mean:.1}")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }

    for (name, mib) in peak {
        rows.push(Row {
            name: format!("peak RSS: {name}"),
            value: mib,
            unit: "MiB",
            ratio: None,
            note: "VmHWM of the child process".into(),
        });
    }

    print_rows(&rows, json);
}

fn print_rows(rows: &[Row], json: bool) {
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "value": r.value, "unit": r.unit, "ratio_vs_physical": r.ratio, "note": r.note}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:<66} {:>12} {:<10} {:>8}  note",
            "row", "value", "unit", "ratio"
        );
        for r in rows {
            let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default();
            println!(
                "{:<66} {:>12.2} {:<10} {:>8}  {}",
                r.name, r.value, r.unit, ratio, r.note
            );
        }
    }
}

// Row 9: collections (lockstore::Collection).

fn kv_open(path: &Path) -> lockstore::Collection<Rec> {
    lockstore::Collection::open(path, lockstore::CollectionOptions::default())
        .expect("open collection")
}

fn kv_key(i: usize) -> String {
    format!("cm_{i:08}")
}

/// Seeds `n` records (the rows 5 records) in transactions of 10,000.
fn kv_seed(path: &Path, n: usize) {
    let c = kv_open(path);
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        c.transaction(|tx| {
            for (j, r) in records(end - i).into_iter().enumerate() {
                tx.insert(&kv_key(i + j), &r)?;
            }
            Ok::<_, Error>(())
        })
        .expect("seed collection");
        i = end;
    }
}

/// `k` one-record updates of random keys (durability full); latencies in ms.
fn kv_update_latencies(path: &Path, n: usize, k: usize) -> Vec<f64> {
    let c = kv_open(path);
    for _ in 0..5 {
        c.update(&kv_key(fastrand::usize(..n)), |r| {
            if let Some(r) = r {
                r.attempts += 1
            }
        })
        .expect("update");
    }
    (0..k)
        .map(|_| {
            let key = kv_key(fastrand::usize(..n));
            let t = Instant::now();
            c.update(&key, |r| {
                if let Some(r) = r {
                    r.attempts += 1
                }
            })
            .expect("update");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Children of row 9: `procs PATH IDX MS` (updates its own key for MS ms
/// after "go" on stdin, prints the count) and `scan PATH` (scans every
/// record, prints "<records> <VmHWM kB>").
fn child_kv(args: &[String]) {
    match args.first().map(String::as_str) {
        Some("procs") if args.len() >= 4 => {
            let c = kv_open(Path::new(&args[1]));
            let key = kv_key(args[2].parse().unwrap_or(0));
            let ms: u64 = args[3].parse().unwrap_or(1000);
            println!("ready");
            std::io::stdout().flush().ok();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).ok();
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_millis(ms) {
                c.update(&key, |r| {
                    if let Some(r) = r {
                        r.attempts += 1
                    }
                })
                .expect("update");
                n += 1;
            }
            println!("{n}");
        }
        Some("scan") if args.len() >= 2 => {
            let c = kv_open(Path::new(&args[1]));
            let mut n = 0u64;
            for r in c.scan_prefix("") {
                r.expect("scan");
                n += 1;
            }
            println!("{n} {}", vm_hwm_kb());
        }
        _ => eprintln!("child-kv: bad arguments {args:?}"),
    }
}

/// Row 9: one-record updates by collection size, against JsonStore; 4
/// processes on disjoint keys against the physical loop; peak RSS of a scan.
fn collection_rows(dir: &Path, phys: f64, quick: bool, rows: &mut Vec<Row>) {
    let sizes: Vec<usize> = std::env::var("LOCKSTORE_BENCH_KV_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 100_000, 1_000_000]);
    let k = if quick { 100 } else { 400 };
    let mut p50s = Vec::new();
    for &n in &sizes {
        let p = dir.join(format!("kv-{n}.sqlite"));
        let t = Instant::now();
        kv_seed(&p, n);
        let seeded = t.elapsed().as_secs_f64();
        let mut lat = kv_update_latencies(&p, n, k);
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        p50s.push((n, p50));
        rows.push(Row {
            name: format!("Collection one-record update, {n} records"),
            value: p50,
            unit: "ms p50",
            ratio: None,
            note: format!(
                "p99 {p99:.3} ms; {k} updates of random keys, durability full; seeded in {seeded:.1} s"
            ),
        });
    }
    let (n0, small) = p50s[0];
    let (nl, large) = p50s[p50s.len() - 1];
    rows.push(Row {
        name: format!("Collection update p50: {nl} vs {n0} records"),
        value: large / small,
        unit: "x",
        ratio: None,
        note: "target <= 1.5".into(),
    });
    // JsonStore at 100k (or the middle size).
    let jn = if sizes.contains(&100_000) {
        100_000
    } else {
        sizes[sizes.len() / 2]
    };
    let jp = dir.join("kv-json.json");
    seed(&jp, jn);
    let js = store(&jp, Durability::Full, true);
    let jk = if quick { 5 } else { 15 };
    let mut jlat: Vec<f64> = (0..jk)
        .map(|_| {
            let t = Instant::now();
            bump(&js);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let jp50 = percentile(&mut jlat, 0.5);
    let kv_at = p50s
        .iter()
        .find(|(n, _)| *n == jn)
        .map(|(_, v)| *v)
        .unwrap_or(small);
    rows.push(Row {
        name: format!("JsonStore one update, {jn} records (baseline of the row below)"),
        value: jp50,
        unit: "ms p50",
        ratio: None,
        note: format!("p99 {:.1} ms; {jk} updates", percentile(&mut jlat, 0.99)),
    });
    rows.push(Row {
        name: format!("Collection vs JsonStore, one update at {jn} records"),
        value: jp50 / kv_at,
        unit: "x faster",
        ratio: None,
        note: "target >= 50".into(),
    });
    drop(js);
    let _ = std::fs::remove_file(&jp);

    // 4 processes, disjoint keys, against the physical per-save loop.
    let pp = dir.join(format!("kv-{n0}.sqlite"));
    let ms = if quick { 500 } else { 2000 };
    let exe = std::env::current_exe().expect("exe");
    let mut kids: Vec<_> = (0..4)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--child-kv",
                    "procs",
                    &pp.display().to_string(),
                    &i.to_string(),
                    &ms.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut outs: Vec<_> = kids
        .iter_mut()
        .map(|k| std::io::BufReader::new(k.stdout.take().expect("stdout")))
        .collect();
    for o in outs.iter_mut() {
        let mut l = String::new();
        o.read_line(&mut l).expect("ready");
    }
    let start = Instant::now();
    for k in kids.iter_mut() {
        writeln!(k.stdin.as_mut().expect("stdin"), "go").expect("go");
    }
    let mut total = 0.0;
    for (k, o) in kids.iter_mut().zip(outs.iter_mut()) {
        let mut s = String::new();
        o.read_to_string(&mut s).expect("out");
        k.wait().expect("wait");
        total += s.trim().parse::<f64>().unwrap_or(0.0);
    }
    let ops = total / start.elapsed().as_secs_f64();
    rows.push(Row {
        name: "Collection 4 processes, disjoint keys".into(),
        value: ops,
        unit: "ops/s",
        ratio: Some(ops / phys),
        note: format!("{n0} records, durability full, vs the physical per-save loop"),
    });

    // Peak RSS of a full scan, in a child process.
    for &n in [sizes[0], sizes[sizes.len() - 1]].iter() {
        let v = run_child(&[
            "--child-kv",
            "scan",
            &dir.join(format!("kv-{n}.sqlite")).display().to_string(),
        ]);
        let (count, hwm) = (
            v.first().copied().unwrap_or(0.0),
            v.get(1).copied().unwrap_or(0.0),
        );
        rows.push(Row {
            name: format!("peak RSS: Collection full scan, {n} records"),
            value: hwm / 1024.0,
            unit: "MiB",
            ratio: None,
            note: format!(
                "VmHWM of the child; {count:.0} records read; target < 32 MiB, independent of size"
            ),
        });
    }
    for &n in &sizes {
        let p = dir.join(format!("kv-{n}.sqlite"));
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let mut q = p.as_os_str().to_os_string();
            q.push(suffix);
            let _ = std::fs::remove_file(q);
        }
    }
}

// `--only postgres`: the outbox end to end and task-ledger updates on
// PostgreSQL (a private cluster, `lockstore_pg_cluster::Cluster::start`)
// against SQLite in the same run; every commit durable on both (PostgreSQL
// `fsync=on`, `synchronous_commit=on`; SQLite durability full).

/// The adapter of the PostgreSQL rows: accepts every message (the store's
/// cost alone), idempotent.
struct NullAdapter;

impl lockstore::outbox::worker::ChannelAdapter for NullAdapter {
    fn deliver(&self, _e: &lockstore::outbox::Entry) -> lockstore::outbox::worker::Delivery {
        lockstore::outbox::worker::Delivery::Delivered
    }
    fn idempotent(&self) -> bool {
        true
    }
}

/// Messages per enqueue, claim and ack batch in the batched rows.
const PG_BATCH: usize = 64;

fn bench_msg(i: usize) -> lockstore::outbox::NewMessage {
    lockstore::outbox::NewMessage {
        channel: "bench".into(),
        target: "user".into(),
        payload: serde_json::json!({"text": "check in after the interview", "i": i}),
        ..Default::default()
    }
}

/// An outbox on `db`: a PostgreSQL URL, or a SQLite file (durability full).
fn bench_outbox(db: &str) -> lockstore::outbox::Outbox {
    use lockstore::outbox::{Outbox, OutboxOptions};
    if db.starts_with("postgres") {
        Outbox::connect(db, OutboxOptions::default(), Default::default()).expect("connect outbox")
    } else {
        Outbox::open(db, OutboxOptions::default()).expect("open outbox")
    }
}

/// A task registry on `db`: a PostgreSQL URL, or a SQLite file (durability
/// full, group commit on).
fn bench_registry(db: &str) -> TaskRegistry {
    if db.starts_with("postgres") {
        TaskRegistry::connect(db, RegistryOptions::default(), Default::default())
            .expect("connect registry")
    } else {
        registry(Path::new(db), Durability::Full, true)
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sleeps until the wall-clock instant `at_ms` (the parent's common start).
fn wait_until(at_ms: u64) {
    let now = epoch_ms();
    if at_ms > now {
        std::thread::sleep(Duration::from_millis(at_ms - now));
    }
}

/// Child of the PostgreSQL rows: `--child-pg MODE DB THREADS ARG START_MS`.
/// Prints "<count> <end epoch ms>".
/// - `batched`: each thread loops enqueue_many(64) → claim(64) → adapter →
///   ack_many for ARG seconds; count = acks applied.
/// - `worker`: one `worker::run_once` with THREADS threads (batch 64) over
///   what is queued; count = delivered.
/// - `ledger`: each thread bumps its own task for ARG seconds; count = updates.
fn child_pg(args: &[String]) {
    use lockstore::outbox::worker::{self, ChannelAdapter};
    use lockstore::outbox::Outcome;
    let (mode, db) = (args[0].as_str(), args[1].as_str());
    let threads: usize = args[2].parse().expect("threads");
    let arg: f64 = args[3].parse().expect("arg");
    let start_ms: u64 = args[4].parse().expect("start");
    let total = std::sync::atomic::AtomicU64::new(0);
    match mode {
        "batched" => {
            let obs: Vec<_> = (0..threads).map(|_| bench_outbox(db)).collect();
            wait_until(start_ms);
            let end = Instant::now() + Duration::from_secs_f64(arg);
            std::thread::scope(|s| {
                for ob in obs {
                    let total = &total;
                    s.spawn(move || {
                        let msgs: Vec<_> = (0..PG_BATCH).map(bench_msg).collect();
                        let mut n = 0u64;
                        while Instant::now() < end {
                            let now = std::time::SystemTime::now();
                            ob.enqueue_many(&msgs, now).expect("enqueue_many");
                            let batch = ob
                                .claim(PG_BATCH, Duration::from_secs(60), now)
                                .expect("claim");
                            let mut done = Vec::with_capacity(batch.len());
                            for e in &batch {
                                if NullAdapter.deliver(e) == worker::Delivery::Delivered {
                                    done.push((e.id, e.claim_token.as_deref().unwrap_or_default()));
                                }
                            }
                            let outs = ob
                                .ack_many(&done, std::time::SystemTime::now())
                                .expect("ack_many");
                            n += outs
                                .iter()
                                .filter(|o| matches!(o, Outcome::Applied(_)))
                                .count() as u64;
                        }
                        total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    });
                }
            });
        }
        "worker" => {
            let mut w = worker::WorkerOptions::new(db);
            w.concurrency = threads;
            w.batch = PG_BATCH;
            let stop = std::sync::atomic::AtomicBool::new(false);
            wait_until(start_ms);
            let rep = worker::run_once(&w, &NullAdapter, &stop).expect("worker");
            total.store(rep.delivered, std::sync::atomic::Ordering::Relaxed);
        }
        "ledger" => {
            let reg = bench_registry(db);
            let ids: Vec<String> = (0..threads).map(|_| seed_task(&reg)).collect();
            wait_until(start_ms);
            let end = Instant::now() + Duration::from_secs_f64(arg);
            std::thread::scope(|s| {
                for id in &ids {
                    let (reg, total) = (&reg, &total);
                    s.spawn(move || {
                        let mut n = 0u64;
                        while Instant::now() < end {
                            reg.bump_counter(id, "n", std::time::SystemTime::now())
                                .expect("update");
                            n += 1;
                        }
                        total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    });
                }
            });
        }
        other => panic!("unknown --child-pg mode {other}"),
    }
    println!("{} {}", total.into_inner(), epoch_ms());
}

/// Runs `procs` children of `mode` on `db` with `threads` threads each, all
/// starting at the same instant; returns (total count, seconds from the
/// common start to the last child's end).
fn pg_children(mode: &str, db: &str, procs: usize, threads: usize, arg: f64) -> (u64, f64) {
    let exe = std::env::current_exe().expect("exe");
    // Time for the children to start and connect before the common start.
    let start = epoch_ms() + 1500;
    let kids: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(&exe)
                .args(["--child-pg", mode, db])
                .arg(threads.to_string())
                .arg(arg.to_string())
                .arg(start.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let (mut count, mut end) = (0u64, start);
    for k in kids {
        let out = k.wait_with_output().expect("child");
        if !out.status.success() {
            eprintln!(
                "child {mode} on {db} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace();
        count += it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        end = end.max(it.next().and_then(|v| v.parse().ok()).unwrap_or(start));
    }
    (count, (end.saturating_sub(start)) as f64 / 1000.0)
}

/// The `--only postgres` rows. Skipped with a message when the PostgreSQL
/// binaries are missing.
fn postgres_rows(dir: &Path, phys: f64, quick: bool, rows: &mut Vec<Row>) {
    const TARGET: f64 = 5_000.0;
    if !lockstore_pg_cluster::available() {
        println!("SKIP --only postgres: PostgreSQL binaries not found (install postgresql, or set LOCKSTORE_PG_BIN)");
        return;
    }
    let cluster = lockstore_pg_cluster::Cluster::start().expect("start a PostgreSQL cluster");
    let secs = if quick { 1.0 } else { 3.0 };
    let worker_n: usize = if quick { 1_000 } else { 3_000 };
    let mut k = 0;
    let mut fresh = |backend: &str| -> String {
        k += 1;
        if backend == "postgres" {
            cluster
                .create_database(&format!("bench_{k}"))
                .expect("create database")
        } else {
            dir.join(format!("pg-row-{k}.sqlite"))
                .to_string_lossy()
                .into_owned()
        }
    };
    // (label, procs, threads per process)
    let shapes = [("1 worker", 1, 1), ("4 workers in 2 processes", 2, 2)];

    // Outbox, batched: enqueue_many → claim → adapter → ack_many.
    for (label, procs, threads) in shapes {
        let mut sqlite = 0.0;
        for backend in ["sqlite", "postgres"] {
            let db = fresh(backend);
            drop(bench_outbox(&db)); // create and migrate before the clock
            let (n, el) = pg_children("batched", &db, procs, threads, secs);
            let v = n as f64 / el;
            let note = if backend == "sqlite" {
                sqlite = v;
                format!(
                    "{:.2}x the {TARGET:.0} target (baseline of the PG row)",
                    v / TARGET
                )
            } else {
                format!(
                    "{:.2}x SQLite; {:.2}x the {TARGET:.0} msgs/s target",
                    v / sqlite,
                    v / TARGET
                )
            };
            rows.push(Row {
                name: format!("outbox batched e2e, {backend}, {label}"),
                value: v,
                unit: "msgs/s",
                ratio: Some(v / phys),
                note: format!("{note}; batches of {PG_BATCH}, null adapter, {n} msgs"),
            });
        }
    }

    // Outbox through the sync worker: per-message send mark, group ack.
    for (label, procs, threads) in shapes {
        let mut sqlite = 0.0;
        for backend in ["sqlite", "postgres"] {
            let db = fresh(backend);
            let ob = bench_outbox(&db);
            let msgs: Vec<_> = (0..worker_n).map(bench_msg).collect();
            let t = Instant::now();
            for c in msgs.chunks(PG_BATCH) {
                ob.enqueue_many(c, std::time::SystemTime::now())
                    .expect("enqueue_many");
            }
            let enq = worker_n as f64 / t.elapsed().as_secs_f64();
            drop(ob);
            let (n, el) = pg_children("worker", &db, procs, threads, 0.0);
            assert_eq!(n as usize, worker_n, "every message delivered once");
            let v = n as f64 / el;
            let note = if backend == "sqlite" {
                sqlite = v;
                "baseline of the PG row".to_string()
            } else {
                format!(
                    "{:.2}x SQLite; {:.2}x the {TARGET:.0} target",
                    v / sqlite,
                    v / TARGET
                )
            };
            rows.push(Row {
                name: format!("outbox worker e2e, {backend}, {label}"),
                value: v,
                unit: "msgs/s",
                ratio: Some(v / phys),
                note: format!("{note}; {n} msgs, enqueue_many alone {enq:.0}/s"),
            });
        }
    }

    // Task ledger: one task per thread, update (bump a counter) in a loop.
    for (label, procs, threads) in shapes {
        let mut sqlite = 0.0;
        for backend in ["sqlite", "postgres"] {
            let db = fresh(backend);
            drop(bench_registry(&db));
            let (n, el) = pg_children("ledger", &db, procs, threads, secs);
            let v = n as f64 / el;
            let note = if backend == "sqlite" {
                sqlite = v;
                "baseline of the PG row; group commit on".to_string()
            } else {
                format!("{:.2}x SQLite; one transaction per update", v / sqlite)
            };
            rows.push(Row {
                name: format!("ledger updates, {backend}, {label}"),
                value: v,
                unit: "updates/s",
                ratio: Some(v / phys),
                note,
            });
        }
    }
    drop(cluster);
}
