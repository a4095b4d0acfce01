//! Where stores live: the state directory and the per-store paths under it.
//!
//! State dir resolution (every CLI subcommand): `--state-dir DIR`, else
//! `$LOCKSTORE_STATE_DIR`, else `$XDG_STATE_HOME/lockstore`, else
//! `~/.local/state/lockstore` (the XDG Base Directory default for state). An
//! empty variable counts as unset; with none of the three set there is no
//! state dir ([`Error::NoStateDir`]) — never one relative to the working
//! directory.
//!
//! Ownership rule ([`check_state_dir`], OpenSSH's `StrictModes` applied to the
//! state dir): the state dir, every directory above it and every store
//! directory in it (`commitments/`, `tasks/`, `outbox/`) must be owned by the
//! caller (effective uid) or root and not writable by group or others unless
//! the sticky bit is set (`/tmp`); a store directory must not be a symbolic
//! link. Otherwise another local user could swap a store directory for a link
//! into her own directory and the caller's writes (root's, for a system
//! daemon) would land there. `LOCKSTORE_INSECURE_STATE_DIR=1` skips the check.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "LOCKSTORE_STATE_DIR";

/// Environment variable that, set to `1`, skips [`check_state_dir`].
pub const INSECURE_STATE_DIR_ENV: &str = "LOCKSTORE_INSECURE_STATE_DIR";

/// The store directories [`check_state_dir`] checks inside a state dir.
const STORE_DIRS: [&str; 3] = ["commitments", "tasks", "outbox"];

/// The state dir from the environment: `LOCKSTORE_STATE_DIR`, else
/// `$XDG_STATE_HOME/lockstore`, else `$HOME/.local/state/lockstore` (an empty
/// variable counts as unset).
///
/// Errors: [`Error::NoStateDir`] when all three are unset or empty.
pub fn default_state_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(STATE_DIR_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d).join("lockstore"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h).join(".local/state/lockstore"));
    }
    Err(Error::NoStateDir)
}

/// Checks that no other local user can change the state dir `state` or its
/// store directories (the rule in the module docs). Missing directories are
/// fine (lockstore creates them 0700); nothing is created or changed.
/// `LOCKSTORE_INSECURE_STATE_DIR=1` skips the check (logged at warn).
///
/// Errors: [`Error::InsecureStateDir`] naming the directory, what is wrong and
/// the fix (`chmod go-w DIR`, `chown UID DIR`, remove the link);
/// [`Error::Io`] if a directory cannot be examined.
pub fn check_state_dir(state: impl AsRef<Path>) -> Result<()> {
    let state = state.as_ref();
    if std::env::var_os(INSECURE_STATE_DIR_ENV).is_some_and(|v| v == "1") {
        tracing::warn!(path = %state.display(), "{INSECURE_STATE_DIR_ENV}=1: state directory ownership and permissions not checked");
        return Ok(());
    }
    let euid = nix::unistd::geteuid().as_raw();
    // The state dir (or its nearest existing ancestor), links resolved, and
    // every directory above it.
    let mut existing = state.to_path_buf();
    let canon = loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match existing.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(p) => existing = p.to_path_buf(),
                    None => existing = PathBuf::from("."),
                }
            }
            Err(e) => return Err(Error::io("resolve", &existing, e)),
        }
    };
    for dir in canon.ancestors() {
        let m = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
        check_dir_meta(dir, &m, euid)?;
    }
    for sub in STORE_DIRS {
        let dir = state.join(sub);
        let m = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &dir, e)),
        };
        if m.file_type().is_symlink() {
            return Err(Error::InsecureStateDir {
                reason: "the store directory is a symbolic link".into(),
                fix: format!(
                    "remove the link ({}) and move its files into a real directory",
                    dir.display()
                ),
                path: dir,
            });
        }
        if !m.is_dir() {
            return Err(Error::NotRegularFile {
                kind: crate::atomic::kind_name(&m.file_type()),
                path: dir,
            });
        }
        check_dir_meta(&dir, &m, euid)?;
    }
    Ok(())
}

/// One directory of the rule: owner `euid` or root; not group/world-writable
/// unless sticky.
fn check_dir_meta(dir: &Path, m: &std::fs::Metadata, euid: u32) -> Result<()> {
    if m.uid() != euid && m.uid() != 0 {
        return Err(Error::InsecureStateDir {
            path: dir.to_path_buf(),
            reason: format!(
                "owned by uid {}, not by the caller (uid {euid}) or root",
                m.uid()
            ),
            fix: format!("chown {euid} {}", dir.display()),
        });
    }
    let mode = m.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(Error::InsecureStateDir {
            path: dir.to_path_buf(),
            reason: format!(
                "writable by {who} (mode {:04o}) without the sticky bit",
                mode & 0o7777
            ),
            fix: format!("chmod go-w {}", dir.display()),
        });
    }
    Ok(())
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
