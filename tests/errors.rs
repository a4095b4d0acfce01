//! The umbrella error: each store's error converts into `lockstore::Error`,
//! a wrapped core error comes back out as itself, and `path()`,
//! `is_corrupt()`, `is_lock_timeout()` answer through the conversion.

use std::time::{Duration, SystemTime};

use lockstore::commitments::{CommitmentsConfig, CommitmentsError, CommitmentsStore, StatusFilter};
use lockstore::outbox::{OutboxError, Status};
use lockstore::tasks::{RegistryOptions, TaskError, TaskRegistry};
use lockstore::{Error, JsonOptions, JsonStore, LockOptions};

#[test]
fn a_corrupt_envelope_is_the_core_corrupt_error_after_conversion() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    std::fs::write(&p, b"{ not json").unwrap();
    let s = CommitmentsStore::open_file(&p, CommitmentsConfig::default()).unwrap();
    let e = s
        .list(StatusFilter::All, None, SystemTime::now())
        .unwrap_err();
    assert!(matches!(e, CommitmentsError::Core(_)), "{e}");
    assert!(e.is_corrupt());
    let e: Error = e.into();
    assert!(
        matches!(e, Error::Corrupt { .. }),
        "unwrapped, not nested: {e:?}"
    );
    assert!(e.is_corrupt() && !e.is_no_space() && !e.is_lock_timeout());
    assert_eq!(e.path(), Some(p.canonicalize().unwrap().as_path()));
    assert_eq!(std::fs::read(&p).unwrap(), b"{ not json", "left untouched");
}

#[test]
fn invalid_records_stay_corrupt_through_the_umbrella() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    std::fs::write(&p, br#"{"version":1,"commitments":[{"id":"x"}]}"#).unwrap();
    let s = CommitmentsStore::open_file(&p, CommitmentsConfig::default()).unwrap();
    let e: Error = s
        .list(StatusFilter::All, None, SystemTime::now())
        .unwrap_err()
        .into();
    assert!(matches!(e, Error::Commitments(_)), "{e:?}");
    assert!(e.is_corrupt(), "{e}");
    assert!(e.to_string().contains("invalid commitment record"), "{e}");
}

#[test]
fn task_and_outbox_errors_keep_their_path_or_say_they_have_none() {
    let d = tempfile::tempdir().unwrap();
    let reg = TaskRegistry::open(d.path().join("runs.sqlite"), RegistryOptions::default()).unwrap();
    let e = reg.lookup("no-such-task").unwrap_err();
    assert!(matches!(e, TaskError::NotFound { .. }), "{e}");
    let e: Error = e.into();
    assert!(matches!(e, Error::Tasks(_)));
    assert!(
        e.path().is_some_and(|p| p.ends_with("runs.sqlite")),
        "{e:?}"
    );
    assert!(!e.is_corrupt() && !e.is_lock_timeout());

    let e = "bogus".parse::<Status>().unwrap_err();
    assert!(matches!(e, OutboxError::UnknownStatus { .. }));
    let e: Error = e.into();
    assert!(e.path().is_none());
    assert!(e.to_string().contains("bogus"));
}

#[test]
fn a_lock_timeout_is_a_lock_timeout_through_every_store_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    // Pending commitments, so expiring them ten years from now is a real change.
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openclaw-commitments.json"
        ),
        &p,
    )
    .unwrap();
    let quick = LockOptions {
        max_retries: Some(0),
        ..LockOptions::default().with_deadline(Duration::ZERO)
    };
    let cfg = CommitmentsConfig {
        lock: quick.clone(),
        ..CommitmentsConfig::default()
    };
    let s = CommitmentsStore::open_file(&p, cfg).unwrap();
    // Another thread holds the store's exclusive section while we mutate.
    let holder: JsonStore<serde_json::Value> = JsonStore::open(&p, JsonOptions::default()).unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|sc| {
        let holder = &holder;
        sc.spawn(move || {
            holder
                .update(|_| {
                    held_tx.send(()).unwrap();
                    done_rx.recv().unwrap();
                })
                .unwrap();
        });
        held_rx.recv().unwrap();
        let e = s.expire(SystemTime::now() + Duration::from_secs(365 * 86_400 * 10));
        done_tx.send(()).unwrap();
        let e = e.expect_err("the section is held");
        assert!(e.is_lock_timeout(), "{e}");
        let e: Error = e.into();
        assert!(e.is_lock_timeout(), "{e}");
    });
}
