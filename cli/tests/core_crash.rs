//! Crashes and stalls of the lock holder: SIGKILL inside the critical section,
//! aborts at the atomic save's failpoints, SIGSTOP, and a save that hits the
//! file size limit (EFBIG, the stand-in for ENOSPC: CI runs as root, so
//! chmod-based failures do not work).

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rstest::rstest;

use common::*;
use lockstore::{run_exclusive, Error, LockOptions, Writer};
use lockstore::{write_atomic, Durability};

/// Child role `hold:<mode>`: takes the store's exclusive section through the
/// library, prepares per `mode`, prints `INSIDE`, waits for a line on stdin,
/// leaves, prints `RELEASED`.
/// * `plain`: nothing else.
/// * `temp`: leaves a partial temp file as a save in progress would.
/// * `saved`: leaves a temp file and also saves `{"v":"new"}` atomically.
fn hold(store: &Path, mode: &str) {
    let w = Writer::open(store, LockOptions::default()).unwrap();
    w.run(|_ctx| -> Result<(), Error> {
        if mode == "temp" || mode == "saved" {
            std::fs::write(temp_name_for(store, std::process::id()), b"{\"v\": \"ne").unwrap();
        }
        if mode == "saved" {
            write_atomic(store, b"{\"v\":\"new\"}\n", Durability::Full)?;
        }
        signal("INSIDE");
        wait_for_parent();
        Ok(())
    })
    .unwrap();
    signal("RELEASED");
}

#[test]
fn child_role() {
    if let Some((role, store)) = role() {
        if let Some(mode) = role.strip_prefix("hold:") {
            hold(&store, mode);
        }
    }
}

fn seed_old(store: &Path) {
    write_atomic(store, b"{\"v\":\"old\"}\n", Durability::Full).unwrap();
}

/// SIGKILL the holder inside its critical section: a waiter that was already
/// blocked gets the lock within 1 s, sees `reclaimed()`, the reclaim is counted
/// (and logged at warn), the dead holder's temp file is gone before the new
/// holder's closure runs, and the JSON is whole: old, or new if the holder had
/// saved before dying.
#[rstest]
fn sigkill_holder_is_reclaimed(#[values("temp", "saved")] mode: &str) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    seed_old(&store);
    let mut h = RoleChild::spawn("child_role", &format!("hold:{mode}"), &store);
    h.expect("INSIDE");
    assert_eq!(temps(&store).len(), 1, "the holder left its temp file");
    let before = lockstore::lock::reclaim_count();

    let (tx, rx) = mpsc::channel();
    let mut opts = LockOptions::default().with_deadline(Duration::from_secs(10));
    opts.on_wait = Some(Arc::new(move |_p: &Path, holder| {
        let _ = tx.send(holder.map(|h| h.record.pid));
    }));
    let st = store.clone();
    let waiter = std::thread::spawn(move || {
        run_exclusive(&st, &opts, |ctx| {
            Ok::<_, Error>((ctx.reclaimed(), Instant::now(), temps(&st)))
        })
    });
    // The waiter is blocked on the OS lock and has read the holder's record.
    assert_eq!(rx.recv().unwrap(), Some(h.pid() as u32));
    let killed = Instant::now();
    kill(Pid::from_raw(h.pid()), Signal::SIGKILL).unwrap();
    let (reclaimed, got_at, temps_inside) = waiter.join().unwrap().unwrap();
    let _ = h.child.wait();
    let after_kill = got_at.duration_since(killed);
    assert!(after_kill < Duration::from_secs(1), "took {after_kill:?}");
    assert!(reclaimed, "the acquisition must report the reclaim");
    assert!(lockstore::lock::reclaim_count() > before);
    assert!(
        temps_inside.is_empty(),
        "orphan temp left: {temps_inside:?}"
    );
    let want = if mode == "saved" { "new" } else { "old" };
    assert_eq!(read_json(&store)["v"], want);
    eprintln!("sigkill({mode}): next holder in {after_kill:?}");
}

/// `lockstore json set` aborts at each failpoint of the atomic save; the store
/// is always whole (old before the rename, new after it), and the next
/// acquisition reclaims the lock (logged) and removes the dead writer's temp.
#[rstest]
fn crash_window_leaves_store_whole(
    #[values("after_temp_write", "before_fsync", "after_rename", "before_dir_fsync")] fp: &str,
) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    let st = lockstore(["json", "set", "--string"])
        .arg(&store)
        .args(["/v", "old"])
        .status()
        .unwrap();
    assert!(st.success());
    let mut crash = lockstore(["json", "set", "--string"]);
    crash
        .arg(&store)
        .args(["/v", "new"])
        .env("LOCKSTORE_FAILPOINT", fp);
    // SAFETY: setrlimit is async-signal-safe; no core files from the aborts.
    unsafe {
        crash.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
                .map_err(std::io::Error::from)
        });
    }
    let out = crash.output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGABRT),
        "{fp}: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let renamed = matches!(fp, "after_rename" | "before_dir_fsync");
    let want = if renamed { "new" } else { "old" };
    assert_eq!(read_json(&store)["v"], want, "{fp}");
    if !renamed {
        assert_eq!(temps(&store).len(), 1, "{fp}: the abort leaves the temp");
    }
    let next = lockstore(["json", "set"])
        .arg(&store)
        .args(["/w", "1"])
        .output()
        .unwrap();
    assert!(next.status.success());
    let err = String::from_utf8_lossy(&next.stderr);
    assert!(
        err.contains("reclaimed lock"),
        "{fp}: no reclaim logged: {err}"
    );
    assert!(temps(&store).is_empty(), "{fp}: {:?}", temps(&store));
    let doc = read_json(&store);
    assert_eq!(doc["v"], want);
    assert_eq!(doc["w"], 1);
}

/// SIGSTOP the holder: a waiter with a short deadline fails with LockTimeout
/// naming the pid and `stopped` (library and CLI, exit 3); after SIGCONT the
/// holder finishes and the next writer proceeds normally.
#[test]
fn sigstop_holder_times_out_then_proceeds() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    seed_old(&store);
    let mut h = RoleChild::spawn("child_role", "hold:plain", &store);
    h.expect("INSIDE");
    let pid = Pid::from_raw(h.pid());
    kill(pid, Signal::SIGSTOP).unwrap();
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
        other => panic!("holder not stopped: {other:?}"),
    }
    let short = LockOptions::default().with_deadline(Duration::from_millis(300));
    let err = run_exclusive(&store, &short, |_| Ok::<_, Error>(())).unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {}", h.pid())), "{msg}");
    assert!(msg.contains("stopped"), "{msg}");

    let out = lockstore(["json", "set"])
        .arg(&store)
        .args(["/x", "1", "--lock-timeout-ms", "300"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {}", h.pid())) && err.contains("stopped"),
        "{err}"
    );
    assert!(err.contains("Blocking waiting for file lock"), "{err}");

    kill(pid, Signal::SIGCONT).unwrap();
    h.send("go");
    h.expect("RELEASED");
    h.wait_ok();
    let reclaimed = run_exclusive(&store, &LockOptions::default(), |ctx| {
        Ok::<_, Error>(ctx.reclaimed())
    })
    .unwrap();
    assert!(!reclaimed, "a clean release is not a reclaim");
    let st = lockstore(["json", "set"])
        .arg(&store)
        .args(["/x", "1"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(read_json(&store)["x"], 1);
}

/// A save that hits RLIMIT_FSIZE (EFBIG, with SIGXFSZ ignored) fails with an
/// I/O error naming the file (exit 4) and leaves the old file byte-for-byte
/// intact and no temp file.
#[rstest]
fn efbig_during_save_keeps_old_file(#[values("full", "process")] durability: &str) {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s.json");
    seed_old(&store);
    let old = std::fs::read(&store).unwrap();
    let big = "x".repeat(64 * 1024);
    let mut c = lockstore(["json", "set", "--string", "--durability", durability]);
    c.arg(&store).args(["/big", &big]);
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            use nix::sys::resource::{setrlimit, Resource};
            use nix::sys::signal::{signal, SigHandler};
            setrlimit(Resource::RLIMIT_FSIZE, 16 * 1024, 16 * 1024)
                .map_err(std::io::Error::from)?;
            signal(Signal::SIGXFSZ, SigHandler::SigIgn).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains("s.json"), "the error names the file: {err}");
    assert_eq!(std::fs::read(&store).unwrap(), old, "old file changed");
    assert!(temps(&store).is_empty(), "{:?}", temps(&store));
}
