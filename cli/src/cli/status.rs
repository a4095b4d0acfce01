//! `lockstore status`: one screen for an operator.
//!
//! Reads without taking any store lock (the JSON file is read as a whole old or
//! new version; SQLite readers never block WAL writers), so it works while the
//! daemon and CLIs are busy: daemon (pid, uptime) or not; commitments by status;
//! task pressure (queued · running · audit findings); outbox counts by status,
//! oldest pending age, dead letters; and the holder of each store's lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use lockstore::commitments::{CommitmentsConfig, CommitmentsStore};
use lockstore::lock::{self, LockState};
use lockstore::outbox::{Outbox, OutboxOptions, Status as OStatus};
use lockstore::tasks::{AuditOptions, RegistryOptions, TaskRegistry};

use super::CliResult;

/// Arguments of `lockstore status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn holder(lock: &Path) -> Value {
    match lock::inspect(lock) {
        Ok(LockState::Held(Some(h))) => {
            json!({"held": true, "pid": h.record.pid, "cmd": h.record.cmd,
                "state": h.liveness.as_str(), "held_ms": h.held.as_millis() as u64, "describe": h.describe()})
        }
        Ok(LockState::Held(None)) => json!({"held": true}),
        Ok(_) => json!({"held": false}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

fn lock_of(p: PathBuf) -> PathBuf {
    lock::lock_path(p)
}

/// Runs `lockstore status`.
pub fn run(a: StatusArgs, state: &Path) -> CliResult {
    let now = crate::cli::now_ms();
    let mut out = serde_json::Map::new();
    out.insert("stateDir".into(), json!(state.display().to_string()));

    // Daemon.
    let dl = lockstore::paths::daemon_lock(state);
    let daemon = match lock::inspect(&dl) {
        Ok(LockState::Held(rec)) => {
            json!({"running": true,
                "pid": rec.as_ref().map(|h| h.record.pid),
                "uptime_s": rec.as_ref().map(|h| h.held.as_secs())})
        }
        _ => json!({"running": false}),
    };
    out.insert("daemon".into(), daemon);

    // Commitments (lock-free snapshot).
    let cpath = lockstore::paths::commitments_file(state);
    let commitments = match CommitmentsStore::open(state, CommitmentsConfig::default())
        .map_err(|e| e.to_string())
        .and_then(|s| s.snapshot().map_err(|e| e.to_string()))
    {
        Ok(snap) => {
            let mut by: BTreeMap<&str, u64> = BTreeMap::new();
            for c in &snap.commitments {
                *by.entry(c.status.as_str()).or_default() += 1;
            }
            json!({"byStatus": by, "invalid": snap.invalid.len()})
        }
        Err(e) => json!({"error": e}),
    };
    out.insert("commitments".into(), commitments);

    // Tasks (a missing ledger is reported, not created).
    let tasks_exists = lockstore::paths::tasks_db(state).exists();
    let tasks = match tasks_exists
        .then(|| TaskRegistry::open_state_dir(state, RegistryOptions::default()))
        .transpose()
    {
        Ok(None) => {
            json!({"absent": true, "total": 0, "queued": 0, "running": 0, "audit": {"warnings": 0, "errors": 0}})
        }
        Ok(Some(reg)) => {
            let list = reg.list().unwrap_or_default();
            let count = |s: &str| list.iter().filter(|t| t.status.as_str() == s).count();
            let audit = reg.audit(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64),
                &AuditOptions::default(),
            );
            let summary = audit
                .map(|r| json!({"warnings": r.summary.warnings, "errors": r.summary.errors, "byCode": r.summary.by_code}))
                .unwrap_or_else(|e| json!({"error": e.to_string()}));
            json!({"total": list.len(), "queued": count("queued"), "running": count("running"), "audit": summary})
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    out.insert("tasks".into(), tasks);

    // Outbox (a missing database is reported, not created).
    let outbox_exists = lockstore::paths::outbox_db(state).exists();
    let outbox = match outbox_exists
        .then(|| {
            Outbox::open_state(state, OutboxOptions::default()).and_then(|o| {
                o.stats(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64))
            })
        })
        .transpose()
    {
        Ok(None) => {
            json!({"absent": true, "byStatus": {}, "dueNow": 0, "oldestPendingAgeMs": null, "deadLetters": 0})
        }
        Ok(Some(st)) => json!({
            "byStatus": st.by_status,
            "dueNow": st.due_now,
            "oldestPendingAgeMs": st.oldest_pending_queued_at.map(|t| {
                let t = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                (now - t).max(0)
            }),
            "deadLetters": st.by_status.get(&OStatus::Dead).copied().unwrap_or(0),
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    out.insert("outbox".into(), outbox);

    // Lock holders.
    let locks = json!({
        "daemon": holder(&dl),
        "commitments": holder(&lock_of(cpath)),
        "tasks": holder(&lock_of(lockstore::paths::tasks_db(state))),
        "outbox": holder(&lock_of(lockstore::paths::outbox_db(state))),
    });
    out.insert("locks".into(), locks);

    let v = Value::Object(out);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print_text(&v);
    Ok(())
}

fn print_text(v: &Value) {
    use super::text::clean;
    println!(
        "state dir    {}",
        clean(v["stateDir"].as_str().unwrap_or("?"))
    );
    let d = &v["daemon"];
    if d["running"] == json!(true) {
        println!(
            "daemon       running · pid {} · up {} s",
            d["pid"], d["uptime_s"]
        );
    } else {
        println!("daemon       not running");
    }
    let fmt_counts = |m: &Value| -> String {
        m.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, n)| format!("{} {n}", clean(k)))
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    };
    let c = &v["commitments"];
    match c.get("error") {
        Some(e) => println!("commitments  error: {}", clean(e.as_str().unwrap_or("?"))),
        None => println!(
            "commitments  {}{}",
            fmt_counts(&c["byStatus"]),
            if c["invalid"].as_u64().unwrap_or(0) > 0 {
                format!(" · INVALID {}", c["invalid"])
            } else {
                String::new()
            }
        ),
    }
    let t = &v["tasks"];
    match t.get("error") {
        Some(e) => println!("tasks        error: {}", clean(e.as_str().unwrap_or("?"))),
        None => println!(
            "tasks        {} total · queued {} · running {} · audit: {} warnings, {} errors",
            t["total"], t["queued"], t["running"], t["audit"]["warnings"], t["audit"]["errors"]
        ),
    }
    let o = &v["outbox"];
    match o.get("error") {
        Some(e) => println!("outbox       error: {}", clean(e.as_str().unwrap_or("?"))),
        None => println!(
            "outbox       {} · due now {} · oldest pending {} · dead letters {}",
            fmt_counts(&o["byStatus"]),
            o["dueNow"],
            o["oldestPendingAgeMs"]
                .as_i64()
                .map(|ms| format!("{} s", ms / 1000))
                .unwrap_or_else(|| "-".into()),
            o["deadLetters"]
        ),
    }
    for (name, h) in v["locks"].as_object().into_iter().flatten() {
        let line = if h["held"] == json!(true) {
            h["describe"]
                .as_str()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "held".into())
        } else {
            "free".into()
        };
        println!("lock         {:<12} {}", clean(name), clean(&line));
    }
}
