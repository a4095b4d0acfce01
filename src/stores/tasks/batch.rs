//! Persist-before-commit and group commit of the task ledger.
//!
//! Every mutation runs, in order: the exclusive section on the ledger path
//! (FIFO in this process, `flock` across processes) → reload if another
//! connection committed (`data_version` changed) → one `BEGIN IMMEDIATE`
//! transaction that reads the fresh row, applies the patch, and writes it with
//! `UPDATE … WHERE version = <read version>` → COMMIT → only then memory →
//! observers. A failed write returns the error and leaves memory exactly as it
//! was. With group commit ([`crate::group`]) the transaction is shared by the
//! mutations queued on the registry, each in its own `SAVEPOINT`
//! ([`TaskBatch`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::index::{apply, Change, View};
use super::observers::TaskEvent;
use super::registry::{Core, TaskRegistry};
use super::TaskError;
use crate::group::{duplicate, Batch};
use crate::sqlite::{MemberTx, MemberUndo};
use crate::writer::Writer;

#[cfg(feature = "postgres")]
use super::backend::Backend;
pub(super) use super::backend::TxResult;
use super::backend::{LedgerTx, SqliteTx};

/// An open group-commit batch of a task ledger: the open `BEGIN IMMEDIATE`
/// transaction on the registry's connection (the engine holds the flock),
/// with the savepoint mechanics every SQLite store shares
/// ([`crate::sqlite::MemberTx`]).
pub(crate) struct TaskBatch {
    core: Arc<Core>,
    /// Committed-to-be changes of the members that succeeded, in order.
    pending: Vec<(usize, Vec<Change>)>,
    tx: MemberTx,
    /// The reload event of the batch's opening, for its first member to emit.
    restored: Option<TaskEvent>,
}

impl Batch for TaskBatch {
    type Undo = MemberUndo;
    type Delivery = Vec<TaskEvent>;

    fn savepoint(&mut self, index: usize) -> Result<MemberUndo, crate::Error> {
        let core = self.core.clone();
        let conn = core.store.sqlite().connection();
        self.tx.savepoint(&conn, index)
    }

    fn keep(&mut self, undo: MemberUndo, _: usize) {
        let core = self.core.clone();
        let conn = core.store.sqlite().connection();
        self.tx.keep(&conn, undo);
    }

    fn undo(&mut self, undo: MemberUndo, _: usize) {
        let core = self.core.clone();
        let conn = core.store.sqlite().connection();
        self.tx.undo(&conn, undo);
    }

    fn accepts_more(&self) -> bool {
        self.tx.accepts_more()
    }

    fn close(
        self,
        w: &Writer,
        _committed: usize,
    ) -> Result<BTreeMap<usize, Vec<TaskEvent>>, crate::Error> {
        let core = self.core;
        let mut inner = core.lock_inner();
        let conn = core.store.sqlite().connection();
        let r = self.tx.commit(&conn, w.path());
        drop(conn);
        inner.batch_open = false;
        let out = r.map(|()| {
            // Committed: only now does memory change, member by member.
            let has = core.has_observers();
            let mut map = BTreeMap::new();
            for (m, chs) in self.pending {
                map.insert(m, apply(&mut inner, chs, has));
            }
            map
        });
        drop(inner);
        core.idle.notify_all();
        out
    }
}

impl TaskRegistry {
    /// The persist-before-commit core: exclusive section → refresh → one
    /// IMMEDIATE transaction (`f` reads and writes SQLite only) → commit →
    /// memory → observers. With group commit, the transaction may be shared
    /// with the mutations queued before and after this one (see
    /// [`TaskRegistry`]).
    pub(super) fn mutate<T>(
        &self,
        f: impl FnMut(&mut dyn LedgerTx, &View<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, TaskError> {
        #[cfg(feature = "postgres")]
        if let Backend::Pg(pg) = &self.core.store {
            return self.mutate_pg(pg, f);
        }
        let store = self.core.store.sqlite();
        if self.group_opts.enabled && self.writer().supports_group_commit() {
            return self.mutate_grouped(f);
        }
        let mut f = f;
        let path = self.path().to_path_buf();
        let (out, events) = self.writer().run(|ctx| {
            let _span = tracing::debug_span!("task_ledger_commit", path = %path.display(), pid = std::process::id(), waited_ms = ctx.waited().as_millis() as u64).entered();
            let mut inner = self.core.lock_inner();
            let conn = self.core.store.sqlite().connection();
            let mut events = Vec::new();
            events.extend(self.refresh(&mut inner, &conn)?);
            let (out, changes) = store.immediate(&conn, |tx| {
                f(
                    &mut SqliteTx { c: tx, path: &path },
                    &View {
                        inner: &inner,
                        pending: &[],
                    },
                )
                .map_err(|e| e.into_sqlite())
            })?;
            drop(conn);
            // Committed: only now does memory change.
            let has = self.core.has_observers();
            events.extend(apply(&mut inner, changes, has));
            Ok::<_, TaskError>((out, events))
        })?;
        self.emit(&events);
        Ok(out)
    }

    /// Opens a group-commit batch (the engine holds the OS lock): refresh,
    /// `BEGIN IMMEDIATE` (retried on BUSY until the SQLite retry deadline).
    fn begin_batch(&self) -> Result<TaskBatch, TaskError> {
        let mut inner = self.core.lock_inner();
        let conn = self.core.store.sqlite().connection();
        let restored = self.refresh(&mut inner, &conn)?;
        let opts = self.core.store.sqlite().options();
        let tx = MemberTx::begin(&conn, self.path(), opts.retry_deadline)?;
        inner.batch_open = true;
        Ok(TaskBatch {
            core: self.core.clone(),
            pending: Vec::new(),
            tx,
            restored,
        })
    }

    /// The group-commit path of [`TaskRegistry::mutate`]: the handoff of
    /// [`crate::group`], with a SAVEPOINT per member.
    fn mutate_grouped<T>(
        &self,
        mut f: impl FnMut(&mut dyn LedgerTx, &View<'_>) -> TxResult<(T, Vec<Change>)>,
    ) -> Result<T, TaskError> {
        let path = self.path();
        let mut restored = None;
        let r = self.group.run(
            self.writer(),
            &self.group_opts,
            || self.begin_batch(),
            |b: &mut TaskBatch, member, _| {
                restored = b.restored.take();
                let _span =
                    tracing::debug_span!("task_ledger_member", path = %path.display(), member)
                        .entered();
                let inner = self.core.lock_inner();
                let conn = self.core.store.sqlite().connection();
                let r = match f(
                    &mut SqliteTx { c: &conn, path },
                    &View {
                        inner: &inner,
                        pending: &b.pending,
                    },
                ) {
                    Ok(r) => r,
                    Err(e) => Err(e.into_task_error("transaction", path)),
                };
                drop(conn);
                drop(inner);
                match r {
                    Ok((v, changes)) => {
                        b.pending.push((member, changes));
                        Ok(v)
                    }
                    Err(e) => {
                        if let TaskError::Core(c) = &e {
                            b.tx.last_error = Some(duplicate(c));
                        }
                        Err(e)
                    }
                }
            },
        );
        if let Some(ev) = restored {
            self.emit(std::slice::from_ref(&ev));
        }
        let (v, events) = r?;
        self.emit(&events);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::GroupCommit;
    use crate::stores::tasks::{NewTask, RegistryOptions, Runtime, TaskRecord};
    use rusqlite::Connection;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::Path;
    use std::sync::{mpsc, Mutex};
    use std::time::{Duration, SystemTime};

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
    }

    fn reg(dir: &Path, max_batch: usize) -> TaskRegistry {
        TaskRegistry::open(
            dir.join("runs.sqlite"),
            RegistryOptions {
                group_commit: GroupCommit {
                    enabled: true,
                    max_batch,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn task(r: &TaskRegistry, label: &str) -> String {
        r.create(
            NewTask {
                runtime: Some(Runtime::Subagent),
                task: label.into(),
                owner_key: "owner:a".into(),
                requester_origin: Some(serde_json::json!({"channel": "chat"})),
                ..Default::default()
            },
            t0(),
        )
        .unwrap()
        .0
        .task_id
    }

    fn counter(t: &TaskRecord) -> i64 {
        t.metadata
            .as_ref()
            .and_then(|m| m.get("n"))
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    }

    /// The counter as SQLite has it, read on a fresh connection.
    fn durable_counter(r: &TaskRegistry, id: &str) -> i64 {
        let c = Connection::open(r.path()).unwrap();
        let m: Option<String> = c
            .query_row(
                "SELECT metadata_json FROM task_runs WHERE task_id = ?1",
                [id],
                |x| x.get(0),
            )
            .unwrap();
        m.and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
            .and_then(|v| v["n"].as_i64())
            .unwrap_or(0)
    }

    fn until_queued(r: &TaskRegistry, n: usize) {
        while r.writer().entry().fifo.len() < n {
            std::thread::yield_now();
        }
    }

    fn bump(r: &TaskRegistry, id: &str, seen: &Mutex<Vec<(char, i64)>>, who: char) {
        r.update(id, |t| {
            seen.lock().unwrap().push((who, counter(t)));
            let n = counter(t) + 1;
            t.metadata
                .get_or_insert_with(Default::default)
                .insert("n".into(), n.into());
            Ok(true)
        })
        .unwrap();
    }

    /// Runs a head mutation that blocks until `followers` (spawned one by one,
    /// each queued behind the previous) are all queued, then lets it go.
    fn queued_behind<'s>(
        sc: &'s std::thread::Scope<'s, '_>,
        r: &'s TaskRegistry,
        id: &'s str,
        seen: &'s Mutex<Vec<(char, i64)>>,
        followers: Vec<Box<dyn FnOnce() + Send + 's>>,
    ) {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let head = sc.spawn(move || {
            r.update(id, |t| {
                go_rx.recv().unwrap();
                seen.lock().unwrap().push(('a', counter(t)));
                let n = counter(t) + 1;
                t.metadata
                    .get_or_insert_with(Default::default)
                    .insert("n".into(), n.into());
                Ok(true)
            })
            .unwrap();
        });
        until_queued(r, 1);
        let mut hs = Vec::new();
        for (i, f) in followers.into_iter().enumerate() {
            hs.push(sc.spawn(f));
            until_queued(r, i + 2);
        }
        go_tx.send(()).unwrap();
        head.join().unwrap();
        for h in hs {
            h.join().unwrap();
        }
    }

    #[test]
    fn grouped_threads_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 64);
        let id = task(&r, "counter");
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..25 {
                        r.bump_counter(&id, "n", t0() + Duration::from_millis(5))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 200);
        assert_eq!(durable_counter(&r, &id), 200);
        let crate::GroupCommitStats {
            batches: b,
            batched_updates: m,
            ..
        } = r.group_commit_stats();
        assert!(
            b >= 1 && m == 200 + 1,
            "every mutation committed in a batch ({b}, {m})"
        );
    }

    #[test]
    fn batch_of_exactly_max_batch_commits_once() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 4);
        let id = task(&r, "counter");
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            let f = |c: char| -> Box<dyn FnOnce() + Send + '_> {
                let (r, id, seen) = (&r, &id, &seen);
                Box::new(move || bump(r, id, seen, c))
            };
            queued_behind(sc, &r, &id, &seen, vec![f('b'), f('c'), f('d')]);
        });
        let after = r.group_commit_stats();
        assert_eq!(
            (
                after.batches - before.batches,
                after.batched_updates - before.batched_updates
            ),
            (1, 4)
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![('a', 0), ('b', 1), ('c', 2), ('d', 3)]
        );
        assert_eq!(durable_counter(&r, &id), 4);
    }

    #[test]
    fn batch_cut_by_max_batch_continues_in_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 4);
        let id = task(&r, "counter");
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            let f = |c: char| -> Box<dyn FnOnce() + Send + '_> {
                let (r, id, seen) = (&r, &id, &seen);
                Box::new(move || bump(r, id, seen, c))
            };
            queued_behind(sc, &r, &id, &seen, vec![f('b'), f('c'), f('d'), f('e')]);
        });
        let after = r.group_commit_stats();
        assert_eq!(
            (
                after.batches - before.batches,
                after.batched_updates - before.batched_updates
            ),
            (2, 5)
        );
        // e ran in the second batch, on the first batch's committed state.
        assert_eq!(seen.lock().unwrap().last(), Some(&('e', 4)));
        assert_eq!(durable_counter(&r, &id), 5);
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 5);
    }

    #[test]
    fn error_sqlite_failure_and_panic_inside_a_batch_roll_back_only_their_own_savepoint() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 64);
        let id = task(&r, "counter");
        let other = task(&r, "victim");
        // Deleting `other` deletes its delivery state first, then fails on the
        // task row: without the member's savepoint the first DELETE would be
        // committed by the batch while memory keeps the delivery state.
        r.store()
            .connection()
            .execute_batch(
                "CREATE TEMP TRIGGER fail_delete BEFORE DELETE ON main.task_runs \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        r.add_observer(Arc::new(move |e: &TaskEvent| {
            if let TaskEvent::Upserted { task, .. } = e {
                ev.lock().unwrap().push(counter(task));
            }
            Ok::<_, crate::stores::tasks::ObserverError>(())
        }));
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        let results = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            let (r, id, other, seen, results) = (&r, &id, &other, &seen, &results);
            let followers: Vec<Box<dyn FnOnce() + Send + '_>> = vec![
                Box::new(move || bump(r, id, seen, 'b')),
                Box::new(move || {
                    let e = r.update(id, |t| {
                        seen.lock().unwrap().push(('c', counter(t)));
                        t.metadata
                            .get_or_insert_with(Default::default)
                            .insert("n".into(), 100.into());
                        Err(TaskError::Invalid {
                            path: "c".into(),
                            reason: "closure error",
                        })
                    });
                    results.lock().unwrap().push(('c', e.is_err()));
                }),
                Box::new(move || {
                    let e = r.delete(other);
                    results.lock().unwrap().push(('x', e.is_err()));
                }),
                Box::new(move || {
                    let p = catch_unwind(AssertUnwindSafe(|| {
                        r.update(id, |t| -> Result<bool, TaskError> {
                            seen.lock().unwrap().push(('p', counter(t)));
                            panic!("closure panic")
                        })
                    }));
                    results.lock().unwrap().push(('p', p.is_err()));
                }),
                Box::new(move || bump(r, id, seen, 'e')),
            ];
            queued_behind(sc, r, id, seen, followers);
        });
        let after = r.group_commit_stats();
        assert_eq!(
            (
                after.batches - before.batches,
                after.batched_updates - before.batched_updates
            ),
            (1, 3),
            "one batch, three committed members"
        );
        let mut res = results.lock().unwrap().clone();
        res.sort();
        assert_eq!(res, vec![('c', true), ('p', true), ('x', true)]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![('a', 0), ('b', 1), ('c', 2), ('p', 2), ('e', 2)]
        );
        assert_eq!(durable_counter(&r, &id), 3);
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 3);
        // The failed delete left both SQLite and memory whole.
        let c = Connection::open(r.path()).unwrap();
        let ds: i64 = c
            .query_row(
                "SELECT count(*) FROM task_delivery_state WHERE task_id = ?1",
                [&other],
                |x| x.get(0),
            )
            .unwrap();
        assert_eq!(ds, 1, "the failed member's first DELETE was rolled back");
        assert!(r.get(&other).unwrap().is_some());
        assert!(r.delivery_state(&other).unwrap().is_some());
        // Observers saw only the committed members (each caller notifies
        // after the commit, so concurrent callers' events may interleave).
        let mut ev = events.lock().unwrap().clone();
        ev.sort();
        assert_eq!(ev, vec![1, 2, 3]);
    }

    #[test]
    fn successor_giving_up_while_the_batch_is_open_still_closes_it() {
        let d = tempfile::tempdir().unwrap();
        let r = reg(d.path(), 64);
        let id = task(&r, "counter");
        let before = r.group_commit_stats();
        let seen = Mutex::new(Vec::new());
        let (go_tx, go_rx) = mpsc::channel::<()>();
        std::thread::scope(|sc| {
            let (r, id, seen) = (&r, &id, &seen);
            let a = sc.spawn(move || {
                r.update(id, |t| {
                    go_rx.recv().unwrap();
                    let n = counter(t) + 1;
                    t.metadata
                        .get_or_insert_with(Default::default)
                        .insert("n".into(), n.into());
                    Ok(true)
                })
            });
            until_queued(r, 1);
            let b = sc.spawn(move || bump(r, id, seen, 'b'));
            until_queued(r, 2);
            // A successor that will give up: a queue ticket, dropped unserved
            // (what a deadline does to a waiting writer).
            let quitter = r.writer().entry().fifo.enter();
            until_queued(r, 3);
            go_tx.send(()).unwrap();
            // b leaves the batch open for the quitter ...
            while !(r.writer().entry().fifo.len() == 1
                && r.writer().entry().batch.lock().unwrap().is_some())
            {
                std::thread::yield_now();
            }
            // ... which gives up. a and b must still be committed and told.
            drop(quitter);
            a.join().unwrap().unwrap();
            b.join().unwrap();
        });
        let after = r.group_commit_stats();
        assert_eq!(
            (
                after.batches - before.batches,
                after.batched_updates - before.batched_updates
            ),
            (1, 2)
        );
        assert!(r.writer().entry().batch.lock().unwrap().is_none());
        assert_eq!(durable_counter(&r, &id), 2);
        assert_eq!(counter(&r.get(&id).unwrap().unwrap()), 2);
    }
}
