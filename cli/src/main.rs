//! `lockstore`: the CLI and daemon on one state directory.

mod cli;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Crash-safe, lost-update-free state files: CLI and daemon.
#[derive(Parser, Debug)]
#[command(name = "lockstore", version, about, after_help = cli::EXIT_CODES_HELP)]
struct Cli {
    /// State directory (default: $LOCKSTORE_STATE_DIR, else $XDG_STATE_HOME/lockstore, else ~/.local/state/lockstore).
    #[arg(
        long,
        global = true,
        env = "LOCKSTORE_STATE_DIR",
        hide_env_values = true
    )]
    state_dir: Option<PathBuf>,

    /// PostgreSQL database for the task ledger and the outbox, shared by several hosts (postgres://user@host/db; default: the SQLite files of the state dir; JSON stores stay per host).
    #[arg(
        long,
        global = true,
        env = "LOCKSTORE_DATABASE_URL",
        hide_env_values = true,
        value_parser = cli::backend::parse_url
    )]
    database_url: Option<String>,

    /// Log format on stderr (level filter: RUST_LOG, else warn; the daemon also logs its startup and its components' lifecycle at info).
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(cli::completions::CompletionsArgs),
    /// Print the man page (roff) on stdout, or write one page per command into --out DIR.
    Man(cli::completions::ManArgs),
}

/// Whether stderr gets ANSI colours: only on a terminal, never with
/// `NO_COLOR` set to a non-empty value (<https://no-color.org>).
fn stderr_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

fn init_logging(format: &str, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(stderr_colour())
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() {
    cli::setup::empty_state_dir_env_is_unset();
    // Usage errors exit 1 (the shared exit table), not clap's 2, which is
    // lockstore's "corrupt store"; --help and --version print on stdout, exit 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { cli::exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let default_filter = match cli.cmd {
        Cmd::Daemon(_) => cli::daemon::DEFAULT_LOG_FILTER,
        _ => "warn",
    };
    init_logging(&cli.log_format, default_filter);
    cli::backend::set_url(cli.database_url.clone());
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
        Cmd::Completions(a) => cli::completions::completions(a, &mut Cli::command()),
        Cmd::Man(a) => cli::completions::man(a, Cli::command()),
    };
    match res {
        Ok(()) => {}
        Err(e) => {
            eprintln!("lockstore: {}", e.msg);
            std::process::exit(e.code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible argument and subcommand of `cmd` and below that lacks a
    /// help line, shows its default twice, or would show an env var's value.
    fn help_problems(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = a
                .get_help()
                .or(a.get_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if help.trim().is_empty() {
                out.push(format!("{path} {id}: no help text"));
            }
            let shows_default =
                !a.get_default_values().is_empty() && !a.is_hide_default_value_set();
            if shows_default && help.contains("default") && help.contains(['(', '[']) {
                let d = a.get_default_values()[0].to_string_lossy().into_owned();
                if help.contains(&format!("default {d}")) || help.contains(&format!("default: {d}"))
                {
                    out.push(format!("{path} {id}: default {d} shown twice"));
                }
            }
            if a.get_env().is_some() && !a.is_hide_env_values_set() {
                out.push(format!("{path} {id}: env value shown (hide_env_values)"));
            }
        }
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if s.get_name() == "help" {
                continue;
            }
            let sub = format!("{path} {}", s.get_name());
            if s.get_about().is_none() && s.get_long_about().is_none() {
                out.push(format!("{sub}: no about text"));
            }
            help_problems(s, &sub, out);
        }
    }

    #[test]
    fn every_argument_has_help_and_defaults_show_once() {
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut problems = Vec::new();
        help_problems(&cmd, "lockstore", &mut problems);
        assert!(
            problems.is_empty(),
            "{} help problems:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}
