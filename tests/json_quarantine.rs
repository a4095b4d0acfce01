//! Quarantine files never overwrite each other (issue 11, item 4): six
//! quarantines in one millisecond, or after the clock stepped back onto names
//! already taken, leave six files and every older file intact.

use std::path::{Path, PathBuf};

use lockstore::{JsonOptions, JsonStore};

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Files in `dir` whose name starts with `prefix`.
fn with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Decoys `<base><ms>` (symbolic links to "decoy") for every millisecond
/// from now until at least 300 ms after they exist: the names that six
/// quarantines in one millisecond, or a clock stepped back, run into.
fn decoys(base: &str) -> Vec<PathBuf> {
    let mut span = 500;
    let mut made = Vec::new();
    loop {
        let start = now_ms();
        for ms in start..start + span {
            let p = PathBuf::from(format!("{base}{ms}"));
            if std::fs::symlink_metadata(&p).is_err() {
                std::os::unix::fs::symlink("decoy", &p).unwrap();
                made.push(p);
            }
        }
        if now_ms() + 300 < start + span {
            return made;
        }
        span *= 2;
    }
}

fn intact(decoys: &[PathBuf]) {
    for p in decoys {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert!(
            m.file_type().is_symlink(),
            "{} was overwritten",
            p.display()
        );
    }
}

#[test]
fn json_quarantine_never_overwrites_an_earlier_quarantine() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("s.json");
    let store: JsonStore<serde_json::Value> = JsonStore::open(&f, JsonOptions::default()).unwrap();
    let taken = decoys(&format!("{}.corrupt-", f.display()));
    let mut moved = Vec::new();
    for i in 0..6 {
        std::fs::write(&f, format!("{{corrupt {i}")).unwrap();
        moved.push(store.quarantine().unwrap().expect("a file was there"));
    }
    intact(&taken);
    assert_eq!(
        with_prefix(d.path(), "s.json.corrupt-").len(),
        taken.len() + 6,
        "every quarantine keeps its own file"
    );
    for (i, p) in moved.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            format!("{{corrupt {i}")
        );
    }
}
