//! Sidecar lock protocol: interop with the real `@openclaw/fs-safe` (node) and
//! the reclaim cases. Node tests look for the package under `$LOCKSTORE_FSSAFE_DIR`
//! (default `target/npm`, where `.ci/run` installs it); they are `#[ignore]`d
//! (plain `cargo test` lists them as ignored) and fail with the install hint
//! when run without node or the package. Child roles re-exec this test binary
//! (`LOCKSTORE_SC_ROLE`); readiness is signalled over stdout lines, never sleeps.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use lockstore::lock::lock_path as lock_path_for;
use lockstore::lock::sidecar::{reclaim_definitely_stale, ReclaimOutcome};
use lockstore::{Error, JsonOptions, JsonStore};
use lockstore::{LockOptions, LockProtocol};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");

/// The fs-safe install for the node tests (`#[ignore]`d: plain `cargo test`
/// lists them as ignored; `.ci/run` installs the package and runs them with
/// `--ignored`). Panics with the install hint when node or the package is
/// missing: an ignored test run on purpose must not pass without running.
fn fssafe_dir() -> PathBuf {
    let dir = std::env::var_os("LOCKSTORE_FSSAFE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/npm"));
    let node_ok = Command::new("node")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let pkg = dir.join("node_modules/@openclaw/fs-safe/dist/store.js");
    assert!(
        node_ok && pkg.exists(),
        "node or @openclaw/fs-safe missing ({} not found or no node); run `npm install --prefix target/npm @openclaw/fs-safe@0.21.0` or set LOCKSTORE_FSSAFE_DIR",
        pkg.display()
    );
    dir
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fssafe")
        .join(name)
}

/// A 0700 state dir (fs-safe requires a private directory).
fn state_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn node(fs: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.env("LOCKSTORE_FSSAFE_DIR", fs).args(args);
    c
}

fn ls_incr(file: &Path, repeat: u32, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["json", "incr"])
        .arg(file)
        .arg("/n")
        .args([
            "--repeat",
            &repeat.to_string(),
            "--lock-protocol",
            "sidecar",
        ])
        .args(extra);
    c
}

fn count(file: &Path) -> i64 {
    let v: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    v["n"].as_i64().unwrap()
}

fn wait_line(out: &mut BufReader<ChildStdout>, want: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("child exited before printing {want:?}");
        }
        if line.starts_with(want) {
            return line.trim().to_string();
        }
    }
}

struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
    inp: ChildStdin,
}

fn role(role: &str, envs: &[(&str, String)]) -> Kid {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_entry", "--nocapture"])
        .env("LOCKSTORE_SC_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    spawn_kid(c)
}

fn spawn_kid(mut c: Command) -> Kid {
    // stderr into an anonymous temp file: never the test log, never a full pipe.
    let err = tempfile::tempfile().unwrap();
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
    let mut child = c.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let inp = child.stdin.take().unwrap();
    Kid { child, out, inp }
}

fn sidecar_opts(lease_ms: Option<u64>) -> LockOptions {
    LockOptions {
        protocol: LockProtocol::Sidecar,
        lease: lease_ms.map(Duration::from_millis),
        ..Default::default()
    }
}

/// Child roles (no-op unless `LOCKSTORE_SC_ROLE` is set).
#[test]
fn child_entry() {
    let Ok(r) = std::env::var("LOCKSTORE_SC_ROLE") else {
        return;
    };
    let file = PathBuf::from(std::env::var("LOCKSTORE_SC_FILE").unwrap());
    let lease = std::env::var("LOCKSTORE_SC_LEASE_MS")
        .ok()
        .map(|s| s.parse().unwrap());
    let stdin = std::io::stdin();
    match r.as_str() {
        // Takes the lock, prints HELD, waits for a stdin line, then sets /n = 1.
        "holder" => {
            let store: JsonStore<Value> = JsonStore::open(
                &file,
                JsonOptions {
                    lock: sidecar_opts(lease),
                    ..Default::default()
                },
            )
            .unwrap();
            let res = store.try_update(|doc| {
                println!("HELD");
                std::io::stdout().flush().unwrap();
                let mut l = String::new();
                stdin.lock().read_line(&mut l).unwrap();
                doc["n"] = Value::from(1);
                Ok::<_, Error>(())
            });
            match res {
                Ok(()) => println!("COMMITTED"),
                Err(Error::LockLost { .. }) => {
                    println!("LOCKLOST");
                    std::process::exit(7);
                }
                Err(e) => panic!("{e}"),
            }
        }
        // Per "go" line: acquire, prove exclusivity with an O_EXCL marker.
        "racer" => {
            let marker = PathBuf::from(std::env::var("LOCKSTORE_SC_MARKER").unwrap());
            let w = lockstore::Writer::open(&file, sidecar_opts(None)).unwrap();
            for line in stdin.lock().lines() {
                if line.unwrap() != "go" {
                    break;
                }
                let r: Result<(bool, bool), Error> = w.run(|ctx| {
                    let ok = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&marker)
                        .is_ok();
                    if ok {
                        std::thread::sleep(Duration::from_millis(20));
                        std::fs::remove_file(&marker).unwrap();
                    }
                    Ok((ok, ctx.reclaimed()))
                });
                let (ok, reclaimed) = r.unwrap();
                println!(
                    "R:{} reclaimed={reclaimed}",
                    if ok { "done" } else { "OVERLAP" }
                );
                std::io::stdout().flush().unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// N node processes and M lockstore processes, K increments each.
fn mixed_counter(n: usize, m: usize, k: u32) {
    let fs = fssafe_dir();
    let d = state_dir();
    let file = d.path().join("counter.json");
    let start = Instant::now();
    let mut nodes: Vec<Child> = (0..n)
        .map(|_| {
            node(
                &fs,
                &[
                    script("incr.mjs").to_str().unwrap(),
                    file.to_str().unwrap(),
                    &k.to_string(),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(tempfile::tempfile().unwrap())
            .spawn()
            .unwrap()
        })
        .collect();
    let lss: Vec<Child> = (0..m)
        .map(|_| {
            ls_incr(&file, k, &["--durability", "full"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ls_time = Duration::ZERO;
    for mut c in lss {
        assert!(c.wait().unwrap().success());
        ls_time = ls_time.max(start.elapsed());
    }
    let mut node_ms: Vec<u64> = Vec::new();
    for c in nodes.iter_mut() {
        let mut s = String::new();
        std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut s).unwrap();
        assert!(c.wait().unwrap().success(), "node failed: {s}");
        node_ms.push(s.split_whitespace().nth(2).unwrap().parse().unwrap());
    }
    let total = (n + m) as i64 * i64::from(k);
    assert_eq!(count(&file), total, "lost updates");
    assert!(!lock_path_for(&file).exists(), "sidecar left behind");
    let node_max = *node_ms.iter().max().unwrap() as f64 / 1000.0;
    println!(
        "interop {n}+{m} x {k}: final {total} exact in {:.2} s; node side {:.0} updates/s (slowest {node_max:.2} s), lockstore side {:.0} updates/s (slowest {:.2} s)",
        start.elapsed().as_secs_f64(),
        (n as f64 * f64::from(k)) / node_max,
        (m as f64 * f64::from(k)) / ls_time.as_secs_f64(),
        ls_time.as_secs_f64()
    );
}

#[test]
#[ignore = "needs node and @openclaw/fs-safe"]
fn interop_counter_4_plus_4() {
    mixed_counter(4, 4, 25);
}

#[test]
#[ignore = "needs node and @openclaw/fs-safe"]
fn interop_counter_8_plus_8() {
    mixed_counter(8, 8, 15);
}

#[test]
#[ignore = "needs node and @openclaw/fs-safe"]
fn sigkill_node_holder_lockstore_waiters_reclaim() {
    let fs = fssafe_dir();
    let d = state_dir();
    let file = d.path().join("s.json");
    let mut c = node(
        &fs,
        &[script("hold.mjs").to_str().unwrap(), file.to_str().unwrap()],
    );
    let mut holder = spawn_kid(std::mem::replace(&mut c, Command::new("true")));
    wait_line(&mut holder.out, "HELD");
    let payload = std::fs::read_to_string(lock_path_for(&file)).unwrap();
    assert!(payload.contains("\"createdAt\""), "{payload}");
    kill(Pid::from_raw(holder.child.id() as i32), Signal::SIGKILL).unwrap();
    holder.child.wait().unwrap();
    let t = Instant::now();
    let waiters: Vec<Child> = (0..3)
        .map(|_| {
            ls_incr(&file, 1, &[])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut reclaims = 0;
    for w in waiters {
        let o = w.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        reclaims += err.matches("reclaimed stale sidecar lock").count();
    }
    assert_eq!(reclaims, 1, "one waiter reclaims the dead holder's lock");
    assert_eq!(count(&file), 3);
    assert!(!lock_path_for(&file).exists());
    println!(
        "node holder SIGKILLed: 3 lockstore waiters reclaimed and finished in {} ms",
        t.elapsed().as_millis()
    );
}

#[test]
fn sigkill_lockstore_holder_waiters_reclaim_at_once_via_beacon() {
    let d = state_dir();
    let file = d.path().join("s.json");
    let mut h = role(
        "holder",
        &[("LOCKSTORE_SC_FILE", file.display().to_string())],
    );
    wait_line(&mut h.out, "HELD");
    kill(Pid::from_raw(h.child.id() as i32), Signal::SIGKILL).unwrap();
    h.child.wait().unwrap();
    let t = Instant::now();
    // stale is 60 s: finishing well before proves the beacon, not age, decided.
    let waiters: Vec<Child> = (0..3)
        .map(|_| {
            ls_incr(&file, 1, &[])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut reclaims = 0;
    for w in waiters {
        let o = w.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        reclaims += err.matches("reclaimed stale sidecar lock").count();
    }
    assert_eq!(reclaims, 1, "one waiter reclaims the dead holder's lock");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(count(&file), 3);
    println!(
        "lockstore holder SIGKILLed: waiters reclaimed in {} ms",
        t.elapsed().as_millis()
    );
}

#[test]
fn sigstop_holder_without_lease_is_never_reclaimed() {
    let d = state_dir();
    let file = d.path().join("s.json");
    let mut h = role(
        "holder",
        &[("LOCKSTORE_SC_FILE", file.display().to_string())],
    );
    wait_line(&mut h.out, "HELD");
    let pid = Pid::from_raw(h.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let out = ls_incr(
        &file,
        1,
        &["--lock-timeout-ms", "1500", "--lock-stale-ms", "100"],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        reclaim_definitely_stale(lock_path_for(&file), Duration::ZERO).unwrap(),
        ReclaimOutcome::Retained(format!("lockstore holder pid {} is stopped", h.child.id()))
    );
    kill(pid, Signal::SIGCONT).unwrap();
    writeln!(h.inp, "go").unwrap();
    wait_line(&mut h.out, "COMMITTED");
    assert!(h.child.wait().unwrap().success());
    assert_eq!(count(&file), 1);
}

#[test]
fn sigstop_holder_with_lease_loses_lock_and_keeps_newer_data() {
    let d = state_dir();
    let file = d.path().join("s.json");
    let mut h = role(
        "holder",
        &[
            ("LOCKSTORE_SC_FILE", file.display().to_string()),
            ("LOCKSTORE_SC_LEASE_MS", "300".into()),
        ],
    );
    wait_line(&mut h.out, "HELD");
    let pid = Pid::from_raw(h.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["json", "set"])
        .arg(&file)
        .args(["/n", "100", "--lock-protocol", "sidecar"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    kill(pid, Signal::SIGCONT).unwrap();
    writeln!(h.inp, "go").unwrap();
    wait_line(&mut h.out, "LOCKLOST");
    assert_eq!(h.child.wait().unwrap().code(), Some(7));
    assert_eq!(count(&file), 100, "the newer writer's data is kept");
    assert!(!lock_path_for(&file).exists());
}

fn dead_sidecar(lock: &Path, lockstore_shaped: bool) {
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let body = if lockstore_shaped {
        format!("{{\"pid\": {dead}, \"createdAt\": \"2000-01-01T00:00:00.000Z\", \"lockstore\": {{\"version\": 1, \"flock\": true}}}}\n")
    } else {
        format!("{{\n  \"pid\": {dead},\n  \"createdAt\": \"2000-01-01T00:00:00.000Z\"\n}}\n")
    };
    std::fs::write(lock, body).unwrap();
}

#[test]
fn two_lockstore_reclaimers_exactly_one_wins() {
    let d = state_dir();
    let file = d.path().join("s.json");
    let marker = d.path().join("inside");
    let envs = [
        ("LOCKSTORE_SC_FILE", file.display().to_string()),
        ("LOCKSTORE_SC_MARKER", marker.display().to_string()),
    ];
    let mut kids: Vec<Kid> = (0..4).map(|_| role("racer", &envs)).collect();
    for round in 0..8 {
        dead_sidecar(&lock_path_for(&file), round % 2 == 0);
        for k in kids.iter_mut() {
            writeln!(k.inp, "go").unwrap();
        }
        let lines: Vec<String> = kids
            .iter_mut()
            .map(|k| wait_line(&mut k.out, "R:"))
            .collect();
        assert!(
            lines.iter().all(|l| l.starts_with("R:done")),
            "round {round}: {lines:?}"
        );
        let winners = lines
            .iter()
            .filter(|l| l.ends_with("reclaimed=true"))
            .count();
        assert_eq!(winners, 1, "round {round}: {lines:?}");
        assert!(!lock_path_for(&file).exists());
    }
    for mut k in kids {
        drop(k.inp);
        assert!(k.child.wait().unwrap().success());
    }
}

#[test]
#[ignore = "needs node and @openclaw/fs-safe"]
fn lockstore_and_fssafe_reclaimers_never_two_holders() {
    let fs = fssafe_dir();
    let d = state_dir();
    let file = d.path().join("s.json");
    let marker = d.path().join("inside");
    let envs = [
        ("LOCKSTORE_SC_FILE", file.display().to_string()),
        ("LOCKSTORE_SC_MARKER", marker.display().to_string()),
    ];
    let mut kids: Vec<Kid> = (0..2).map(|_| role("racer", &envs)).collect();
    for _ in 0..2 {
        kids.push(spawn_kid(node(
            &fs,
            &[
                script("reclaimer.mjs").to_str().unwrap(),
                file.to_str().unwrap(),
                marker.to_str().unwrap(),
            ],
        )));
    }
    let rounds = 15;
    for round in 0..rounds {
        dead_sidecar(&lock_path_for(&file), round % 2 == 0);
        for k in kids.iter_mut() {
            writeln!(k.inp, "go").unwrap();
        }
        let lines: Vec<String> = kids
            .iter_mut()
            .map(|k| wait_line(&mut k.out, "R:"))
            .collect();
        assert!(
            lines.iter().all(|l| l.starts_with("R:done")),
            "round {round}: {lines:?}"
        );
        assert!(!lock_path_for(&file).exists());
    }
    for mut k in kids {
        drop(k.inp);
        assert!(k.child.wait().unwrap().success());
    }
    println!("{rounds} rounds of 2 lockstore + 2 fs-safe reclaimers on a dead sidecar: never two holders");
}

#[test]
fn protocols_are_never_mixed() {
    let d = state_dir();
    let file = d.path().join("s.json");
    // The flock protocol leaves its owner-record file behind...
    let st = Command::new(BIN)
        .args(["json", "set"])
        .arg(&file)
        .args(["/n", "1"])
        .status()
        .unwrap();
    assert!(st.success());
    // ...which a sidecar acquirer refuses.
    let out = ls_incr(&file, 1, &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("flock lock protocol"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A flock acquirer refuses a sidecar payload.
    std::fs::remove_file(lock_path_for(&file)).unwrap();
    dead_sidecar(&lock_path_for(&file), false);
    let out = Command::new(BIN)
        .args(["json", "set"])
        .arg(&file)
        .args(["/n", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sidecar lock protocol"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&file), 1);
    // In one process the same store cannot be opened with both.
    let _w = lockstore::Writer::open(&file, sidecar_opts(None)).unwrap();
    assert!(matches!(
        lockstore::Writer::open(&file, LockOptions::default()),
        Err(Error::LockProtocolMismatch { .. })
    ));
}

#[test]
fn cli_status_and_reclaim() {
    let d = state_dir();
    let file = d.path().join("s.json");
    let run = |sub: &str| {
        let o = Command::new(BIN)
            .args(["lock", sub])
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(run("reclaim").starts_with("missing"));
    dead_sidecar(&lock_path_for(&file), false);
    let s = run("status");
    assert!(
        s.contains("protocol sidecar") && s.contains("stale") && s.contains("dead"),
        "{s}"
    );
    let r = run("reclaim");
    assert!(r.starts_with("removed") && r.contains("dead"), "{r}");
    std::fs::write(
        lock_path_for(&file),
        format!(
            "{{\"pid\": {}, \"createdAt\": \"2000-01-01T00:00:00.000Z\"}}",
            std::process::id()
        ),
    )
    .unwrap();
    let r = run("reclaim");
    assert!(r.starts_with("retained") && r.contains("running"), "{r}");
    assert!(lock_path_for(&file).exists());
}
