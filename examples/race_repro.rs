//! The Promise.all repro: two writers dismiss two different records of one JSON
//! store at the same moment.
//!
//! openclaw's `Promise.all([dismiss(A), dismiss(B)])` lost one of the two
//! dismissals 20 times out of 20: each writer loaded the file, changed its own
//! record and saved the whole document, so the later save overwrote the earlier
//! one. This example runs that race 20 times with a naive load-modify-save
//! (plain read, modify, write temp + fsync + rename — no queue, no lock) and 20
//! times through [`lockstore::JsonStore::update`], and prints one line per trial
//! and a summary:
//!
//! ```text
//! trial 7: LOSS {A: pending, B: dismissed}
//! naive: 19/20 lost · lockstore: 0/20 lost
//! ```
//!
//! The race window is a realistic save, not a sleep: the document carries a few
//! thousand other records (~0.5 MB), so parsing, serializing and fsyncing it
//! take milliseconds.
//!
//! Usage: `cargo run --release --example race_repro [-- --processes | --async] [--trials N]`.
//! `--processes` runs the two writers as separate OS processes (this binary
//! re-executed with `--role`); they report readiness on stdout and are released
//! together by one line written to their stdin. `--async` is the literal
//! `Promise.all`: the two dismisses are futures started together with
//! `tokio::join!` in one task on a multi-thread tokio runtime — naive
//! `tokio::fs` read, modify, write (temp + fsync + rename) against
//! [`lockstore::tokio::JsonStore::update`]. Exit status 1 if lockstore lost
//! any write.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

use lockstore::{Durability, JsonOptions, JsonStore};

const FILLER_RECORDS: usize = 3000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Naive,
    Lockstore,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::Lockstore => "lockstore",
        }
    }
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "naive" => Some(Mode::Naive),
            "lockstore" => Some(Mode::Lockstore),
            _ => None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store with records A and B pending, plus filler records so a save takes
/// realistic time.
fn seed(path: &Path) -> Result<(), BoxError> {
    let mut records = serde_json::Map::new();
    for id in ["A", "B"] {
        records.insert(
            id.into(),
            json!({"status": "pending", "title": format!("commitment {id}")}),
        );
    }
    for i in 0..FILLER_RECORDS {
        records.insert(
            format!("r{i:05}"),
            json!({
                "status": "done",
                "title": format!("follow up with contact #{i} about the quarterly report"),
                "created_at_ms": 1_700_000_000_000u64 + i as u64,
                "tags": ["work", "email", "later"],
            }),
        );
    }
    let doc = json!({ "records": records });
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    lockstore::write_atomic(path, &bytes, Durability::Full)?;
    Ok(())
}

fn dismiss(doc: &mut Value, id: &str) {
    doc["records"][id]["status"] = Value::from("dismissed");
}

/// The incumbent's pattern: load, modify, save (temp file + fsync + rename),
/// with nothing serializing two writers.
fn naive_dismiss(path: &Path, id: &str) -> Result<(), BoxError> {
    let raw = std::fs::read(path)?;
    let mut doc: Value = serde_json::from_slice(&raw)?;
    dismiss(&mut doc, id);
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    let tmp = path.with_extension(format!("{id}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn lockstore_dismiss(store: &JsonStore<Value>, id: &str) -> Result<(), BoxError> {
    store.update(|doc| {
        dismiss(doc, id);
    })?;
    Ok(())
}

fn open_store(path: &Path) -> Result<JsonStore<Value>, BoxError> {
    Ok(JsonStore::open(path, JsonOptions::default())?)
}

/// Status of A and B after a trial.
fn outcome(path: &Path) -> Result<(String, String), BoxError> {
    let doc: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let st = |id: &str| {
        doc["records"][id]["status"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
    Ok((st("A"), st("B")))
}

/// One trial with the two writers as threads released by one barrier.
fn trial_threads(mode: Mode, path: &Path) -> Result<(), BoxError> {
    let barrier = Arc::new(Barrier::new(2));
    let results: Vec<Result<(), BoxError>> = std::thread::scope(|s| {
        let hs: Vec<_> = ["A", "B"]
            .into_iter()
            .map(|id| {
                let barrier = barrier.clone();
                s.spawn(move || -> Result<(), BoxError> {
                    let store = match mode {
                        Mode::Lockstore => Some(open_store(path)?),
                        Mode::Naive => None,
                    };
                    barrier.wait();
                    match &store {
                        Some(st) => lockstore_dismiss(st, id),
                        None => naive_dismiss(path, id),
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("writer thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// One trial with the two writers as child processes: each reports `ready` on
/// stdout, then both are released by one line on stdin.
fn trial_processes(mode: Mode, path: &Path) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for id in ["A", "B"] {
        let mut c = Command::new(&exe)
            .args(["--role", mode.name(), id])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let out = c.stdout.take().ok_or("no child stdout")?;
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("writer {id} did not get ready: {line:?}").into());
        }
        children.push(c);
    }
    // The barrier: release both writers back to back.
    let mut stdins: Vec<_> = children
        .iter_mut()
        .map(|c| c.stdin.take().ok_or("no child stdin"))
        .collect::<Result<_, _>>()?;
    for s in &mut stdins {
        s.write_all(b"go\n")?;
    }
    drop(stdins);
    for mut c in children {
        let st = c.wait()?;
        if !st.success() {
            return Err(format!("writer process failed: {st}").into());
        }
    }
    Ok(())
}

/// Child side of `--processes`: `--role <naive|lockstore> <ID> <FILE>`.
fn child(mode: Mode, id: &str, path: &Path) -> Result<(), BoxError> {
    let store = match mode {
        Mode::Lockstore => Some(open_store(path)?),
        Mode::Naive => None,
    };
    println!("ready");
    std::io::stdout().flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    match &store {
        Some(st) => lockstore_dismiss(st, id),
        None => naive_dismiss(path, id),
    }
}

/// The naive pattern on tokio: `tokio::fs` read, modify, write temp + fsync +
/// rename, nothing serializing two writers.
async fn naive_dismiss_async(path: &Path, id: &str) -> Result<(), BoxError> {
    let raw = tokio::fs::read(path).await?;
    let mut doc: Value = serde_json::from_slice(&raw)?;
    dismiss(&mut doc, id);
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    let tmp = path.with_extension(format!("{id}.tmp"));
    {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(&bytes).await?;
        f.sync_all().await?;
    }
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

/// One `--async` trial: `Promise.all([dismiss(A), dismiss(B)])` as
/// `tokio::join!` of two futures in one task of a multi-thread runtime.
fn trial_async(rt: &tokio::runtime::Runtime, mode: Mode, path: &Path) -> Result<(), BoxError> {
    rt.block_on(async {
        match mode {
            Mode::Naive => {
                let (a, b) = tokio::join!(
                    naive_dismiss_async(path, "A"),
                    naive_dismiss_async(path, "B")
                );
                a.and(b)
            }
            Mode::Lockstore => {
                let store: lockstore::tokio::JsonStore<Value> =
                    lockstore::tokio::JsonStore::open(path, JsonOptions::default()).await?;
                let (a, b) = tokio::join!(
                    store.update(|doc| dismiss(doc, "A")),
                    store.update(|doc| dismiss(doc, "B"))
                );
                a?;
                b?;
                Ok(())
            }
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Writers {
    Threads,
    Processes,
    Tasks,
}

fn run_mode(mode: Mode, writers: Writers, trials: usize, dir: &Path) -> Result<usize, BoxError> {
    println!(
        "== {} load-modify-save, two writers as {}",
        mode.name(),
        match writers {
            Writers::Threads => "threads",
            Writers::Processes => "processes",
            Writers::Tasks => "tokio futures joined in one task (2-worker runtime)",
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut lost = 0;
    for t in 1..=trials {
        let path = dir.join(format!("{}-{t}.json", mode.name()));
        seed(&path)?;
        match writers {
            Writers::Processes => trial_processes(mode, &path)?,
            Writers::Threads => trial_threads(mode, &path)?,
            Writers::Tasks => trial_async(&rt, mode, &path)?,
        }
        let (a, b) = outcome(&path)?;
        let ok = a == "dismissed" && b == "dismissed";
        if !ok {
            lost += 1;
        }
        println!(
            "trial {t}: {} {{A: {a}, B: {b}}}",
            if ok { "OK" } else { "LOSS" }
        );
    }
    Ok(lost)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        let (Some(mode), Some(id), Some(file)) = (
            args.get(1).and_then(|m| Mode::parse(m)),
            args.get(2),
            args.get(3),
        ) else {
            return Err("usage: race_repro --role <naive|lockstore> <ID> <FILE>".into());
        };
        return child(mode, id, &PathBuf::from(file));
    }
    let writers = if args.iter().any(|a| a == "--processes") {
        Writers::Processes
    } else if args.iter().any(|a| a == "--async") {
        Writers::Tasks
    } else {
        Writers::Threads
    };
    let trials = args
        .iter()
        .position(|a| a == "--trials")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let naive = run_mode(Mode::Naive, writers, trials, dir.path())?;
    let locked = run_mode(Mode::Lockstore, writers, trials, dir.path())?;
    println!("naive: {naive}/{trials} lost · lockstore: {locked}/{trials} lost");
    if locked > 0 {
        eprintln!("lockstore lost {locked} write(s): this is a bug");
        std::process::exit(1);
    }
    Ok(())
}
