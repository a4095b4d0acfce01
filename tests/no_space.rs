//! A full disk is reported as such: `is_no_space()` holds for a JSON store
//! with and without group commit (also for every member of a batch that
//! closes on the full disk) and for the task registry (SQLITE_FULL), and the
//! old file / rows stay intact.
//!
//! Needs to mount a small tmpfs (root). Where that is not permitted the test
//! prints `SKIP: cannot mount tmpfs` and passes — unless `CI=true`, where it
//! fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::SystemTime;

use lockstore::tasks::{NewTask, RegistryOptions, Runtime, TaskRegistry};
use lockstore::GroupCommit;
use lockstore::{Durability, Error, JsonOptions, JsonStore};

/// A tmpfs mounted on a temp dir; unmounted on drop (also when a test panics).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs { dir });
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot mount tmpfs in CI (the tests run as root there)"
        );
        println!("SKIP: cannot mount tmpfs");
        None
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Fills the file system: a filler file grown until ENOSPC.
    fn fill(&self) -> PathBuf {
        let p = self.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Doc {
    items: Vec<String>,
}

fn json_store(p: &Path, group: bool) -> JsonStore<Doc> {
    JsonStore::open(
        p,
        JsonOptions {
            durability: Durability::Full,
            group_commit: GroupCommit {
                enabled: group,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap()
}

fn task(reg: &TaskRegistry, label: &str) -> String {
    reg.create(
        NewTask {
            runtime: Some(Runtime::Cli),
            task: label.into(),
            ..Default::default()
        },
        SystemTime::now(),
    )
    .unwrap()
    .0
    .task_id
}

/// Sets a summary larger than the whole file system on task `id`.
fn grow(reg: &TaskRegistry, id: &str) -> Result<(), lockstore::tasks::TaskError> {
    reg.update(id, |t| {
        t.progress_summary = Some("x".repeat(1_200_000));
        Ok(true)
    })
    .map(|_| ())
}

#[test]
fn full_disk_is_no_space_everywhere_and_keeps_the_old_state() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let solo_path = fs.path().join("solo.json");
    let grouped_path = fs.path().join("grouped.json");
    let solo = json_store(&solo_path, false);
    let grouped = json_store(&grouped_path, true);
    solo.update(|d| d.items.push("old".into())).unwrap();
    grouped.update(|d| d.items.push("old".into())).unwrap();
    let reg =
        TaskRegistry::open(fs.path().join("runs.sqlite"), RegistryOptions::default()).unwrap();
    let ids: Vec<String> = (0..4).map(|i| task(&reg, &format!("t{i}"))).collect();
    let (solo_before, grouped_before) = (
        std::fs::read(&solo_path).unwrap(),
        std::fs::read(&grouped_path).unwrap(),
    );
    let filler = fs.fill();

    // JSON, no group commit.
    let e = solo.update(|d| d.items.push("new".into())).unwrap_err();
    assert!(e.is_no_space(), "{e:?}");
    // JSON, group commit, one writer.
    let e = grouped.update(|d| d.items.push("new".into())).unwrap_err();
    assert!(e.is_no_space(), "{e:?}");
    // JSON, group commit, a batch of four: the head holds the queue until
    // three more are queued behind it; the batch's save hits the full disk
    // and every member is told so.
    let results: Vec<Result<(), Error>> = std::thread::scope(|sc| {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let g = &grouped;
        let mut hs = vec![sc.spawn(move || {
            g.update(|d| {
                go_rx.recv().unwrap();
                d.items.push("head".into());
            })
        })];
        while g.writer().queued() < 1 {
            std::thread::yield_now();
        }
        for i in 0..3 {
            hs.push(sc.spawn(move || g.update(move |d| d.items.push(format!("m{i}")))));
            while g.writer().queued() < i + 2 {
                std::thread::yield_now();
            }
        }
        go_tx.send(()).unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_no_space(), "{e:?}");
    }
    assert_eq!(std::fs::read(&solo_path).unwrap(), solo_before);
    assert_eq!(std::fs::read(&grouped_path).unwrap(), grouped_before);
    assert_eq!(solo.load().unwrap().items, vec!["old".to_string()]);

    // The task registry, alone and as a batch of mutations.
    let e = grow(&reg, &ids[0]).unwrap_err();
    assert!(e.is_no_space(), "{e:?}");
    let results: Vec<_> = std::thread::scope(|sc| {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (r, ids) = (&reg, &ids);
        let mut hs = vec![sc.spawn(move || {
            r.update(&ids[0], |t| {
                go_rx.recv().unwrap();
                t.progress_summary = Some("y".repeat(1_200_000));
                Ok(true)
            })
            .map(|_| ())
        })];
        while r.queued_writers() < 1 {
            std::thread::yield_now();
        }
        for (i, id) in ids.iter().enumerate().skip(1) {
            hs.push(sc.spawn(move || grow(r, id)));
            while r.queued_writers() < i + 1 {
                std::thread::yield_now();
            }
        }
        go_tx.send(()).unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_no_space(), "{e:?}");
    }
    // Memory and SQLite still have the old rows.
    let c = rusqlite::Connection::open(reg.path()).unwrap();
    for id in &ids {
        assert_eq!(reg.get(id).unwrap().unwrap().progress_summary, None);
        let s: Option<String> = c
            .query_row(
                "SELECT progress_summary FROM task_runs WHERE task_id = ?1",
                [id],
                |x| x.get(0),
            )
            .unwrap();
        assert_eq!(s, None);
    }
    drop(c);

    // With space again, writes succeed.
    std::fs::remove_file(filler).unwrap();
    grouped.update(|d| d.items.push("new".into())).unwrap();
    reg.record_progress(&ids[0], Some("ok"), SystemTime::now())
        .unwrap();
    drop((solo, grouped, reg));
}
