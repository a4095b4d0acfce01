//! Helpers shared by the core_* integration tests: child processes (the real
//! `lockstore` binary, or this test binary re-executed in a role), readiness
//! lines over pipes, store inspection. No sleeps: every wait is on a pipe, a
//! process exit or a lock.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

/// Env var selecting the role of a re-executed test binary.
pub const ROLE: &str = "LOCKSTORE_TEST_ROLE";
/// Env var with the store path for a role.
pub const STORE: &str = "LOCKSTORE_TEST_STORE";

/// Path of the `lockstore` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockstore")
}

/// `lockstore <args>` with logs at warn and no inherited failpoint.
pub fn lockstore<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("LOCKSTORE_FAILPOINT")
        .env("RUST_LOG", "warn");
    c
}

/// A child's stderr, captured in an anonymous temp file: never the test log
/// (children's warnings and lock-wait lines flooded `cargo test` output), and
/// unlike an unread pipe it cannot fill up and block the child. `text()` reads
/// it back for a failure message.
pub struct StderrLog(std::fs::File);

impl StderrLog {
    pub fn new() -> Self {
        StderrLog(tempfile::tempfile().expect("temp file for a child's stderr"))
    }
    /// A handle for `Command::stderr`.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.0.try_clone().expect("dup stderr log"))
    }
    /// What the child wrote so far.
    pub fn text(&self) -> String {
        use std::os::unix::fs::FileExt;
        let len = self.0.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let mut buf = vec![0; len];
        let n = self.0.read_at(&mut buf, 0).unwrap_or(0);
        buf.truncate(n);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for StderrLog {
    fn default() -> Self {
        Self::new()
    }
}

/// This test binary re-executed to run only `entry_test` (which dispatches on
/// [`ROLE`]), in `role` on `store`, with piped stdin/stdout and stderr into
/// `err`.
pub fn spawn_role_logged(entry_test: &str, role: &str, store: &Path, err: &StderrLog) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            entry_test,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE, role)
        .env(STORE, store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err.stdio())
        .spawn()
        .expect("spawn test child")
}

/// [`spawn_role_logged`] with the stderr log dropped (a failure shows as the
/// exit status only).
pub fn spawn_role(entry_test: &str, role: &str, store: &Path) -> Child {
    spawn_role_logged(entry_test, role, store, &StderrLog::new())
}

/// The role this process was started in, if any.
pub fn role() -> Option<(String, PathBuf)> {
    let r = std::env::var(ROLE).ok()?;
    let s = std::env::var(STORE).ok()?;
    Some((r, PathBuf::from(s)))
}

/// Reads lines until one equals `want`; panics on EOF (with what was read).
pub fn expect_line<R: BufRead>(r: &mut R, want: &str) {
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        let n = r.read_line(&mut l).expect("read child pipe");
        if n == 0 {
            panic!("child closed its pipe before {want:?}; saw {seen:?}");
        }
        if l.trim_end() == want {
            return;
        }
        seen.push(l);
    }
}

/// Reads lines until one contains `needle` (Ok) or EOF (Err with the lines).
pub fn wait_for_substring<R: BufRead>(r: &mut R, needle: &str) -> Result<String, Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => return Err(seen),
            Ok(_) => {
                if l.contains(needle) {
                    return Ok(l);
                }
                seen.push(l);
            }
        }
    }
}

/// A child in a role, with its pipes split out.
pub struct RoleChild {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub out: BufReader<ChildStdout>,
    pub err: StderrLog,
}

impl RoleChild {
    pub fn spawn(entry_test: &str, role: &str, store: &Path) -> Self {
        let err = StderrLog::new();
        let mut child = spawn_role_logged(entry_test, role, store, &err);
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        RoleChild {
            child,
            stdin,
            out,
            err,
        }
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn expect(&mut self, line: &str) {
        expect_line(&mut self.out, line)
    }
    /// Sends one line on the child's stdin.
    pub fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        writeln!(s, "{line}").expect("write child stdin");
        s.flush().expect("flush child stdin");
    }
    pub fn wait_ok(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().expect("wait child");
        assert!(
            st.success(),
            "child failed: {st}; stderr:\n{}",
            self.err.text()
        );
    }
}

/// Blocks until one line arrives on stdin (the parent's go signal).
pub fn wait_for_parent() {
    let mut l = String::new();
    let _ = std::io::stdin().read_line(&mut l);
}

/// Prints a readiness line (stdout is line-buffered).
pub fn signal(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Parses the store file.
pub fn read_json(path: &Path) -> Value {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{} is not whole JSON: {e}", path.display()))
}

/// Temp files of any writer left beside the store.
pub fn temps(path: &Path) -> Vec<PathBuf> {
    lockstore::testing::temp_files(path)
}

/// Name of a temp file as `pid` would create it for `store` (the pattern of
/// lockstore::atomic: `.<file>.<pid>.<random>.tmp`).
pub fn temp_name_for(store: &Path, pid: u32) -> PathBuf {
    let name = store.file_name().expect("file name").to_string_lossy();
    store.with_file_name(format!(".{name}.{pid}.deadbeef.tmp"))
}

/// Commitments for `keys` (open loops of agent `main`, session `s1`,
/// channel telegram, due from a minute before `now` (Unix ms)), written
/// through the library into `state`; returns their ids.
pub fn seed_commitments(state: &Path, keys: &[&str], now: i64) -> Vec<String> {
    use lockstore::commitments as c;
    let s = lockstore::commitments::CommitmentsStore::open(
        state,
        lockstore::commitments::CommitmentsConfig {
            durability: lockstore::Durability::Process,
            ..Default::default()
        },
    )
    .unwrap();
    let item = c::InferredItem {
        scope: c::Scope {
            agent_id: "main".into(),
            session_key: "s1".into(),
            channel: "telegram".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let cands: Vec<c::Candidate> = keys
        .iter()
        .map(|k| c::Candidate {
            kind: c::Kind::OpenLoop,
            sensitivity: c::Sensitivity::Routine,
            source: c::Source::AgentPromise,
            reason: format!("r {k}"),
            suggested_text: format!("t {k}"),
            dedupe_key: k.to_string(),
            confidence: 1.0,
            earliest_ms: now - 60_000,
            latest_ms: now + 86_400_000,
            timezone: "UTC".into(),
        })
        .collect();
    s.upsert_inferred(
        &item,
        &cands,
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(now as u64),
    )
    .unwrap()
    .into_iter()
    .map(|c| c.id)
    .collect()
}
