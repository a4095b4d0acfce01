//! SQLite store helpers shared by the task ledger and the outbox (feature
//! `sqlite`).
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
//! * Migrations ([`open`], the one runner every lockstore SQLite store uses) are
//!   keyed on `PRAGMA user_version`: `migrations[n - 1]` is the SQL that brings the
//!   schema from version `n - 1` to `n`. Each step runs in its own `BEGIN
//!   IMMEDIATE` transaction (with the busy retry) together with the
//!   `user_version` bump, so a crash leaves the database at a whole step. A
//!   database newer than the binary is refused ([`Error::SchemaTooNew`]) before
//!   anything is written to it (not even the switch to WAL), and never
//!   downgraded. A *foreign* database — `user_version` 0 but already holding
//!   tables, views, indexes or triggers, i.e. not created by lockstore — is
//!   refused the same way ([`Error::Corrupt`] naming the file and its tables).
//! * If SQLite cannot open the file, the error names it; there is never a fallback
//!   to an in-memory database.
//! * Error classification (docs/failure-model in docs/security.md): a file that
//!   is not a SQLite database (`SQLITE_NOTADB`), a malformed one
//!   (`SQLITE_CORRUPT`), a foreign one and one with a newer schema are
//!   [`Error::is_corrupt`] (the CLI exits 2). When opening fails otherwise
//!   (`SQLITE_CANTOPEN`, `SQLITE_IOERR`, `SQLITE_READONLY`, `SQLITE_PERM`,
//!   `SQLITE_FULL`), [`open`] looks at the file system and says why in an
//!   [`Error::Io`] carrying the errno: a read-only file system (`EROFS`), a
//!   full one (`ENOSPC`, so [`Error::is_no_space`]), a file or directory this
//!   user may not read or write (`EACCES`), or a WAL database whose `-wal` /
//!   `-shm` files are missing and cannot be created. The store path itself
//!   must be a regular file or absent ([`Error::NotRegularFile`]).

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
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
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
    use std::os::unix::fs::MetadataExt;
    // Already 0600: no chmod (it would fail on a read-only file system, where
    // a healthy database can still be read).
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.mode() & 0o7777 == 0o600) {
        return Ok(());
    }
    match std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("chmod", p, e)),
    }
}

/// Opens (creating if needed) the database at `path`, applies the connection
/// conventions above and runs `migrations`: `migrations[i]` is one SQL batch
/// taking the schema from user_version `i` to `i + 1`; each step is applied in
/// its own `BEGIN IMMEDIATE` transaction (retried whole on BUSY) that also sets
/// `user_version`. Steps already applied (by this or another process) are
/// skipped; concurrent openers serialize on the write lock and each step runs
/// once.
///
/// Errors: [`Error::InvalidPath`] for an empty, `:memory:` or `file:` URI path;
/// [`Error::Sqlite`] naming the file (cannot open, not a database, WAL refused,
/// a migration step failed — that step is rolled back); [`Error::SchemaTooNew`]
/// if the file's user_version is above `migrations.len()` (the file is left
/// untouched); [`Error::Corrupt`] for a foreign database (user_version 0 but
/// not empty; left untouched); [`Error::Io`] (directory creation, chmod).
pub fn open(
    path: impl AsRef<Path>,
    opts: &SqliteOptions,
    migrations: &[&str],
) -> Result<Connection> {
    let path = path.as_ref();
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
    // A FIFO would hang SQLite's open; a device or directory is no database.
    let existed = crate::atomic::regular_or_absent(path)?.is_some();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| diagnose("cannot open SQLite database", path, e))?;
    let q = |e| diagnose("configure", path, e);
    conn.busy_timeout(opts.busy_timeout).map_err(q)?;
    // Force creation of the file so its mode can be set before -wal/-shm exist.
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| diagnose("read SQLite database", path, e))?;
    if !existed {
        chmod_0600(path)?;
    }
    // Refuse a newer or foreign database before anything writes to it (the
    // switch to WAL below rewrites the header).
    check_version(&conn, path, migrations.len())?;
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

/// Turns a SQLite failure while opening `path` into an error that says why:
/// corrupt / not-a-database stay [`Error::Sqlite`] (`is_corrupt`); for
/// CANTOPEN, IOERR, READONLY, PERM and FULL the file system is examined and
/// an [`Error::Io`] with the matching errno is returned (read-only file
/// system, full disk, permission denied, WAL files missing and not
/// creatable); otherwise [`Error::Sqlite`] with `op`.
pub(crate) fn diagnose(op: &'static str, path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => f.code,
        _ => return Error::sqlite(op, path, e),
    };
    if !matches!(
        code,
        C::CannotOpen | C::SystemIoFailure | C::ReadOnly | C::PermissionDenied | C::DiskFull
    ) {
        return Error::sqlite(op, path, e);
    }
    let dir = match crate::atomic::split(path) {
        Ok((d, _)) => d,
        Err(_) => return Error::sqlite(op, path, e),
    };
    let os = std::io::Error::from_raw_os_error;
    if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
        if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Error::io(
                "open SQLite database (the file system is mounted read-only)",
                path,
                os(nix::libc::EROFS),
            );
        }
        if st.blocks_available() == 0 || code == C::DiskFull {
            return Error::io(
                "write SQLite database (the file system is full)",
                path,
                os(nix::libc::ENOSPC),
            );
        }
    }
    use nix::unistd::{access, AccessFlags};
    if path.exists() {
        if let Err(errno) = access(path, AccessFlags::R_OK | AccessFlags::W_OK) {
            return Error::io(
                "open SQLite database (this user may not read and write the file)",
                path,
                std::io::Error::from(errno),
            );
        }
    }
    let missing = sidecars(path).into_iter().find(|p| !p.exists());
    if let Err(errno) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        return match missing {
            Some(side) => Error::io(
                "open SQLite database: its WAL file is missing and cannot be created (the directory is not writable by this user)",
                side,
                std::io::Error::from(errno),
            ),
            None => Error::io(
                "open SQLite database (its directory is not writable by this user)",
                dir,
                std::io::Error::from(errno),
            ),
        };
    }
    Error::sqlite(op, path, e)
}

/// A hint for [`Error::Sqlite`]'s message from the SQLite result code alone
/// (empty when the code speaks for itself).
pub(crate) fn hint(e: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::NotADatabase => " (not a SQLite database, or its header is damaged)",
            C::DatabaseCorrupt => " (the database file is corrupt)",
            C::DiskFull => " (the file system is full; free space and retry)",
            C::ReadOnly => " (read-only: the file, its directory or the file system cannot be written)",
            C::PermissionDenied => " (permission denied)",
            C::CannotOpen => " (check that the file and its directory exist and are readable and writable by this user)",
            _ => "",
        },
        _ => "",
    }
}

fn user_version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read user_version", path, e))
}

/// Names of the schema objects (tables, views, indexes, triggers) of a database,
/// SQLite's own `sqlite_*` objects excluded.
fn schema_objects(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT type || ' ' || name FROM sqlite_schema
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name",
    )?;
    let v = st
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(v)
}

/// Refuses a database whose user_version is above `target` (newer than this
/// binary) or that is foreign (user_version 0 but not empty). Reads only.
fn check_version(conn: &Connection, path: &Path, target: usize) -> Result<i64> {
    // One read transaction: user_version and the schema from one snapshot.
    // Read separately, a concurrent first opener's step 1 could commit in
    // between (version 0, then its tables) and the database would look foreign.
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| Error::sqlite("begin reading the schema of", path, e))?;
    let found = check_version_in(&tx, path, target)?;
    tx.commit()
        .map_err(|e| Error::sqlite("end reading the schema of", path, e))?;
    Ok(found)
}

fn check_version_in(conn: &Connection, path: &Path, target: usize) -> Result<i64> {
    let found = user_version(conn, path)?;
    let supported = target as i64;
    if found > supported {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    if found == 0 {
        let objects =
            schema_objects(conn).map_err(|e| Error::sqlite("read the schema of", path, e))?;
        if !objects.is_empty() {
            return Err(foreign(path, &objects));
        }
    }
    Ok(found)
}

fn foreign(path: &Path, objects: &[String]) -> Error {
    const SHOWN: usize = 8;
    let mut list = objects[..objects.len().min(SHOWN)].join(", ");
    if objects.len() > SHOWN {
        list.push_str(&format!(", ... ({} in all)", objects.len()));
    }
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "not a lockstore database: its schema version (PRAGMA user_version) is 0 but it \
             already holds {list}; refusing to migrate a database another program created \
             (point lockstore at its own file)"
        ),
    }
}

/// What one migration transaction found.
enum Step {
    /// Step `to` applied (user_version is now `to`).
    Applied(i64),
    /// Already at the target (another process migrated meanwhile).
    UpToDate,
    /// user_version is above the target: refused, nothing written.
    TooNew(i64),
    /// user_version 0 with schema objects: refused, nothing written.
    Foreign(Vec<String>),
}

/// Brings the schema to `migrations.len()`, one `BEGIN IMMEDIATE` transaction
/// per step. Every transaction re-reads user_version under the write lock, so
/// concurrent openers apply each step exactly once and a newer or foreign
/// database is never written.
fn migrate(
    conn: &Connection,
    path: &Path,
    opts: &SqliteOptions,
    migrations: &[&str],
) -> Result<()> {
    let target = migrations.len() as i64;
    let from = check_version(conn, path, migrations.len())?;
    if from == target {
        return Ok(());
    }
    loop {
        let step = immediate(conn, path, opts, |tx| {
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if v > target {
                return Ok(Step::TooNew(v));
            }
            if v == target {
                return Ok(Step::UpToDate);
            }
            if v == 0 {
                let objects = schema_objects(tx)?;
                if !objects.is_empty() {
                    return Ok(Step::Foreign(objects));
                }
            }
            // v in 0..target: apply step v + 1.
            tx.execute_batch(migrations[v as usize])?;
            tx.execute_batch(&format!("PRAGMA user_version={}", v + 1))?;
            Ok(Step::Applied(v + 1))
        })?;
        match step {
            Step::Applied(to) => {
                tracing::debug!(path = %path.display(), to, "applied schema migration step");
                if to == target {
                    break;
                }
            }
            Step::UpToDate => break,
            Step::TooNew(found) => {
                return Err(Error::SchemaTooNew {
                    path: path.to_path_buf(),
                    found,
                    supported: target,
                })
            }
            Step::Foreign(objects) => return Err(foreign(path, &objects)),
        }
    }
    tracing::info!(path = %path.display(), from, to = target, "migrated schema");
    Ok(())
}

/// Sleeps before retry number `attempt` (1-based) of a unit that hit BUSY:
/// capped exponential backoff, 1–50 ms, plus up to 100 % jitter.
pub(crate) fn busy_pause(attempt: u32) {
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
pub fn immediate<T, F>(
    conn: &Connection,
    path: impl AsRef<Path>,
    opts: &SqliteOptions,
    mut f: F,
) -> Result<T>
where
    F: FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
{
    let path = path.as_ref();
    let deadline = Instant::now() + opts.retry_deadline;
    let mut attempt: u32 = 0;
    loop {
        let r = (|| {
            if crate::failpoint::fails("sqlite_full") {
                // A full disk as SQLite reports it (tests of the daemon's
                // supervision; feature `failpoints` only).
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    None,
                ));
            }
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

/// The SQLite half of a group-commit batch ([`crate::group::Batch`]), shared
/// by every SQLite store (task ledger, collections): one open `BEGIN
/// IMMEDIATE` transaction on the store's write connection, its first member
/// undone by rolling the whole (otherwise empty) transaction back, each later
/// member inside `SAVEPOINT lockstore_member`. Once the transaction is
/// unusable (`failed`) every member and the close get that error; if SQLite
/// rolled the whole transaction back by itself (SQLITE_FULL, SQLITE_IOERR) the
/// members already kept are gone too, so they get the error that caused it
/// (`last_error`, set by the store when a member's statement fails).
pub(crate) struct MemberTx {
    path: PathBuf,
    /// The transaction is unusable; every member and the close get this.
    failed: Option<Error>,
    /// The last failed member's own error, handed to everyone if SQLite rolled
    /// the transaction back because of it.
    pub(crate) last_error: Option<Error>,
}

/// How one member of a [`MemberTx`] is undone.
pub(crate) enum MemberUndo {
    /// The batch's first member: no savepoint; a failure rolls the whole
    /// transaction back and closes the batch.
    Transaction,
    /// `SAVEPOINT lockstore_member`.
    Savepoint,
}

/// Runs a parameterless statement through the statement cache (transaction
/// control runs once or twice per write; re-parsing it showed in profiles).
pub(crate) fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

impl MemberTx {
    /// Opens the batch's transaction: `BEGIN IMMEDIATE` on `conn` (the
    /// store at `path`), retried on BUSY (a writer outside lockstore) with
    /// backoff until `retry_deadline` has passed.
    ///
    /// Errors: [`Error::Sqlite`] naming `path`.
    pub(crate) fn begin(conn: &Connection, path: &Path, retry_deadline: Duration) -> Result<Self> {
        let until = Instant::now() + retry_deadline;
        let mut attempt = 0u32;
        loop {
            match run_cached(conn, "BEGIN IMMEDIATE") {
                Ok(()) => break,
                Err(e) if is_busy(&e) && Instant::now() < until => {
                    attempt += 1;
                    tracing::debug!(path = %path.display(), attempt, "database busy; retrying BEGIN IMMEDIATE");
                    busy_pause(attempt);
                }
                Err(e) => return Err(Error::sqlite("begin group commit on", path, e)),
            }
        }
        Ok(MemberTx {
            path: path.to_path_buf(),
            failed: None,
            last_error: None,
        })
    }

    fn fail(&mut self, e: Error) {
        self.failed.get_or_insert(e);
    }

    fn aborted(&self, why: &str) -> Error {
        Error::sqlite(
            "group commit",
            &self.path,
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some(why.into()),
            ),
        )
    }

    fn check_rolled_back(&mut self, conn: &Connection) {
        if conn.is_autocommit() && self.failed.is_none() {
            let e = match self.last_error.take() {
                Some(e) => e,
                None => self.aborted("the group-commit transaction was rolled back by SQLite"),
            };
            self.fail(e);
        }
    }

    /// Opens member `index` ([`crate::group::Batch::savepoint`]).
    pub(crate) fn savepoint(&mut self, conn: &Connection, index: usize) -> Result<MemberUndo> {
        if index == 0 {
            return Ok(MemberUndo::Transaction);
        }
        match run_cached(conn, "SAVEPOINT lockstore_member") {
            Ok(()) => Ok(MemberUndo::Savepoint),
            Err(e) => {
                let e = Error::sqlite("savepoint", &self.path, e);
                self.fail(crate::group::duplicate(&e));
                Err(e)
            }
        }
    }

    /// Keeps a member's changes ([`crate::group::Batch::keep`]).
    pub(crate) fn keep(&mut self, conn: &Connection, undo: MemberUndo) {
        if let MemberUndo::Savepoint = undo {
            if let Err(e) = run_cached(conn, "RELEASE lockstore_member") {
                self.fail(Error::sqlite("release savepoint", &self.path, e));
            }
        }
        self.check_rolled_back(conn);
    }

    /// Undoes a failed member ([`crate::group::Batch::undo`]).
    pub(crate) fn undo(&mut self, conn: &Connection, undo: MemberUndo) {
        if conn.is_autocommit() {
            // SQLite rolled everything back: the member's own error is the cause.
            self.check_rolled_back(conn);
        } else {
            let r = match undo {
                MemberUndo::Transaction => run_cached(conn, "ROLLBACK"),
                MemberUndo::Savepoint => run_cached(conn, "ROLLBACK TO lockstore_member")
                    .and_then(|()| run_cached(conn, "RELEASE lockstore_member")),
            };
            if let Err(e) = r {
                self.fail(Error::sqlite("roll back member", &self.path, e));
            }
        }
        if let MemberUndo::Transaction = undo {
            let e = self.aborted("the batch's first writer failed; nothing to commit");
            self.fail(e);
        }
        self.check_rolled_back(conn);
    }

    /// Whether later writers may join ([`crate::group::Batch::accepts_more`]).
    pub(crate) fn accepts_more(&self) -> bool {
        self.failed.is_none()
    }

    /// COMMIT (or the batch's error), then a ROLLBACK if the transaction is
    /// still open after a failure. `path` names the store in the error.
    pub(crate) fn commit(self, conn: &Connection, path: &Path) -> Result<()> {
        let r = match self.failed {
            Some(f) => Err(f),
            None => run_cached(conn, "COMMIT").map_err(|e| Error::sqlite("commit group", path, e)),
        };
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(path = %path.display(), error = %e, "rollback of a failed group commit failed");
            }
        }
        r
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

    const M2: &[&str] = &[
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
        "ALTER TABLE t ADD COLUMN w INTEGER NOT NULL DEFAULT 7; CREATE INDEX t_w ON t(w);",
    ];

    /// Openers racing on a fresh database all succeed: the pre-check reads
    /// user_version and the schema in one read transaction, so it never sees
    /// another opener's first step half (version 0 read before its commit,
    /// its tables after) and calls the database foreign.
    #[test]
    fn concurrent_first_opens_never_see_a_foreign_database() {
        let d = tempfile::tempdir().unwrap();
        for round in 0..40 {
            let p = d.path().join(format!("race-{round}.sqlite"));
            let barrier = std::sync::Barrier::new(6);
            std::thread::scope(|sc| {
                let hs: Vec<_> = (0..6)
                    .map(|_| {
                        sc.spawn(|| {
                            barrier.wait();
                            open(&p, &SqliteOptions::default(), M2).map(|_| ())
                        })
                    })
                    .collect();
                for h in hs {
                    if let Err(e) = h.join().unwrap() {
                        panic!("round {round}: {e}");
                    }
                }
            });
        }
    }

    fn version(c: &Connection) -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn fresh_database_gets_every_step() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        let c = open(&p, &SqliteOptions::default(), M2).unwrap();
        assert_eq!(version(&c), 2);
        c.execute("INSERT INTO t(v) VALUES ('a')", []).unwrap();
        let w: i64 = c.query_row("SELECT w FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(w, 7);
        drop(c);
        // Reopening at the same version changes nothing.
        let c = open(&p, &SqliteOptions::default(), M2).unwrap();
        assert_eq!(version(&c), 2);
    }

    #[test]
    fn older_database_is_upgraded_keeping_its_rows() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        let c = open(&p, &SqliteOptions::default(), &M2[..1]).unwrap();
        assert_eq!(version(&c), 1);
        c.execute("INSERT INTO t(v) VALUES ('old')", []).unwrap();
        drop(c);
        let c = open(&p, &SqliteOptions::default(), M2).unwrap();
        assert_eq!(version(&c), 2);
        let (v, w): (String, i64) = c
            .query_row("SELECT v, w FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((v.as_str(), w), ("old", 7));
    }

    #[test]
    fn a_failing_step_is_rolled_back_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        let bad: &[&str] = &[M2[0], "CREATE TABLE u(x); CREATE TABLE t(y);"];
        let e = open(&p, &SqliteOptions::default(), bad).unwrap_err();
        assert!(matches!(e, Error::Sqlite { .. }), "{e}");
        assert!(e.to_string().contains("x.sqlite"), "{e}");
        let c = Connection::open(&p).unwrap();
        // Step 1 stays applied; step 2 (its first statement included) is not.
        assert_eq!(version(&c), 1);
        let u: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'u'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(u, 0);
    }

    #[test]
    fn newer_database_is_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sqlite");
        // A rollback-journal database at version 3, as a newer lockstore might
        // leave it after a checkpoint: opening it must not even switch it to WAL.
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('x');
             PRAGMA user_version=3;",
        )
        .unwrap();
        drop(c);
        let before = std::fs::read(&p).unwrap();
        let e = open(&p, &SqliteOptions::default(), M2).unwrap_err();
        assert!(
            matches!(
                e,
                Error::SchemaTooNew {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("x.sqlite"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before, "the file was modified");
        let c = Connection::open(&p).unwrap();
        assert_eq!(version(&c), 3);
    }

    #[test]
    fn foreign_database_is_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("other.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE accounts(id INTEGER PRIMARY KEY); INSERT INTO accounts DEFAULT VALUES;",
        )
        .unwrap();
        drop(c);
        let before = std::fs::read(&p).unwrap();
        let e = open(&p, &SqliteOptions::default(), M2).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("other.db") && msg.contains("table accounts"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), before, "the file was modified");
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
