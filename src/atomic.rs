//! Crash-safe atomic file save.
//!
//! [`write_atomic`] serializes nothing itself: it takes the finished bytes, writes
//! them to a temp file in the same directory named `.<file>.<pid>.<random>.tmp`,
//! sets mode 0600 regardless of umask, writes all bytes, fsyncs the file, renames
//! it over the target and fsyncs the directory ([`Durability::Full`]). A reader
//! that opens the path at any moment sees either the whole old file or the whole
//! new one, so readers need no lock. (`tempfile::NamedTempFile::persist` alone
//! does not fsync.)
//!
//! Symlink policy: the store file itself must not be a symbolic link; writes (and
//! reads through [`read_file`]) refuse one with [`Error::Symlink`]. The directory
//! may be reached through links: the writer canonicalizes it.
//!
//! File types: the store path must be a regular file or absent. A directory,
//! FIFO, character or block device or socket is refused with
//! [`Error::NotRegularFile`] before any blocking open (`lstat` first, then
//! `open(O_NONBLOCK|O_NOFOLLOW)` and `fstat` on the descriptor, so a file
//! swapped in between is caught too). Reads are bounded by the size `fstat`
//! reported plus [`READ_SLACK`]; a file that grows past that is refused with
//! [`Error::FileGrew`] (a FIFO could not hang a reader, `/dev/zero` could not
//! fill memory).
//!
//! Ownership: a save replaces the file by a new inode. When the process runs
//! as root (euid 0) and the file exists, the temp file gets the old file's
//! owner, group and permission bits (`fchown` + `fchmod` before the rename), so
//! `sudo lockstore json set ~alice/x.json ...` leaves the file alice's.
//! Otherwise a save writes mode 0600 (a non-root process cannot give a file
//! away).
//!
//! Failpoints: for crash tests, setting `LOCKSTORE_FAILPOINT` to
//! `after_temp_write`, `before_fsync`, `after_rename` or `before_dir_fsync`
//! makes the process abort at that point (checked once per process).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How durable a save must be before it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Survives power loss: fsync the temp file before the rename and the
    /// directory after it. The default.
    #[default]
    Full,
    /// Survives a process crash only: no fsync (the kernel's page cache holds the
    /// new file; a power loss may lose the last saves, never corrupt the file).
    Process,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "process" => Ok(Durability::Process),
            _ => Err(format!(
                "unknown durability {s:?} (expected full or process)"
            )),
        }
    }
}

/// Splits a store path into (directory, file name).
pub(crate) fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    let name = path.file_name().ok_or(Error::InvalidPath {
        path: path.to_path_buf(),
        reason: "no file name",
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// Prefix of temp files written by `pid` for the store file `name`.
fn temp_prefix(name: &std::ffi::OsStr, pid: u32) -> String {
    format!(".{}.{}.", name.to_string_lossy(), pid)
}

/// How far past its `fstat` size a file may grow while [`read_file`] reads it
/// before the read is refused with [`Error::FileGrew`] (64 KiB).
pub(crate) const READ_SLACK: u64 = 64 * 1024;

/// What a non-regular file type is, for [`Error::NotRegularFile`].
pub(crate) fn kind_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// `lstat`s `path`: `Ok(None)` if it does not exist, its metadata if it is a
/// regular file.
///
/// Errors: [`Error::Symlink`] for a symbolic link, [`Error::NotRegularFile`]
/// for a directory, FIFO, device or socket, [`Error::Io`] if `lstat` fails.
pub(crate) fn regular_or_absent(path: &Path) -> Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(m) if !m.file_type().is_file() => Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: kind_name(&m.file_type()),
        }),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Opens `path` with `opts` plus `O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK` (a FIFO
/// never blocks the open) and checks with `fstat` that the descriptor is a
/// regular file. `Ok(None)` if it does not exist (and `opts` does not create).
///
/// Errors: [`Error::Symlink`] (ELOOP), [`Error::NotRegularFile`],
/// [`Error::Io`] naming `op`.
pub(crate) fn open_regular(
    path: &Path,
    opts: &mut std::fs::OpenOptions,
    op: &'static str,
) -> Result<Option<(std::fs::File, std::fs::Metadata)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = opts
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(Error::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io(op, path, e)),
    };
    let m = f.metadata().map_err(|e| Error::io("fstat", path, e))?;
    if !m.file_type().is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: kind_name(&m.file_type()),
        });
    }
    Ok(Some((f, m)))
}

/// Reads at most `size + READ_SLACK` bytes of `f`.
///
/// Errors: [`Error::FileGrew`] past that bound, [`Error::Io`].
pub(crate) fn read_bounded(f: &std::fs::File, size: u64, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let bound = size.saturating_add(READ_SLACK);
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 26));
    f.take(bound.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    if buf.len() as u64 > bound {
        return Err(Error::FileGrew {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(buf)
}

/// Reads the whole file; `Ok(None)` if it does not exist.
///
/// Errors: [`Error::Symlink`] if the path is a symbolic link,
/// [`Error::NotRegularFile`] for a directory, FIFO, device or socket (never
/// opened blocking), [`Error::FileGrew`] if it grows past its size while being
/// read, [`Error::Io`].
pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    if regular_or_absent(path)?.is_none() {
        return Ok(None);
    }
    let Some((f, m)) = open_regular(path, std::fs::OpenOptions::new().read(true), "open")? else {
        return Ok(None);
    };
    read_bounded(&f, m.len(), path).map(Some)
}

/// As root, gives `tmp` the owner, group and permission bits of `old` (the file
/// it replaces). Does nothing for any other euid.
fn keep_ownership(tmp: &std::fs::File, tmp_path: &Path, old: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::fchown(tmp, Some(old.uid()), Some(old.gid()))
        .map_err(|e| Error::io("chown", tmp_path, e))?;
    // Permission bits only: never carry set-uid/set-gid/sticky to a new inode.
    tmp.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o777))
        .map_err(|e| Error::io("chmod", tmp_path, e))
}

/// fsyncs a directory so a rename inside it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Atomically replaces `path` with `bytes` (see the module docs).
///
/// Errors: [`Error::Symlink`], [`Error::NotRegularFile`] (the path is a
/// directory, FIFO, device or socket), [`Error::InvalidPath`], [`Error::Io`]
/// (ENOSPC, EFBIG, ...). On any error the old file is intact and the temp file
/// removed.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8], durability: Durability) -> Result<()> {
    let path = path.as_ref();
    let (dir, name) = split(path)?;
    let old = regular_or_absent(path)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(name, std::process::id()))
        .suffix(".tmp")
        .rand_bytes(8)
        .tempfile_in(dir)
        .map_err(|e| Error::io("create temp file in", dir, unwrap_os_error(e)))?;
    let tmp_path: PathBuf = tmp.path().to_path_buf();
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", &tmp_path, e))?;
    if let Some(old) = &old {
        keep_ownership(tmp.as_file(), &tmp_path, old)?;
    }
    // Through the File itself: NamedTempFile's own Write wraps the error in a
    // path-carrying error whose raw_os_error() is None (is_no_space() would lie).
    tmp.as_file_mut()
        .write_all(bytes)
        .map_err(|e| Error::io("write", &tmp_path, e))?;
    crate::failpoint::hit("after_temp_write");
    if durability == Durability::Full {
        crate::failpoint::hit("before_fsync");
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io("fsync", &tmp_path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| Error::io("rename temp file over", path, e.error))?;
    crate::failpoint::hit("after_rename");
    if durability == Durability::Full {
        crate::failpoint::hit("before_dir_fsync");
        fsync_dir(dir)?;
    }
    Ok(())
}

/// tempfile wraps creation errors in an error that names the path; the OS
/// error code is inside it. Returns an error with the code at the top so
/// [`Error::is_no_space`] and friends see it (our own error carries the path).
fn unwrap_os_error(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    let code = e
        .get_ref()
        .and_then(|inner| std::error::Error::source(inner).or(Some(inner)))
        .and_then(|src| src.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error);
    match code {
        Some(c) => std::io::Error::from_raw_os_error(c),
        None => e,
    }
}

/// Removes temp files left in the store's directory by process `pid` (a crashed
/// holder). Returns how many were removed. Errors are logged, not returned.
pub(crate) fn remove_orphan_temps(path: &Path, pid: u32) -> usize {
    let Ok((dir, name)) = split(path) else {
        return 0;
    };
    let prefix = temp_prefix(name, pid);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for ent in rd.flatten() {
        let f = ent.file_name();
        let f = f.to_string_lossy();
        if f.starts_with(&prefix) && f.ends_with(".tmp") {
            match std::fs::remove_file(ent.path()) {
                Ok(()) => {
                    n += 1;
                    tracing::info!(path = %ent.path().display(), "removed orphaned temp file of crashed writer pid {pid}");
                }
                Err(e) => {
                    tracing::warn!(path = %ent.path().display(), error = %e, "could not remove orphaned temp file")
                }
            }
        }
    }
    n
}

/// Lists temp files of any process for the store `path` (lockstore's tests;
/// feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub fn temp_files(path: &Path) -> Vec<PathBuf> {
    let Ok((dir, name)) = split(path) else {
        return Vec::new();
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let f = e.file_name();
                    let f = f.to_string_lossy();
                    f.starts_with(&prefix) && f.ends_with(".tmp")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_0600_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one", Durability::Full).unwrap();
        write_atomic(&p, b"two", Durability::Process).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(temp_files(&p).is_empty());
    }

    #[test]
    fn refuses_symlink() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.json");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            write_atomic(&link, b"y", Durability::Full),
            Err(Error::Symlink { .. })
        ));
        assert!(matches!(read_file(&link), Err(Error::Symlink { .. })));
        assert_eq!(std::fs::read(&real).unwrap(), b"x");
    }

    #[test]
    fn orphan_cleanup_removes_only_that_pid() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        std::fs::write(d.path().join(".s.json.4242.abcd.tmp"), b"").unwrap();
        std::fs::write(d.path().join(".s.json.4243.abcd.tmp"), b"").unwrap();
        assert_eq!(remove_orphan_temps(&p, 4242), 1);
        assert_eq!(temp_files(&p).len(), 1);
    }
}
