//! Where stores live: the state directory and the per-store paths under it.
//!
//! State dir resolution (every CLI subcommand): `--state-dir DIR`, else
//! `$LOCKSTORE_STATE_DIR`, else `$XDG_STATE_HOME/lockstore`, else
//! `~/.local/state/lockstore` (the XDG Base Directory default for state).

use std::path::{Path, PathBuf};

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "LOCKSTORE_STATE_DIR";

/// The state dir from the environment (`LOCKSTORE_STATE_DIR`, then XDG), or
/// `./.lockstore` when not even `HOME` is set.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(STATE_DIR_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("lockstore");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/lockstore");
    }
    PathBuf::from(".lockstore")
}

/// `<state>/commitments/commitments.json`.
pub fn commitments_file(state: impl AsRef<Path>) -> PathBuf {
    state.as_ref().join("commitments").join("commitments.json")
}

/// `<state>/tasks/runs.sqlite`.
pub fn tasks_db(state: impl AsRef<Path>) -> PathBuf {
    state.as_ref().join("tasks").join("runs.sqlite")
}

/// `<state>/outbox/outbox.sqlite`.
pub fn outbox_db(state: impl AsRef<Path>) -> PathBuf {
    state.as_ref().join("outbox").join("outbox.sqlite")
}

/// `<state>/daemon.lock`.
pub fn daemon_lock(state: impl AsRef<Path>) -> PathBuf {
    state.as_ref().join("daemon.lock")
}
