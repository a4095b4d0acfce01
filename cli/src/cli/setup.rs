//! Process setup shared by the subcommands: the state directory (resolved and
//! checked) and what a closed stdout does.

use std::path::{Path, PathBuf};

use super::CliResult;

/// The state dir: `--state-dir` / `LOCKSTORE_STATE_DIR` (clap), else the
/// library's environment resolution (`XDG_STATE_HOME`, `HOME`), then checked
/// with [`lockstore::paths::check_state_dir`] (owned by the caller or root, not
/// writable by others; `LOCKSTORE_INSECURE_STATE_DIR=1` skips it). Every
/// subcommand on the state dir goes through here — the daemon included.
pub fn state_dir(given: Option<&Path>) -> CliResult<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => lockstore::paths::default_state_dir()?,
    };
    lockstore::paths::check_state_dir(&dir)?;
    Ok(dir)
}

/// `LOCKSTORE_STATE_DIR=` (set but empty) counts as unset: clap would refuse
/// the empty value ("a value is required"). Call before parsing, while the
/// process has one thread.
pub fn empty_state_dir_env_is_unset() {
    if std::env::var_os(lockstore::paths::STATE_DIR_ENV).is_some_and(|v| v.is_empty()) {
        std::env::remove_var(lockstore::paths::STATE_DIR_ENV);
    }
}

/// Exit code when stdout is a closed pipe: 128 + SIGPIPE, what a shell
/// reports for a pipeline member killed by SIGPIPE.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// A write to a closed stdout (`lockstore outbox list | head -1`) ends the
/// process quietly with exit 141 instead of panicking ("failed printing to
/// stdout: Broken pipe", exit 101).
///
/// How: Rust ignores SIGPIPE, so a write to a closed pipe returns EPIPE and
/// `println!` panics; this panic hook recognizes exactly that panic and calls
/// `exit(141)` without printing anything (every other panic goes to the
/// previous hook). SIGPIPE itself stays ignored, so a process never dies of the
/// signal — the daemon, whose stderr may go away, must not; `main` installs the
/// hook for every subcommand except `daemon`, which keeps the default panic.
pub fn exit_quietly_on_broken_stdout() {
    let previous = std::panic::take_hook();
    let epipe = format!("(os error {})", nix::libc::EPIPE);
    std::panic::set_hook(Box::new(move |info| {
        // A formatted panic message reaches the hook as a String (a
        // literal one as &str).
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.ends_with(&epipe)) {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        previous(info)
    }));
}
