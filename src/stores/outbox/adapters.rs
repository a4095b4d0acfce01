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

    fn append(path: &Path, line: &str) -> Result<(), Error> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io("append", path, e))
    }

    fn deliver_locked(&self, e: &Entry, key: &str) -> Result<(), Error> {
        let raw = serde_json::json!({"key": key, "id": e.id, "pid": std::process::id()});
        Self::append(&self.raw, &format!("{raw}\n"))?;
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, offset) = &mut *g;
        // Read what other processes appended since our last scan.
        let mut tail = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(*offset))
                    .and_then(|_| f.read_to_end(&mut tail))
                    .map_err(|er| Error::io("read", &self.path, er))?;
            }
            Err(er) if er.kind() == std::io::ErrorKind::NotFound => {}
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
        Self::append(&self.path, &text)?;
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

/// Runs `sh -c CMD` per delivery with the payload JSON on stdin and env
/// `LOCKSTORE_IDEMPOTENCY_KEY` (the [`Entry::delivery_key`]),
/// `LOCKSTORE_OUTBOX_ID`, `LOCKSTORE_CHANNEL`, `LOCKSTORE_TARGET`,
/// `LOCKSTORE_ACCOUNT_ID`. Exit 0 = delivered, 75 (EX_TEMPFAIL) = retry, other =
/// permanent unless stderr reads as transient (`timeout`, `temporarily`, `try again`, `rate limit`, `connection reset`... — docs/outbox.md); killed after the
/// timeout → `unknown` (the command may have sent). Not idempotent: a claim
/// whose send started and whose worker died becomes `unknown`.
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
        let child = Command::new("sh")
            .arg("-c")
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
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(er) => {
                return Delivery::Retry {
                    error: format!("cannot run sh -c {:?}: {er}", self.command),
                    retry_after: None,
                }
            }
        };
        let stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(mut s) = stdin {
                let _ = s.write_all(payload.as_bytes());
            }
        });
        let mut stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.take(64 * 1024).read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        let _ = writer.join();
        let err = reader.join().unwrap_or_default();
        let err = err.trim().to_string();
        match status {
            None => Delivery::Unknown {
                error: format!("exec timed out after {} ms", self.timeout.as_millis()),
            },
            Some(s) if s.success() => Delivery::Delivered,
            Some(s) => {
                let code = s.code();
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
        }
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn send_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }
}
