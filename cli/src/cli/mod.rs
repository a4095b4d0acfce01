//! Shared CLI plumbing: exit codes, error reporting, lock-wait messages.

pub mod backend;
pub mod commitments;
pub mod completions;
pub mod daemon;
pub mod json;
pub mod kv;
pub mod lock;
pub mod outbox;
pub mod setup;
pub mod soak;
pub mod soak_client;
pub mod status;
pub mod tasks;
pub mod text;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockstore::{Error, HolderInfo, LockOptions};

/// The exit-code table, shown after `lockstore --help` (README has the same).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (also --help and --version)
  1    usage error or bad input (unknown option or id, bad JSON Pointer, ...)
  2    a store is corrupt or of an unknown version (left untouched)
  3    a lock could not be acquired before the deadline
  4    other I/O or database error
  141  stdout closed early (broken pipe)
  tasks run: the command's own exit code; 128+N if it died of signal N;
             124 timeout, 125 lockstore failed, 126 cannot execute, 127 not found";

/// Exit codes of every subcommand (the table is [`EXIT_CODES_HELP`]).
pub mod exit {
    // 0: success.
    /// Usage or bad input (bad pointer, not a number, unknown id, ...).
    pub const USAGE: i32 = 1;
    /// A store is corrupt or of an unknown version (left untouched).
    pub const CORRUPT: i32 = 2;
    /// A lock could not be acquired before the deadline.
    pub const LOCK_TIMEOUT: i32 = 3;
    /// Any other I/O or database error.
    pub const IO: i32 = 4;
}

/// A CLI failure: exit code and a one-line message.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// One line for stderr, naming the file.
    pub msg: String,
}

impl CliError {
    /// Usage/bad-input error (exit 1).
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError {
            code: exit::USAGE,
            msg: msg.into(),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let code = match &e {
            // Also non-SQLite, malformed, foreign and too-new databases.
            e if e.is_corrupt() => exit::CORRUPT,
            Error::LockTimeout { .. } => exit::LOCK_TIMEOUT,
            Error::InvalidPath { .. }
            | Error::Reentrant { .. }
            | Error::Symlink { .. }
            | Error::NotRegularFile { .. }
            | Error::InsecureStateDir { .. }
            | Error::NoStateDir => exit::USAGE,
            _ => exit::IO,
        };
        CliError {
            code,
            msg: e.to_string(),
        }
    }
}

/// Result of a subcommand.
pub type CliResult<T = ()> = Result<T, CliError>;

/// How long a CLI lock wait lasts before the "Blocking waiting" line is
/// printed (cargo's threshold: a short wait prints nothing).
pub const LOCK_WAIT_NOTICE_AFTER: Duration = Duration::from_millis(100);

/// Lock options for the CLI: on a wait longer than [`LOCK_WAIT_NOTICE_AFTER`],
/// prints one cargo-style line,
/// `Blocking waiting for file lock on <path> (held by pid N <cmd>, for 12 s)`,
/// at most once per process and lock file (a `--repeat` loop or a
/// multi-store command does not repeat it).
pub fn cli_lock_options(timeout_ms: Option<u64>) -> LockOptions {
    let mut o = LockOptions::default();
    if let Some(ms) = timeout_ms {
        o.deadline = std::time::Duration::from_millis(ms);
    }
    o.on_wait_after = LOCK_WAIT_NOTICE_AFTER;
    o.on_wait = Some(Arc::new(|path: &Path, holder: Option<&HolderInfo>| {
        print_lock_wait_once(path, holder)
    }));
    o
}

/// Lock files this process already printed a wait line for.
static WAIT_NOTICED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

fn print_lock_wait_once(path: &Path, holder: Option<&HolderInfo>) {
    {
        let mut seen = match WAIT_NOTICED.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if seen.iter().any(|p| p == path) {
            return;
        }
        seen.push(path.to_path_buf());
    }
    let line = match holder {
        Some(h) => format!(
            "Blocking waiting for file lock on {} ({})\n",
            path.display(),
            h.describe()
        ),
        None => format!("Blocking waiting for file lock on {}\n", path.display()),
    };
    // One write(2) of the whole line: lines of concurrent processes sharing a
    // stderr pipe never interleave (eprintln! may write in pieces).
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Shortest id prefix the CLI resolves (git's minimum abbreviation).
pub const MIN_ID_PREFIX: usize = 4;

/// Resolves an abbreviated id, git style: the index in `ids` of the one id
/// starting with `prefix`; `Ok(None)` when no id does (or the prefix is
/// shorter than [`MIN_ID_PREFIX`]); a usage error (exit 1) listing the
/// candidates when several do. `kind` names the id in the message ("task").
pub fn resolve_prefix(kind: &str, prefix: &str, ids: &[&str]) -> CliResult<Option<usize>> {
    if prefix.chars().count() < MIN_ID_PREFIX {
        return Ok(None);
    }
    let hits: Vec<usize> = (0..ids.len())
        .filter(|&i| ids[i].starts_with(prefix))
        .collect();
    match hits.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => {
            let mut names: Vec<String> = many.iter().map(|&i| sanitize(ids[i])).collect();
            names.sort();
            Err(CliError::usage(format!(
                "{kind} id prefix {} is ambiguous; candidates: {}",
                sanitize(prefix),
                names.join(", ")
            )))
        }
    }
}

/// Replaces control characters (terminal escapes, newlines) with U+FFFD for
/// human-readable output.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Milliseconds since the Unix epoch, now (the CLI's `--now-ms` flags and
/// JSON output speak Unix ms).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// The longest duration [`parse_duration`] accepts: 100 years (36500d), so
/// `now + duration` fits every Unix-ms field.
pub const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// Parses `500ms`, `30s`, `5m`, `2h`, `30d` (a bare number is seconds); at
/// most [`MAX_DURATION_MS`] (a larger value is refused as too large, never
/// wrapped or saturated).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == std::num::IntErrorKind::PosOverflow {
            format!("duration {s:?} is too large: at most 36500d (100 years)")
        } else {
            format!("invalid duration {s:?}: expected e.g. 30s, 5m, 2h, 30d")
        }
    })?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    match n.checked_mul(ms) {
        Some(total) if total <= MAX_DURATION_MS => Ok(Duration::from_millis(total)),
        _ => Err(format!(
            "duration {s:?} is too large: at most 36500d (100 years)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn id_prefixes() {
        let ids = ["1a22f18bd01", "1a22f18bd02", "1a22f18af03"];
        assert_eq!(resolve_prefix("task", "1a22f18a", &ids).unwrap(), Some(2));
        assert_eq!(
            resolve_prefix("task", "1a22f18bd02", &ids).unwrap(),
            Some(1)
        );
        assert_eq!(resolve_prefix("task", "ffff", &ids).unwrap(), None);
        assert_eq!(
            resolve_prefix("task", "1a2", &ids).unwrap(),
            None,
            "too short"
        );
        let e = resolve_prefix("task", "1a22f18b", &ids).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(e.msg.contains("1a22f18bd01, 1a22f18bd02"), "{}", e.msg);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(
            parse_duration("36500d").unwrap().as_millis() as u64,
            MAX_DURATION_MS
        );
        for big in [
            "999999999999d",
            "36501d",
            "18446744073709551615ms",
            "99999999999999999999999s",
        ] {
            let e = parse_duration(big).unwrap_err();
            assert!(e.contains("too large"), "{big}: {e}");
        }
    }
}
