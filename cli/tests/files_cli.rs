//! Files, security and error messages of the CLI (issue 11): state-dir
//! ownership, file types, broken pipe, control characters, SQLite error
//! classification and exit codes, and the small error-message items.
//!
//! Some tests need root (chown to `nobody`, `runuser`, a tmpfs mount); they
//! print why and return when that is not available. Waits are on process
//! exits and pipes; the few calls that could hang on a regression are bounded
//! with `timeout(1)` as a fail-safe.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::lockstore;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run lockstore")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh state dir (0700, owned by the caller) inside a temp dir.
fn state() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("state");
    std::fs::create_dir(&s).unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o700)).unwrap();
    (d, s)
}

fn with_state(s: &Path, args: &[&str]) -> Output {
    // --state-dir first: after `tasks run ... --` it would be the command's.
    let mut c = lockstore(["--state-dir".as_ref(), s.as_os_str()]);
    c.args(args);
    c.env_remove("LOCKSTORE_INSECURE_STATE_DIR");
    run(c)
}

fn enqueue(s: &Path, channel: &str, target: &str, key: Option<&str>) {
    let mut args = vec![
        "outbox",
        "enqueue",
        "--channel",
        channel,
        "--target",
        target,
        "--payload",
        "{}",
        "--durability",
        "process",
    ];
    if let Some(k) = key {
        args.extend(["--key", k]);
    }
    let o = with_state(s, &args);
    assert!(o.status.success(), "enqueue: {}", text(&o.stderr));
}

// ---- item 12: state-dir ownership and modes --------------------------------

#[test]
fn a_group_or_world_writable_state_dir_is_refused_with_the_fix() {
    let (_d, s) = state();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["tasks", "list"][..], &["outbox", "list"], &["status"]] {
        let o = with_state(&s, args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("chmod go-w") && err.contains(&s.display().to_string()),
            "{err}"
        );
    }
    // The daemon gets the same check (it would otherwise run forever).
    let mut c = lockstore(["daemon"]);
    c.arg("--state-dir").arg(&s);
    let o = run(c);
    assert_eq!(o.status.code(), Some(1), "daemon: {}", text(&o.stderr));
    assert!(!s.join("daemon.lock").exists(), "nothing created");
    // The explicit override.
    let mut c = lockstore(["tasks", "list"]);
    c.arg("--state-dir")
        .arg(&s)
        .env("LOCKSTORE_INSECURE_STATE_DIR", "1");
    let o = run(c);
    assert!(o.status.success(), "override: {}", text(&o.stderr));
}

#[test]
fn a_symlinked_store_dir_is_refused() {
    let (d, s) = state();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.join("outbox")).unwrap();
    let o = with_state(
        &s,
        &[
            "outbox",
            "enqueue",
            "--channel",
            "c",
            "--target",
            "t",
            "--payload",
            "{}",
        ],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("symbolic link") && err.contains("outbox"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs euid 0 to give the state dir to uid {NOBODY}");
        return;
    }
    let (_d, s) = state();
    std::os::unix::fs::chown(&s, Some(NOBODY), Some(NOBODY)).unwrap();
    let o = with_state(&s, &["tasks", "list"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("owned by uid {NOBODY}")) && err.contains("chown"),
        "{err}"
    );
}

#[test]
fn a_json_file_in_sticky_tmp_keeps_working() {
    let p = std::env::temp_dir().join(format!("lockstore-files-{}.json", std::process::id()));
    let o = run(lockstore([
        "json",
        "set",
        p.to_str().unwrap(),
        "/a",
        "1",
        "--durability",
        "process",
    ]));
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(lockstore::lock::lock_path(&p));
    let mut w = lockstore::lock::lock_path(&p).into_os_string();
    w.push(".waiters");
    let _ = std::fs::remove_file(w);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

// ---- item 15: file types ------------------------------------------------------

fn bounded(args: &[&str]) -> Output {
    // timeout(1) as a fail-safe: a FIFO used to block open(2) forever; the
    // address-space cap keeps a regression on /dev/zero from eating the host.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -v 4000000; exec timeout 20 \"$@\"")
        .arg("sh")
        .arg(common::bin())
        .args(args)
        .env("RUST_LOG", "warn");
    run(c)
}

#[test]
fn fifos_and_devices_are_refused_with_exit_1_naming_the_type() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("f.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let f = fifo.to_str().unwrap();
    for (args, kind) in [
        (vec!["json", "get", f], "FIFO"),
        (vec!["json", "set", f, "/a", "1"], "FIFO"),
        (vec!["json", "get", "/dev/zero"], "character device"),
        (
            vec!["json", "set", "/dev/null", "/a", "1"],
            "character device",
        ),
    ] {
        let o = bounded(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(kind) && err.contains(args[2]),
            "{args:?}: {err}"
        );
    }
    // A device as lock file.
    let store = d.path().join("s.json");
    std::os::unix::fs::symlink("/dev/null", d.path().join("s.json.lock")).unwrap();
    let o = bounded(&["json", "set", store.to_str().unwrap(), "/a", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(!store.exists());
}

// ---- item 16a: broken pipe -----------------------------------------------------

/// Spawns `c` with stdout piped, reads one line, closes the pipe, and returns
/// the exit status and stderr.
fn read_one_line_then_close(mut c: Command) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the child printed nothing");
    drop(out); // the reader goes away, like `| head -1`
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    (st.code(), st.signal(), err)
}

#[test]
fn a_closed_stdout_ends_quietly_with_exit_141() {
    let d = tempfile::tempdir().unwrap();
    // A document whose pretty print is far larger than a pipe buffer.
    let p = d.path().join("big.json");
    let big: Vec<u64> = (0..200_000).collect();
    std::fs::write(
        &p,
        serde_json::to_vec(&serde_json::json!({ "a": big })).unwrap(),
    )
    .unwrap();
    let (code, sig, err) =
        read_one_line_then_close(lockstore(["json", "get", p.to_str().unwrap()]));
    assert_eq!((code, sig), (Some(141), None), "json get: stderr {err:?}");
    assert_eq!(err, "", "nothing on stderr");

    // outbox list with more rows than a pipe buffer holds.
    let s = d.path().join("state");
    {
        let ob = lockstore::outbox::Outbox::open(lockstore::paths::outbox_db(&s), {
            let mut o = lockstore::outbox::OutboxOptions::default();
            o.sqlite.durability = lockstore::Durability::Process;
            o
        })
        .unwrap();
        for i in 0..1500 {
            ob.enqueue(
                &lockstore::outbox::NewMessage {
                    channel: "chan".into(),
                    target: format!("target-{i:0>60}"),
                    payload: serde_json::json!({}),
                    ..Default::default()
                },
                std::time::SystemTime::now(),
            )
            .unwrap();
        }
    }
    let mut c = lockstore(["outbox", "list", "--limit", "100000"]);
    c.arg("--state-dir").arg(&s);
    let (code, sig, err) = read_one_line_then_close(c);
    assert_eq!(
        (code, sig),
        (Some(141), None),
        "outbox list: stderr {err:?}"
    );
    assert_eq!(err, "", "nothing on stderr");
}

// ---- item 14: control characters ---------------------------------------------

const EVIL: &str = "x\u{1b}]0;pwned\u{7}\u{1b}[2Jy";

#[test]
fn human_lists_escape_control_characters_and_json_stays_exact() {
    let (_d, s) = state();
    enqueue(&s, EVIL, &format!("to{EVIL}"), Some(&format!("k{EVIL}")));
    let o = with_state(&s, &["outbox", "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "raw escapes: {out:?}"
    );
    assert!(out.contains("x\\x1b]0;pwned\\x07\\x1b[2Jy"), "{out}");
    let o = with_state(&s, &["outbox", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["channel"], EVIL, "--json is exact: {v}");

    let o = with_state(&s, &["tasks", "run", "--label", EVIL, "--", "true"]);
    assert!(o.status.success(), "tasks run: {}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_string();
    for args in [vec!["tasks", "list"], vec!["tasks", "show", id.as_str()]] {
        let o = with_state(&s, &args);
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "{args:?}: {out:?}"
        );
        assert!(out.contains("\\x1b"), "{args:?}: {out}");
    }
}

// ---- item 17: SQLite classification and exit codes -----------------------------

fn outbox_file(s: &Path) -> PathBuf {
    lockstore::paths::outbox_db(s)
}

#[test]
fn corrupt_foreign_and_too_new_databases_exit_2_naming_the_file() {
    let (_d, s) = state();
    enqueue(&s, "c", "t", None);
    let db = outbox_file(&s);
    let good = std::fs::read(&db).unwrap();
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "not a database",
            Box::new(|p: &Path| std::fs::write(p, b"hello, not sqlite\n".repeat(50)).unwrap()),
        ),
        (
            "truncated",
            Box::new({
                let good = good.clone();
                move |p: &Path| std::fs::write(p, &good[..good.len().min(3000)]).unwrap()
            }),
        ),
        (
            "too new",
            Box::new({
                let good = good.clone();
                move |p: &Path| {
                    std::fs::write(p, &good).unwrap();
                    let c = lockstore::rusqlite::Connection::open(p).unwrap();
                    c.execute_batch("PRAGMA user_version=99").unwrap();
                }
            }),
        ),
        (
            "foreign",
            Box::new(|p: &Path| {
                let c = lockstore::rusqlite::Connection::open(p).unwrap();
                c.execute_batch("CREATE TABLE theirs(x)").unwrap();
            }),
        ),
    ];
    for (what, make) in cases {
        for side in ["-wal", "-shm"] {
            let mut x = db.clone().into_os_string();
            x.push(side);
            let _ = std::fs::remove_file(x);
        }
        std::fs::remove_file(&db).unwrap();
        make(&db);
        let o = with_state(&s, &["outbox", "list"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(&db.display().to_string()), "{what}: {err}");
    }
}

#[test]
fn a_database_the_user_cannot_write_says_so() {
    if !is_root() || Command::new("runuser").arg("--help").output().is_err() {
        eprintln!("skipped: needs euid 0 and runuser to run the CLI as uid {NOBODY}");
        return;
    }
    // The state dir belongs to root (allowed for everyone), 0755; the
    // database is root's 0644: nobody may read but not write it.
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = d.path().join("state");
    std::fs::create_dir(&s).unwrap();
    enqueue(&s, "c", "t", None);
    for p in [s.clone(), s.join("outbox")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let db = outbox_file(&s);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The binary must be reachable by nobody: run it from a copy in the dir.
    let bin = d.path().join("lockstore");
    std::fs::copy(common::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"])
            .arg(&bin)
            .arg("--state-dir")
            .arg(&s)
            .args(args);
        run(c)
    };
    let o = as_nobody(&["outbox", "list"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("may not read and write"),
        "{err}"
    );
    assert!(!err.contains("is it a SQLite database"), "{err}");

    // Writable file, but its WAL is gone and the directory is not writable.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody(&["outbox", "list"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("WAL file is missing and cannot be created"),
        "{err}"
    );
}

/// A tmpfs of `size` at a fresh directory, unmounted on drop; `None` when
/// mounting is not possible here.
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            return None;
        }
        let d = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "none",
            ])
            .arg(d.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(d))
    }
    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt}");
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn read_only_and_full_file_systems_say_so() {
    let Some(fs) = Tmpfs::mount("2m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
        return;
    };
    let s = fs.0.path().join("state");
    enqueue(&s, "c", "t", None);
    let o = with_state(&s, &["tasks", "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    fs.remount("ro");
    for args in [&["outbox", "list"][..], &["tasks", "list"]] {
        let o = with_state(&s, args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains("read-only"), "{args:?}: {err}");
        assert!(!err.contains("is it a SQLite database"), "{err}");
    }
    fs.remount("rw");
    // Fill the file system, then ask for more.
    let fill = fs.0.path().join("fill");
    let _ = std::fs::write(&fill, vec![0u8; 4 << 20]);
    let payload = format!("{{\"x\":\"{}\"}}", "a".repeat(100_000));
    let o = with_state(
        &s,
        &[
            "outbox",
            "enqueue",
            "--channel",
            "c",
            "--target",
            "t",
            "--payload",
            &payload,
        ],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("full"), "{err}");
}

// ---- item 18: small error messages ---------------------------------------------

#[test]
fn an_overflowing_ttl_is_too_large() {
    let (_d, s) = state();
    let o = with_state(
        &s,
        &[
            "outbox",
            "enqueue",
            "--channel",
            "c",
            "--target",
            "t",
            "--payload",
            "{}",
            "--ttl",
            "999999999999d",
        ],
    );
    let err = text(&o.stderr);
    assert!(!o.status.success(), "accepted: {}", text(&o.stdout));
    assert!(err.contains("too large"), "{err}");
}

#[test]
fn an_empty_state_dir_variable_counts_as_unset() {
    let d = tempfile::tempdir().unwrap();
    let o = run({
        let mut c = lockstore(["status"]);
        c.env("LOCKSTORE_STATE_DIR", "")
            .env("XDG_STATE_HOME", d.path())
            .env_remove("LOCKSTORE_INSECURE_STATE_DIR");
        c
    });
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&d.path().join("lockstore").display().to_string()));
}

#[test]
fn no_state_dir_variables_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let mut c = lockstore(["status"]);
    c.current_dir(d.path())
        .env_remove("LOCKSTORE_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME");
    let o = run(c);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for v in ["LOCKSTORE_STATE_DIR", "XDG_STATE_HOME", "HOME"] {
        assert!(err.contains(v), "{err}");
    }
    assert!(
        !d.path().join(".lockstore").exists(),
        "no relative state dir"
    );
}

#[test]
fn lock_reclaim_on_a_flock_store_explains_instead_of_suggesting_a_flag() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    let o = run(lockstore(["json", "set", p.to_str().unwrap(), "/a", "1"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(lockstore(["lock", "reclaim", p.to_str().unwrap()]));
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("protocol flock") && out.contains("nothing to reclaim"),
        "{out}"
    );
    assert!(!err.contains("--lock-protocol"), "{err}");
}

#[test]
fn import_legacy_names_a_duplicate_id_and_both_files() {
    let (d, s) = state();
    let q = d.path().join("legacy/delivery-queue");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(
        q.join("a.json"),
        br#"{"id":"dup","channel":"c","to":"t","enqueuedAt":1}"#,
    )
    .unwrap();
    std::fs::write(
        q.join("b.json"),
        br#"{"id":"dup","channel":"d","to":"u","enqueuedAt":2}"#,
    )
    .unwrap();
    let o = with_state(
        &s,
        &[
            "outbox",
            "import-legacy",
            d.path().join("legacy").to_str().unwrap(),
        ],
    );
    let err = text(&o.stderr);
    assert!(err.contains("duplicate id") && err.contains("dup"), "{err}");
    assert!(err.contains("a.json") && err.contains("b.json"), "{err}");
    assert!(!err.contains("did not read back"), "{err}");
    assert!(q.join("b.json").exists(), "the duplicate is left in place");
}
