//! `lockstore soak-client` (hidden): one client process of `lockstore soak`.
//!
//! Loops until the stop file exists, doing random operations on the state dir
//! through the real code paths — mostly `lockstore` CLI subprocesses (the same
//! binary, `std::env::current_exe()`), some direct library calls. Every
//! operation that returned success is appended to the client's log as one JSON
//! line (written with one `write(2)` before the next operation starts, so a
//! SIGKILL can only lose the line of an operation whose result was never
//! acknowledged), with what the client believes the result is. Failed
//! operations are logged too, with `"ack": false`.
//!
//! Log line: `{"op": KIND, "ack": bool, "client": N, "inc": INCARNATION, ...}`
//! with the kind's fields (`id`, `key`, `status`, `by`, `changed`, ...).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::cli::now_ms;
use lockstore::commitments::{
    Candidate, CommitmentsConfig, CommitmentsStore, InferredItem, Kind, Scope, Sensitivity, Source,
};
use lockstore::outbox::{Enqueued, NewMessage, Outbox, OutboxOptions};
use lockstore::tasks::{NewTask, RegistryOptions, Runtime, TaskRegistry};
use lockstore::{JsonOptions, JsonStore};

use super::{CliError, CliResult};

/// Arguments of the hidden `lockstore soak-client`.
#[derive(Args, Debug)]
pub struct SoakClientArgs {
    /// Client number (names its counter slot `/by/c<ID>` and its keys).
    #[arg(long)]
    pub id: u32,
    /// Random seed.
    #[arg(long)]
    pub seed: u64,
    /// Incarnation (restarts of this client so far).
    #[arg(long, default_value_t = 0)]
    pub incarnation: u32,
    /// Operation log (JSON lines, appended).
    #[arg(long)]
    pub log: PathBuf,
    /// Stop when this file exists.
    #[arg(long)]
    pub stop_file: PathBuf,
}

/// Name of the shared counter document in the state dir.
pub const COUNTER_FILE: &str = "counter.json";

struct Client {
    id: u32,
    inc: u32,
    state: PathBuf,
    exe: PathBuf,
    log: std::fs::File,
    rng: fastrand::Rng,
    nonce: String,
    n: u64,
    counter: JsonStore<Value>,
    commitments: CommitmentsStore,
    tasks: TaskRegistry,
    outbox: Outbox,
    /// Own commitments believed active.
    active_commitments: Vec<String>,
    /// Own tasks believed active: (id, started).
    active_tasks: Vec<(String, bool)>,
    /// Own acked outbox keys and their row ids.
    keys: Vec<(String, i64)>,
}

struct Out {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
}

fn err(msg: impl Into<String>) -> CliError {
    CliError {
        code: super::exit::IO,
        msg: msg.into(),
    }
}

/// Runs one soak client until the stop file appears.
pub fn run(a: SoakClientArgs, state: &Path) -> CliResult {
    let exe = std::env::current_exe().map_err(|e| err(format!("current_exe: {e}")))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .map_err(|e| err(format!("open {}: {e}", a.log.display())))?;
    // A previous incarnation killed mid-write may have left a torn line.
    if let Ok(b) = std::fs::read(&a.log) {
        if b.last().is_some_and(|c| *c != b'\n') {
            log.write_all(b"\n")
                .map_err(|e| err(format!("write {}: {e}", a.log.display())))?;
        }
    }
    let counter = JsonStore::open(state.join(COUNTER_FILE), JsonOptions::default())?;
    let commitments = CommitmentsStore::open(state, CommitmentsConfig::default())?;
    let tasks = crate::cli::backend::open_tasks(state, RegistryOptions::default())
        .map_err(super::tasks::cli_err)?;
    let outbox = crate::cli::backend::open_outbox(state, OutboxOptions::default())?;
    let mut c = Client {
        id: a.id,
        inc: a.incarnation,
        state: state.to_path_buf(),
        exe,
        log,
        rng: fastrand::Rng::with_seed(
            a.seed ^ (u64::from(a.id) << 32) ^ (u64::from(a.incarnation) << 48),
        ),
        nonce: format!("{}-{}", a.incarnation, crate::cli::random_hex(4)),
        n: 0,
        counter,
        commitments,
        tasks,
        outbox,
        active_commitments: Vec::new(),
        active_tasks: Vec::new(),
        keys: Vec::new(),
    };
    while !a.stop_file.exists() {
        c.n += 1;
        c.step()?;
        std::thread::sleep(Duration::from_millis(c.rng.u64(0..10)));
    }
    Ok(())
}

impl Client {
    fn cli(&self, args: &[&str]) -> Out {
        let r = Command::new(&self.exe)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output();
        match r {
            Ok(o) => {
                use std::os::unix::process::ExitStatusExt;
                Out {
                    code: o.status.code(),
                    signal: o.status.signal(),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                }
            }
            Err(e) => Out {
                code: None,
                signal: None,
                stdout: format!("spawn failed: {e}"),
            },
        }
    }

    /// Appends one log line (one write) before anything else happens.
    fn record(&mut self, op: &str, ack: bool, mut v: Value) -> CliResult {
        v["op"] = json!(op);
        v["ack"] = json!(ack);
        v["client"] = json!(self.id);
        v["inc"] = json!(self.inc);
        let line = format!("{v}\n");
        self.log
            .write_all(line.as_bytes())
            .map_err(|e| err(format!("write client log: {e}")))
    }

    fn fail(&mut self, op: &str, o: &Out) -> CliResult {
        let out: String = o.stdout.chars().take(300).collect();
        self.record(
            op,
            false,
            json!({"code": o.code, "signal": o.signal, "stdout": out}),
        )
    }

    fn step(&mut self) -> CliResult {
        const OPS: &[(&str, u32)] = &[
            ("incr_cli", 14),
            ("incr_lib", 7),
            ("commit_add_cli", 7),
            ("commit_add_lib", 4),
            ("commit_dismiss", 4),
            ("commit_snooze", 3),
            ("task_create_cli", 5),
            ("task_create_lib", 3),
            ("task_start", 4),
            ("task_finish", 5),
            ("task_cancel", 2),
            ("task_run", 3),
            ("outbox_enqueue_cli", 7),
            ("outbox_enqueue_lib", 4),
            ("outbox_reenqueue", 3),
        ];
        let total: u32 = OPS.iter().map(|o| o.1).sum();
        let mut x = self.rng.u32(0..total);
        let mut op = OPS[0].0;
        for (name, w) in OPS {
            if x < *w {
                op = name;
                break;
            }
            x -= w;
        }
        match op {
            "incr_cli" => self.incr_cli(),
            "incr_lib" => self.incr_lib(),
            "commit_add_cli" => self.commit_add(true),
            "commit_add_lib" => self.commit_add(false),
            "commit_dismiss" => self.commit_dismiss(),
            "commit_snooze" => self.commit_snooze(),
            "task_create_cli" => self.task_create(true),
            "task_create_lib" => self.task_create(false),
            "task_start" => self.task_start(),
            "task_finish" => self.task_end(false),
            "task_cancel" => self.task_end(true),
            "task_run" => self.task_run(),
            "outbox_enqueue_cli" => self.enqueue(true),
            "outbox_enqueue_lib" => self.enqueue(false),
            _ => self.reenqueue(),
        }
    }

    fn slot(&self) -> String {
        format!("/by/c{}", self.id)
    }

    fn incr_cli(&mut self) -> CliResult {
        let file = self.state.join(COUNTER_FILE);
        let file = file.to_string_lossy().into_owned();
        let slot = self.slot();
        let o = self.cli(&["json", "incr", &file, "/count", &slot]);
        if o.code != Some(0) {
            return self.fail("incr", &o);
        }
        // Prints "<count> <by>" as re-read after the cycle.
        let by = o
            .stdout
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<i64>().ok());
        self.record("incr", true, json!({"by": by, "via": "cli"}))
    }

    fn incr_lib(&mut self) -> CliResult {
        let id = format!("c{}", self.id);
        let r = self.counter.try_update(|doc: &mut Value| {
            if !doc.is_object() {
                *doc = json!({});
            }
            let count = doc["count"].as_i64().unwrap_or(0) + 1;
            doc["count"] = json!(count);
            if !doc["by"].is_object() {
                doc["by"] = json!({});
            }
            let by = doc["by"][&id].as_i64().unwrap_or(0) + 1;
            doc["by"][&id] = json!(by);
            Ok::<i64, lockstore::Error>(by)
        });
        match r {
            Ok(by) => self.record("incr", true, json!({"by": by, "via": "lib"})),
            Err(e) => self.record("incr", false, json!({"error": e.to_string()})),
        }
    }

    fn commit_add(&mut self, via_cli: bool) -> CliResult {
        let text = format!("soak c{} {} #{}", self.id, self.nonce, self.n);
        let session = format!("s-c{}-{}-{}", self.id, self.nonce, self.n);
        let to = format!("c{}", self.id);
        let id = if via_cli {
            let o = self.cli(&[
                "commitments",
                "add",
                "--agent",
                "soak",
                "--session",
                &session,
                "--channel",
                "soak",
                "--to",
                &to,
                "--text",
                &text,
                "--json",
            ]);
            let v: Option<Value> = serde_json::from_str(o.stdout.trim()).ok();
            let id = v
                .as_ref()
                .and_then(|v| v["created"][0]["id"].as_str())
                .map(str::to_owned);
            match (o.code, id) {
                (Some(0), Some(id)) => id,
                _ => return self.fail("commit_add", &o),
            }
        } else {
            let now = now_ms();
            let item = InferredItem {
                scope: Scope {
                    agent_id: "soak".into(),
                    session_key: session,
                    channel: "soak".into(),
                    account_id: None,
                    to: Some(to),
                    thread_id: None,
                    sender_id: None,
                },
                source_message_id: None,
                source_run_id: None,
            };
            let cand = Candidate {
                kind: Kind::OpenLoop,
                sensitivity: Sensitivity::Routine,
                source: Source::AgentPromise,
                reason: text.clone(),
                suggested_text: text.clone(),
                dedupe_key: text,
                confidence: 1.0,
                earliest_ms: now,
                latest_ms: now,
                timezone: "UTC".into(),
            };
            match self
                .commitments
                .upsert_inferred(&item, &[cand], super::commitments::at_ms(now))
            {
                Ok(v) if !v.is_empty() => v[0].id.clone(),
                Ok(_) => {
                    return self.record(
                        "commit_add",
                        false,
                        json!({"error": "merged instead of created"}),
                    )
                }
                Err(e) => return self.record("commit_add", false, json!({"error": e.to_string()})),
            }
        };
        self.record(
            "commit_add",
            true,
            json!({"id": id, "via": if via_cli { "cli" } else { "lib" }}),
        )?;
        self.active_commitments.push(id);
        Ok(())
    }

    fn pick_commitment(&mut self) -> Option<String> {
        if self.active_commitments.is_empty() {
            return None;
        }
        let i = self.rng.usize(0..self.active_commitments.len());
        Some(self.active_commitments[i].clone())
    }

    /// Parses `{verb: [...], unknown: [...], notActive: [...]}`.
    fn status_outcome(&mut self, op: &str, verb: &str, id: &str, o: &Out) -> CliResult {
        let v: Option<Value> = serde_json::from_str(o.stdout.trim()).ok();
        let has = |v: &Option<Value>, k: &str| {
            v.as_ref()
                .and_then(|v| v[k].as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(id)))
        };
        if has(&v, "unknown") {
            // An acknowledged commitment is gone: the verifier counts it lost.
            self.active_commitments.retain(|x| x != id);
            return self.record("commit_unknown", true, json!({"id": id}));
        }
        if o.code != Some(0) || v.is_none() {
            return self.fail(op, o);
        }
        let changed = has(&v, verb);
        if !changed || verb == "dismissed" {
            self.active_commitments.retain(|x| x != id);
        }
        self.record(op, true, json!({"id": id, "changed": changed}))
    }

    fn commit_dismiss(&mut self) -> CliResult {
        let Some(id) = self.pick_commitment() else {
            return self.commit_add(true);
        };
        let o = self.cli(&["commitments", "dismiss", &id, "--json"]);
        self.status_outcome("commit_dismiss", "dismissed", &id, &o)
    }

    fn commit_snooze(&mut self) -> CliResult {
        let Some(id) = self.pick_commitment() else {
            return self.commit_add(false);
        };
        let until = format!("+{}s", self.rng.u32(1..4));
        let o = self.cli(&["commitments", "snooze", &id, "--until", &until, "--json"]);
        self.status_outcome("commit_snooze", "snoozed", &id, &o)
    }

    fn task_create(&mut self, via_cli: bool) -> CliResult {
        let desc = format!("soak c{} {} #{}", self.id, self.nonce, self.n);
        let id = if via_cli {
            let pid = std::process::id().to_string();
            let o = self.cli(&[
                "tasks",
                "create",
                "--runtime",
                "cli",
                "--task",
                &desc,
                "--owner-pid",
                &pid,
            ]);
            let id = o.stdout.trim().to_string();
            if o.code != Some(0) || id.is_empty() {
                return self.fail("task_create", &o);
            }
            id
        } else {
            let new = NewTask {
                runtime: Some(Runtime::Cli),
                task: desc,
                owner: Some(lockstore::ProcessIdentity::current()),
                ..Default::default()
            };
            match self.tasks.create(new, std::time::SystemTime::now()) {
                Ok((t, _)) => t.task_id,
                Err(e) => {
                    return self.record("task_create", false, json!({"error": e.to_string()}))
                }
            }
        };
        self.record(
            "task_create",
            true,
            json!({"id": id, "via": if via_cli { "cli" } else { "lib" }}),
        )?;
        self.active_tasks.push((id, false));
        Ok(())
    }

    fn pick_task(&mut self, started: Option<bool>) -> Option<usize> {
        let idx: Vec<usize> = (0..self.active_tasks.len())
            .filter(|i| started.is_none_or(|s| self.active_tasks[*i].1 == s))
            .collect();
        if idx.is_empty() {
            None
        } else {
            Some(idx[self.rng.usize(0..idx.len())])
        }
    }

    fn task_start(&mut self) -> CliResult {
        let Some(i) = self.pick_task(Some(false)) else {
            return self.task_create(true);
        };
        let id = self.active_tasks[i].0.clone();
        let o = self.cli(&["tasks", "start", &id]);
        if o.code != Some(0) {
            return self.fail("task_start", &o);
        }
        self.active_tasks[i].1 = true;
        self.record("task_start", true, json!({"id": id}))
    }

    fn task_end(&mut self, cancel: bool) -> CliResult {
        let Some(i) = self.pick_task(None) else {
            return self.task_create(false);
        };
        let id = self.active_tasks[i].0.clone();
        let status = if cancel {
            "cancelled"
        } else if self.rng.bool() {
            "succeeded"
        } else {
            "failed"
        };
        let o = if cancel {
            self.cli(&["tasks", "cancel", &id])
        } else {
            self.cli(&["tasks", "finish", &id, "--status", status])
        };
        let op = if cancel { "task_cancel" } else { "task_finish" };
        if o.code != Some(0) {
            return self.fail(op, &o);
        }
        self.active_tasks.remove(i);
        self.record(op, true, json!({"id": id, "status": status}))
    }

    fn task_run(&mut self) -> CliResult {
        let secs = format!("{:.1}", 0.2 + self.rng.f64() * 1.8);
        let label = format!("soak-c{}", self.id);
        let o = self.cli(&["tasks", "run", "--label", &label, "--", "sleep", &secs]);
        let id = o.stdout.lines().next().unwrap_or("").trim().to_string();
        if o.code == Some(0) && !id.is_empty() {
            return self.record("task_run", true, json!({"id": id, "status": "succeeded"}));
        }
        if o.signal.is_some() {
            // Killed by the chaos: not an acknowledgement.
            return self.record(
                "task_run_killed",
                false,
                json!({"id": id, "signal": o.signal}),
            );
        }
        self.fail("task_run", &o)
    }

    fn enqueue(&mut self, via_cli: bool) -> CliResult {
        let key = format!("soak:c{}:{}:{}", self.id, self.nonce, self.n);
        let target = format!("c{}", self.id);
        let payload = json!({"client": self.id, "n": self.n});
        let created = if via_cli {
            let p = payload.to_string();
            let o = self.cli(&[
                "outbox",
                "enqueue",
                "--channel",
                "soak",
                "--target",
                &target,
                "--key",
                &key,
                "--payload",
                &p,
            ]);
            match parse_enqueued(&o) {
                Some(r) => r,
                None => return self.fail("outbox_enqueue", &o),
            }
        } else {
            let msg = NewMessage {
                channel: "soak".into(),
                target,
                account_id: None,
                payload,
                idempotency_key: Some(key.clone()),
                ttl: None,
            };
            match self.outbox.enqueue(&msg, std::time::SystemTime::now()) {
                Ok(Enqueued::Created(id)) => (true, id),
                Ok(Enqueued::Existing(id)) => (false, id),
                Err(e) => {
                    return self.record("outbox_enqueue", false, json!({"error": e.to_string()}))
                }
            }
        };
        self.record(
            "outbox_enqueue",
            true,
            json!({"key": key, "id": created.1, "created": created.0,
                   "via": if via_cli { "cli" } else { "lib" }}),
        )?;
        self.keys.push((key, created.1));
        Ok(())
    }

    /// A client that did not see its enqueue's answer sends it again: the same
    /// idempotency key must give back the same row (`existing ID`).
    fn reenqueue(&mut self) -> CliResult {
        if self.keys.is_empty() {
            return self.enqueue(true);
        }
        let (key, expected) = self.keys[self.rng.usize(0..self.keys.len())].clone();
        let target = format!("c{}", self.id);
        let o = self.cli(&[
            "outbox",
            "enqueue",
            "--channel",
            "soak",
            "--target",
            &target,
            "--key",
            &key,
            "--payload",
            "{\"retry\":true}",
        ]);
        match parse_enqueued(&o) {
            Some((created, id)) => self.record(
                "outbox_reenqueue",
                true,
                json!({"key": key, "id": id, "created": created, "expectedId": expected}),
            ),
            None => self.fail("outbox_reenqueue", &o),
        }
    }
}

/// `created ID` / `existing ID` → (created, id).
fn parse_enqueued(o: &Out) -> Option<(bool, i64)> {
    if o.code != Some(0) {
        return None;
    }
    let mut it = o.stdout.split_whitespace();
    let created = match it.next()? {
        "created" => true,
        "existing" => false,
        _ => return None,
    };
    Some((created, it.next()?.parse().ok()?))
}
