//! Files and security (issue 11): a root save keeps the file's owner, group
//! and mode; store and lock paths that are not regular files (FIFO, device,
//! directory) are refused before any blocking open; reads are bounded; corrupt,
//! foreign and too-new SQLite databases are `is_corrupt()` on every error type.
//!
//! A test that may hang on a regression (a FIFO blocks `open(2)`) runs the
//! call on a helper thread and fails if no answer arrives within 20 s — a
//! fail-safe bound, not a synchronization.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use lockstore::outbox::{Outbox, OutboxOptions};
use lockstore::tasks::{RegistryOptions, TaskRegistry};
use lockstore::{Durability, Error, JsonOptions, JsonStore};
use serde_json::{json, Value};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn opts() -> JsonOptions {
    let mut o = JsonOptions {
        durability: Durability::Process,
        ..Default::default()
    };
    o.lock.deadline = Duration::from_secs(5);
    o
}

/// Runs `f` on a helper thread; panics if it has not returned within 20 s
/// (the regression this guards against is a blocked `open(2)`).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s (blocked in open or read)"))
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn a_root_save_keeps_the_owner_group_and_mode_of_the_file() {
    if !is_root() {
        eprintln!("skipped: needs euid 0 (this test gives a store to uid {NOBODY})");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("alice.json");
    std::fs::write(&p, br#"{"n":1}"#).unwrap();
    std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let s: JsonStore<Value> = JsonStore::open(&p, opts()).unwrap();
    s.update(|v| v["n"] = json!(2)).unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert!(std::fs::read_to_string(&p).unwrap().contains('2'));
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (NOBODY, NOBODY, 0o640),
        "owner, group and mode after root's save"
    );
    // The lock file root created beside the user's store is the user's too,
    // so the user can still lock her own store.
    let lock = lockstore::lock::lock_path(&p);
    let lm = std::fs::metadata(&lock).unwrap();
    assert_eq!((lm.uid(), lm.gid()), (NOBODY, NOBODY), "{}", lock.display());
}

#[test]
fn a_fifo_store_is_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("pipe.json");
    mkfifo(&p);
    let p2 = p.clone();
    let r = bounded("load of a FIFO", move || {
        let s: JsonStore<Value> = JsonStore::open(&p2, opts()).unwrap();
        s.load().map(|_| ()).map_err(|e| e.to_string())
    });
    let msg = r.expect_err("a FIFO is no store");
    assert!(msg.contains("FIFO") && msg.contains("pipe.json"), "{msg}");
    let p3 = p.clone();
    let r = bounded("update of a FIFO", move || {
        let s: JsonStore<Value> = JsonStore::open(&p3, opts()).unwrap();
        s.update(|v| v["a"] = json!(1)).map_err(|e| e.to_string())
    });
    let msg = r.expect_err("a FIFO is no store");
    assert!(msg.contains("FIFO"), "{msg}");
    // Still a FIFO: nothing was renamed over it.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_fifo());
}

#[test]
fn a_fifo_lock_file_is_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    mkfifo(&lockstore::lock::lock_path(&p));
    let r = bounded("update with a FIFO lock file", move || {
        let s: JsonStore<Value> = JsonStore::open(&p, opts()).unwrap();
        s.update(|v| v["a"] = json!(1)).map_err(|e| e.to_string())
    });
    let msg = r.expect_err("a FIFO is no lock file");
    assert!(msg.contains("s.json.lock") && msg.contains("FIFO"), "{msg}");
}

#[test]
fn a_device_store_is_refused_and_no_lock_file_is_created_beside_it() {
    // /dev/zero would be read forever; /dev/null would get a /dev/null.lock.
    let r = bounded("load of /dev/zero", || {
        let s: JsonStore<Value> = JsonStore::open("/dev/zero", opts()).unwrap();
        s.load().map(|_| ()).map_err(|e| e.to_string())
    });
    let msg = r.expect_err("a device is no store");
    assert!(
        msg.contains("/dev/zero") && msg.contains("character device"),
        "{msg}"
    );
    let existed = Path::new("/dev/null.lock").exists();
    let s: JsonStore<Value> = JsonStore::open("/dev/null", opts()).unwrap();
    let msg = s.update(|v| v["a"] = json!(1)).unwrap_err().to_string();
    assert!(msg.contains("character device"), "{msg}");
    if !existed {
        assert!(
            !Path::new("/dev/null.lock").exists(),
            "/dev/null.lock was created"
        );
    }
}

#[test]
fn a_directory_as_store_is_named_as_a_directory() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dir.json");
    std::fs::create_dir(&p).unwrap();
    let s: JsonStore<Value> = JsonStore::open(&p, opts()).unwrap();
    let msg = s.load().unwrap_err().to_string();
    assert!(
        msg.contains("is a directory") && msg.contains("dir.json"),
        "{msg}"
    );
}

fn outbox_db(dir: &Path) -> PathBuf {
    let p = dir.join("outbox.sqlite");
    drop(Outbox::open(&p, OutboxOptions::default()).unwrap());
    p
}

#[test]
fn a_too_new_database_is_corrupt_on_every_error_type() {
    let d = tempfile::tempdir().unwrap();
    let p = outbox_db(d.path());
    let c = lockstore::rusqlite::Connection::open(&p).unwrap();
    c.execute_batch("PRAGMA user_version=99").unwrap();
    drop(c);
    let e = Outbox::open(&p, OutboxOptions::default()).unwrap_err();
    assert!(e.is_corrupt(), "OutboxError: {e}");
    let e: Error = e.into();
    assert!(e.is_corrupt(), "Error: {e}");

    let t = d.path().join("runs.sqlite");
    drop(TaskRegistry::open(&t, RegistryOptions::default()).unwrap());
    let c = lockstore::rusqlite::Connection::open(&t).unwrap();
    c.execute_batch("PRAGMA user_version=99").unwrap();
    drop(c);
    let e = TaskRegistry::open(&t, RegistryOptions::default()).unwrap_err();
    assert!(e.is_corrupt(), "TaskError: {e}");
    assert!(Error::from(e).is_corrupt());
}

#[test]
fn non_sqlite_and_truncated_databases_are_corrupt_and_named() {
    let d = tempfile::tempdir().unwrap();
    let good = outbox_db(d.path());
    let bytes = std::fs::read(&good).unwrap();
    for (name, content) in [
        ("text.sqlite", b"hello, not a database at all\n".repeat(40)),
        ("truncated.sqlite", bytes[..bytes.len().min(3000)].to_vec()),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, &content).unwrap();
        let e = Outbox::open(&p, OutboxOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(e.is_corrupt(), "{name}: {msg}");
        assert!(msg.contains(name), "{msg}");
        assert_eq!(std::fs::read(&p).unwrap(), content, "{name} left untouched");
    }
}
