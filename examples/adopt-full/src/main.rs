//! Uses the user's own rusqlite next to lockstore's SQLite stores: one SQLite
//! is linked (`lockstore::rusqlite` is the same crate as `rusqlite`), and the
//! gateway stores of the features `tasks`, `outbox` and `commitments`.

use std::time::SystemTime;

use lockstore::commitments::{CommitmentsConfig, CommitmentsStore, StatusFilter};
use lockstore::outbox::{NewMessage, Outbox, OutboxOptions};
use lockstore::tasks::{Finish, NewTask, RegistryOptions, Runtime, TaskRegistry, TaskStatus};

fn main() -> Result<(), lockstore::Error> {
    let dir = std::env::temp_dir().join(format!("adopt-full-{}", std::process::id()));
    let io = |e| lockstore::Error::Io {
        op: "adopt-full",
        path: dir.clone(),
        source: e,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;

    // The user's own database, through the user's own rusqlite.
    let conn = rusqlite::Connection::open(dir.join("app.sqlite")).map_err(|e| {
        lockstore::Error::Sqlite {
            op: "open",
            path: dir.join("app.sqlite"),
            source: e,
        }
    })?;
    // The same type through lockstore's re-export: one rusqlite, one SQLite.
    let same: &lockstore::rusqlite::Connection = &conn;
    let version: String = same
        .query_row("SELECT sqlite_version()", [], |r| r.get(0))
        .map_err(|e| lockstore::Error::Sqlite {
            op: "query",
            path: dir.join("app.sqlite"),
            source: e,
        })?;

    // The stores; every store error converts into lockstore::Error with `?`.
    let now = SystemTime::now();
    let tasks = TaskRegistry::open_state_dir(&dir, RegistryOptions::default())?;
    let (task, _) = tasks.create(
        NewTask {
            runtime: Some(Runtime::Cli),
            task: "adopt".into(),
            owner_key: "adopt-full".into(),
            ..Default::default()
        },
        now,
    )?;
    let done = tasks.finish(&task.task_id, Finish::new(TaskStatus::Succeeded), now)?;
    let outbox = Outbox::open_state(&dir, OutboxOptions::default())?;
    outbox.enqueue(
        &NewMessage {
            channel: "log".into(),
            target: "stdout".into(),
            payload: serde_json::json!({"task": done.task_id}),
            ..Default::default()
        },
        now,
    )?;
    let commitments = CommitmentsStore::open(&dir, CommitmentsConfig::default())?;
    let pending = commitments.list(StatusFilter::Active, None, now)?;
    println!(
        "sqlite {version}; task {} {}; outbox {} pending; {} commitments",
        done.task_id,
        done.status,
        outbox.stats(now)?.due_now,
        pending.len()
    );
    std::fs::remove_dir_all(&dir).map_err(io)?;
    Ok(())
}
