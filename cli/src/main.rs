//! `lockstore`: the CLI and daemon on one state directory.

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Crash-safe, lost-update-free state files: CLI and daemon.
#[derive(Parser, Debug)]
#[command(name = "lockstore", version, about)]
struct Cli {
    /// State directory (default: $LOCKSTORE_STATE_DIR, else $XDG_STATE_HOME/lockstore, else ~/.local/state/lockstore).
    #[arg(long, global = true, env = "LOCKSTORE_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Log format on stderr (filter with RUST_LOG, default warn; the daemon also logs its startup and its components' lifecycle at info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Concurrency-safe edits of a JSON file (jq-style, JSON Pointer paths).
    Json(cli::json::JsonArgs),
    /// A typed keyed collection in one SQLite file: import, get, set, incr, del, list, export.
    Kv(cli::kv::KvArgs),
    /// Run the daemon on the state dir (one per state dir) until SIGINT/SIGTERM.
    Daemon(cli::daemon::DaemonArgs),
    /// One screen for an operator: daemon, commitments, tasks, outbox, lock holders.
    Status(cli::status::StatusArgs),
    /// Follow-ups the agent promised or inferred: list, add, snooze, dismiss.
    Commitments(cli::commitments::CommitmentsArgs),
    /// The task ledger: list, show, audit, maintenance, run a tracked command.
    Tasks(cli::tasks::TasksArgs),
    /// Inspect or reclaim a store's lock (`lock status PATH`, `lock reclaim PATH`).
    Lock(cli::lock::LockArgs),
    /// The delivery outbox: enqueue, list, retry, prune, deliver.
    Outbox(cli::outbox::OutboxArgs),
    /// Soak test: daemon + K clients + chaos (SIGKILLs) on a fresh state dir, then verify nothing was lost.
    Soak(cli::soak::SoakArgs),
    /// One client process of `lockstore soak` (internal).
    #[command(hide = true)]
    SoakClient(cli::soak_client::SoakClientArgs),
}

fn init_logging(format: &str, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() {
    cli::setup::empty_state_dir_env_is_unset();
    let cli = Cli::parse();
    let default_filter = match cli.cmd {
        Cmd::Daemon(_) => cli::daemon::DEFAULT_LOG_FILTER,
        _ => "warn",
    };
    init_logging(&cli.log_format, default_filter);
    if !matches!(cli.cmd, Cmd::Daemon(_)) {
        cli::setup::exit_quietly_on_broken_stdout();
    }
    // Resolved and checked (ownership, modes) only by the subcommands on it.
    let state_dir = || cli::setup::state_dir(cli.state_dir.as_deref());
    let res = match cli.cmd {
        Cmd::Json(a) => cli::json::run(a),
        Cmd::Kv(a) => cli::kv::run(a),
        Cmd::Daemon(a) => state_dir().and_then(|s| cli::daemon::run(a, &s)),
        Cmd::Status(a) => state_dir().and_then(|s| cli::status::run(a, &s)),
        Cmd::Commitments(a) => state_dir().and_then(|s| cli::commitments::run(a, &s)),
        Cmd::Tasks(a) => state_dir().and_then(|s| cli::tasks::run(a, &s)),
        Cmd::Lock(a) => cli::lock::run(a),
        Cmd::Outbox(a) => state_dir().and_then(|s| cli::outbox::run(a, &s)),
        Cmd::Soak(a) => cli::soak::run(a, cli.state_dir.as_deref()),
        Cmd::SoakClient(a) => state_dir().and_then(|s| cli::soak_client::run(a, &s)),
    };
    match res {
        Ok(()) => {}
        Err(e) => {
            eprintln!("lockstore: {}", e.msg);
            std::process::exit(e.code);
        }
    }
}
