//! lockstore::tokio: async writers on tokio share the FIFO queue with threads,
//! lose nothing, run in arrival order, survive cancellation in both states,
//! and refuse re-entrancy. Ordering is fixed with channels and the queue's
//! test hook (`Writer::queued`); timeouts only turn a hang into a failure.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore::{Error, JsonOptions, LockOptions, Writer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Doc {
    n: u64,
    pad: Vec<String>,
}

/// Long enough for any step here; only reached when something hangs.
const GUARD: Duration = Duration::from_secs(20);

fn rt(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn opts() -> JsonOptions {
    JsonOptions {
        durability: lockstore::Durability::Process,
        ..Default::default()
    }
}

/// Yields until `n` writers of this process are in `p`'s FIFO queue.
fn until_queued(p: &Path, n: usize) {
    let w = Writer::open(p, LockOptions::default()).unwrap();
    let t0 = std::time::Instant::now();
    while w.queued() != n {
        assert!(
            t0.elapsed() < GUARD,
            "queue never reached {n} (at {})",
            w.queued()
        );
        std::thread::yield_now();
    }
}

#[test]
fn hundred_tasks_on_two_workers_count_exactly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    let rt = rt(2);
    let n = rt.block_on(async {
        let store = lockstore::tokio::JsonStore::<Doc>::open(&p, opts())
            .await
            .unwrap();
        let hs: Vec<_> = (0..100)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.update(|d| d.n += 1).await })
            })
            .collect();
        for h in hs {
            h.await.unwrap().unwrap();
        }
        assert!(store.group_commit_stats().batches >= 1);
        store.load().await.unwrap().n
    });
    assert_eq!(n, 100);
    assert!(lockstore::testing::temp_files(&p).is_empty());
}

#[test]
fn sync_threads_and_tasks_share_one_fifo_in_arrival_order() {
    for group in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        let mut o = opts();
        o.group_commit.enabled = group;
        let rt = rt(2);
        let astore = rt
            .block_on(lockstore::tokio::JsonStore::<Doc>::open(&p, o.clone()))
            .unwrap();
        let sstore = Arc::new(lockstore::JsonStore::<Doc>::open(&p, o).unwrap());
        let order = Arc::new(Mutex::new(Vec::new()));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        // The holder: a thread inside its section until told to go.
        let holder = {
            let s = sstore.clone();
            std::thread::spawn(move || {
                s.update(move |d| {
                    go_rx.recv_timeout(GUARD).unwrap();
                    d.n += 1;
                })
            })
        };
        until_queued(&p, 1);
        // Waiters enter one by one, alternating task / thread; each is
        // confirmed queued before the next enters.
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        for i in 0..8usize {
            let order = order.clone();
            if i % 2 == 0 {
                let s = astore.clone();
                tasks.push(rt.spawn(async move {
                    s.update(move |d| {
                        order.lock().unwrap().push(i);
                        d.n += 1;
                    })
                    .await
                }));
            } else {
                let s = sstore.clone();
                threads.push(std::thread::spawn(move || {
                    s.update(move |d| {
                        order.lock().unwrap().push(i);
                        d.n += 1;
                    })
                }));
            }
            until_queued(&p, i + 2);
        }
        go_tx.send(()).unwrap();
        holder.join().unwrap().unwrap();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        rt.block_on(async {
            for t in tasks {
                tokio::time::timeout(GUARD, t)
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
            }
        });
        assert_eq!(
            *order.lock().unwrap(),
            (0..8).collect::<Vec<_>>(),
            "group commit {group}"
        );
        assert_eq!(sstore.load().unwrap().n, 9);
    }
}

#[test]
fn a_future_dropped_while_queued_does_not_block_the_writers_behind_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    let rt = rt(2);
    let astore = rt
        .block_on(lockstore::tokio::JsonStore::<Doc>::open(&p, opts()))
        .unwrap();
    let sstore = Arc::new(lockstore::JsonStore::<Doc>::open(&p, opts()).unwrap());
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let holder = {
        let s = sstore.clone();
        std::thread::spawn(move || {
            s.update(move |d| {
                go_rx.recv_timeout(GUARD).unwrap();
                d.n += 1;
            })
        })
    };
    until_queued(&p, 1);
    let ran = Arc::new(Mutex::new(false));
    let quitter = {
        let (s, ran) = (astore.clone(), ran.clone());
        rt.spawn(async move { s.update(move |_| *ran.lock().unwrap() = true).await })
    };
    until_queued(&p, 2);
    let behind = {
        let s = astore.clone();
        rt.spawn(async move { s.update(|d| d.n += 10).await })
    };
    until_queued(&p, 3);
    // Drop the queued future (the task is cancelled): its ticket goes.
    quitter.abort();
    let r = rt.block_on(quitter);
    assert!(r.unwrap_err().is_cancelled());
    until_queued(&p, 2);
    go_tx.send(()).unwrap();
    holder.join().unwrap().unwrap();
    rt.block_on(async { tokio::time::timeout(GUARD, behind).await })
        .expect("the writer behind the dropped future never ran")
        .unwrap()
        .unwrap();
    assert!(!*ran.lock().unwrap(), "the dropped writer's closure ran");
    assert_eq!(sstore.load().unwrap().n, 11);
}

#[test]
fn a_future_dropped_after_its_section_started_leaves_a_whole_file_and_a_free_lock() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    let rt = rt(2);
    let astore = rt
        .block_on(lockstore::tokio::JsonStore::<Doc>::open(
            &p,
            JsonOptions {
                durability: lockstore::Durability::Full,
                ..Default::default()
            },
        ))
        .unwrap();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let task = {
        let s = astore.clone();
        rt.spawn(async move {
            s.update(move |d| {
                started_tx.send(()).unwrap();
                go_rx.recv_timeout(GUARD).unwrap();
                d.n += 1;
                d.pad = (0..20_000).map(|i| format!("record {i}")).collect();
            })
            .await
        })
    };
    started_rx.recv_timeout(GUARD).unwrap();
    task.abort();
    assert!(rt.block_on(task).unwrap_err().is_cancelled());
    // The future is gone; its section goes on and completes.
    go_tx.send(()).unwrap();
    let short = LockOptions {
        deadline: GUARD,
        ..Default::default()
    };
    // The lock comes free, and the next writer sees the whole change.
    let n = lockstore::run_exclusive(&p, &short, |_| {
        let doc: Doc = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(doc.pad.len(), 20_000);
        Ok::<_, Error>(doc.n)
    })
    .unwrap();
    assert_eq!(n, 1);
    assert!(lockstore::testing::temp_files(&p).is_empty());
    let n = rt
        .block_on(astore.update(|d| {
            d.n += 1;
            d.n
        }))
        .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn reentrancy_is_an_error_not_a_deadlock() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    let rt = rt(2);
    let astore = rt
        .block_on(lockstore::tokio::JsonStore::<Doc>::open(&p, opts()))
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    {
        let astore = astore.clone();
        let p = p.clone();
        let handle = rt.handle().clone();
        rt.spawn(async move {
            // 1. An async closure blocking on an async call of the same store.
            let inner = astore.clone();
            let h = handle.clone();
            let r1 = astore
                .update(move |d| {
                    d.n += 1;
                    h.block_on(inner.update(|d| d.n += 100))
                })
                .await
                .unwrap();
            // 2. The same through run_exclusive (the sync store path and the
            //    async store share the section).
            let (p2, h) = (p.clone(), handle.clone());
            let inner = astore.clone();
            let r2 = lockstore::tokio::run_exclusive(&p, &LockOptions::default(), move |_| {
                let a = h.block_on(inner.update(|d| d.n += 100));
                let b = h.block_on(lockstore::tokio::run_exclusive(
                    &p2,
                    &LockOptions::default(),
                    |_| Ok::<_, Error>(()),
                ));
                Ok::<_, Error>((a, b))
            })
            .await
            .unwrap();
            // 3. Two updates joined in one task are not nested: both run.
            let (a, b) = tokio::join!(astore.update(|d| d.n += 1), astore.update(|d| d.n += 1));
            done_tx.send((r1, r2, a, b)).unwrap();
        });
    }
    let (r1, (r2a, r2b), a, b) = done_rx.recv_timeout(GUARD).expect("deadlocked");
    assert!(matches!(r1, Err(Error::Reentrant { .. })), "{r1:?}");
    assert!(matches!(r2a, Err(Error::Reentrant { .. })), "{r2a:?}");
    assert!(matches!(r2b, Err(Error::Reentrant { .. })), "{r2b:?}");
    a.unwrap();
    b.unwrap();
    // 4. An async section started from inside a sync section of this thread.
    let sstore = lockstore::JsonStore::<Doc>::open(&p, opts()).unwrap();
    let r = sstore
        .update(|d| {
            d.n += 1;
            rt.block_on(astore.update(|d| d.n += 100))
        })
        .unwrap();
    assert!(matches!(r, Err(Error::Reentrant { .. })), "{r:?}");
    assert_eq!(sstore.load().unwrap().n, 4);
}

#[test]
fn async_run_exclusive_counts_exactly_beside_threads() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("counter");
    let bump = |p: &Path| {
        let n: u64 = std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::thread::yield_now();
        lockstore::write_atomic(
            p,
            format!("{}\n", n + 1).as_bytes(),
            lockstore::Durability::Process,
        )
    };
    let rt = rt(2);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    lockstore::run_exclusive(&p, &LockOptions::default(), |_| bump(&p)).unwrap();
                }
            })
        })
        .collect();
    rt.block_on(async {
        let hs: Vec<_> = (0..40)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move {
                    let q = p.clone();
                    lockstore::tokio::run_exclusive(&p, &LockOptions::default(), move |_| bump(&q))
                        .await
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap().unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), "80");
}
