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

    /// Log format on stderr (filter with RUST_LOG, default warn).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Concurrency-safe edits of a JSON file (jq-style, JSON Pointer paths).
    Json(cli::json::JsonArgs),
    /// The delivery outbox: enqueue, list, retry, prune, deliver.
    Outbox(cli::outbox::OutboxArgs),
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
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
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let state_dir = cli
        .state_dir
        .clone()
        .unwrap_or_else(lockstore::paths::default_state_dir);
    let _ = &state_dir;
    let res = match cli.cmd {
        Cmd::Json(a) => cli::json::run(a),
        Cmd::Outbox(a) => cli::outbox::run(a, &state_dir),
    };
    match res {
        Ok(()) => {}
        Err(e) => {
            eprintln!("lockstore: {}", e.msg);
            std::process::exit(e.code);
        }
    }
}
