//! `lockstore::Collection`: operations, scans, transactions, group commit,
//! corrupt records, foreign databases, the cache's cross-connection
//! coherence, import / export of JSON documents.

use std::ops::Bound;
use std::path::Path;
use std::sync::mpsc;

use lockstore::rusqlite::Connection;
use lockstore::{Collection, CollectionOptions, Durability, Encoding, Error, GroupCommit};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    turns: u64,
    label: String,
}

fn s(turns: u64) -> Session {
    Session {
        turns,
        label: "chat".into(),
    }
}

fn opts() -> CollectionOptions {
    let mut o = CollectionOptions::default();
    o.sqlite.durability = Durability::Process;
    o
}

fn open(p: &Path) -> Collection<Session> {
    Collection::open(p, opts()).unwrap()
}

/// The stored row as a fresh connection sees it: (value text, version).
fn raw_row(p: &Path, key: &str) -> Option<(String, i64)> {
    let c = Connection::open(p).unwrap();
    c.query_row(
        "SELECT CAST(value AS TEXT), version FROM records WHERE key = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[test]
fn get_insert_update_remove_len_and_versions() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sessions.sqlite");
    let c = open(&p);
    assert!(c.is_empty().unwrap());
    assert_eq!(c.get("a").unwrap(), None);
    c.insert("a", &s(0)).unwrap();
    c.insert("b", &s(5)).unwrap();
    assert_eq!(c.len().unwrap(), 2);
    let n = c
        .update("a", |v| {
            let v = v.unwrap();
            v.turns += 1;
            v.turns
        })
        .unwrap();
    assert_eq!(n, 1);
    // An update of a missing record gets None and writes nothing.
    assert!(c.update("zz", |v| v.is_none()).unwrap());
    assert_eq!(c.get("zz").unwrap(), None);
    // A no-op update does not bump the version.
    c.update("a", |_| ()).unwrap();
    let r = c.get_record("a").unwrap().unwrap();
    assert_eq!((r.value, r.version), (s(1), 2));
    assert!(r.updated_ms > 0);
    assert!(c.remove("a").unwrap());
    assert!(!c.remove("a").unwrap());
    assert_eq!(c.len().unwrap(), 1);
    assert_eq!(raw_row(&p, "b").unwrap().1, 1);
}

#[test]
fn transaction_commits_all_or_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let c = open(&p);
    c.insert("a", &s(10)).unwrap();
    let e = c
        .transaction(|tx| {
            tx.update("a", |v| v.unwrap().turns -= 3)?;
            tx.insert("b", &s(3))?;
            assert_eq!(
                tx.get("b")?,
                Some(s(3)),
                "a transaction reads its own writes"
            );
            Err::<(), _>(Error::Corrupt {
                path: p.clone(),
                reason: "caller gave up".into(),
            })
        })
        .unwrap_err();
    assert!(e.to_string().contains("caller gave up"));
    assert_eq!(c.get("a").unwrap(), Some(s(10)));
    assert_eq!(c.get("b").unwrap(), None);
    c.transaction(|tx| {
        tx.update("a", |v| v.unwrap().turns -= 3)?;
        tx.insert("b", &s(3))
    })
    .unwrap();
    assert_eq!(
        (c.get("a").unwrap(), c.get("b").unwrap()),
        (Some(s(7)), Some(s(3)))
    );
}

#[test]
fn scans_by_prefix_and_range_across_pages_in_key_order() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let c = open(&p);
    c.transaction(|tx| {
        for i in 0..600 {
            tx.insert(&format!("agent:{i:04}"), &s(i))?;
        }
        tx.insert("agent;", &s(1))?; // ';' sorts right after ':'
        tx.insert("agen", &s(2))?;
        tx.insert("b\u{10FFFF}", &s(3))?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let keys: Vec<String> = c.scan_prefix("agent:").map(|r| r.unwrap().key).collect();
    assert_eq!(keys.len(), 600);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(keys[0], "agent:0000");
    assert_eq!(c.scan_prefix("").count(), 603);
    assert_eq!(c.scan_prefix("b").count(), 1);
    let r: Vec<u64> = c
        .scan_range(Bound::Excluded("agent:0597"), Bound::Included("agent;"))
        .map(|r| r.unwrap().value.turns)
        .collect();
    assert_eq!(r, vec![598, 599, 1]);
    // A scan streams: records inserted behind its position during the scan
    // do not disturb it; each record present throughout is seen once.
    let mut it = c.scan_prefix("agent:");
    let first = it.next().unwrap().unwrap();
    c.insert("agent:0000a", &s(0)).unwrap();
    let rest = it.filter(|r| r.as_ref().unwrap().key.len() == 10).count();
    assert_eq!((first.key.as_str(), rest), ("agent:0000", 599));
}

/// No lost update: T threads, each through its own handle, M updates of one
/// record and of its own record.
#[test]
fn threads_update_exactly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    open(&p).insert("shared", &s(0)).unwrap();
    let (t, m) = (8, 40);
    let barrier = std::sync::Barrier::new(t);
    std::thread::scope(|sc| {
        for i in 0..t {
            let (p, barrier) = (&p, &barrier);
            sc.spawn(move || {
                let c = open(p);
                barrier.wait();
                for _ in 0..m {
                    c.update("shared", |v| v.unwrap().turns += 1).unwrap();
                    c.transaction(|tx| {
                        let k = format!("own:{i}");
                        let mut v = tx.get(&k)?.unwrap_or(s(0));
                        v.turns += 1;
                        tx.insert(&k, &v)
                    })
                    .unwrap();
                }
            });
        }
    });
    let c = open(&p);
    assert_eq!(c.get("shared").unwrap().unwrap().turns, (t * m) as u64);
    for i in 0..t {
        assert_eq!(c.get(&format!("own:{i}")).unwrap().unwrap().turns, m as u64);
    }
}

/// Writers queued behind a holder share one transaction (one COMMIT); a
/// member's error undoes only its own change.
#[test]
fn queued_writers_share_one_commit_and_fail_alone() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let mut o = opts();
    o.group_commit = GroupCommit {
        enabled: true,
        ..Default::default()
    };
    let c: Collection<Session> = Collection::open(&p, o).unwrap();
    c.insert("n", &s(0)).unwrap();
    let before = c.group_commit_stats();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|sc| {
        let c = &c;
        let head = sc.spawn(move || {
            c.update("n", |v| {
                go_rx.recv().unwrap();
                v.unwrap().turns += 1
            })
        });
        while c.queued_writers() < 1 {
            std::thread::yield_now();
        }
        let mut hs = Vec::new();
        for i in 0..4 {
            hs.push(sc.spawn(move || {
                c.transaction(|tx| {
                    tx.update("n", |v| v.unwrap().turns += 10)?;
                    if i == 2 {
                        return Err(Error::Corrupt {
                            path: "x".into(),
                            reason: "member 2 fails".into(),
                        });
                    }
                    Ok(())
                })
            }));
            while c.queued_writers() < 2 + i {
                std::thread::yield_now();
            }
        }
        go_tx.send(()).unwrap();
        head.join().unwrap().unwrap();
        let errs = hs
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|r| r.is_err())
            .count();
        assert_eq!(errs, 1);
    });
    let after = c.group_commit_stats();
    assert_eq!(
        (
            after.batches - before.batches,
            after.batched_updates - before.batched_updates
        ),
        (1, 4),
        "one COMMIT for the head and the three members that succeeded"
    );
    assert_eq!(c.get("n").unwrap().unwrap().turns, 31);
}

#[test]
fn corrupt_record_is_an_error_naming_file_and_key_and_is_left_untouched() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let c = open(&p);
    for k in ["a", "b", "c"] {
        c.insert(k, &s(1)).unwrap();
    }
    let raw = Connection::open(&p).unwrap();
    raw.execute(
        "UPDATE records SET value = '{\"turns\": \"x\"' WHERE key = 'b'",
        [],
    )
    .unwrap();
    let row = raw_row(&p, "b");
    let check_key = |e: Error, key: &str| {
        assert!(e.is_corrupt(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("c.sqlite") && m.contains(&format!("{key:?}")),
            "{m}"
        );
    };
    let check = |e: Error| check_key(e, "b");
    check(c.get("b").unwrap_err());
    check(c.get_record("b").unwrap_err());
    check(c.update("b", |v| v.unwrap().turns += 1).unwrap_err());
    check(c.export_json(d.path().join("out.json")).unwrap_err());
    assert!(!d.path().join("out.json").exists());
    // A scan yields the records before it, then the error, then ends.
    let got: Vec<_> = c.scan_prefix("").collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].as_ref().unwrap().key, "a");
    check(got.into_iter().nth(1).unwrap().unwrap_err());
    assert_eq!(raw_row(&p, "b"), row, "the corrupt record was changed");
    // A wrong type is corrupt too (valid JSON, not a Session).
    raw.execute("UPDATE records SET value = '[1]' WHERE key = 'c'", [])
        .unwrap();
    check_key(c.get("c").unwrap_err(), "c");
    // insert replaces without reading: the repair.
    c.insert("b", &s(9)).unwrap();
    assert_eq!(c.get("b").unwrap(), Some(s(9)));
}

#[test]
fn foreign_and_newer_databases_are_refused_untouched() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("other.db");
    let c = Connection::open(&p).unwrap();
    c.execute_batch(
        "CREATE TABLE records(key TEXT, value TEXT); INSERT INTO records VALUES ('a', '{}');",
    )
    .unwrap();
    drop(c);
    let before = std::fs::read(&p).unwrap();
    let e = Collection::<Session>::open(&p, opts()).unwrap_err();
    assert!(e.is_corrupt() && e.to_string().contains("other.db"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);

    let p = d.path().join("newer.db");
    drop(open(&p));
    Connection::open(&p)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7")
        .unwrap();
    let before = std::fs::read(&p).unwrap();
    let e = Collection::<Session>::open(&p, opts()).unwrap_err();
    assert!(matches!(e, Error::SchemaTooNew { found: 7, .. }), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

/// The cache follows another connection's commit (`data_version`) and this
/// handle's own commits.
#[test]
fn cache_stays_coherent_across_connections() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let mut o = opts();
    o.cache = Some(1000);
    let cached: Collection<Session> = Collection::open(&p, o).unwrap();
    let other = open(&p);
    other.insert("k", &s(1)).unwrap();
    assert_eq!(cached.get("k").unwrap(), Some(s(1)));
    assert_eq!(cached.get("absent").unwrap(), None);
    // Another connection (as another process would) commits.
    other.update("k", |v| v.unwrap().turns = 2).unwrap();
    other.insert("absent", &s(3)).unwrap();
    assert_eq!(cached.get("k").unwrap(), Some(s(2)));
    assert_eq!(cached.get("absent").unwrap(), Some(s(3)));
    // Its own commits update the cache in place.
    cached.update("k", |v| v.unwrap().turns = 4).unwrap();
    assert_eq!(cached.get("k").unwrap(), Some(s(4)));
    cached.remove("k").unwrap();
    assert_eq!(cached.get("k").unwrap(), None);
    // And another process's commit: the real binary is not needed, a plain
    // SQLite connection is another connection too.
    Connection::open(&p)
        .unwrap()
        .execute(
            "UPDATE records SET value = '{\"turns\":5,\"label\":\"chat\"}' WHERE key = 'absent'",
            [],
        )
        .unwrap();
    assert_eq!(cached.get("absent").unwrap(), Some(s(5)));
}

#[test]
fn jsonb_and_text_files_read_alike() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let mut o = opts();
    o.encoding = Encoding::Jsonb;
    let b: Collection<Session> = Collection::open(&p, o).unwrap();
    b.insert("j", &s(1)).unwrap();
    b.update("j", |v| v.unwrap().turns += 1).unwrap();
    let t = open(&p);
    t.insert("t", &s(7)).unwrap();
    assert_eq!(t.get("j").unwrap(), Some(s(2)));
    assert_eq!(b.get("t").unwrap(), Some(s(7)));
    let kinds: Vec<String> = {
        let c = Connection::open(&p).unwrap();
        let mut st = c
            .prepare("SELECT typeof(value) FROM records ORDER BY key")
            .unwrap();
        let v = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        v
    };
    assert_eq!(kinds, vec!["blob", "text"]);
    assert_eq!(t.scan_prefix("").count(), 2);
}

#[test]
fn import_is_idempotent_keeps_newer_values_and_never_touches_the_source() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("sessions.json");
    std::fs::write(
        &src,
        r#"{"version": 3, "sessions": {"s1": {"turns": 1, "label": "chat"}, "s2": {"turns": 2, "label": "chat"}}}"#,
    )
    .unwrap();
    let before = std::fs::read(&src).unwrap();
    let c = open(&d.path().join("c.sqlite"));
    let r = c.import_json(&src, "/sessions", "id").unwrap();
    assert_eq!((r.inserted, r.unchanged, r.kept), (2, 0, 0));
    c.update("s1", |v| v.unwrap().turns = 50).unwrap();
    let r = c.import_json(&src, "/sessions", "id").unwrap();
    assert_eq!((r.inserted, r.unchanged, r.kept), (0, 1, 1));
    assert_eq!(c.get("s1").unwrap(), Some(s(50)));
    assert_eq!(std::fs::read(&src).unwrap(), before);

    // An array of objects keyed by a field; a bad record imports nothing.
    let arr = d.path().join("arr.json");
    std::fs::write(
        &arr,
        r#"[{"id": "a", "turns": 1, "label": "x"}, {"id": 7, "turns": 2, "label": "y"}]"#,
    )
    .unwrap();
    let c2 = open(&d.path().join("c2.sqlite"));
    assert_eq!(c2.import_json(&arr, "", "id").unwrap().inserted, 2);
    assert_eq!(c2.get("7").unwrap().unwrap().turns, 2);
    let bad = d.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"x": {"turns": 1, "label": "x"}, "y": {"turns": "no"}}"#,
    )
    .unwrap();
    let c3 = open(&d.path().join("c3.sqlite"));
    let e = c3.import_json(&bad, "", "id").unwrap_err();
    assert!(
        e.to_string().contains("bad.json") && e.to_string().contains("\"y\""),
        "{e}"
    );
    assert!(c3.is_empty().unwrap());
    assert!(c3.import_json(&bad, "/nope", "id").is_err());
}

#[test]
fn export_roundtrips_through_import() {
    let d = tempfile::tempdir().unwrap();
    let c = open(&d.path().join("c.sqlite"));
    for i in 0..50 {
        c.insert(&format!("k{i:02}"), &s(i)).unwrap();
    }
    let out = d.path().join("out.json");
    assert_eq!(c.export_json(&out).unwrap(), 50);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["k07"]["turns"], 7);
    assert_eq!(
        c.export_json_string().unwrap(),
        std::fs::read_to_string(&out).unwrap()
    );
    let c2 = open(&d.path().join("c2.sqlite"));
    assert_eq!(c2.import_json(&out, "", "id").unwrap().inserted, 50);
    assert_eq!(c2.get("k49").unwrap(), Some(s(49)));
    let empty = open(&d.path().join("e.sqlite"));
    assert_eq!(empty.export_json_string().unwrap(), "{}\n");
}

/// Inside a transaction closure: reads of the handle (cached or not) see the
/// committed state and do not deadlock; a nested write is `Reentrant`.
#[test]
fn reads_and_writes_of_the_handle_inside_a_transaction() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.sqlite");
    let mut o = opts();
    o.cache = Some(10);
    let c: Collection<Session> = Collection::open(&p, o).unwrap();
    c.insert("a", &s(1)).unwrap();
    c.transaction(|tx| {
        tx.insert("a", &s(2))?;
        assert_eq!(c.get("a")?, Some(s(1)), "the committed value");
        assert_eq!(tx.get("a")?, Some(s(2)), "the transaction's own value");
        let e = c.insert("b", &s(0)).unwrap_err();
        assert!(matches!(e, Error::Reentrant { .. }), "{e}");
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(c.get("a").unwrap(), Some(s(2)));
}
