//! SQLite store helpers shared by the task ledger and the outbox.
//!
//! Conventions (SQLite docs: "Write-Ahead Logging", "PRAGMA", "BEGIN
//! TRANSACTION"):
//! * The directory is created 0700; the database file is chmod-ed 0600 right
//!   after SQLite creates it and before the WAL exists — SQLite creates `-wal` and
//!   `-shm` with the database file's permissions. lockstore never opens, closes or
//!   locks a `.db`/`-wal`/`-shm` file with std::fs while connections are live
//!   (closing any fd of a file drops the process's POSIX locks on it, which is how
//!   SQLite locks), it only chmods by path.
//! * Per connection: `journal_mode=WAL` (read back and verified — a misspelled or
//!   refused pragma silently does nothing), `synchronous=FULL` for
//!   [`Durability::Full`] and `NORMAL` for [`Durability::Process`],
//!   `foreign_keys=ON` (verified), and an explicit busy timeout (default 5 s).
//! * Every write transaction is `BEGIN IMMEDIATE` ([`immediate`]): a deferred
//!   transaction that reads and then writes gets `SQLITE_BUSY_SNAPSHOT` at once
//!   whatever the timeout. On BUSY the whole unit is rolled back and retried with
//!   backoff until a deadline.
//! * Migrations are keyed on `PRAGMA user_version` and applied in one
//!   transaction; a database newer than the binary is refused
//!   ([`Error::SchemaTooNew`]).
//! * If SQLite cannot open the file, the error names it; there is never a fallback
//!   to an in-memory database.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::atomic::Durability;
use crate::error::{Error, Result};

/// Options for [`open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// fsync policy: `Full` → `synchronous=FULL`, `Process` → `NORMAL`.
    pub durability: Durability,
    /// SQLite's own busy timeout per statement. Default 5 s.
    pub busy_timeout: Duration,
    /// Total time [`immediate`] keeps retrying a unit that hit BUSY. Default 30 s.
    pub retry_deadline: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(30),
        }
    }
}

/// True for SQLITE_BUSY and SQLITE_LOCKED (including extended codes such as
/// BUSY_SNAPSHOT).
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn sidecars(path: &Path) -> [PathBuf; 2] {
    let mut w = path.as_os_str().to_os_string();
    w.push("-wal");
    let mut s = path.as_os_str().to_os_string();
    s.push("-shm");
    [PathBuf::from(w), PathBuf::from(s)]
}

fn chmod_0600(p: &Path) -> Result<()> {
    match std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("chmod", p, e)),
    }
}

/// Opens (creating if needed) the database at `path`, applies the connection
/// conventions above and runs `migrations` (`migrations[i]` takes the schema from
/// user_version `i` to `i + 1`, as one SQL batch).
///
/// Errors: [`Error::InvalidPath`] for an empty or `:memory:` path,
/// [`Error::Sqlite`] naming the file (cannot open, WAL refused, ...),
/// [`Error::SchemaTooNew`], [`Error::Io`].
pub fn open(path: &Path, opts: &SqliteOptions, migrations: &[&str]) -> Result<Connection> {
    // Two processes creating the same database at once can see SQLITE_BUSY
    // while one switches it to WAL; retry the whole open within the deadline.
    let deadline = Instant::now() + opts.retry_deadline;
    let mut attempt: u32 = 0;
    loop {
        match open_once(path, opts, migrations) {
            Err(e) if e.is_busy() && Instant::now() < deadline => {
                attempt += 1;
                tracing::debug!(path = %path.display(), attempt, "database busy while opening; retrying");
                std::thread::sleep(Duration::from_millis(1 << attempt.min(6)));
            }
            r => return r,
        }
    }
}

fn open_once(path: &Path, opts: &SqliteOptions, migrations: &[&str]) -> Result<Connection> {
    let s = path.as_os_str();
    if s.is_empty() || s == ":memory:" || s.to_string_lossy().starts_with("file:") {
        return Err(Error::InvalidPath {
            path: path.to_path_buf(),
            reason: "a SQLite store needs a file path (no in-memory or URI databases)",
        });
    }
    let (dir, _) = crate::atomic::split(path)?;
    crate::lock::ensure_dir(dir)?;
    crate::lock::fs_check::check_dir(dir)?;
    let existed = path.exists();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("cannot open SQLite database (check that the directory is writable and the file is a SQLite database)", path, e))?;
    let q = |e| Error::sqlite("configure", path, e);
    conn.busy_timeout(opts.busy_timeout).map_err(q)?;
    // Force creation of the file so its mode can be set before -wal/-shm exist.
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| Error::sqlite("read (is it a SQLite database?)", path, e))?;
    if !existed {
        chmod_0600(path)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(q)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::sqlite(
            "enable WAL",
            path,
            rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode:?}, expected \"wal\""
            )),
        ));
    }
    let sync = match opts.durability {
        Durability::Full => "FULL",
        Durability::Process => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
    ))
    .map_err(q)?;
    let fk: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .map_err(q)?;
    if fk != 1 {
        return Err(Error::sqlite(
            "enable foreign keys",
            path,
            rusqlite::Error::InvalidParameterName("foreign_keys did not turn on".into()),
        ));
    }
    migrate(&conn, path, opts, migrations)?;
    for p in sidecars(path) {
        chmod_0600(&p)?;
    }
    Ok(conn)
}

fn migrate(
    conn: &Connection,
    path: &Path,
    opts: &SqliteOptions,
    migrations: &[&str],
) -> Result<()> {
    let target = migrations.len() as i64;
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read user_version", path, e))?;
    if current > target {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: current,
            supported: target,
        });
    }
    if current == target {
        return Ok(());
    }
    immediate(conn, path, opts, |tx| {
        // Re-read inside the write lock: another process may have migrated.
        let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if v > target {
            return Ok(());
        }
        for (i, m) in migrations.iter().enumerate().skip(v as usize) {
            tx.execute_batch(m)?;
            tx.execute_batch(&format!("PRAGMA user_version={}", i + 1))?;
        }
        Ok(())
    })?;
    let after: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read user_version", path, e))?;
    if after > target {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: after,
            supported: target,
        });
    }
    tracing::info!(path = %path.display(), from = current, to = target, "migrated schema");
    Ok(())
}

/// Sleeps before retry number `attempt` (1-based) of a unit that hit BUSY:
/// capped exponential backoff, 1–50 ms, plus up to 100 % jitter.
pub fn busy_pause(attempt: u32) {
    let ms = (1u64 << attempt.saturating_sub(1).min(6)).min(50);
    std::thread::sleep(Duration::from_millis(ms + fastrand::u64(0..=ms)));
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits it. If any step
/// (BEGIN, `f`, COMMIT) fails with BUSY/LOCKED, the transaction is rolled back and
/// the whole unit retried with capped exponential backoff plus jitter until
/// `opts.retry_deadline`. `f` must therefore be free of side effects outside the
/// transaction. Any other error rolls back and is returned.
///
/// Errors: [`Error::Sqlite`] naming `path` (the last BUSY after the deadline, or
/// the first other failure).
pub fn immediate<T, F>(conn: &Connection, path: &Path, opts: &SqliteOptions, mut f: F) -> Result<T>
where
    F: FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
{
    let deadline = Instant::now() + opts.retry_deadline;
    let mut attempt: u32 = 0;
    loop {
        let r = (|| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let v = f(&tx)?;
            tx.commit()?;
            Ok(v)
        })();
        match r {
            Ok(v) => return Ok(v),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                attempt += 1;
                tracing::debug!(path = %path.display(), attempt, "database busy; retrying transaction");
                busy_pause(attempt);
            }
            Err(e) => return Err(Error::sqlite("transaction", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const M: &[&str] = &["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"];

    #[test]
    fn opens_wal_0600_and_migrates() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.sqlite");
        let c = open(&p, &SqliteOptions::default(), M).unwrap();
        immediate(&c, &p, &SqliteOptions::default(), |tx| {
            tx.execute("INSERT INTO t(v) VALUES ('a')", [])
        })
        .unwrap();
        for f in [p.clone(), sidecars(&p)[0].clone(), sidecars(&p)[1].clone()] {
            assert_eq!(
                std::fs::metadata(&f).unwrap().mode() & 0o777,
                0o600,
                "{}",
                f.display()
            );
        }
        assert_eq!(
            std::fs::metadata(p.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn refuses_newer_schema_and_memory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        let c = open(&p, &SqliteOptions::default(), M).unwrap();
        c.execute_batch("PRAGMA user_version=9").unwrap();
        drop(c);
        assert!(matches!(
            open(&p, &SqliteOptions::default(), M),
            Err(Error::SchemaTooNew { found: 9, .. })
        ));
        assert!(matches!(
            open(Path::new(":memory:"), &SqliteOptions::default(), M),
            Err(Error::InvalidPath { .. })
        ));
    }

    #[test]
    fn not_a_database_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        std::fs::write(&p, vec![b'x'; 4096]).unwrap();
        let e = open(&p, &SqliteOptions::default(), M).unwrap_err();
        assert!(e.to_string().contains("x.sqlite"), "{e}");
    }

    #[test]
    fn busy_unit_is_retried() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        let o = SqliteOptions {
            busy_timeout: Duration::from_millis(0),
            ..Default::default()
        };
        let a = open(&p, &o, M).unwrap();
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let (p, o) = (&p, &o);
            s.spawn(move || {
                let b = open(p, o, M).unwrap();
                immediate(&b, p, o, |t| t.execute("INSERT INTO t(v) VALUES ('b')", [])).unwrap();
                tx.send(()).unwrap();
            });
            // b cannot commit while a holds the write lock; release it.
            assert!(rx.recv_timeout(Duration::from_millis(30)).is_err());
            a.execute_batch("COMMIT").unwrap();
            rx.recv().unwrap();
        });
        let n: i64 = a
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
