//! `lockstore outbox`: enqueue, inspect, retry, prune and deliver the delivery
//! outbox at `<state>/outbox/outbox.sqlite`.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use crate::cli::now_ms;
use lockstore::outbox::{
    adapters, legacy, worker, Entry, NewMessage, Outbox, OutboxError, OutboxOptions, Outcome,
    Retention, Status,
};
use lockstore::Durability;

use super::text::clean;
use super::{exit, parse_duration, CliError, CliResult};

/// Arguments of `lockstore outbox`.
#[derive(Args, Debug)]
pub struct OutboxArgs {
    #[command(subcommand)]
    cmd: OutboxCmd,
    /// fsync policy: full (synchronous=FULL) or process (synchronous=NORMAL).
    #[arg(long, global = true, default_value = "full")]
    durability: Durability,
}

#[derive(Subcommand, Debug)]
enum OutboxCmd {
    /// Enqueue a message (payload JSON from --payload or stdin); prints `created ID` or `existing ID`.
    Enqueue {
        /// Channel to deliver on (telegram, slack, ...).
        #[arg(long)]
        channel: String,
        /// Recipient within the channel.
        #[arg(long)]
        target: String,
        /// Idempotency key: a second enqueue with the same key returns the existing row.
        #[arg(long)]
        key: Option<String>,
        /// Account on the channel, if any.
        #[arg(long)]
        account: Option<String>,
        /// Time to live (30s, 5m, 2h, 30d); expired if not delivered by then.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Payload JSON (default: read stdin).
        #[arg(long)]
        payload: Option<String>,
    },
    /// List entries (oldest first).
    List {
        /// Only entries with this status (pending, in_flight, delivered, dead, unknown, expired).
        #[arg(long)]
        status: Option<Status>,
        /// Print the entries as JSON (snake_case keys, as the table's columns).
        #[arg(long)]
        json: bool,
        /// Show at most N entries.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        limit: usize,
    },
    /// Show one entry as JSON.
    Show {
        /// Entry id (the ID column of `outbox list`).
        id: i64,
    },
    /// Operator retry: dead / unknown / expired → pending, attempts reset.
    Retry {
        /// Entry ids (the ID column of `outbox list`).
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Delete delivered tombstones, dead letters and expired rows older than the age (default 30d).
    Prune {
        /// Minimum age of the rows pruned (30s, 5m, 2h, 30d) [default: 30d].
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Only count what would be pruned.
        #[arg(long)]
        dry_run: bool,
    },
    /// Counts per status.
    Stats {
        /// Print the counts as JSON (snake_case keys).
        #[arg(long)]
        json: bool,
    },
    /// Run the delivery worker in the foreground (until SIGINT/SIGTERM, or --once).
    Deliver {
        /// file:PATH (deduplicating JSON-lines sink) or exec:CMD (sh -c CMD).
        #[arg(long)]
        adapter: String,
        /// Deliver everything due now, then exit.
        #[arg(long)]
        once: bool,
        /// Adapter calls in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Entries claimed per claim transaction.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Claim lease.
        #[arg(long, value_parser = parse_duration, default_value = "5m")]
        lease: Duration,
        /// Startup drain budget.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        budget: Duration,
        /// Poll interval when idle.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        poll: Duration,
        /// Per-call timeout of exec:CMD.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        exec_timeout: Duration,
        /// Without --once: print a progress line to stderr this often (0: never).
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        progress_every: Duration,
    },
    /// Import openclaw's delivery-queue/*.json (pending) and failed/*.json (dead) from DIR.
    ImportLegacy {
        /// openclaw's delivery-queue directory (holds *.json and failed/*.json).
        dir: std::path::PathBuf,
    },
}

impl From<OutboxError> for CliError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Core(c) => c.into(),
            e @ OutboxError::CorruptRow { .. } => CliError {
                code: exit::CORRUPT,
                msg: e.to_string(),
            },
            // Caller input (empty field, bad TTL or prune age, unknown status,
            // ...) and anything added later.
            e => CliError::usage(e.to_string()),
        }
    }
}

/// Adapter calls made for `e` so far (the TRY column): the failed attempts
/// the row counts (`attempt_count`), plus the successful one of a delivered
/// row and the running one of an in-flight row.
fn attempts(e: &Entry) -> i64 {
    match e.status {
        Status::Delivered | Status::InFlight => e.attempt_count + 1,
        _ => e.attempt_count,
    }
}

fn fmt_time(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(t) => {
            let d = t - now_ms();
            if d.abs() < 1000 {
                "now".into()
            } else if d > 0 {
                format!("in {}", human(d))
            } else {
                format!("{} ago", human(-d))
            }
        }
    }
}

/// Unix ms of `t` (negative before 1970).
fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn human(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> CliResult {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::usage(e.to_string()))?;
    println!("{s}");
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        let _ = unsafe { sigaction(s, &act) };
    }
}

/// Runs `lockstore outbox …` on the outbox of `state_dir`.
pub fn run(args: OutboxArgs, state_dir: &Path) -> CliResult {
    let mut opts = OutboxOptions::default();
    opts.sqlite.durability = args.durability;
    let db = lockstore::paths::outbox_db(state_dir);
    let open = || super::backend::open_outbox_at(&db, opts.clone());
    match args.cmd {
        OutboxCmd::Enqueue {
            channel,
            target,
            key,
            account,
            ttl,
            payload,
        } => {
            let text = match payload {
                Some(p) => p,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).map_err(|e| {
                        CliError::usage(format!("cannot read the payload from stdin: {e}"))
                    })?;
                    s
                }
            };
            let payload: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::usage(format!("the payload is not valid JSON: {e}")))?;
            let r = open()?.enqueue(
                &NewMessage {
                    channel,
                    target,
                    account_id: account,
                    payload,
                    idempotency_key: key,
                    ttl,
                },
                SystemTime::now(),
            )?;
            match r {
                lockstore::outbox::Enqueued::Created(id) => println!("created {id}"),
                lockstore::outbox::Enqueued::Existing(id) => println!("existing {id}"),
            }
        }
        OutboxCmd::List {
            status,
            json,
            limit,
        } => {
            let v = open()?.list(status, limit)?;
            if json {
                return print_json(&v);
            }
            println!(
                "{:>6}  {:<9}  {:<10}  {:<16}  {:>3}  {:<10}  {:<24}  LAST ERROR",
                "ID", "STATUS", "CHANNEL", "TARGET", "TRY", "NEXT", "KEY"
            );
            for e in v {
                println!(
                    "{:>6}  {:<9}  {:<10}  {:<16}  {:>3}  {:<10}  {:<24}  {}",
                    e.id,
                    e.status.as_str(),
                    clean(&e.channel),
                    clean(&e.target),
                    attempts(&e),
                    if e.status == Status::Pending {
                        fmt_time(Some(e.next_attempt_at))
                    } else {
                        "-".into()
                    },
                    clean(e.idempotency_key.as_deref().unwrap_or("-")),
                    clean(e.last_error.as_deref().unwrap_or(""))
                );
            }
        }
        OutboxCmd::Show { id } => match open()?.get(id)? {
            Some(e) => print_json::<Entry>(&e)?,
            None => {
                return Err(CliError::usage(format!(
                    "no outbox entry {id} in {}",
                    if super::backend::url().is_some() {
                        "the PostgreSQL outbox".to_string()
                    } else {
                        db.display().to_string()
                    }
                )))
            }
        },
        OutboxCmd::Retry { ids } => {
            let ob = open()?;
            // Each problem once: in the one error line (exit 1).
            let mut bad = Vec::new();
            for id in ids {
                match ob.retry(id, SystemTime::now())? {
                    Outcome::Applied(_) => println!("{id}: pending"),
                    Outcome::Stale(None) => bad.push(format!("{id}: no such entry")),
                    Outcome::Stale(Some(s)) => bad.push(format!(
                        "{id}: not retried: status is {s} (only dead, unknown or expired entries can be retried)"
                    )),
                }
            }
            if !bad.is_empty() {
                return Err(CliError::usage(bad.join("; ")));
            }
        }
        OutboxCmd::Prune {
            older_than,
            dry_run,
        } => {
            let ret = match older_than {
                Some(d) => Retention::all(d),
                None => Retention::default(),
            };
            let r = open()?.prune(&ret, SystemTime::now(), dry_run)?;
            println!(
                "{} {} delivered, {} dead, {} expired",
                if dry_run { "would prune" } else { "pruned" },
                r.delivered,
                r.dead,
                r.expired
            );
        }
        OutboxCmd::Stats { json } => {
            let s = open()?.stats(SystemTime::now())?;
            if json {
                return print_json(&s);
            }
            for (k, v) in &s.by_status {
                println!("{k:<10} {v}");
            }
            println!("due now    {}", s.due_now);
            println!(
                "oldest pending queued {}",
                fmt_time(s.oldest_pending_queued_at.map(unix_ms))
            );
            println!(
                "oldest dead letter    {}",
                fmt_time(s.oldest_dead_at.map(unix_ms))
            );
        }
        OutboxCmd::Deliver {
            adapter,
            once,
            concurrency,
            batch,
            lease,
            budget,
            poll,
            exec_timeout,
            progress_every,
        } => {
            let a = adapters::from_spec(&adapter, exec_timeout)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let mut w = worker::WorkerOptions::new(super::backend::outbox_db(state_dir));
            w.outbox = opts.clone();
            w.concurrency = concurrency;
            w.batch = batch;
            w.lease = lease;
            w.recovery_budget = budget;
            w.poll = poll;
            install_stop_handler();
            let r = if once {
                worker::run_once(&w, a.as_ref(), &STOP)?
            } else if progress_every.is_zero() {
                worker::run(&w, a.as_ref(), &STOP)?
            } else {
                // Its own connection, opened on the progress thread.
                let stats = std::sync::Mutex::new(None::<Outbox>);
                let progress = |r: &worker::RunReport| {
                    let mut g = stats.lock().unwrap_or_else(|p| p.into_inner());
                    if g.is_none() {
                        *g = open().ok();
                    }
                    let pending = g
                        .as_ref()
                        .and_then(|o| o.stats(SystemTime::now()).ok())
                        .map(|s| {
                            format!(
                                "pending {} ({} due now), in flight {}",
                                s.by_status.get(&Status::Pending).copied().unwrap_or(0),
                                s.due_now,
                                s.by_status.get(&Status::InFlight).copied().unwrap_or(0)
                            )
                        })
                        .unwrap_or_else(|| "pending ?".into());
                    eprintln!(
                        "outbox: so far delivered {}, retried {}, dead {}, unknown {}; {pending}",
                        r.delivered, r.retried, r.dead, r.unknown
                    );
                };
                worker::run_with_progress(&w, a.as_ref(), &STOP, progress_every, &progress)?
            };
            eprintln!(
                "outbox: claimed {}, delivered {}, retried {}, dead {}, unknown {}, expired {}, released {}, stale {}, rescued {} (+{} unknown), lease renewals {}",
                r.claimed, r.delivered, r.retried, r.dead, r.unknown, r.expired, r.released, r.stale, r.rescued_pending, r.rescued_unknown, r.renewed
            );
        }
        OutboxCmd::ImportLegacy { dir } => {
            // A progress line at most every 2 s, and one when done.
            let mut last = std::time::Instant::now();
            let mut progress = |done: u64, total: u64| {
                if done == total || last.elapsed() >= Duration::from_secs(2) {
                    last = std::time::Instant::now();
                    eprintln!("import-legacy: {done}/{total} files");
                }
            };
            let r = legacy::import_legacy_with_progress(
                &open()?,
                &dir,
                SystemTime::now(),
                &mut progress,
            )?;
            println!(
                "imported {}, already present {}, renamed aside {}, malformed {}",
                r.imported,
                r.existing,
                r.renamed,
                r.malformed.len()
            );
            for (p, why) in &r.malformed {
                eprintln!("malformed (left in place): {}: {why}", p.display());
            }
        }
    }
    Ok(())
}
