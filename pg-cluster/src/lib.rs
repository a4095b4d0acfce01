//! A private, throwaway PostgreSQL cluster for lockstore's tests, soak and
//! bench: `initdb` into a temp dir, `pg_ctl start` listening on a unix socket
//! in that dir only (`listen_addresses=''`), never on a TCP port, so a test
//! can never touch a server someone else runs on 5432.
//!
//! `initdb` refuses to run as root, so when the caller is root every
//! PostgreSQL binary runs as the `postgres` user (`runuser -u postgres --`)
//! and the temp dir is handed to that user.
//!
//! A watchdog process (`sh`, reading a pipe whose write end only this process
//! holds, close-on-exec) stops the cluster (`pg_ctl stop -m immediate`) and
//! removes the dir when this process exits, however it exits: a cluster kept
//! in a `static` is never dropped, and a killed test must not leak a
//! postmaster.
//!
//! ```no_run
//! let pg = lockstore_pg_cluster::Cluster::start().unwrap();
//! let url = pg.create_database("t1").unwrap();
//! // postgresql://postgres@%2Ftmp%2F.tmpAbc123/t1?port=5432
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// A running private cluster. Dropping it stops the server and removes its
/// directory (the watchdog does the same at process exit).
pub struct Cluster {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    // Held open for the life of the process: its close (exit, crash, drop)
    // tells the watchdog to stop the server and remove `dir`.
    _watchdog_stdin: Mutex<Option<ChildStdin>>,
    _watchdog: Mutex<Child>,
}

/// The directory of `initdb`/`pg_ctl`: `$LOCKSTORE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else whatever `PATH` has.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKSTORE_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            let bin = e.path().join("bin");
            if bin.join("initdb").exists() && best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, b)) = best {
        return Some(b);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists())
}

/// True when PostgreSQL's server binaries are installed (tests that need a
/// cluster may skip with a message otherwise; `.ci/run` installs them).
pub fn available() -> bool {
    pg_bin_dir().is_some()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Cluster {
    /// Creates and starts a fresh cluster (about 1.5 s). Errors: the
    /// binaries are missing (`NotFound`), `initdb`/`pg_ctl` failed (`Other`,
    /// with their output), or the temp dir could not be created/chowned.
    pub fn start() -> io::Result<Cluster> {
        let bin = pg_bin_dir().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server binaries not found (set LOCKSTORE_PG_BIN or install postgresql)",
            )
        })?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("lockstore-pg.")
            .tempdir_in(std::env::temp_dir())?
            .keep();
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .map_err(io::Error::other)?
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "running as root but no `postgres` user",
                    )
                })?;
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).map_err(io::Error::other)?;
        }
        let data = dir.join("data");
        let port = 5432;
        let (child, stdin) = spawn_watchdog(&bin, &dir, &data, as_postgres)?;
        let c = Cluster {
            _watchdog: Mutex::new(child),
            _watchdog_stdin: Mutex::new(Some(stdin)),
            dir,
            data,
            bin,
            port,
            as_postgres,
        };
        let out = c
            .pg_cmd("initdb")
            .args(["-D"])
            .arg(&c.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        c.start_server()?;
        Ok(c)
    }

    fn pg_cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts the server again after [`stop_immediate`](Self::stop_immediate)
    /// (waits until it accepts connections). Errors carry pg_ctl's output
    /// and the server log's tail.
    pub fn start_server(&self) -> io::Result<()> {
        let opts = format!(
            "-c listen_addresses='' -k {} -p {} -c max_connections=300 -c fsync=on",
            self.dir.display(),
            self.port
        );
        let out = self
            .pg_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &opts, "start"])
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            return Err(io::Error::other(format!(
                "pg_ctl start failed: {}{}\n{tail}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server dies without a checkpoint, as
    /// in a crash; connections break at once. Committed transactions survive
    /// (WAL replay on the next start).
    pub fn stop_immediate(&self) -> io::Result<()> {
        let out = self
            .pg_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "immediate", "stop"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The directory holding the data dir, the socket and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection URL of database `db` (unix socket in [`dir`](Self::dir),
    /// user `postgres`, no password): `postgresql://postgres@<percent-encoded dir>:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        let host: String = self
            .dir
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("postgresql://postgres@{host}:{}/{db}", self.port)
    }

    /// Creates database `name` (`createdb`) and returns its URL. Tests share
    /// one cluster per test binary and take a fresh database each.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        let out = self
            .pg_cmd("createdb")
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", name])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(self.url(name))
    }

    /// One cluster per process, started on first use (tests in one binary
    /// share it; each test creates its own database).
    pub fn shared() -> io::Result<&'static Cluster> {
        static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Cluster::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the watchdog's stdin makes it stop the server and remove
        // the dir; wait so the caller sees the cluster gone.
        if let Ok(mut s) = self._watchdog_stdin.lock() {
            s.take();
        }
        if let Ok(mut w) = self._watchdog.lock() {
            let _ = w.wait();
        }
    }
}

/// `sh` that blocks reading stdin; on EOF (our exit) it stops the server
/// and removes the dir.
fn spawn_watchdog(
    bin: &Path,
    dir: &Path,
    data: &Path,
    as_postgres: bool,
) -> io::Result<(Child, ChildStdin)> {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if as_postgres {
        format!(
            "runuser -u postgres -- '{}' -D '{}' -m immediate -w stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "'{}' -D '{}' -m immediate -w stop",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "cat >/dev/null; if [ -f '{data}/postmaster.pid' ]; then {stop} >/dev/null 2>&1; fi; rm -rf '{dir}'",
        data = data.display(),
        dir = dir.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("watchdog stdin missing"))?;
    Ok((child, stdin))
}
