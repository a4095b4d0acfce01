//! Shipped channel adapters: `file:PATH` and `exec:CMD`.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::worker::{ChannelAdapter, Delivery};
use super::Entry;
use crate::{Error, LockOptions};

/// Why [`from_spec`] refused an adapter spec. Each variant carries the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterSpecError {
    /// `file:` without a path.
    #[error("adapter spec {spec:?}: file: needs a path (file:PATH)")]
    MissingPath {
        /// The spec given.
        spec: String,
    },
    /// `exec:` without a command (or only blanks).
    #[error("adapter spec {spec:?}: exec: needs a command (exec:CMD)")]
    MissingCommand {
        /// The spec given.
        spec: String,
    },
    /// Neither `file:` nor `exec:`.
    #[error("unknown adapter spec {spec:?}: expected file:PATH or exec:CMD")]
    UnknownKind {
        /// The spec given.
        spec: String,
    },
}

/// Parses `file:PATH` ([`FileAdapter`]) or `exec:CMD` ([`ExecAdapter`], each
/// call bounded by `exec_timeout`) into an adapter.
///
/// Errors: [`AdapterSpecError`] naming the spec and what is wrong with it.
pub fn from_spec(
    spec: &str,
    exec_timeout: Duration,
) -> Result<Box<dyn ChannelAdapter>, AdapterSpecError> {
    if let Some(p) = spec.strip_prefix("file:") {
        if p.is_empty() {
            return Err(AdapterSpecError::MissingPath { spec: spec.into() });
        }
        Ok(Box::new(FileAdapter::new(p)))
    } else if let Some(c) = spec.strip_prefix("exec:") {
        if c.trim().is_empty() {
            return Err(AdapterSpecError::MissingCommand { spec: spec.into() });
        }
        Ok(Box::new(ExecAdapter {
            command: c.to_string(),
            timeout: exec_timeout,
        }))
    } else {
        Err(AdapterSpecError::UnknownKind { spec: spec.into() })
    }
}

/// Appends one JSON line per delivered message to `PATH` (the sink),
/// deduplicated by [`Entry::delivery_key`] so a replay is safe (idempotent), and
/// every raw send attempt to `PATH.raw` (one line per `deliver` call, before
/// deduplication). Both files are written under the lockstore writer lock on
/// `PATH` (`PATH.lock`), so several processes may share a sink. The key set is
/// rebuilt by scanning the sink incrementally (the sink is the only source of
/// truth; a torn last line from a crash is skipped and terminated).
///
/// Sink line: `{"key", "id", "channel", "target", "account_id", "payload"}`;
/// raw line: `{"key", "id", "pid"}`.
///
/// Both files are opened with `O_NOFOLLOW` (a symbolic link planted at either
/// path is refused: the delivery fails with [`Error::Symlink`] as a retryable
/// error) and created mode 0600 (payloads may be private). The sink line is
/// fsynced (`fdatasync`, plus the directory when the sink is created) before
/// `deliver` returns, so the worker's ack never commits ahead of the line it
/// acknowledges. The raw log is not fsynced (it is a diagnostic).
#[derive(Debug)]
pub struct FileAdapter {
    path: PathBuf,
    raw: PathBuf,
    lock: LockOptions,
    seen: Mutex<(HashSet<String>, u64)>,
    /// The sink's writer, kept open so the lock file handle is reused across
    /// deliveries (opening it per delivery cost an open+close each time).
    writer: std::sync::OnceLock<crate::Writer>,
}

impl FileAdapter {
    /// Adapter writing to `path` and `path.raw` (created on first delivery).
    pub fn new(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let mut raw = path.clone().into_os_string();
        raw.push(".raw");
        FileAdapter {
            path,
            raw: PathBuf::from(raw),
            lock: LockOptions::default(),
            seen: Mutex::new((HashSet::new(), 0)),
            writer: std::sync::OnceLock::new(),
        }
    }

    /// The raw attempt log path (`PATH.raw`).
    pub fn raw_path(&self) -> &Path {
        &self.raw
    }

    /// Appends `line` to `path`: opened with `O_NOFOLLOW` (a symbolic link at
    /// `path` is refused, [`Error::Symlink`]), created mode 0600 (the sink
    /// holds message payloads) with its directory fsynced; with `sync`, the
    /// data is fsynced (`fdatasync`) before returning.
    fn append(path: &Path, line: &str, sync: bool) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |create: bool| {
            std::fs::OpenOptions::new()
                .create(create)
                .append(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(path)
        };
        let symlink_or = |e: std::io::Error, what: &'static str| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                Error::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                Error::io(what, path, e)
            }
        };
        let mut f = match open(false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = open(true).map_err(|e| symlink_or(e, "create"))?;
                if sync {
                    let dir = match path.parent() {
                        Some(d) if !d.as_os_str().is_empty() => d,
                        _ => Path::new("."),
                    };
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| Error::io("fsync directory", dir, e))?;
                }
                f
            }
            Err(e) => return Err(symlink_or(e, "open")),
        };
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io("append", path, e))?;
        if sync {
            f.sync_data().map_err(|e| Error::io("fsync", path, e))?;
        }
        Ok(())
    }

    fn deliver_locked(&self, e: &Entry, key: &str) -> Result<(), Error> {
        let raw = serde_json::json!({"key": key, "id": e.id, "pid": std::process::id()});
        Self::append(&self.raw, &format!("{raw}\n"), false)?;
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, offset) = &mut *g;
        // Read what other processes appended since our last scan.
        let mut tail = Vec::new();
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&self.path)
        };
        match opened {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(*offset))
                    .and_then(|_| f.read_to_end(&mut tail))
                    .map_err(|er| Error::io("read", &self.path, er))?;
            }
            Err(er) if er.kind() == std::io::ErrorKind::NotFound => {}
            Err(er) if er.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(Error::Symlink {
                    path: self.path.clone(),
                })
            }
            Err(er) => return Err(Error::io("open", &self.path, er)),
        }
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in tail[..complete].split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                if let Some(k) = v.get("key").and_then(|k| k.as_str()) {
                    seen.insert(k.to_string());
                }
            }
        }
        *offset += complete as u64;
        let torn = complete < tail.len();
        if seen.contains(key) {
            return Ok(());
        }
        let line = serde_json::json!({
            "key": key, "id": e.id, "channel": e.channel, "target": e.target,
            "account_id": e.account_id, "payload": e.payload,
        });
        // A torn line (crash mid-append) is terminated so it cannot swallow ours.
        let text = format!("{}{line}\n", if torn { "\n" } else { "" });
        Self::append(&self.path, &text, true)?;
        *offset += tail.len() as u64 - complete as u64 + text.len() as u64;
        seen.insert(key.to_string());
        Ok(())
    }
}

impl ChannelAdapter for FileAdapter {
    fn deliver(&self, e: &Entry) -> Delivery {
        let key = e.delivery_key();
        let r: Result<(), Error> = match self.writer.get() {
            Some(w) => w.run(|_| self.deliver_locked(e, &key)),
            None => crate::Writer::open(&self.path, self.lock.clone()).and_then(|w| {
                let w = self.writer.get_or_init(|| w);
                w.run(|_| self.deliver_locked(e, &key))
            }),
        };
        match r {
            Ok(()) => Delivery::Delivered,
            Err(er) => Delivery::Retry {
                error: er.to_string(),
                retry_after: None,
            },
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// stderr texts that make a non-zero, non-75 exit retryable (case-insensitive).
pub(crate) const EXEC_RETRY_PATTERNS: &[&str] = &[
    "timeout",
    "timed out",
    "temporarily",
    "try again",
    "rate limit",
    "too many requests",
    "connection reset",
    "connection refused",
    "econnreset",
    "econnrefused",
    "etimedout",
    "network is unreachable",
    "service unavailable",
];

/// At most this much of an exec command's stderr is kept (the error text).
const EXEC_STDERR_MAX: usize = 64 * 1024;

/// After an exec command ended (and its group was killed), how long the
/// adapter waits for the end of its stderr.
const EXEC_STDERR_DRAIN: Duration = Duration::from_secs(1);

/// Runs `sh -c CMD` per delivery with the payload JSON on stdin and env
/// `LOCKSTORE_IDEMPOTENCY_KEY` (the [`Entry::delivery_key`]),
/// `LOCKSTORE_OUTBOX_ID`, `LOCKSTORE_CHANNEL`, `LOCKSTORE_TARGET`,
/// `LOCKSTORE_ACCOUNT_ID`. Exit 0 = delivered, 75 (EX_TEMPFAIL) = retry, other =
/// permanent unless stderr reads as transient (`timeout`, `temporarily`,
/// `try again`, `rate limit`, `connection reset`... — docs/outbox.md).
///
/// The command runs in its own process group ([`crate::child`]). After the
/// timeout the whole group is killed (`SIGKILL`: the shell and everything it
/// started) → `unknown` (the command may have sent). When the shell exits,
/// whatever it left running in its group is killed too, and stderr is read
/// for at most 1 s more (a process that left the group with `setsid` and holds
/// the pipe is not waited for); the first 64 KiB of stderr are kept. Not
/// idempotent: a claim whose send started and whose worker died becomes
/// `unknown`.
#[derive(Debug)]
pub struct ExecAdapter {
    /// The shell command.
    pub command: String,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl ChannelAdapter for ExecAdapter {
    fn deliver(&self, e: &Entry) -> Delivery {
        let payload = e
            .payload
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "null".into());
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .env("LOCKSTORE_IDEMPOTENCY_KEY", e.delivery_key())
            .env("LOCKSTORE_OUTBOX_ID", e.id.to_string())
            .env("LOCKSTORE_CHANNEL", &e.channel)
            .env("LOCKSTORE_TARGET", &e.target)
            .env(
                "LOCKSTORE_ACCOUNT_ID",
                e.account_id.as_deref().unwrap_or(""),
            )
            .env_remove("LOCKSTORE_FAILPOINT")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let deadline = Instant::now() + self.timeout;
        let mut child = match crate::child::spawn_group(&mut cmd) {
            Ok(c) => c,
            Err(er) => {
                return Delivery::Retry {
                    error: format!("cannot run sh -c {:?}: {er}", self.command),
                    retry_after: None,
                }
            }
        };
        // The pipes are served by helper threads that are never joined: a
        // process that left the group (setsid) may hold them open after the
        // command ended, and the send must not wait for it.
        if let Some(mut s) = child.child_mut().stdin.take() {
            std::thread::spawn(move || {
                let _ = s.write_all(payload.as_bytes());
            });
        }
        let stderr_text = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let (eof_tx, eof_rx) = std::sync::mpsc::channel::<()>();
        if let Some(mut s) = child.child_mut().stderr.take() {
            let buf = stderr_text.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                            let room = EXEC_STDERR_MAX.saturating_sub(b.len());
                            b.extend_from_slice(&chunk[..n.min(room)]);
                        }
                        Err(er) if er.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = eof_tx.send(());
            });
        }
        let ended = child.wait(Some(deadline), &|| None, Duration::ZERO);
        // The send is over: end what the command left running in its group
        // (a background job would otherwise keep the stderr pipe open).
        let _ = child.signal_group(nix::sys::signal::Signal::SIGKILL);
        let _ = eof_rx.recv_timeout(EXEC_STDERR_DRAIN);
        let err = {
            let b = stderr_text.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&b).trim().to_string()
        };
        let status = match ended {
            Ok(crate::child::Ended::Exited(s)) => s,
            Ok(_) => {
                return Delivery::Unknown {
                    error: format!(
                        "exec timed out after {} ms; its process group was killed",
                        self.timeout.as_millis()
                    ),
                }
            }
            Err(er) => {
                return Delivery::Unknown {
                    error: format!("waiting for sh -c {:?}: {er}", self.command),
                }
            }
        };
        if status.success() {
            return Delivery::Delivered;
        }
        let code = status.code();
        let error = format!(
            "exec exited with {}{}{}",
            code.map_or("a signal".to_string(), |c| format!("status {c}")),
            if err.is_empty() { "" } else { ": " },
            err
        );
        let low = err.to_lowercase();
        if code == Some(75) || EXEC_RETRY_PATTERNS.iter().any(|p| low.contains(p)) {
            Delivery::Retry {
                error,
                retry_after: None,
            }
        } else {
            Delivery::Permanent { error }
        }
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn send_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }
}
