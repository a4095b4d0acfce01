//! `lockstore status`: one screen for an operator.
//!
//! Reads without taking any store lock (the JSON file is read as a whole old or
//! new version; SQLite readers never block WAL writers), so it works while the
//! daemon and CLIs are busy: the daemon (pid, uptime, and each component's
//! health from its `daemon-status.json` report — never "running" while a
//! component is down or the report is stale); commitments by status; task
//! pressure (queued · running · audit findings); outbox counts by status,
//! oldest pending age, dead letters; and the holder of each store's lock.
//! `--json` prints the same as one document with snake_case keys;
//! `--watch` redraws it in place ([`watch`]).

pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use lockstore::commitments::{CommitmentsConfig, CommitmentsStore};
use lockstore::lock::{self, LockState};
use lockstore::outbox::{OutboxOptions, Status as OStatus};
use lockstore::tasks::{AuditOptions, RegistryOptions};

use super::daemon::report::{self, DaemonReport, Health};
use super::{parse_duration, CliResult};

/// Arguments of `lockstore status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of text (snake_case keys).
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw a one-screen view in place until q, Ctrl-C or SIGTERM (like top).
    #[arg(long)]
    watch: bool,
    /// Redraw period of --watch (e.g. 1s, 200ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration, requires = "watch")]
    interval: Duration,
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
    if a.watch {
        return watch::run(state, a.interval);
    }
    let v = collect(state, crate::cli::now_ms());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    for l in text_lines(&v) {
        println!("{l}");
    }
    Ok(())
}

/// The daemon section: lock holder, and its report if it is the holder's.
fn daemon_section(state: &Path, now: i64) -> Value {
    let dl = lockstore::paths::daemon_lock(state);
    let (pid, held_ms) = match lock::inspect(&dl) {
        Ok(LockState::Held(rec)) => (
            rec.as_ref().map(|h| h.record.pid),
            rec.as_ref().map(|h| h.held.as_millis() as u64),
        ),
        _ => return json!({"running": false, "state": "not_running"}),
    };
    let mut d = json!({
        "running": true,
        "pid": pid,
        "uptime_s": held_ms.map(|ms| ms / 1000),
    });
    let rpath = report::report_path(state);
    let rep = match DaemonReport::load(&rpath) {
        Ok(r) => r.filter(|r| pid.is_none_or(|p| p == r.pid)),
        Err(e) => {
            d["report_error"] = json!(e);
            None
        }
    };
    let Some(rep) = rep else {
        // The holder has not written its first report yet, or it is not
        // reporting at all (an older daemon).
        let young = held_ms.is_some_and(|ms| ms < 10_000);
        d["state"] = json!(if young { "starting" } else { "not_reporting" });
        d["components"] = json!({});
        return d;
    };
    let age = (now - rep.updated_at_ms).max(0);
    let stale = age as u64 > rep.stale_after_ms;
    let mut comps = serde_json::Map::new();
    let mut down = Vec::new();
    for c in &rep.components {
        if c.health != Health::Running {
            down.push(c.name.clone());
        }
        comps.insert(
            c.name.clone(),
            serde_json::to_value(c).unwrap_or(Value::Null),
        );
    }
    d["state"] = json!(if stale {
        "not_reporting"
    } else if rep.components.iter().all(|c| c.health == Health::Starting) {
        "starting"
    } else if down.is_empty() {
        "running"
    } else {
        "degraded"
    });
    d["not_running_components"] = json!(down);
    d["report"] = json!({
        "path": rpath.display().to_string(),
        "updated_at_ms": rep.updated_at_ms,
        "age_ms": age,
        "stale": stale,
        "stale_after_ms": rep.stale_after_ms,
    });
    d["adapter"] = json!(rep.adapter);
    d["tick_ms"] = json!(rep.tick_ms);
    d["components"] = Value::Object(comps);
    d
}

/// Everything `status` shows, as one JSON document (snake_case keys).
pub fn collect(state: &Path, now: i64) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("state_dir".into(), json!(state.display().to_string()));
    out.insert("now_ms".into(), json!(now));
    out.insert("daemon".into(), daemon_section(state, now));

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
            json!({"by_status": by, "invalid": snap.invalid.len()})
        }
        Err(e) => json!({"error": e}),
    };
    out.insert("commitments".into(), commitments);

    // Tasks (a missing ledger is reported, not created).
    let tasks_exists = crate::cli::backend::tasks_exist(state);
    let tasks = match tasks_exists
        .then(|| {
            crate::cli::backend::open_tasks_with(
                state,
                RegistryOptions::default(),
                crate::cli::backend::quick_pg(),
            )
        })
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
                .map(|r| json!({"warnings": r.summary.warnings, "errors": r.summary.errors, "by_code": r.summary.by_code}))
                .unwrap_or_else(|e| json!({"error": e.to_string()}));
            let owners: Vec<Value> = list
                .iter()
                .filter(|t| t.status.as_str() == "running")
                .filter_map(|t| {
                    let host = t.owner_host.as_deref()?;
                    Some(json!({"task_id": t.task_id, "host_id": host,
                        "lease_expires_at_ms": t.lease_expires_at, "fencing_token": t.fencing_token}))
                })
                .collect();
            json!({"total": list.len(), "queued": count("queued"), "running": count("running"), "audit": summary, "lease_owners": owners})
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    out.insert("tasks".into(), tasks);

    // Outbox (a missing database is reported, not created).
    let outbox_exists = crate::cli::backend::outbox_exists(state);
    let outbox = match outbox_exists
        .then(|| {
            crate::cli::backend::open_outbox_with(
                state,
                OutboxOptions::default(),
                crate::cli::backend::quick_pg(),
            )
            .and_then(|o| {
                o.stats(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64))
            })
        })
        .transpose()
    {
        Ok(None) => {
            json!({"absent": true, "by_status": {}, "due_now": 0, "oldest_pending_age_ms": null, "dead_letters": 0})
        }
        Ok(Some(st)) => json!({
            "by_status": st.by_status,
            "due_now": st.due_now,
            "oldest_pending_age_ms": st.oldest_pending_queued_at.map(|t| {
                let t = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                (now - t).max(0)
            }),
            "dead_letters": st.by_status.get(&OStatus::Dead).copied().unwrap_or(0),
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    out.insert("outbox".into(), outbox);
    out.insert("backend".into(), backend_section(now));

    // Lock holders.
    let locks = json!({
        "daemon": holder(&lockstore::paths::daemon_lock(state)),
        "commitments": holder(&lock_of(cpath)),
        "tasks": holder(&lock_of(lockstore::paths::tasks_db(state))),
        "outbox": holder(&lock_of(lockstore::paths::outbox_db(state))),
    });
    out.insert("locks".into(), locks);
    Value::Object(out)
}

/// Where the ledger and the outbox live; on PostgreSQL this host's id and
/// the hosts holding outbox leases (claims in flight, maintenance leader).
fn backend_section(now: i64) -> Value {
    let Some(url) = crate::cli::backend::url() else {
        return json!({"name": "sqlite", "host_id": null, "lease_holders": []});
    };
    let pg = crate::cli::backend::quick_pg();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64);
    let mut b = json!({"name": "postgres", "host_id": pg.host_id.clone()});
    match lockstore::outbox::lease_holders(url, &pg, at) {
        Ok(h) => b["lease_holders"] = json!(h),
        Err(e) => b["error"] = json!(e.to_string()),
    }
    b
}

/// "postgres · host h1 · claims h1 (3), leader:outbox h2" for the text views.
pub(crate) fn backend_line(v: &Value) -> String {
    let b = &v["backend"];
    let name = b["name"].as_str().unwrap_or("?");
    if name != "postgres" {
        return format!("{} (state dir; one host)", clean(name));
    }
    let mut l = format!("postgres · this host {}", str_of(&b["host_id"]));
    if let Some(e) = b["error"].as_str() {
        l.push_str(&format!(" · error: {}", clean(e)));
        return l;
    }
    let mut held: Vec<String> = b["lease_holders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{} {} ({}{})",
                str_of(&h["kind"]),
                str_of(&h["host_id"]),
                h["count"],
                if h["expired"] == json!(true) {
                    ", expired"
                } else {
                    ""
                }
            )
        })
        .collect();
    for o in v["tasks"]["lease_owners"].as_array().into_iter().flatten() {
        held.push(format!(
            "task {} {}",
            str_of(&o["task_id"]),
            str_of(&o["host_id"])
        ));
    }
    if held.is_empty() {
        l.push_str(" · no leases held");
    } else {
        l.push_str(&format!(" · leases: {}", held.join(", ")));
    }
    l
}

pub(crate) use crate::cli::text::clean;

fn str_of(v: &Value) -> String {
    clean(v.as_str().unwrap_or("?")).into_owned()
}

/// `k n · k n` of a counts object, or "none".
pub(crate) fn fmt_counts(m: &Value) -> String {
    m.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, n)| format!("{} {n}", clean(k)))
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into())
}

/// "12 s", "3 min", "2 h" for a duration in ms.
pub(crate) fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// The daemon's headline: never "running" while a component is not running
/// or the report is stale.
pub(crate) fn daemon_line(d: &Value) -> String {
    if d["running"] != json!(true) {
        return "not running".into();
    }
    let pid = d["pid"]
        .as_u64()
        .map(|p| format!("pid {p}"))
        .unwrap_or_else(|| "pid ?".into());
    let up = d["uptime_s"]
        .as_i64()
        .map(|s| format!(" · up {}", human_ms(s * 1000)))
        .unwrap_or_default();
    let state = d["state"].as_str().unwrap_or("?");
    let what = match state {
        "running" => "running".to_string(),
        "starting" => "starting".to_string(),
        "degraded" => {
            let names: Vec<String> = d["not_running_components"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let n = n.as_str().unwrap_or("?");
                    format!(
                        "{} {}",
                        clean(n),
                        d["components"][n]["health"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            format!("DEGRADED ({})", names.join(", "))
        }
        "not_reporting" => match d["report"]["age_ms"].as_i64() {
            Some(age) => format!("NOT REPORTING (last report {} ago)", human_ms(age)),
            None => "NOT REPORTING (no status report)".to_string(),
        },
        other => clean(other).into_owned(),
    };
    format!("{what} · {pid}{up}")
}

/// One line per component: health, restarts, next try, last error (its
/// text too if `with_error`).
pub(crate) fn component_lines(d: &Value, now: i64, with_error: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (name, c) in d["components"].as_object().into_iter().flatten() {
        let mut l = format!(
            "{:<19} {:<10} {} restarts",
            clean(name),
            c["health"].as_str().unwrap_or("?"),
            c["restarts"]
        );
        if let Some(t) = c["next_attempt_at_ms"].as_i64() {
            l.push_str(&format!(" · next try in {}", human_ms(t - now)));
        }
        if let Some(e) = c["last_error"].as_str() {
            let ago = c["last_error_at_ms"]
                .as_i64()
                .map(|t| format!(" ({} ago)", human_ms(now - t)))
                .unwrap_or_default();
            if with_error {
                l.push_str(&format!(" · last error{ago}: {}", clean(e)));
            } else {
                l.push_str(&format!(" · last error{ago}"));
            }
        }
        out.push(l);
    }
    out
}

fn text_lines(v: &Value) -> Vec<String> {
    let now = v["now_ms"].as_i64().unwrap_or(0);
    let mut out = vec![format!("state dir    {}", str_of(&v["state_dir"]))];
    out.push(format!("backend      {}", backend_line(v)));
    let d = &v["daemon"];
    out.push(format!("daemon       {}", daemon_line(d)));
    if let Some(e) = d["report_error"].as_str() {
        out.push(format!("daemon       report: {}", clean(e)));
    }
    for l in component_lines(d, now, true) {
        out.push(format!("component    {l}"));
    }
    let c = &v["commitments"];
    match c.get("error") {
        Some(e) => out.push(format!("commitments  error: {}", str_of(e))),
        None => out.push(format!(
            "commitments  {}{}",
            fmt_counts(&c["by_status"]),
            if c["invalid"].as_u64().unwrap_or(0) > 0 {
                format!(" · INVALID {}", c["invalid"])
            } else {
                String::new()
            }
        )),
    }
    let t = &v["tasks"];
    match t.get("error") {
        Some(e) => out.push(format!("tasks        error: {}", str_of(e))),
        None => out.push(format!(
            "tasks        {} total · queued {} · running {} · audit: {} warnings, {} errors",
            t["total"], t["queued"], t["running"], t["audit"]["warnings"], t["audit"]["errors"]
        )),
    }
    let o = &v["outbox"];
    match o.get("error") {
        Some(e) => out.push(format!("outbox       error: {}", str_of(e))),
        None => out.push(format!(
            "outbox       {} · due now {} · oldest pending {} · dead letters {}",
            fmt_counts(&o["by_status"]),
            o["due_now"],
            o["oldest_pending_age_ms"]
                .as_i64()
                .map(human_ms)
                .unwrap_or_else(|| "-".into()),
            o["dead_letters"]
        )),
    }
    for (name, h) in v["locks"].as_object().into_iter().flatten() {
        out.push(format!("lock         {name:<12} {}", lock_line(h)));
    }
    out
}

/// "free", "held", or the holder's description.
pub(crate) fn lock_line(h: &Value) -> String {
    if let Some(e) = h["error"].as_str() {
        return format!("error: {}", clean(e));
    }
    if h["held"] == json!(true) {
        h["describe"]
            .as_str()
            .map(|s| clean(s).into_owned())
            .unwrap_or_else(|| "held".into())
    } else {
        "free".into()
    }
}
