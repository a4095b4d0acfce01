//! `lockstore tasks`: the task ledger CLI (openclaw `openclaw tasks`,
//! `src/commands/tasks.ts`, reference §5.10), plus `run` to track a real
//! command and `create|start|progress|finish` for scripts.
//!
//! Every mutation goes through [`TaskRegistry`] (exclusive section on the
//! ledger + one BEGIN IMMEDIATE transaction, persist before commit), so the CLI
//! and a daemon can change the same ledger concurrently without losing updates.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::json;

use lockstore::sqlite::SqliteOptions;
use lockstore::tasks::*;
use lockstore::Durability;

use super::{cli_lock_options, exit, CliError, CliResult};

/// Arguments of `lockstore tasks` (no subcommand = `list`).
#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(subcommand)]
    cmd: Option<TasksCmd>,
    #[command(flatten)]
    list: ListArgs,
    /// Give up waiting for the ledger lock after this many ms [default: 60000].
    #[arg(long, global = true)]
    lock_timeout_ms: Option<u64>,
    /// fsync policy: full (synchronous=FULL) or process (synchronous=NORMAL).
    #[arg(long, global = true, default_value = "full")]
    durability: Durability,
}

#[derive(Args, Debug, Clone, Default)]
struct ListArgs {
    /// Only tasks of this runtime (subagent, acp, cli, cron).
    #[arg(long)]
    runtime: Option<Runtime>,
    /// Only tasks with this status.
    #[arg(long)]
    status: Option<TaskStatus>,
    /// JSON output `{count, runtime, status, tasks}`.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum TasksCmd {
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task (LOOKUP = task id or a unique prefix of one, run id or session key).
    Show {
        /// Task id (or a unique prefix, at least 4 characters), run id or session key.
        lookup: String,
        /// Print the task record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record a task as cancelled (cli tasks: record only).
    Cancel {
        /// Task id (or a unique prefix, at least 4 characters), run id or session key.
        lookup: String,
        /// Print the updated task record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the notify policy (done_only, state_changes, silent).
    Notify {
        /// Task id (or a unique prefix, at least 4 characters), run id or session key.
        lookup: String,
        /// New policy: done_only, state_changes or silent.
        policy: NotifyPolicy,
    },
    /// Audit the ledger.
    Audit {
        /// Only rows of this severity (warn or error); the summary counts all.
        #[arg(long)]
        severity: Option<Severity>,
        /// Only rows of this code; the summary counts all.
        #[arg(long)]
        code: Option<AuditCode>,
        /// Show at most N rows.
        #[arg(long)]
        limit: Option<usize>,
        /// Print the audit report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Preview (default) or apply the maintenance sweep.
    Maintenance {
        /// Apply the sweep (default: only preview what it would change).
        #[arg(long)]
        apply: bool,
        /// Print the sweep's actions as JSON.
        #[arg(long)]
        json: bool,
        /// Grace before an active task with an unjudgeable owner is marked lost, ms.
        #[arg(long, default_value_t = 300_000)]
        grace_ms: u64,
    },
    /// Run CMD as a cli task owned by this process; records succeeded, failed (exit code) or timed_out. Prints the task id first.
    Run {
        /// Label recorded on the task (shown in `tasks list`).
        #[arg(long)]
        label: Option<String>,
        /// Kill the command and record timed_out after this many ms.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// On timeout or SIGTERM/SIGINT/SIGHUP: ms between SIGTERM and SIGKILL to the command's process group.
        #[arg(long, default_value_t = 5000)]
        kill_after_ms: u64,
        /// Command and arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Create a task (prints its id, or the record with --json).
    Create(CreateArgs),
    /// Mark a task running.
    Start {
        /// Task id (or a unique prefix, at least 4 characters), run id or session key.
        lookup: String,
        /// Print the updated task record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record progress (lastEventAt = now); prints the row version after each write.
    Progress {
        /// Task id (or a unique prefix, at least 4 characters), run id or session key.
        lookup: String,
        /// Progress summary to record.
        #[arg(long)]
        summary: Option<String>,
        /// Increment metadata[KEY] by one (read-modify-write).
        #[arg(long)]
        counter: Option<String>,
        /// Do it N times, each a separate locked write.
        #[arg(long, default_value_t = 1)]
        repeat: u64,
    },
    /// Record a terminal status.
    Finish {
        /// Task id (or a unique prefix, at least 4 characters), run id or session key.
        lookup: String,
        /// Terminal status: succeeded, failed, timed_out, cancelled or lost.
        #[arg(long)]
        status: TaskStatus,
        /// Error text to record.
        #[arg(long)]
        error: Option<String>,
        /// Final summary to record.
        #[arg(long)]
        summary: Option<String>,
        /// Print the updated task record as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Runtime of the task: subagent, acp, cli or cron.
    #[arg(long)]
    runtime: Runtime,
    /// Description.
    #[arg(long)]
    task: String,
    /// Short label (shown in `tasks list`).
    #[arg(long)]
    label: Option<String>,
    /// Run id (unique among tasks; `tasks show RUN_ID` finds the task).
    #[arg(long)]
    run_id: Option<String>,
    /// Owner session key (empty: system scope).
    #[arg(long, default_value = "")]
    owner_key: String,
    /// Session key of the child session running the task.
    #[arg(long)]
    child_session: Option<String>,
    /// Id of the parent flow, if the task belongs to one.
    #[arg(long)]
    parent_flow: Option<String>,
    /// Notify policy: done_only, state_changes or silent.
    #[arg(long)]
    notify: Option<NotifyPolicy>,
    /// Initial status: queued (default) or running.
    #[arg(long)]
    status: Option<TaskStatus>,
    /// Record PID (e.g. the calling shell, `$$`) as the owner process.
    #[arg(long)]
    owner_pid: Option<u32>,
    /// Metadata entries KEY=VALUE (VALUE parsed as JSON scalar, else string).
    #[arg(long, num_args = 1..)]
    metadata: Vec<String>,
    /// Print the created task record as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cli_err(e: TaskError) -> CliError {
    match e {
        TaskError::Core(e) => e.into(),
        TaskError::NotFound { lookup, .. } => CliError::usage(format!(
            "Task not found: {lookup}. Run `lockstore tasks list` to see task ids, run ids and session keys."
        )),
        e @ TaskError::InvalidPersisted { .. } => CliError {
            code: exit::CORRUPT,
            msg: e.to_string(),
        },
        e @ (TaskError::InvalidTransition { .. }
        | TaskError::Invalid { .. }
        | TaskError::NotTerminal { .. }) => CliError::usage(e.to_string()),
        e => CliError {
            code: exit::IO,
            msg: e.to_string(),
        },
    }
}

/// `reg.lookup` (task id, run id or session key), else a unique task-id
/// prefix (git style, see [`super::resolve_prefix`]); an ambiguous prefix is
/// an error listing the candidates.
fn resolve(reg: &TaskRegistry, lookup: &str) -> CliResult<TaskRecord> {
    match reg.lookup(lookup) {
        Err(e @ TaskError::NotFound { .. }) => {
            let all = reg.list().map_err(cli_err)?;
            let ids: Vec<&str> = all.iter().map(|t| t.task_id.as_str()).collect();
            match super::resolve_prefix("task", lookup, &ids)? {
                Some(i) => Ok(all[i].clone()),
                None => Err(cli_err(e)),
            }
        }
        r => r.map_err(cli_err),
    }
}

fn print_json(v: &impl serde::Serialize) -> CliResult {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::usage(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn trunc(s: &str, w: usize) -> String {
    let s = &*super::text::clean(s);
    let n = s.chars().count();
    if n <= w {
        format!("{s:<w$}")
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn summary_text(t: &TaskRecord) -> &str {
    t.terminal_summary
        .as_deref()
        .or(t.progress_summary.as_deref())
        .or(t.label.as_deref())
        .unwrap_or(&t.task)
}

fn registry_summary(tasks: &[TaskRecord]) -> serde_json::Value {
    let mut by_status = serde_json::Map::new();
    for s in TaskStatus::ALL {
        by_status.insert(
            s.as_str().into(),
            tasks.iter().filter(|t| t.status == *s).count().into(),
        );
    }
    let mut by_runtime = serde_json::Map::new();
    for r in Runtime::ALL {
        by_runtime.insert(
            r.as_str().into(),
            tasks.iter().filter(|t| t.runtime == *r).count().into(),
        );
    }
    let active = tasks.iter().filter(|t| t.status.is_active()).count();
    let failures = tasks
        .iter()
        .filter(|t| {
            matches!(
                t.status,
                TaskStatus::Failed | TaskStatus::TimedOut | TaskStatus::Lost
            )
        })
        .count();
    json!({"total": tasks.len(), "active": active, "terminal": tasks.len() - active,
           "failures": failures, "byStatus": by_status, "byRuntime": by_runtime})
}

fn show_text(t: &TaskRecord) {
    let ts = |v: Option<i64>| v.map(iso).unwrap_or_else(|| "n/a".into());
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "n/a".into());
    let lines: Vec<(&str, String)> = vec![
        ("taskId", t.task_id.clone()),
        ("runtime", t.runtime.to_string()),
        ("status", t.status.to_string()),
        ("deliveryStatus", t.delivery_status.to_string()),
        ("notifyPolicy", t.notify_policy.to_string()),
        ("label", o(&t.label)),
        ("task", t.task.clone()),
        (
            "ownerKey",
            if t.owner_key.is_empty() {
                "n/a".into()
            } else {
                t.owner_key.clone()
            },
        ),
        ("scopeKind", t.scope_kind.to_string()),
        ("runId", o(&t.run_id)),
        ("childSessionKey", o(&t.child_session_key)),
        ("parentFlowId", o(&t.parent_flow_id)),
        (
            "ownerPid",
            t.owner_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "n/a".into()),
        ),
        ("createdAt", iso(t.created_at)),
        ("startedAt", ts(t.started_at)),
        ("endedAt", ts(t.ended_at)),
        ("lastEventAt", ts(t.last_event_at)),
        ("cleanupAfter", ts(t.cleanup_after)),
        ("error", o(&t.error)),
        ("progressSummary", o(&t.progress_summary)),
        ("terminalSummary", o(&t.terminal_summary)),
        (
            "terminalOutcome",
            t.terminal_outcome
                .map(|x| x.to_string())
                .unwrap_or_else(|| "n/a".into()),
        ),
        ("version", t.version.to_string()),
    ];
    for (k, v) in lines {
        println!("{k}: {}", super::text::clean(&v));
    }
}

/// Runs `lockstore tasks ...` on `<state_dir>/tasks/runs.sqlite`.
pub fn run(a: TasksArgs, state_dir: &Path) -> CliResult {
    let opts = RegistryOptions {
        sqlite: SqliteOptions {
            durability: a.durability,
            ..Default::default()
        },
        lock: cli_lock_options(a.lock_timeout_ms),
        ..Default::default()
    };
    let is_run = matches!(a.cmd, Some(TasksCmd::Run { .. }));
    let reg = super::backend::open_tasks(state_dir, opts)
        .map_err(cli_err)
        .map_err(|e| if is_run { own_failure(e) } else { e })?;
    let cmd = a.cmd.unwrap_or(TasksCmd::List(a.list));
    match cmd {
        TasksCmd::List(l) => list(&reg, &l),
        TasksCmd::Show { lookup, json } => {
            let t = resolve(&reg, &lookup)?;
            if json {
                print_json(&t)
            } else {
                show_text(&t);
                Ok(())
            }
        }
        TasksCmd::Cancel { lookup, json } => {
            let t = resolve(&reg, &lookup)?;
            let t = reg.cancel(&t.task_id, SystemTime::now()).map_err(cli_err)?;
            if json {
                print_json(&t)
            } else {
                println!("Cancelled {} ({}).", t.task_id, t.runtime);
                Ok(())
            }
        }
        TasksCmd::Notify { lookup, policy } => {
            let t = resolve(&reg, &lookup)?;
            let t = reg.set_notify_policy(&t.task_id, policy).map_err(cli_err)?;
            println!(
                "Updated {} notify policy to {}.",
                t.task_id, t.notify_policy
            );
            Ok(())
        }
        TasksCmd::Audit {
            severity,
            code,
            limit,
            json,
        } => audit_cmd(&reg, severity, code, limit, json),
        TasksCmd::Maintenance {
            apply,
            json,
            grace_ms,
        } => maintenance_cmd(&reg, apply, json, grace_ms),
        TasksCmd::Run {
            label,
            timeout_ms,
            kill_after_ms,
            cmd,
        } => run_cmd(&reg, label, timeout_ms, kill_after_ms, cmd),
        TasksCmd::Create(c) => create_cmd(&reg, c),
        TasksCmd::Start { lookup, json } => {
            let t = resolve(&reg, &lookup)?;
            let t = reg
                .mark_running(&t.task_id, SystemTime::now())
                .map_err(cli_err)?;
            if json {
                print_json(&t)
            } else {
                println!("{}", t.task_id);
                Ok(())
            }
        }
        TasksCmd::Progress {
            lookup,
            summary,
            counter,
            repeat,
        } => {
            let id = resolve(&reg, &lookup)?.task_id;
            let out = std::io::stdout();
            let mut out = out.lock();
            for _ in 0..repeat {
                let t = match counter.as_deref() {
                    None => reg.record_progress(&id, summary.as_deref(), SystemTime::now()),
                    Some(c) => progress_counting(&reg, &id, summary.as_deref(), c),
                }
                .map_err(cli_err)?;
                let _ = writeln!(out, "{}", t.version);
            }
            Ok(())
        }
        TasksCmd::Finish {
            lookup,
            status,
            error,
            summary,
            json,
        } => {
            let t = resolve(&reg, &lookup)?;
            let t = reg
                .finish(
                    &t.task_id,
                    Finish {
                        status,
                        error,
                        summary,
                    },
                    SystemTime::now(),
                )
                .map_err(cli_err)?;
            if json {
                print_json(&t)
            } else {
                println!("{}", t.task_id);
                Ok(())
            }
        }
    }
}

fn list(reg: &TaskRegistry, l: &ListArgs) -> CliResult {
    let now = SystemTime::now();
    let all = reg.list().map_err(cli_err)?;
    let tasks: Vec<_> = all
        .iter()
        .filter(|t| l.runtime.is_none_or(|r| t.runtime == r))
        .filter(|t| l.status.is_none_or(|s| t.status == s))
        .cloned()
        .collect();
    if l.json {
        return print_json(&json!({
            "count": tasks.len(),
            "runtime": l.runtime,
            "status": l.status,
            "tasks": tasks,
        }));
    }
    let issues = audit(&all, now, &AuditOptions::default()).summary.total;
    println!("Background tasks: {}", tasks.len());
    let q = all
        .iter()
        .filter(|t| t.status == TaskStatus::Queued)
        .count();
    let r = all
        .iter()
        .filter(|t| t.status == TaskStatus::Running)
        .count();
    println!("Task pressure: {q} queued · {r} running · {issues} issues");
    if let Some(r) = l.runtime {
        println!("Runtime filter: {r}");
    }
    if let Some(s) = l.status {
        println!("Status filter: {s}");
    }
    if tasks.is_empty() {
        println!("No background tasks found. Run `lockstore tasks audit` to check the ledger.");
        return Ok(());
    }
    // Full task ids (copyable; commands also take a unique prefix).
    let w = tasks
        .iter()
        .map(|t| t.task_id.chars().count())
        .max()
        .unwrap_or(4);
    println!(
        "{:<w$} {} {} {} {} {} Summary",
        "Task",
        trunc("Kind", 8),
        trunc("Status", 10),
        trunc("Delivery", 14),
        trunc("Run", 10),
        trunc("Child Session", 36)
    );
    for t in &tasks {
        println!(
            "{:<w$} {} {} {} {} {} {}",
            super::sanitize(&t.task_id),
            trunc(t.runtime.as_str(), 8),
            trunc(t.status.as_str(), 10),
            trunc(t.delivery_status.as_str(), 14),
            trunc(t.run_id.as_deref().unwrap_or("n/a"), 10),
            trunc(t.child_session_key.as_deref().unwrap_or("n/a"), 36),
            trunc(summary_text(t), 80).trim_end()
        );
    }
    Ok(())
}

fn audit_json(
    rep: &AuditReport,
    severity: Option<Severity>,
    code: Option<AuditCode>,
    limit: Option<usize>,
) -> serde_json::Value {
    let rows = rep.filtered(severity, code);
    let shown: Vec<_> = rows.iter().take(limit.unwrap_or(usize::MAX)).collect();
    let s = &rep.summary;
    json!({
        "count": rep.findings.len(),
        "filteredCount": rows.len(),
        "displayed": shown.len(),
        "filters": {"severity": severity, "code": code, "limit": limit},
        "summary": {
            "total": s.total, "warnings": s.warnings, "errors": s.errors, "byCode": s.by_code,
            "taskFlows": {"total": 0, "warnings": 0, "errors": 0},
            "combined": {"total": s.total, "errors": s.errors, "warnings": s.warnings},
        },
        "findings": shown,
    })
}

fn audit_cmd(
    reg: &TaskRegistry,
    severity: Option<Severity>,
    code: Option<AuditCode>,
    limit: Option<usize>,
    json: bool,
) -> CliResult {
    let rep = reg
        .audit(SystemTime::now(), &AuditOptions::default())
        .map_err(cli_err)?;
    if json {
        return print_json(&audit_json(&rep, severity, code, limit));
    }
    let s = &rep.summary;
    println!(
        "Tasks audit: {} findings · {} errors · {} warnings",
        s.total, s.errors, s.warnings
    );
    if let Some(v) = severity {
        println!("Severity filter: {}", v.as_str());
    }
    if let Some(c) = code {
        println!("Code filter: {}", c.as_str());
    }
    println!("Task findings: {} · TaskFlow findings: 0", s.total);
    let rows = rep.filtered(severity, code);
    if rows.is_empty() {
        println!("No findings.");
        return Ok(());
    }
    println!(
        "{} {} {} {} {} {} Detail",
        trunc("Scope", 8),
        trunc("Severity", 8),
        trunc("Code", 22),
        trunc("Item", 18),
        trunc("Status", 10),
        trunc("Age", 8)
    );
    for f in rows.iter().take(limit.unwrap_or(usize::MAX)) {
        println!(
            "{} {} {} {} {} {} {}",
            trunc("Task", 8),
            trunc(f.severity.as_str(), 8),
            trunc(f.code.as_str(), 22),
            trunc(&f.task_id, 18),
            trunc(f.status.as_str(), 10),
            trunc(&format_age(f.age_ms), 8),
            trunc(&f.detail, 88).trim_end()
        );
    }
    Ok(())
}

fn health(s: &AuditSummary) -> String {
    format!(
        "{} findings · {} errors · {} warnings",
        s.total, s.errors, s.warnings
    )
}

fn maintenance_cmd(reg: &TaskRegistry, apply: bool, json: bool, grace_ms: u64) -> CliResult {
    let now = SystemTime::now();
    let before = reg.audit(now, &AuditOptions::default()).map_err(cli_err)?;
    let mode = if apply {
        MaintenanceMode::Apply
    } else {
        MaintenanceMode::Preview
    };
    let rep = reg
        .maintenance(
            mode,
            now,
            &MaintenanceOptions::with_grace(Duration::from_millis(grace_ms)),
        )
        .map_err(cli_err)?;
    let after = reg.audit(now, &AuditOptions::default()).map_err(cli_err)?;
    let tasks = reg.list().map_err(cli_err)?;
    if json {
        return print_json(&json!({
            "mode": if apply { "apply" } else { "preview" },
            "maintenance": {"tasks": rep, "taskFlows": {"reconciled": 0, "pruned": 0}},
            "tasks": registry_summary(&tasks),
            "auditBefore": before.summary,
            "auditAfter": after.summary,
        }));
    }
    println!(
        "Tasks maintenance ({}): tasks {} reconcile · {} recovered · {} cleanup stamp · {} prune · {} normalize; task-flows 0 reconcile · 0 prune",
        if apply { "applied" } else { "preview" },
        rep.reconciled,
        rep.recovered,
        rep.cleanup_stamped,
        rep.pruned,
        rep.normalized
    );
    for a in &rep.actions {
        println!("  {} {}: {}", a.action, a.task_id, a.reason);
    }
    println!("Health before: {}", health(&before.summary));
    println!("Health after: {}", health(&after.summary));
    Ok(())
}

fn create_cmd(reg: &TaskRegistry, c: CreateArgs) -> CliResult {
    let mut md = Metadata::new();
    for kv in &c.metadata {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--metadata {kv:?}: expected KEY=VALUE")))?;
        if k.is_empty() {
            return Err(CliError::usage(format!("--metadata {kv:?}: empty key")));
        }
        let v = match serde_json::from_str::<serde_json::Value>(v) {
            Ok(j) if !(j.is_object() || j.is_array()) => j,
            _ => serde_json::Value::String(v.to_string()),
        };
        md.insert(k.to_string(), v);
    }
    let owner = c.owner_pid.map(lockstore::ProcessIdentity::of_pid);
    let new = NewTask {
        runtime: Some(c.runtime),
        task: c.task,
        label: c.label,
        owner_key: c.owner_key,
        run_id: c.run_id,
        child_session_key: c.child_session,
        parent_flow_id: c.parent_flow,
        notify_policy: c.notify,
        status: c.status,
        owner,
        metadata: (!md.is_empty()).then_some(md),
        ..Default::default()
    };
    let (t, _) = reg.create(new, SystemTime::now()).map_err(cli_err)?;
    if c.json {
        print_json(&t)
    } else {
        println!("{}", t.task_id);
        Ok(())
    }
}

/// `tasks run`'s exit code for lockstore's own failure (timeout(1), env(1)).
const RUN_OWN_FAILURE: i32 = 125;
/// `tasks run`'s exit code on timeout (timeout(1)).
const RUN_TIMED_OUT: i32 = 124;
/// `tasks run`'s exit code when the command was found but cannot run.
const RUN_CANNOT_EXECUTE: i32 = 126;
/// `tasks run`'s exit code when the command was not found.
const RUN_NOT_FOUND: i32 = 127;

/// A failure of lockstore itself during `tasks run`: exit 125, whatever the
/// error (the command's own codes must stay distinguishable from ours).
fn own_failure(e: CliError) -> CliError {
    CliError {
        code: RUN_OWN_FAILURE,
        msg: e.msg,
    }
}

/// The termination signal `tasks run` received (0: none yet).
static RUN_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_run_signal(sig: nix::libc::c_int) {
    // The first signal wins; async-signal-safe (one atomic operation).
    let _ = RUN_SIGNAL.compare_exchange(
        0,
        sig,
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// SIGTERM, SIGINT and SIGHUP set [`RUN_SIGNAL`] instead of ending lockstore:
/// `tasks run` then ends the command's process group, records the task and
/// exits 128+N.
fn install_run_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_run_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only performs one atomic compare-exchange.
        let _ = unsafe { sigaction(s, &act) };
    }
}

fn run_signal() -> Option<i32> {
    match RUN_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// `tasks run`: exit codes follow timeout(1) and env(1) — the command's code;
/// 128+N if it died of signal N; 124 timed out; 125 lockstore's own failure;
/// 126 found but cannot be executed; 127 not found; 128+N when lockstore
/// itself got SIGTERM/SIGINT/SIGHUP N (after ending the command's group and
/// recording the task cancelled).
fn run_cmd(
    reg: &TaskRegistry,
    label: Option<String>,
    timeout_ms: Option<u64>,
    kill_after_ms: u64,
    cmd: Vec<String>,
) -> CliResult {
    use lockstore::child::{spawn_group, Ended};
    use std::os::unix::process::ExitStatusExt;

    install_run_signal_handlers();
    let desc = cmd.join(" ");
    let new = NewTask {
        runtime: Some(Runtime::Cli),
        task: desc.clone(),
        label,
        owner: Some(lockstore::ProcessIdentity::current()),
        ..Default::default()
    };
    let own = |e: TaskError| own_failure(cli_err(e));
    let (t, _) = reg.create(new, SystemTime::now()).map_err(own)?;
    let id = t.task_id;
    reg.mark_running(&id, SystemTime::now()).map_err(own)?;
    println!("{id}");
    let _ = std::io::stdout().flush();
    let signalled = |id: &str, sig: i32, what: &str| -> CliResult {
        let msg = format!("lockstore received {}; {what}", signal_name(sig));
        record_end(reg, id, TaskStatus::Cancelled, Some(msg.clone())).map_err(own_failure)?;
        Err(CliError {
            code: 128 + sig,
            msg: format!("task {id}: {msg}"),
        })
    };
    if let Some(sig) = run_signal() {
        return signalled(&id, sig, "the command was not started");
    }
    let mut child = match spawn_group(Command::new(&cmd[0]).args(&cmd[1..])) {
        Ok(c) => c,
        Err(e) => {
            let code = match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::NotFound, _) => RUN_NOT_FOUND,
                (std::io::ErrorKind::PermissionDenied, _) => RUN_CANNOT_EXECUTE,
                (_, Some(nix::libc::ENOEXEC | nix::libc::EISDIR | nix::libc::ETXTBSY)) => {
                    RUN_CANNOT_EXECUTE
                }
                _ => RUN_OWN_FAILURE,
            };
            let msg = format!("cannot start {:?}: {e}", cmd[0]);
            record_end(reg, &id, TaskStatus::Failed, Some(msg.clone())).map_err(own_failure)?;
            return Err(CliError { code, msg });
        }
    };
    let pid = child.id();
    eprintln!("lockstore: task {id} running `{desc}` (pid {pid})");
    let grace = Duration::from_millis(kill_after_ms);
    let deadline = timeout_ms.map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
    let ended = match child.wait(deadline, &run_signal, grace) {
        Ok(e) => e,
        Err(e) => {
            // Cannot watch the command any more: end it rather than leave it
            // running unrecorded.
            let _ = child.terminate(grace);
            let msg = format!("waiting for `{desc}` (pid {pid}): {e}; its process group was ended");
            record_end(reg, &id, TaskStatus::Failed, Some(msg.clone())).map_err(own_failure)?;
            return Err(CliError {
                code: RUN_OWN_FAILURE,
                msg,
            });
        }
    };
    let ended_how =
        format!("process group ended (SIGTERM; SIGKILL after {kill_after_ms} ms if still running)");
    let status = match ended {
        Ended::Exited(s) => s,
        Ended::TimedOut(_) => {
            let msg = format!(
                "timed out after {} ms; {ended_how}",
                timeout_ms.unwrap_or(0)
            );
            record_end(reg, &id, TaskStatus::TimedOut, Some(msg.clone())).map_err(own_failure)?;
            return Err(CliError {
                code: RUN_TIMED_OUT,
                msg: format!("task {id}: {msg}"),
            });
        }
        Ended::Interrupted { signal, .. } => return signalled(&id, signal, &ended_how),
        other => {
            let msg = format!("`{desc}` ended in a way lockstore does not know: {other:?}");
            record_end(reg, &id, TaskStatus::Failed, Some(msg.clone())).map_err(own_failure)?;
            return Err(CliError {
                code: RUN_OWN_FAILURE,
                msg,
            });
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => record_end(reg, &id, TaskStatus::Succeeded, None).map_err(own_failure),
        (Some(c), _) => {
            record_end(
                reg,
                &id,
                TaskStatus::Failed,
                Some(format!("exited with code {c}")),
            )
            .map_err(own_failure)?;
            Err(CliError {
                code: c,
                msg: format!("task {id}: `{desc}` exited with code {c}"),
            })
        }
        (None, sig) => {
            let s = sig.unwrap_or(0);
            record_end(
                reg,
                &id,
                TaskStatus::Failed,
                Some(format!("killed by signal {s}")),
            )
            .map_err(own_failure)?;
            Err(CliError {
                code: 128 + s,
                msg: format!("task {id}: `{desc}` killed by {}", signal_name(s)),
            })
        }
    }
}

/// `tasks progress --counter KEY`: progress at now plus `metadata[KEY] += 1`,
/// one read-modify-write under the registry's compare-and-set.
fn progress_counting(
    reg: &TaskRegistry,
    id: &str,
    summary: Option<&str>,
    counter: &str,
) -> Result<TaskRecord, TaskError> {
    let now = crate::cli::now_ms();
    reg.update(id, |t| {
        t.last_event_at = Some(now.max(t.last_event_at.unwrap_or(i64::MIN)));
        if let Some(s) = summary {
            t.progress_summary = Some(s.to_string());
        }
        let m = t.metadata.get_or_insert_with(Default::default);
        let n = m.get(counter).and_then(|v| v.as_i64()).unwrap_or(0);
        m.insert(counter.to_string(), (n + 1).into());
        Ok(true)
    })
}

fn record_end(reg: &TaskRegistry, id: &str, s: TaskStatus, err: Option<String>) -> CliResult {
    let how = Finish {
        status: s,
        error: err,
        summary: None,
    };
    match reg.finish(id, how, SystemTime::now()) {
        Ok(_) => Ok(()),
        // Cancelled meanwhile: monotonicity keeps the operator's decision.
        Err(TaskError::InvalidTransition { from, .. }) => {
            eprintln!("lockstore: task {id} was already {from}; result {s} not recorded");
            Ok(())
        }
        Err(e) => Err(cli_err(e)),
    }
}

/// An age for the audit table: `fresh` under a second, else the two largest
/// units (`3d 4h`, `2h 5m`, `12m`, `40s`); `n/a` when unknown.
fn format_age(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "n/a".into() };
    if ms < 1000 {
        return "fresh".into();
    }
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}
