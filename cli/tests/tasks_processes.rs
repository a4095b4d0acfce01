//! Cross-process tests with the real binary: a daemon-style registry in this
//! process and CLI processes mutating the same ledger concurrently; and a
//! `tasks run` process killed with SIGKILL.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use lockstore::sqlite::SqliteOptions;
use lockstore::tasks::*;

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");
const PROCS: usize = 8;
const PER_PROC: usize = 200;
const DAEMON_WRITES: usize = 200;

fn cli(state: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--state-dir").arg(state).env_remove("RUST_LOG");
    c
}

fn counter(t: &TaskRecord, k: &str) -> i64 {
    t.metadata
        .as_ref()
        .and_then(|m| m.get(k))
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

#[test]
fn registry_and_cli_processes_share_the_ledger_without_lost_updates() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let reg = TaskRegistry::open_state_dir(state, RegistryOptions::default()).unwrap();
    let now = std::time::SystemTime::now();
    let mk = |task: &str| {
        reg.create(
            NewTask {
                runtime: Some(Runtime::Cron),
                task: task.into(),
                ..Default::default()
            },
            now,
        )
        .unwrap()
        .0
        .task_id
    };
    let ids = [mk("a"), mk("b")];
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..PROCS)
        .map(|i| {
            cli(state)
                .args([
                    "tasks",
                    "progress",
                    &ids[i % 2],
                    "--counter",
                    "n",
                    "--repeat",
                ])
                .arg(PER_PROC.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The daemon mutates task a concurrently.
    let mut mine = Vec::new();
    for _ in 0..DAEMON_WRITES {
        let t = reg
            .bump_counter(&ids[0], "n", std::time::SystemTime::now())
            .unwrap();
        mine.push(t.version);
    }
    let mut versions: [Vec<i64>; 2] = [mine.clone(), Vec::new()];
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child {i}: {:?}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let vs: Vec<i64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(vs.len(), PER_PROC);
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "child {i} versions not increasing"
        );
        versions[i % 2].extend(vs);
    }
    assert!(mine.windows(2).all(|w| w[0] < w[1]));
    let elapsed = started.elapsed();
    eprintln!(
        "{PROCS} CLI processes x {PER_PROC} + {DAEMON_WRITES} registry mutations in {elapsed:?}; registry CAS misses: {}",
        reg.cas_misses()
    );

    // No update lost: every increment is there, and every version was produced
    // exactly once (created at 1, then one per write).
    let a = reg.get(&ids[0]).unwrap().unwrap();
    let b = reg.get(&ids[1]).unwrap().unwrap();
    let na = (PROCS / 2 * PER_PROC + DAEMON_WRITES) as i64;
    let nb = (PROCS / 2 * PER_PROC) as i64;
    assert_eq!(counter(&a, "n"), na);
    assert_eq!(counter(&b, "n"), nb);
    for (k, n) in [(0, na), (1, nb)] {
        let set: BTreeSet<i64> = versions[k].iter().copied().collect();
        assert_eq!(set.len(), versions[k].len(), "a version was written twice");
        assert_eq!(set, (2..=n + 1).collect::<BTreeSet<_>>());
    }
    assert_eq!(a.version, na + 1);

    // The registry's view equals the database.
    let store =
        SqliteTaskStore::open(lockstore::paths::tasks_db(state), SqliteOptions::default()).unwrap();
    assert_eq!(reg.snapshot().unwrap(), store.load_snapshot().unwrap());
}

#[test]
fn killed_tasks_run_is_marked_lost_and_live_owner_never_is() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let mut run = cli(state)
        .args(["tasks", "run", "--label", "sleeper", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap());
    let mut id = String::new();
    out.read_line(&mut id).unwrap();
    let id = id.trim().to_string();
    let mut err = BufReader::new(run.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap(); // "... running `sleep 30` (pid N)" — after spawn
    let child_pid: i32 = line
        .rsplit("(pid ")
        .next()
        .and_then(|s| s.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {line:?}"));

    let reg = TaskRegistry::open_state_dir(state, RegistryOptions::default()).unwrap();
    let t = reg.get(&id).unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Running);
    assert_eq!(t.runtime, Runtime::Cli);
    assert_eq!(t.owner_pid, Some(run.id()));

    // Owner alive: even a day later with no grace, never lost.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
    let rep = reg
        .maintenance(
            MaintenanceMode::Apply,
            later,
            &MaintenanceOptions::with_grace(std::time::Duration::ZERO),
        )
        .unwrap();
    assert_eq!(rep.reconciled, 0);
    assert_eq!(reg.get(&id).unwrap().unwrap().status, TaskStatus::Running);

    // kill -9 the lockstore process (not its child).
    run.kill().unwrap();
    run.wait().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child_pid),
        nix::sys::signal::Signal::SIGKILL,
    );

    // Immediately (no grace needed): the owner is definitely dead.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms as u64);
    let preview = reg
        .maintenance(
            MaintenanceMode::Preview,
            now,
            &MaintenanceOptions::default(),
        )
        .unwrap();
    assert_eq!(preview.reconciled, 1);
    assert_eq!(reg.get(&id).unwrap().unwrap().status, TaskStatus::Running);
    let out = cli(state)
        .args(["tasks", "maintenance", "--apply", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["maintenance"]["tasks"]["reconciled"], 1);
    assert_eq!(j["auditAfter"]["byCode"]["lost"], 1);
    let t = reg.get(&id).unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Lost);
    let e = t.error.unwrap();
    assert!(
        e.contains(&format!("owner process {} is dead", t.owner_pid.unwrap())),
        "{e}"
    );
    assert!(t.cleanup_after.unwrap() <= now_ms + LOST_TASK_RETENTION.as_millis() as i64 + 60_000);
    // The CLI shows it.
    let show = cli(state).args(["tasks", "show", &id]).output().unwrap();
    let s = String::from_utf8(show.stdout).unwrap();
    assert!(s.contains("status: lost"), "{s}");
}

#[test]
fn tasks_run_records_exit_code_and_timeout() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let st = cli(state)
        .args(["tasks", "run", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(7));
    let id = String::from_utf8(st.stdout).unwrap().trim().to_string();
    let st = cli(state)
        .args(["tasks", "run", "--timeout-ms", "50", "--", "sleep", "5"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(124));
    let id2 = String::from_utf8(st.stdout).unwrap().trim().to_string();
    let ok = cli(state)
        .args(["tasks", "run", "--", "true"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let id3 = String::from_utf8(ok.stdout).unwrap().trim().to_string();
    let reg = TaskRegistry::open_state_dir(state, RegistryOptions::default()).unwrap();
    let t = reg.get(&id).unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.error.as_deref(), Some("exited with code 7"));
    assert!(t.cleanup_after.is_some());
    assert_eq!(reg.get(&id2).unwrap().unwrap().status, TaskStatus::TimedOut);
    assert_eq!(
        reg.get(&id3).unwrap().unwrap().status,
        TaskStatus::Succeeded
    );
    // list --json shape
    let l = cli(state)
        .args(["tasks", "list", "--status", "failed", "--json"])
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(j["count"], 1);
    assert_eq!(j["status"], "failed");
    assert_eq!(j["tasks"][0]["taskId"], id.as_str());
    // show miss → exit 1 with a hint
    let miss = cli(state).args(["tasks", "show", "nope"]).output().unwrap();
    assert_eq!(miss.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&miss.stderr).contains("Task not found: nope"));
}
