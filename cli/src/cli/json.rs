//! `lockstore json`: concurrency-safe, jq-style edits of one JSON file.
//!
//! Every edit is one locked load → modify → save cycle through
//! [`lockstore::JsonStore`] (unversioned document). Paths are JSON Pointers
//! (RFC 6901): `""` is the whole document, `/a/0/b` a nested member, `~1` and
//! `~0` escape `/` and `~`; in `set`, `-` appends to an array. Missing parent
//! objects are created by `set` and `incr`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use lockstore::{Durability, Error, JsonOptions, JsonStore};

use super::{cli_lock_options, CliError, CliResult};

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
        file: PathBuf,
        pointer: Option<String>,
    },
    /// Set the value at POINTER to VALUE (JSON; a bare word is taken as a string).
    Set {
        file: PathBuf,
        pointer: String,
        value: String,
    },
    /// Delete the value at POINTER (no-op if missing).
    Del { file: PathBuf, pointer: String },
    /// Add N (default 1) to the numbers at each POINTER in one cycle (missing → 0); prints the new values.
    Incr {
        file: PathBuf,
        #[arg(required = true)]
        pointers: Vec<String>,
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
    /// Move a corrupt FILE aside to FILE.corrupt-<unix ms> so it can start fresh.
    Quarantine { file: PathBuf },
}

fn tokens(ptr: &str) -> Result<Vec<String>, String> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    if !ptr.starts_with('/') {
        return Err(format!(
            "invalid JSON Pointer {ptr:?}: must be empty or start with '/'"
        ));
    }
    ptr[1..]
        .split('/')
        .map(|t| {
            if t.contains('~') {
                let bad = t
                    .match_indices('~')
                    .any(|(i, _)| !matches!(t.as_bytes().get(i + 1), Some(b'0') | Some(b'1')));
                if bad {
                    return Err(format!(
                        "invalid JSON Pointer {ptr:?}: '~' must be followed by 0 or 1"
                    ));
                }
            }
            Ok(t.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

/// The slot at `toks` in `root`, creating objects on the way.
fn slot_mut<'a>(root: &'a mut Value, toks: &[String], ptr: &str) -> Result<&'a mut Value, String> {
    let mut cur = root;
    for t in toks {
        if cur.is_null() {
            *cur = Value::Object(Default::default());
        }
        cur = match cur {
            Value::Object(m) => m.entry(t.clone()).or_insert(Value::Null),
            Value::Array(a) => {
                if t == "-" {
                    a.push(Value::Null);
                    let n = a.len() - 1;
                    &mut a[n]
                } else {
                    let i: usize = t
                        .parse()
                        .map_err(|_| format!("invalid array index {t:?} in {ptr:?}"))?;
                    let len = a.len();
                    a.get_mut(i).ok_or_else(|| {
                        format!("array index {i} out of range (length {len}) in {ptr:?}")
                    })?
                }
            }
            other => {
                return Err(format!(
                    "cannot descend into {} at {t:?} in {ptr:?}",
                    kind(other)
                ))
            }
        };
    }
    Ok(cur)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn delete(root: &mut Value, toks: &[String]) {
    let Some((last, parent)) = toks.split_last() else {
        *root = Value::Null;
        return;
    };
    let mut cur = root;
    for t in parent {
        cur = match cur {
            Value::Object(m) => match m.get_mut(t) {
                Some(v) => v,
                None => return,
            },
            Value::Array(a) => match t.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match cur {
        Value::Object(m) => {
            m.remove(last);
        }
        Value::Array(a) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// Error of one edit: bad input (exit 1) or a store error.
enum EditError {
    Bad(String),
    Store(Error),
}

impl From<Error> for EditError {
    fn from(e: Error) -> Self {
        EditError::Store(e)
    }
}

fn add(v: &Value, by: i64, ptr: &str) -> Result<Value, String> {
    match v {
        Value::Null => Ok(Value::from(by)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.checked_add(by)
                    .map(Value::from)
                    .ok_or_else(|| format!("integer overflow at {ptr:?}"))
            } else if let Some(f) = n.as_f64() {
                Ok(Value::from(f + by as f64))
            } else {
                Err(format!("value at {ptr:?} is not a number"))
            }
        }
        other => Err(format!("value at {ptr:?} is {}, not a number", kind(other))),
    }
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
        | JsonCmd::Quarantine { file } => file.clone(),
    };
    let name = file.display().to_string();
    let bad = |m: String| CliError::usage(format!("{name}: {m}"));
    let store: JsonStore<Value> = JsonStore::open(&file, opts)?;
    match &a.cmd {
        JsonCmd::Get { pointer, .. } => {
            let toks = tokens(pointer.as_deref().unwrap_or("")).map_err(bad)?;
            let doc = store.load()?;
            let mut cur = &doc;
            for t in &toks {
                cur = match cur {
                    Value::Object(m) => m.get(t).unwrap_or(&Value::Null),
                    Value::Array(v) => t
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| v.get(i))
                        .unwrap_or(&Value::Null),
                    _ => &Value::Null,
                };
            }
            println!("{}", serde_json::to_string_pretty(cur).unwrap_or_default());
            Ok(())
        }
        JsonCmd::Quarantine { .. } => {
            match store.quarantine()? {
                Some(p) => println!("moved {} to {}", store.path().display(), p.display()),
                None => println!("{}: no file", store.path().display()),
            }
            Ok(())
        }
        cmd => {
            // Validate input once, before any cycle.
            enum Op {
                Set(Vec<String>, Value),
                Del(Vec<String>),
                Incr(Vec<(String, Vec<String>)>, i64),
            }
            let op = match cmd {
                JsonCmd::Set { pointer, value, .. } => {
                    let v = serde_json::from_str(value)
                        .unwrap_or_else(|_| Value::String(value.clone()));
                    Op::Set(tokens(pointer).map_err(bad)?, v)
                }
                JsonCmd::Del { pointer, .. } => Op::Del(tokens(pointer).map_err(bad)?),
                JsonCmd::Incr { pointers, by, .. } => Op::Incr(
                    pointers
                        .iter()
                        .map(|p| Ok((p.clone(), tokens(p)?)))
                        .collect::<Result<_, String>>()
                        .map_err(bad)?,
                    *by,
                ),
                _ => unreachable!("handled above"),
            };
            let cycle = |store: &JsonStore<Value>| -> Result<(), EditError> {
                store.try_update(|doc| match &op {
                    Op::Set(t, v) => {
                        *slot_mut(doc, t, "").map_err(EditError::Bad)? = v.clone();
                        Ok(())
                    }
                    Op::Del(t) => {
                        delete(doc, t);
                        Ok(())
                    }
                    Op::Incr(ps, by) => {
                        for (p, t) in ps {
                            let s = slot_mut(doc, t, p).map_err(EditError::Bad)?;
                            *s = add(s, *by, p).map_err(EditError::Bad)?;
                        }
                        Ok(())
                    }
                })
            };
            let map_err = |e: EditError| match e {
                EditError::Bad(m) => CliError::usage(format!("{name}: {m}")),
                EditError::Store(e) => CliError::from(e),
            };
            let run_cycles = || -> CliResult {
                for _ in 0..a.repeat {
                    cycle(&store).map_err(map_err)?;
                }
                Ok(())
            };
            if a.threads <= 1 {
                run_cycles()?;
            } else {
                let results: Vec<CliResult> = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..a.threads).map(|_| s.spawn(run_cycles)).collect();
                    hs.into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err(CliError::usage("worker thread panicked")))
                        })
                        .collect()
                });
                results.into_iter().collect::<CliResult>()?;
            }
            if let Op::Incr(ps, _) = &op {
                // Print the values as they are after this process's cycles.
                let doc = store.load()?;
                let vals: Vec<String> = ps
                    .iter()
                    .map(|(p, _)| doc.pointer(p).cloned().unwrap_or(Value::Null).to_string())
                    .collect();
                println!("{}", vals.join(" "));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens() {
        assert_eq!(tokens("").unwrap(), Vec::<String>::new());
        assert_eq!(tokens("/a~1b/c~0d").unwrap(), vec!["a/b", "c~d"]);
        assert!(tokens("a").is_err());
        assert!(tokens("/a~2").is_err());
    }

    #[test]
    fn set_creates_parents_and_incr_checks_type() {
        let mut v = Value::Null;
        *slot_mut(&mut v, &tokens("/a/b").unwrap(), "/a/b").unwrap() = Value::from(1);
        assert_eq!(v, serde_json::json!({"a": {"b": 1}}));
        assert!(add(&Value::from("x"), 1, "/a").is_err());
        assert_eq!(add(&Value::from(2), 3, "/a").unwrap(), Value::from(5));
        delete(&mut v, &tokens("/a/b").unwrap());
        assert_eq!(v, serde_json::json!({"a": {}}));
    }
}
