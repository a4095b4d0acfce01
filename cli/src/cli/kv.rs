//! `lockstore kv`: a typed keyed collection ([`lockstore::Collection`] of
//! JSON values) in one SQLite file, for scripts and tests.
//!
//! Every write is one transaction through the collection's writer (FIFO
//! queue, `flock` on `FILE.lock`, `BEGIN IMMEDIATE`). POINTERs are JSON
//! Pointers (RFC 6901) into one record's value: `""` is the whole value,
//! `/a/0/b` a nested member; `set` and `incr` create missing parent objects.
//! Records are edited as `lockstore json` edits a file ([`JsonDocument`]):
//! untouched values keep their text, `set` takes a JSON value (`--string`
//! for text), integer `incr` stays exact or fails (docs/json.md).
//! Exit codes: 0 ok, 1 bad input or missing key, 2 corrupt record or
//! foreign / too-new / non-SQLite database (left untouched), 3 lock timeout,
//! 4 other I/O or database error.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use lockstore::{
    Collection, CollectionOptions, DocumentError, Durability, Error, JsonDocument, JsonPointer,
};

use super::json::EditError;
use super::{cli_lock_options, exit, CliError, CliResult};

/// Arguments of `lockstore kv`.
#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(subcommand)]
    cmd: KvCmd,
    /// fsync policy: full (survives power loss) or process (survives a crash).
    #[arg(long, global = true, default_value = "full")]
    durability: Durability,
    /// Give up waiting for the lock after this many ms (default 60000).
    #[arg(long, global = true)]
    lock_timeout_ms: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum KvCmd {
    /// Import the records of a JSON document (idempotent; the document is never changed).
    Import {
        /// The collection's SQLite file.
        file: PathBuf,
        /// The JSON document to import.
        #[arg(long = "from")]
        from: PathBuf,
        /// JSON Pointer to the records: an object keyed by id, or an array of objects.
        #[arg(long, default_value = "")]
        pointer: String,
        /// Field holding the id of each object of an array.
        #[arg(long, default_value = "id")]
        id_field: String,
    },
    /// Print the record KEY, or the value at POINTER inside it (missing pointer → null).
    Get {
        /// The collection's SQLite file.
        file: PathBuf,
        /// The record's key.
        key: String,
        /// JSON Pointer into the record's value (default: the whole value).
        pointer: Option<String>,
    },
    /// Set the record KEY (or the value at POINTER inside it) to VALUE (a JSON value; --string for text).
    Set {
        /// The collection's SQLite file.
        file: PathBuf,
        /// The record's key.
        key: String,
        /// Store VALUE as a JSON string, as is (no JSON parsing).
        #[arg(long)]
        string: bool,
        /// `[POINTER] VALUE`.
        #[arg(num_args = 1..=2, required = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Add N (default 1) to the number at POINTER of record KEY (missing → 0), K times,
    /// one transaction each; prints the new value after each.
    Incr {
        /// The collection's SQLite file.
        file: PathBuf,
        /// The record's key.
        key: String,
        /// JSON Pointer to the number inside the record's value.
        pointer: String,
        /// The amount to add (may be negative).
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
        /// How many increments, each its own transaction.
        #[arg(long, default_value_t = 1)]
        repeat: u64,
    },
    /// Remove the record KEY (exit 1 if there is none).
    Del {
        /// The collection's SQLite file.
        file: PathBuf,
        /// The record's key.
        key: String,
    },
    /// List the keys (with --json: one JSON array of {key, version, updated_ms, value}).
    List {
        /// The collection's SQLite file.
        file: PathBuf,
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// One JSON array of {key, version, updated_ms, value} instead of keys.
        #[arg(long)]
        json: bool,
    },
    /// Write every record as one JSON object keyed by key (atomically to --out, or to stdout).
    Export {
        /// The collection's SQLite file.
        file: PathBuf,
        /// Write the document here (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The exit code of a library error under the shared table (corrupt records,
/// foreign, non-SQLite and too-new databases are 2: `Error::is_corrupt`).
fn store_err(e: Error) -> CliError {
    CliError::from(e)
}

/// Runs `lockstore kv`.
pub fn run(a: KvArgs) -> CliResult {
    let mut opts = CollectionOptions {
        lock: cli_lock_options(a.lock_timeout_ms),
        ..Default::default()
    };
    opts.sqlite.durability = a.durability;
    let file = match &a.cmd {
        KvCmd::Import { file, .. }
        | KvCmd::Get { file, .. }
        | KvCmd::Set { file, .. }
        | KvCmd::Incr { file, .. }
        | KvCmd::Del { file, .. }
        | KvCmd::List { file, .. }
        | KvCmd::Export { file, .. } => file.clone(),
    };
    let name = file.display().to_string();
    let bad = |m: String| CliError::usage(format!("{name}: {m}"));
    let bad_doc = |e: DocumentError| CliError::usage(format!("{name}: {e}"));
    let edit_err = |e: EditError| match e {
        EditError::Bad(e) => CliError::usage(format!("{name}: {e}")),
        EditError::Store(e) => store_err(e),
    };
    // Validate the input before opening (creating) the file.
    let ptr = match &a.cmd {
        KvCmd::Get {
            pointer: Some(p), ..
        }
        | KvCmd::Incr { pointer: p, .. } => JsonPointer::parse(p).map_err(bad_doc)?,
        KvCmd::Set { rest, .. } if rest.len() == 2 => {
            JsonPointer::parse(&rest[0]).map_err(bad_doc)?
        }
        _ => JsonPointer::parse("").map_err(bad_doc)?,
    };
    let value = match &a.cmd {
        KvCmd::Set { rest, string, .. } => {
            let raw = rest.last().cloned().unwrap_or_default();
            Some(if *string {
                JsonDocument::string(&raw)
            } else {
                JsonDocument::parse(&raw).map_err(|e| {
                    bad(format!(
                        "value {raw:?} is not JSON: {e} (pass --string to store text as is)"
                    ))
                })?
            })
        }
        _ => None,
    };
    // Reading commands never create the file.
    let reads = matches!(
        a.cmd,
        KvCmd::Get { .. } | KvCmd::Del { .. } | KvCmd::List { .. } | KvCmd::Export { .. }
    );
    if reads && std::fs::symlink_metadata(&file).is_err() {
        return Err(bad("no such collection file".into()));
    }
    let c: Collection<JsonDocument> = Collection::open(&file, opts).map_err(store_err)?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader of a pipeline went away: end quietly, as a shell
            // reports a pipeline member killed by SIGPIPE (128 + 13).
            std::process::exit(141);
        }
        CliError {
            code: exit::IO,
            msg: format!("write to stdout: {e}"),
        }
    };
    match a.cmd {
        KvCmd::Import {
            from,
            pointer,
            id_field,
            ..
        } => {
            let r = c
                .import_json(&from, &pointer, &id_field)
                .map_err(store_err)?;
            writeln!(
                out,
                "imported {} records from {} ({} already present and equal, {} already present and different: kept)",
                r.inserted,
                from.display(),
                r.unchanged,
                r.kept
            )
            .map_err(io)?;
        }
        KvCmd::Get { key, .. } => {
            let v = c
                .get(&key)
                .map_err(store_err)?
                .ok_or_else(|| bad(format!("no record {key:?}")))?;
            let v = v.get(&ptr).map_err(bad_doc)?.unwrap_or_default();
            writeln!(out, "{v:#}").map_err(io)?;
        }
        KvCmd::Set { key, .. } => {
            let value = value.unwrap_or_default();
            c.transaction(|tx| {
                let mut rec = if ptr.tokens().is_empty() {
                    JsonDocument::default()
                } else {
                    tx.get(&key)?.unwrap_or_default()
                };
                rec.set(&ptr, value.clone())?;
                tx.insert(&key, &rec)?;
                Ok::<_, EditError>(())
            })
            .map_err(edit_err)?;
        }
        KvCmd::Incr {
            key, by, repeat, ..
        } => {
            for _ in 0..repeat {
                let n = c
                    .transaction(|tx| {
                        let mut rec = tx.get(&key)?.unwrap_or_default();
                        let n = rec.incr(&ptr, by)?;
                        tx.insert(&key, &rec)?;
                        Ok::<_, EditError>(n)
                    })
                    .map_err(edit_err)?;
                // Printed only after the COMMIT: an acknowledged update.
                writeln!(out, "{n}").map_err(io)?;
                out.flush().map_err(io)?;
            }
        }
        KvCmd::Del { key, .. } => {
            if !c.remove(&key).map_err(store_err)? {
                return Err(bad(format!("no record {key:?}")));
            }
        }
        KvCmd::List { prefix, json, .. } => {
            let mut first = true;
            if json {
                write!(out, "[").map_err(io)?;
            }
            for r in c.scan_prefix(&prefix) {
                let r = r.map_err(store_err)?;
                if json {
                    let doc = serde_json::json!({
                        "key": r.key, "version": r.version, "updated_ms": r.updated_ms, "value": r.value,
                    });
                    write!(out, "{}\n  {doc}", if first { "" } else { "," }).map_err(io)?;
                } else {
                    writeln!(out, "{}", super::text::clean(&r.key)).map_err(io)?;
                }
                first = false;
            }
            if json {
                writeln!(out, "{}]", if first { "" } else { "\n" }).map_err(io)?;
            }
        }
        KvCmd::Export { out: to, .. } => match to {
            Some(p) => {
                let n = c.export_json(&p).map_err(store_err)?;
                eprintln!("exported {n} records to {}", p.display());
            }
            None => {
                let doc = c.export_json_string().map_err(store_err)?;
                out.write_all(doc.as_bytes()).map_err(io)?;
            }
        },
    }
    Ok(())
}
