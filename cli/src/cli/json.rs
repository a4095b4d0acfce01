//! `lockstore json`: concurrency-safe, jq-style edits of one JSON file.
//!
//! Every edit is one locked load → modify → save cycle through
//! [`lockstore::JsonStore`] of a [`lockstore::JsonDocument`] (unversioned):
//! values an edit does not touch keep their exact text (numbers are not
//! rounded) and members their order; a duplicate key makes the file corrupt
//! (exit 2, untouched); nesting is limited to `JsonDocument::MAX_DEPTH`. Paths
//! are JSON Pointers (RFC 6901): `""` is the whole document, `/a/0/b` a nested
//! member, `~1` and `~0` escape `/` and `~`; an array index is `0` or digits
//! without a leading zero; in `set`, `-` appends to an array. Missing parent
//! objects are created by `set` and `incr`. See docs/json.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use clap::{Args, Subcommand};

use lockstore::{
    DocumentError, Durability, Error, JsonDocument, JsonOptions, JsonPointer, JsonStore,
    QuarantineOutcome,
};

use super::{cli_lock_options, exit, CliError, CliResult};

/// Arguments of `lockstore json`.
#[derive(Args, Debug)]
pub struct JsonArgs {
    #[command(subcommand)]
    cmd: JsonCmd,
    /// Run K separate locked load-modify-save cycles.
    #[arg(long, global = true, default_value_t = 1)]
    repeat: u64,
    /// Run T threads, each doing K cycles (in-process contention).
    #[arg(long, global = true, default_value_t = 1)]
    threads: u64,
    /// fsync policy: full (survives power loss) or process (survives a crash).
    #[arg(long, global = true, default_value = "full")]
    durability: Durability,
    /// Give up waiting for the lock after this many ms (default 60000).
    #[arg(long, global = true)]
    lock_timeout_ms: Option<u64>,
    /// Cross-process lock protocol: flock (lockstore's) or sidecar (interop with
    /// @openclaw/fs-safe). Never mix the two on one file.
    #[arg(long, global = true, default_value = "flock")]
    lock_protocol: lockstore::lock::LockProtocol,
    /// Sidecar: lease mode with this lease term in ms (holder refreshes every term/3).
    #[arg(long, global = true)]
    lock_lease_ms: Option<u64>,
    /// Sidecar: age in ms after which a lock without a judgeable owner is stale (default 60000).
    #[arg(long, global = true)]
    lock_stale_ms: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum JsonCmd {
    /// Print the value at POINTER (default: the whole document; missing → null).
    Get {
        /// The JSON file (nothing is created when it is missing).
        file: PathBuf,
        /// JSON Pointer (RFC 6901) of the value to print; default "" (the whole document).
        pointer: Option<String>,
    },
    /// Set the value at POINTER to VALUE (a JSON value; --string for text).
    Set {
        /// Store VALUE as a JSON string, as is (no JSON parsing).
        #[arg(long)]
        string: bool,
        /// The JSON file (created with its parent directories if missing).
        file: PathBuf,
        /// JSON Pointer (RFC 6901) of the value to set; missing parents are created, "-" appends.
        pointer: String,
        /// The new value: JSON text (e.g. 3, "text", {"a": 1}), or any text with --string.
        value: String,
    },
    /// Delete the value at POINTER (no-op if missing).
    Del {
        /// The JSON file.
        file: PathBuf,
        /// JSON Pointer (RFC 6901) of the value to delete ("" empties the document to null).
        pointer: String,
    },
    /// Add N (default 1) to the numbers at each POINTER in one cycle (missing → 0); prints the new values.
    Incr {
        /// The JSON file (created if missing).
        file: PathBuf,
        /// JSON Pointers (RFC 6901) of the numbers to increment, all in one cycle.
        #[arg(required = true)]
        pointers: Vec<String>,
        /// Amount to add (may be negative); integers stay exact integers.
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
    /// Move a corrupt FILE aside to FILE.corrupt-<unix ms>[-n] so it can start fresh.
    Quarantine {
        /// Also move a file that is not corrupt.
        #[arg(long)]
        force: bool,
        /// The JSON file.
        file: PathBuf,
    },
}

/// Error of one edit of a JSON document (`json`, and a record of `kv`): bad
/// input (exit 1) or a store error.
pub(crate) enum EditError {
    Bad(DocumentError),
    Store(Error),
}

impl From<Error> for EditError {
    fn from(e: Error) -> Self {
        EditError::Store(e)
    }
}

impl From<DocumentError> for EditError {
    fn from(e: DocumentError) -> Self {
        EditError::Bad(e)
    }
}

/// The validated edit, run once per cycle.
enum Op {
    Set(JsonPointer, JsonDocument),
    Del(JsonPointer),
    Incr(Vec<JsonPointer>, i64),
}

/// Runs `lockstore json`.
pub fn run(a: JsonArgs) -> CliResult {
    let mut lock = cli_lock_options(a.lock_timeout_ms);
    lock.protocol = a.lock_protocol;
    lock.lease = a.lock_lease_ms.map(std::time::Duration::from_millis);
    if let Some(ms) = a.lock_stale_ms {
        lock.stale = std::time::Duration::from_millis(ms);
    }
    let opts = JsonOptions {
        lock,
        durability: a.durability,
        ..Default::default()
    };
    let file = match &a.cmd {
        JsonCmd::Get { file, .. }
        | JsonCmd::Set { file, .. }
        | JsonCmd::Del { file, .. }
        | JsonCmd::Incr { file, .. }
        | JsonCmd::Quarantine { file, .. } => file.clone(),
    };
    let name = file.display().to_string();
    let bad = |e: DocumentError| CliError::usage(format!("{name}: {e}"));
    let pointer = |p: &str| JsonPointer::parse(p).map_err(bad);
    match &a.cmd {
        JsonCmd::Get { pointer: p, .. } => {
            let ptr = pointer(p.as_deref().unwrap_or(""))?;
            // A read creates nothing: opening the store would create the
            // parent directory, and a missing directory holds no file.
            let doc = if parent_missing(&file) {
                JsonDocument::default()
            } else {
                JsonStore::<JsonDocument>::open(&file, opts)?.load()?
            };
            let v = doc.get(&ptr).map_err(bad)?.unwrap_or_default();
            println!("{v:#}");
            Ok(())
        }
        JsonCmd::Quarantine { force, .. } => {
            if parent_missing(&file) {
                println!("{name}: no file");
                return Ok(());
            }
            let store: JsonStore<JsonDocument> = JsonStore::open(&file, opts)?;
            let shown = store.path().display().to_string();
            if *force {
                match store.quarantine()? {
                    Some(p) => println!("moved {shown} to {}", p.display()),
                    None => println!("{shown}: no file"),
                }
                return Ok(());
            }
            match store.quarantine_corrupt()? {
                QuarantineOutcome::Moved { to, reason } => {
                    println!("moved {shown} to {} ({reason})", to.display())
                }
                QuarantineOutcome::NoFile => println!("{shown}: no file"),
                _ => {
                    return Err(CliError::usage(format!(
                        "{shown} is not corrupt (it reads as a JSON document); nothing moved (pass --force to move it aside anyway)"
                    )))
                }
            }
            Ok(())
        }
        cmd => {
            // Validate input once, before any cycle.
            let op = match cmd {
                JsonCmd::Set {
                    pointer: p,
                    value,
                    string,
                    ..
                } => {
                    let ptr = pointer(p)?;
                    let v = if *string {
                        JsonDocument::string(value)
                    } else {
                        JsonDocument::parse(value).map_err(|e| {
                            CliError::usage(format!(
                                "{name}: value {value:?} is not JSON: {e} (pass --string to store text as is)"
                            ))
                        })?
                    };
                    Op::Set(ptr, v)
                }
                JsonCmd::Del { pointer: p, .. } => Op::Del(pointer(p)?),
                JsonCmd::Incr { pointers, by, .. } => Op::Incr(
                    pointers
                        .iter()
                        .map(|p| pointer(p))
                        .collect::<Result<_, _>>()?,
                    *by,
                ),
                _ => unreachable!("handled above"),
            };
            let store: JsonStore<JsonDocument> = JsonStore::open(&file, opts)?;
            edit(&store, &op, a.repeat, a.threads, &name)?;
            if let Op::Incr(ps, _) = &op {
                // Print the values as they are after this process's cycles.
                // (A "-" pointer appended a new item; it has no value to show.)
                let doc = store.load()?;
                let vals: Vec<String> = ps
                    .iter()
                    .map(|p| doc.get(p).ok().flatten().unwrap_or_default().to_string())
                    .collect();
                println!("{}", vals.join(" "));
            }
            Ok(())
        }
    }
}

/// Whether `file`'s parent directory is missing (then so is the file).
fn parent_missing(file: &Path) -> bool {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::symlink_metadata(dir).is_err(),
        _ => false,
    }
}

/// Runs `repeat` cycles of `op` on each of `threads` threads. A thread that
/// cannot be started (e.g. RLIMIT_NPROC) stops the spawning; the started
/// threads finish, and the error says how many cycles were done.
fn edit(
    store: &JsonStore<JsonDocument>,
    op: &Op,
    repeat: u64,
    threads: u64,
    name: &str,
) -> CliResult {
    let done = AtomicU64::new(0);
    let cycle = || -> Result<(), EditError> {
        store.try_update(|doc| -> Result<(), EditError> {
            match op {
                Op::Set(p, v) => doc.set(p, v.clone())?,
                Op::Del(p) => {
                    doc.delete(p)?;
                }
                Op::Incr(ps, by) => {
                    for p in ps {
                        doc.incr(p, *by)?;
                    }
                }
            }
            Ok(())
        })?;
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    let map_err = |e: EditError| match e {
        EditError::Bad(e) => CliError::usage(format!("{name}: {e}")),
        EditError::Store(e) => CliError::from(e),
    };
    let run_cycles = || -> CliResult {
        for _ in 0..repeat {
            cycle().map_err(map_err)?;
        }
        Ok(())
    };
    if threads <= 1 {
        return run_cycles();
    }
    let (results, spawn_error) = std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut spawn_error = None;
        for i in 0..threads {
            match std::thread::Builder::new()
                .name(format!("json-{i}"))
                .spawn_scoped(s, run_cycles)
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_error = Some((i, e));
                    break;
                }
            }
        }
        let results: Vec<CliResult> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CliError {
                        code: exit::IO,
                        msg: format!("{name}: a worker thread panicked"),
                    })
                })
            })
            .collect();
        (results, spawn_error)
    });
    results.into_iter().collect::<CliResult>()?;
    if let Some((started, e)) = spawn_error {
        let total = threads.saturating_mul(repeat);
        return Err(CliError {
            code: exit::IO,
            msg: format!(
                "{name}: could not start thread {} of {threads} ({e}); the {started} started thread(s) finished: {} of {total} {} done",
                started + 1,
                done.load(Ordering::Relaxed),
                match op {
                    Op::Incr(..) => "increments",
                    _ => "edits",
                }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Command;

    /// Every option and argument of every `json` subcommand has a help line.
    #[test]
    fn every_json_argument_has_help() {
        let cmd = JsonArgs::augment_args(Command::new("json"));
        let mut missing = Vec::new();
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none() && arg.get_id() != "help" {
                missing.push(format!("json {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_id() != "help" {
                    missing.push(format!("json {} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
