//! `lockstore soak`: the daemon, K concurrent clients and a chaos loop on one
//! state dir, then a check that nothing acknowledged was lost or delivered twice.
//!
//! Everything runs as real processes of this binary (`std::env::current_exe()`):
//! * `lockstore daemon --tick 200ms --commitments-enabled --maintenance-every 1s
//!   --adapter file:<dir>/sink.jsonl` (RUST_LOG=warn, stderr to
//!   `<dir>/soak/daemon-<n>.log`, one file per incarnation);
//! * K `lockstore soak-client` processes ([`super::soak_client`]) doing random
//!   operations through CLI subprocesses and library calls, logging every
//!   acknowledged operation to `<dir>/soak/client-<i>.jsonl` before the next;
//! * the chaos loop (this process): SIGKILLs and restarts the daemon every
//!   `--kill-daemon-every-ms` (random in the range), SIGKILLs and restarts random
//!   clients (with their process group: in-flight CLI calls die too) and random
//!   `tasks run` processes.
//!
//! At the end: stop file for the clients (then SIGKILL after 30 s), SIGTERM to
//! the daemon (it must exit 0), a final drain (`daemon --once` until nothing is
//! due, bounded), one `tasks maintenance --apply`, then the invariants (see
//! [`Report`]). Exit 0 if every violation counter is 0, else exit 1 naming them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::now_ms;
use lockstore::commitments::{CommitmentsConfig, CommitmentsStore, Status as CStatus};
use lockstore::outbox::{OutboxOptions, Status as OStatus};
use lockstore::tasks::{RegistryOptions, TaskStatus};
use lockstore::Liveness;
use lockstore::{JsonOptions, JsonStore};

use super::soak_client::COUNTER_FILE;
use super::{CliError, CliResult};

/// Arguments of `lockstore soak`.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long the chaos phase runs, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// SIGKILL the daemon every MIN-MAX ms (random in the range; default scales
    /// with --seconds: 5000-12000 for runs of 2 min or more).
    #[arg(long, value_parser = parse_range)]
    pub kill_daemon_every_ms: Option<(u64, u64)>,
    /// SIGKILL a random client every MIN-MAX ms (default scales with --seconds).
    #[arg(long, value_parser = parse_range)]
    pub kill_client_every_ms: Option<(u64, u64)>,
    /// Random seed (default: from the clock; printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the task ledger and the outbox live: sqlite (the state dir's
    /// files, one daemon) or postgres (three daemons with host ids
    /// soak-host-1..3 on one database, a SIGSTOP of a daemon past its lease
    /// and a database restart; the database of the global --database-url, else
    /// a private cluster the soak starts and stops).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub backend: String,
    /// Only re-check the invariants of a kept soak state dir (given with
    /// --state-dir): no processes, no drain.
    #[arg(long)]
    pub verify_only: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .or_else(|| s.split_once(".."))
        .unwrap_or((s, s));
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad range {s:?}: expected MIN-MAX ms"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("bad range {s:?}: expected MIN-MAX ms"))?;
    if a == 0 || b < a {
        return Err(format!("bad range {s:?}: need 0 < MIN <= MAX"));
    }
    Ok((a, b))
}

fn io_err(what: &str, p: &Path, e: impl std::fmt::Display) -> CliError {
    CliError {
        code: super::exit::IO,
        msg: format!("{what} {}: {e}", p.display()),
    }
}

/// Every figure of a soak run. `violations` holds the counters that must be 0.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// State dir (kept).
    pub state_dir: String,
    /// Chaos phase length asked for, s.
    pub seconds: u64,
    /// Client processes.
    pub clients: u32,
    /// Seed.
    pub seed: u64,
    /// Wall time of the whole run, ms.
    pub elapsed_ms: u64,
    /// Acknowledged operations per kind.
    pub acknowledged: BTreeMap<String, u64>,
    /// Sum of `acknowledged`.
    pub acknowledged_total: u64,
    /// Operations that returned an error (not acknowledged) per kind.
    pub failed: BTreeMap<String, u64>,
    /// Torn (unparsable) client log lines: only a killed client's last line.
    pub torn_log_lines: u64,
    /// Lost acknowledged operations per check.
    pub lost: BTreeMap<String, u64>,
    /// Sum of `lost`.
    pub lost_total: u64,
    /// Duplicate deliveries per check.
    pub duplicates: BTreeMap<String, u64>,
    /// Sum of `duplicates`.
    pub duplicates_total: u64,
    /// Lines in the deduplicated sink.
    pub sink_lines: u64,
    /// Raw adapter calls (`sink.jsonl.raw` lines).
    pub raw_attempts: u64,
    /// Raw adapter calls beyond the first per key (resends the sink absorbed).
    pub raw_resends: u64,
    /// Active tasks whose recorded owner is dead, after one maintenance.
    pub tasks_running_dead_owners: u64,
    /// Active tasks left at the end (owners alive or unjudgeable).
    pub tasks_active_end: u64,
    /// Tasks by final status.
    pub tasks_by_status: BTreeMap<String, u64>,
    /// Stores that failed to load, with the error.
    pub stores_unloadable: Vec<String>,
    /// Daemon SIGKILLs by the chaos.
    pub daemon_kills: u64,
    /// Daemon (re)starts after the first.
    pub daemon_restarts: u64,
    /// Daemon exits nobody asked for (exit status text).
    pub daemon_unexpected_exits: Vec<String>,
    /// Whether the final SIGTERM stopped the daemon with exit 0 (within 30 s).
    pub daemon_graceful_stop: bool,
    /// How the final SIGTERM went (exit status and time, or the timeout).
    pub daemon_stop: String,
    /// Left to deliver when the chaos phase ended (before the drain): due or
    /// snoozed active commitments, outbox rows pending or in flight.
    pub backlog_at_stop: Value,
    /// `ERROR` lines in the daemon logs.
    pub daemon_error_lines: u64,
    /// Client SIGKILLs (process group) by the chaos.
    pub client_kills: u64,
    /// Client exits nobody asked for.
    pub client_unexpected_exits: Vec<String>,
    /// `tasks run` processes SIGKILLed by the chaos.
    pub task_run_kills: u64,
    /// "reclaimed lock" warnings in all captured logs plus this process's
    /// [`lockstore::lock::reclaim_count`].
    pub lock_reclaims: u64,
    /// Final drain: `daemon --once` passes run, and whether everything drained.
    pub drain_passes: u64,
    /// Whether the drain ended with nothing due.
    pub drained: bool,
    /// The counter document: `/count` and the sum of `/by/*`.
    pub counter: Value,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// PostgreSQL: the daemons' host ids (one state dir and sink each).
    pub hosts: Vec<String>,
    /// PostgreSQL: daemons SIGSTOPped past their claim lease (then SIGCONT).
    pub daemon_stops_past_lease: u64,
    /// PostgreSQL: delivery claims the SIGSTOPped daemon held when it was
    /// stopped (taken over by the other hosts meanwhile).
    pub claims_held_when_stopped: u64,
    /// PostgreSQL: `pg_ctl -m immediate` stops and restarts of the server.
    pub database_restarts: u64,
    /// PostgreSQL: delivered rows whose last claimer (the claim that
    /// completed them, `claimed_by`) never called the adapter for them: an
    /// ack of an older claim was applied after a takeover (must be 0).
    pub stale_completions_accepted: u64,
    /// Counters that must all be 0.
    pub violations: BTreeMap<String, u64>,
    /// True if every violation counter is 0.
    pub ok: bool,
    /// `--verify-only`: nothing was run (daemon stop and drain not checked).
    pub verify_only: bool,
}

/// How often the chaos phase reports its progress on stderr.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The chaos phase's status line on stderr: redrawn in place on a terminal
/// (indicatif), one plain line per report otherwise (a log file or a pipe).
/// "Violations so far" are the ones known during the chaos (daemon and client
/// exits nobody asked for); the rest are counted at the end.
struct ChaosStatus {
    bar: Option<indicatif::ProgressBar>,
    /// Per client log: bytes already read, acknowledged lines in them.
    read: Vec<u64>,
    acked: u64,
}

impl ChaosStatus {
    fn new(clients: u32) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b
        });
        ChaosStatus {
            bar,
            read: vec![0; clients as usize],
            acked: 0,
        }
    }

    /// Acknowledged operations in the client logs so far (reads only what
    /// was appended since the last call; a torn last line waits for its end).
    fn count_acks(&mut self, logs: &Path) -> u64 {
        use std::io::{Read, Seek, SeekFrom};
        for (id, off) in self.read.iter_mut().enumerate() {
            let p = logs.join(format!("client-{id}.jsonl"));
            let Ok(mut f) = std::fs::File::open(&p) else {
                continue;
            };
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(*off)).is_err() || f.read_to_end(&mut buf).is_err() {
                continue;
            }
            let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in buf[..whole].split(|b| *b == b'\n') {
                if serde_json::from_slice::<Value>(line).is_ok_and(|v| v["ack"] == json!(true)) {
                    self.acked += 1;
                }
            }
            *off += whole as u64;
        }
        self.acked
    }

    fn show(&self, line: &str) {
        match &self.bar {
            Some(b) => b.set_message(line.to_string()),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

struct ClientProc {
    child: Child,
    inc: u32,
}

struct Soak {
    exe: PathBuf,
    dir: PathBuf,
    logs: PathBuf,
    sink: PathBuf,
    seed: u64,
    daemon: Option<Child>,
    daemon_starts: u64,
    clients: Vec<ClientProc>,
    rep: Report,
    /// PostgreSQL mode: the database URL, the other hosts' daemons, and the
    /// private cluster (when the soak started one).
    pg: Option<PgSoak>,
}

/// The PostgreSQL side of a soak: hosts 2 and 3 (host 1 is the main state
/// dir and daemon) and the cluster.
struct PgSoak {
    url: String,
    hosts: Vec<Host>,
    cluster: Option<lockstore_pg_cluster::Cluster>,
}

/// Another host's daemon: its own state dir and sink.
struct Host {
    id: String,
    dir: PathBuf,
    child: Option<Child>,
    starts: u64,
    /// SIGSTOPped until then.
    stopped_until: Option<Instant>,
}

/// Claim lease of the soak's daemons on PostgreSQL: a SIGSTOP longer than
/// it lets another host take the claims over.
const PG_LEASE: Duration = Duration::from_secs(3);

/// Host id of the main state dir's daemon and clients on PostgreSQL.
const HOST_1: &str = "soak-host-1";

/// Runs `lockstore soak`. `state_dir` is the global `--state-dir` if given
/// (must be empty or absent), else a fresh temp dir.
pub fn run(a: SoakArgs, state_dir: Option<&Path>) -> CliResult {
    let started = Instant::now();
    if a.verify_only {
        let Some(d) = state_dir else {
            return Err(CliError::usage("soak --verify-only needs --state-dir DIR"));
        };
        return verify_only(a, d, started);
    }
    let dir = match state_dir {
        Some(d) => {
            if std::fs::read_dir(d)
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
            {
                let from_env = std::env::var_os("LOCKSTORE_STATE_DIR")
                    .is_some_and(|v| Path::new(&v) == d)
                    && !std::env::args().any(|a| a.starts_with("--state-dir"));
                return Err(CliError::usage(format!(
                    "soak: {}{} is not empty; the soak needs a fresh state dir (its stores are overwritten by random data){}",
                    d.display(),
                    if from_env { " (from LOCKSTORE_STATE_DIR)" } else { "" },
                    if from_env { "; unset LOCKSTORE_STATE_DIR or pass an empty --state-dir" } else { "" }
                )));
            }
            std::fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
            d.to_path_buf()
        }
        None => {
            let d = std::env::temp_dir().join(format!(
                "lockstore-soak-{}-{}",
                now_ms(),
                crate::cli::random_hex(3)
            ));
            std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
            d
        }
    };
    let dir = dir.canonicalize().map_err(|e| io_err("resolve", &dir, e))?;
    let logs = dir.join("soak");
    std::fs::create_dir_all(&logs).map_err(|e| io_err("create", &logs, e))?;
    let exe = std::env::current_exe().map_err(|e| io_err("current_exe", Path::new("."), e))?;
    let seed = a.seed.unwrap_or_else(|| now_ms() as u64);
    super::daemon::install_signal_handlers()?;

    let span_ms = a.seconds.max(1) * 1000;
    let daemon_every = a.kill_daemon_every_ms.unwrap_or(if a.seconds >= 120 {
        (5_000, 12_000)
    } else {
        let lo = (span_ms / 12).max(500);
        (lo, lo * 2)
    });
    let client_every = a.kill_client_every_ms.unwrap_or(if a.seconds >= 120 {
        (3_000, 8_000)
    } else {
        let lo = (span_ms / 10).max(500);
        (lo, lo * 2)
    });

    let pg = if a.backend == "postgres" || super::backend::url().is_some() {
        Some(PgSoak::new(&dir)?)
    } else {
        None
    };
    let mut s = Soak {
        pg,
        sink: dir.join("sink.jsonl"),
        exe,
        dir: dir.clone(),
        logs,
        seed,
        daemon: None,
        daemon_starts: 0,
        clients: Vec::new(),
        rep: Report {
            state_dir: dir.display().to_string(),
            seconds: a.seconds,
            clients: a.clients,
            seed,
            backend: if super::backend::url().is_some() {
                "postgres"
            } else {
                "sqlite"
            }
            .into(),
            hosts: if super::backend::url().is_some() {
                vec![HOST_1.into(), "soak-host-2".into(), "soak-host-3".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        },
    };
    let res = s.chaos(a.seconds, daemon_every, client_every);
    s.shutdown();
    res?;
    s.drain();
    s.verify();
    finish(s.rep, a.json, started)
}

fn verify_only(a: SoakArgs, d: &Path, started: Instant) -> CliResult {
    let dir = d.canonicalize().map_err(|e| io_err("resolve", d, e))?;
    let logs = dir.join("soak");
    let clients = std::fs::read_dir(&logs)
        .map_err(|e| io_err("read", &logs, e))?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("client-") && n.ends_with(".jsonl")
        })
        .count() as u32;
    // On PostgreSQL (--database-url): the database and the hosts' sinks.
    let pg = if super::backend::url().is_some() {
        Some(PgSoak::new(&dir)?)
    } else {
        None
    };
    let mut s = Soak {
        pg,
        exe: PathBuf::new(),
        sink: dir.join("sink.jsonl"),
        dir: dir.clone(),
        logs,
        seed: a.seed.unwrap_or(0),
        daemon: None,
        daemon_starts: 0,
        clients: Vec::new(),
        rep: Report {
            state_dir: dir.display().to_string(),
            clients,
            verify_only: true,
            backend: if super::backend::url().is_some() {
                "postgres"
            } else {
                "sqlite"
            }
            .into(),
            daemon_graceful_stop: true,
            drained: true,
            ..Default::default()
        },
    };
    s.verify();
    finish(s.rep, a.json, started)
}

fn finish(mut rep: Report, json: bool, started: Instant) -> CliResult {
    rep.elapsed_ms = started.elapsed().as_millis() as u64;
    if json {
        let t = serde_json::to_string_pretty(&rep).map_err(|e| CliError::usage(e.to_string()))?;
        println!("{t}");
    } else {
        print_text(&rep);
    }
    if rep.ok {
        Ok(())
    } else {
        let bad: Vec<String> = rep
            .violations
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Err(CliError {
            code: 1,
            msg: format!("soak found violations: {}", bad.join(", ")),
        })
    }
}

impl PgSoak {
    /// The database of `--database-url`, else a private cluster (started
    /// here, stopped at exit); hosts 2 and 3 get state dirs under `dir`.
    fn new(dir: &Path) -> CliResult<Self> {
        let (url, cluster) = match super::backend::url() {
            Some(u) => (u.to_string(), None),
            None => {
                let c = lockstore_pg_cluster::Cluster::start().map_err(|e| CliError {
                    code: super::exit::IO,
                    msg: format!("soak --backend postgres: cannot start a PostgreSQL cluster: {e}"),
                })?;
                let u = c
                    .create_database("soak")
                    .map_err(|e| io_err("createdb in", c.dir(), e))?;
                (u, Some(c))
            }
        };
        // This process's own checks (drain, verify) use it too.
        super::backend::set_url(Some(url.clone()));
        let mut hosts = Vec::new();
        for n in 2..=3 {
            let d = dir.join(format!("host-{n}"));
            std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
            hosts.push(Host {
                id: format!("soak-host-{n}"),
                dir: d,
                child: None,
                starts: 0,
                stopped_until: None,
            });
        }
        Ok(PgSoak {
            url,
            hosts,
            cluster,
        })
    }
}

impl Soak {
    fn base_cmd(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--state-dir")
            .arg(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(pg) = &self.pg {
            c.env(super::backend::DATABASE_URL_ENV, &pg.url)
                .env("LOCKSTORE_HOST_ID", HOST_1);
        }
        c
    }

    fn log_file(&self, name: &str) -> CliResult<std::fs::File> {
        let p = self.logs.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| io_err("open", &p, e))
    }

    fn daemon_args(&self) -> Vec<String> {
        vec![
            "daemon".into(),
            "--tick".into(),
            "200ms".into(),
            "--commitments-enabled".into(),
            "--maintenance-every".into(),
            "1s".into(),
            "--adapter".into(),
            format!("file:{}", self.sink.display()),
            "--lease".into(),
            format!("{}ms", self.lease().as_millis()),
        ]
    }

    /// The daemons' claim lease: short on PostgreSQL (the SIGSTOP outlasts
    /// it), the default otherwise.
    fn lease(&self) -> Duration {
        if self.pg.is_some() {
            PG_LEASE
        } else {
            Duration::from_secs(300)
        }
    }

    /// Starts host `i`'s daemon (PostgreSQL mode).
    fn start_host(&mut self, i: usize) -> CliResult {
        let Some(pg) = self.pg.as_ref() else {
            return Ok(());
        };
        let h = &pg.hosts[i];
        let log = self.log_file(&format!("daemon-{}-{}.log", h.id, h.starts))?;
        let child = Command::new(&self.exe)
            .arg("--state-dir")
            .arg(&h.dir)
            .args(["daemon", "--tick", "200ms", "--maintenance-every", "1s"])
            .arg("--lease")
            .arg(format!("{}ms", PG_LEASE.as_millis()))
            .arg("--adapter")
            // The channel is shared by the hosts, as in a deployment: one
            // sink that honours the idempotency key (a started send that
            // rescue replays on another host after a takeover is absorbed and
            // counted in `raw_resends`, not delivered twice).
            .arg(format!("file:{}", self.sink.display()))
            .env("RUST_LOG", "warn")
            .env(super::backend::DATABASE_URL_ENV, &pg.url)
            .env("LOCKSTORE_HOST_ID", &h.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| io_err("spawn", &self.exe, e))?;
        let pg = self.pg.as_mut().expect("checked above");
        let h = &mut pg.hosts[i];
        if h.starts > 0 {
            self.rep.daemon_restarts += 1;
        }
        h.starts += 1;
        h.child = Some(child);
        Ok(())
    }

    /// The sinks to check: the shared one (and any per-host sink a kept
    /// state dir of an older run has).
    fn sinks(&self) -> Vec<PathBuf> {
        let mut v = vec![self.sink.clone()];
        if let Some(pg) = &self.pg {
            v.extend(pg.hosts.iter().map(|h| h.dir.join("sink.jsonl")));
        }
        v
    }

    fn start_daemon(&mut self) -> CliResult {
        let log = self.log_file(&format!("daemon-{}.log", self.daemon_starts))?;
        let child = self
            .base_cmd()
            .args(self.daemon_args())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| io_err("spawn", &self.exe, e))?;
        if self.daemon_starts > 0 {
            self.rep.daemon_restarts += 1;
        }
        self.daemon_starts += 1;
        self.daemon = Some(child);
        Ok(())
    }

    fn spawn_client(&self, id: u32, inc: u32) -> CliResult<ClientProc> {
        let err = self.log_file(&format!("client-{id}.err"))?;
        let child = self
            .base_cmd()
            .args(["soak-client", "--id", &id.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .args(["--incarnation", &inc.to_string()])
            .arg("--log")
            .arg(self.logs.join(format!("client-{id}.jsonl")))
            .arg("--stop-file")
            .arg(self.logs.join("stop"))
            .stdout(Stdio::null())
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| io_err("spawn", &self.exe, e))?;
        Ok(ClientProc { child, inc })
    }

    /// The chaos phase: runs until `seconds` pass (or SIGINT/SIGTERM).
    fn chaos(
        &mut self,
        seconds: u64,
        daemon_every: (u64, u64),
        client_every: (u64, u64),
    ) -> CliResult {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        self.start_daemon()?;
        let n_hosts = self.pg.as_ref().map_or(0, |p| p.hosts.len());
        for i in 0..n_hosts {
            self.start_host(i)?;
        }
        for id in 0..self.rep.clients {
            let c = self.spawn_client(id, 0)?;
            self.clients.push(c);
        }
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let pick = |rng: &mut fastrand::Rng, r: (u64, u64)| {
            Instant::now() + Duration::from_millis(rng.u64(r.0..=r.1))
        };
        let mut next_daemon = pick(&mut rng, daemon_every);
        let mut next_client = pick(&mut rng, client_every);
        let mut next_run = pick(&mut rng, (700, 2500));
        let mut status = ChaosStatus::new(self.rep.clients);
        let mut next_status = start + STATUS_EVERY;
        // PostgreSQL: one SIGSTOP of host 2's daemon past the lease at 35 %
        // of the run, one database restart at 65 %.
        let mut stop_at = (n_hosts > 0).then(|| start + Duration::from_secs(seconds) * 35 / 100);
        let mut restart_db_at = self
            .pg
            .as_ref()
            .is_some_and(|p| p.cluster.is_some())
            .then(|| start + Duration::from_secs(seconds) * 65 / 100);
        while Instant::now() < end && !super::daemon::stop_requested() {
            if Instant::now() >= next_status {
                let acked = status.count_acks(&self.logs);
                let line = format!(
                    "soak: chaos {:>3}/{} s: {} ops acknowledged, {} daemon kills, {} client kills, {} task-run kills, {} violations so far",
                    start.elapsed().as_secs(),
                    seconds,
                    acked,
                    self.rep.daemon_kills,
                    self.rep.client_kills,
                    self.rep.task_run_kills,
                    self.rep.daemon_unexpected_exits.len() + self.rep.client_unexpected_exits.len()
                );
                status.show(&line);
                next_status = Instant::now() + STATUS_EVERY;
            }
            // Exits nobody asked for.
            if let Some(d) = self.daemon.as_mut() {
                if let Ok(Some(st)) = d.try_wait() {
                    self.rep.daemon_unexpected_exits.push(st.to_string());
                    self.start_daemon()?;
                }
            }
            for i in 0..n_hosts {
                let exited = self.pg.as_mut().and_then(|p| {
                    let h = &mut p.hosts[i];
                    let st = h.child.as_mut()?.try_wait().ok()??;
                    Some(format!("{}: {st}", h.id))
                });
                if let Some(e) = exited {
                    self.rep.daemon_unexpected_exits.push(e);
                    self.start_host(i)?;
                }
            }
            self.pg_events(&mut stop_at, &mut restart_db_at)?;
            for i in 0..self.clients.len() {
                if let Ok(Some(st)) = self.clients[i].child.try_wait() {
                    self.rep
                        .client_unexpected_exits
                        .push(format!("client {i}: {st}"));
                    let inc = self.clients[i].inc + 1;
                    self.clients[i] = self.spawn_client(i as u32, inc)?;
                }
            }
            let now = Instant::now();
            // PostgreSQL: the victim is one of the hosts' daemons (not a
            // stopped one).
            let victim = if n_hosts > 0 && now >= next_daemon {
                rng.usize(0..=n_hosts)
            } else {
                0
            };
            if victim > 0 {
                let stopped = self
                    .pg
                    .as_ref()
                    .is_some_and(|p| p.hosts[victim - 1].stopped_until.is_some());
                if !stopped {
                    if let Some(mut d) = self
                        .pg
                        .as_mut()
                        .and_then(|p| p.hosts[victim - 1].child.take())
                    {
                        let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGKILL);
                        let _ = d.wait();
                        self.rep.daemon_kills += 1;
                    }
                    self.start_host(victim - 1)?;
                }
                next_daemon = pick(&mut rng, daemon_every);
            } else if now >= next_daemon {
                if let Some(mut d) = self.daemon.take() {
                    let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGKILL);
                    let _ = d.wait();
                    self.rep.daemon_kills += 1;
                }
                self.start_daemon()?;
                next_daemon = pick(&mut rng, daemon_every);
            }
            if now >= next_client && !self.clients.is_empty() {
                let i = rng.usize(0..self.clients.len());
                let pgid = self.clients[i].child.id() as i32;
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                let _ = self.clients[i].child.wait();
                self.rep.client_kills += 1;
                let inc = self.clients[i].inc + 1;
                self.clients[i] = self.spawn_client(i as u32, inc)?;
                next_client = pick(&mut rng, client_every);
            }
            if now >= next_run {
                let runs: Vec<i32> = self
                    .our_processes()
                    .into_iter()
                    .filter(|(_, args)| args.windows(2).any(|w| w[0] == "tasks" && w[1] == "run"))
                    .map(|(p, _)| p)
                    .collect();
                if !runs.is_empty() {
                    let p = runs[rng.usize(0..runs.len())];
                    if kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                        self.rep.task_run_kills += 1;
                    }
                }
                next_run = pick(&mut rng, (700, 2500));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        status.finish();
        Ok(())
    }

    /// PostgreSQL chaos beyond kills: the SIGSTOP of host 2's daemon past
    /// its lease (SIGCONT after twice the lease plus 1 s: its claims were
    /// taken over meanwhile, its late acks must be refused), and the
    /// database restart (`pg_ctl -m immediate`, 1 s down).
    fn pg_events(
        &mut self,
        stop_at: &mut Option<Instant>,
        restart_db_at: &mut Option<Instant>,
    ) -> CliResult {
        let Some(pg) = self.pg.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let h = &mut pg.hosts[0];
        // From the mark on, stop it as soon as it holds delivery claims (so
        // that they are taken over), at the latest 5 s later.
        let held = if stop_at.is_some_and(|t| now >= t) {
            lockstore::outbox::lease_holders(
                &pg.url,
                &super::backend::quick_pg(),
                std::time::SystemTime::now(),
            )
            .map(|v| {
                v.iter()
                    .filter(|l| l.kind == "claims" && l.host_id == h.id)
                    .map(|l| l.count)
                    .sum::<u64>()
            })
            .unwrap_or(0)
        } else {
            0
        };
        if stop_at.is_some_and(|t| now >= t && (held > 0 || now >= t + Duration::from_secs(5))) {
            *stop_at = None;
            if let Some(c) = &h.child {
                if kill(Pid::from_raw(c.id() as i32), Signal::SIGSTOP).is_ok() {
                    h.stopped_until = Some(now + PG_LEASE * 2 + Duration::from_secs(1));
                    self.rep.daemon_stops_past_lease += 1;
                    self.rep.claims_held_when_stopped += held;
                }
            }
        }
        if h.stopped_until.is_some_and(|t| now >= t) {
            h.stopped_until = None;
            if let Some(c) = &h.child {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            }
        }
        if restart_db_at.is_some_and(|t| now >= t) {
            *restart_db_at = None;
            if let Some(c) = &pg.cluster {
                let err = |e: std::io::Error| io_err("restart PostgreSQL in", c.dir(), e);
                c.stop_immediate().map_err(err)?;
                std::thread::sleep(Duration::from_secs(1));
                c.start_server().map_err(err)?;
                self.rep.database_restarts += 1;
            }
        }
        Ok(())
    }

    /// Processes (other than this one and its ancestors: a `timeout` or
    /// `time` wrapping the soak names the state dir too) whose command line
    /// names our state dir.
    fn our_processes(&self) -> Vec<(i32, Vec<String>)> {
        let me = std::process::id() as i32;
        let ancestors = ancestors_of(me);
        let dir = self.dir.to_string_lossy().into_owned();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me || ancestors.contains(&pid) {
                continue;
            }
            let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.contains(&dir) {
                out.push((pid, args));
            }
        }
        out
    }

    /// Stops everything: clients via the stop file (SIGKILL after 30 s), the
    /// daemon via SIGTERM (must exit 0 within 30 s), then any leftover process
    /// naming the state dir.
    fn shutdown(&mut self) {
        let _ = std::fs::write(self.logs.join("stop"), b"stop\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &mut self.clients {
            loop {
                match c.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = killpg(Pid::from_raw(c.child.id() as i32), Signal::SIGKILL);
                        let _ = c.child.wait();
                        break;
                    }
                }
            }
            // Orphans of the group (a `sleep` whose `tasks run` was killed).
            let _ = killpg(Pid::from_raw(c.child.id() as i32), Signal::SIGKILL);
        }
        // A host daemon still SIGSTOPped may hold a row lock the others wait
        // for: resume every host before asking any daemon to stop.
        if let Some(p) = &self.pg {
            for h in &p.hosts {
                if let Some(c) = &h.child {
                    let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
                }
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGTERM);
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(30);
            loop {
                match d.try_wait() {
                    Ok(Some(st)) => {
                        self.rep.daemon_graceful_stop = st.success();
                        self.rep.daemon_stop =
                            format!("{st} {} ms after SIGTERM", t0.elapsed().as_millis());
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGKILL);
                        let _ = d.wait();
                        self.rep.daemon_stop = "no exit within 30 s of SIGTERM; SIGKILLed".into();
                        break;
                    }
                }
            }
        }
        let hosts: Vec<Child> = self
            .pg
            .as_mut()
            .map(|p| p.hosts.iter_mut().filter_map(|h| h.child.take()).collect())
            .unwrap_or_default();
        for mut d in hosts {
            let pid = Pid::from_raw(d.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
            let t0 = Instant::now();
            loop {
                match d.try_wait() {
                    Ok(Some(st)) => {
                        if !st.success() {
                            self.rep.daemon_graceful_stop = false;
                            self.rep
                                .daemon_stop
                                .push_str(&format!("; another host's daemon: {st}"));
                        }
                        break;
                    }
                    Ok(None) if t0.elapsed() < Duration::from_secs(30) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = d.wait();
                        self.rep.daemon_graceful_stop = false;
                        self.rep
                            .daemon_stop
                            .push_str("; another host's daemon: no exit within 30 s of SIGTERM");
                        break;
                    }
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.our_processes();
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for (p, _) in left {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What is still to deliver: (due or snoozed active commitments, outbox rows
    /// pending or in flight).
    fn outstanding(&self) -> (u64, u64) {
        let now = now_ms();
        let c = CommitmentsStore::open(&self.dir, CommitmentsConfig::default())
            .and_then(|s| s.snapshot())
            .map(|s| {
                s.commitments
                    .iter()
                    .filter(|c| {
                        c.status.is_active()
                            && (c.is_due(super::commitments::at_ms(now))
                                || c.snoozed_until_ms.is_some_and(|u| u > now))
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        let o = super::backend::open_outbox(&self.dir, OutboxOptions::default())
            .and_then(|o| o.list(None, usize::MAX))
            .map(|v| {
                v.iter()
                    .filter(|e| matches!(e.status, OStatus::Pending | OStatus::InFlight))
                    .count() as u64
            })
            .unwrap_or(0);
        (c, o)
    }

    /// `daemon --once` until nothing is due (at most 120 s of passes), then one
    /// `tasks maintenance --apply`.
    fn drain(&mut self) {
        let (c, o) = self.outstanding();
        self.rep.backlog_at_stop = json!({"commitments": c, "outbox": o});
        let deadline = Instant::now() + Duration::from_secs(120);
        for pass in 0.. {
            let Ok(log) = self.log_file(&format!("drain-{pass}.log")) else {
                break;
            };
            let mut args = self.daemon_args();
            args.push("--once".into());
            let _ = self
                .base_cmd()
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .status();
            self.rep.drain_passes += 1;
            let (c, o) = self.outstanding();
            if c == 0 && o == 0 {
                self.rep.drained = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            // Snoozed commitments or a retry backoff may need a moment.
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(log) = self.log_file("maintenance.log") {
            let out = self
                .base_cmd()
                .args(["tasks", "maintenance", "--apply", "--json"])
                .stderr(log)
                .output();
            if let Ok(o) = out {
                let _ = std::fs::write(self.logs.join("maintenance.json"), &o.stdout);
            }
        }
    }

    fn verify(&mut self) {
        let sinks = self.sinks();
        let pg_mode = self.pg.is_some();
        let rep = &mut self.rep;
        // ---- client logs ----
        let mut ops: Vec<Value> = Vec::new();
        for id in 0..rep.clients {
            let p = self.logs.join(format!("client-{id}.jsonl"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(v) => ops.push(v),
                    Err(_) => rep.torn_log_lines += 1,
                }
            }
        }
        let acked: Vec<&Value> = ops.iter().filter(|v| v["ack"] == json!(true)).collect();
        for v in &ops {
            let k = v["op"].as_str().unwrap_or("?").to_string();
            if v["ack"] == json!(true) {
                *rep.acknowledged.entry(k).or_default() += 1;
            } else {
                *rep.failed.entry(k).or_default() += 1;
            }
        }
        rep.acknowledged_total = rep.acknowledged.values().sum();
        fn of_kind<'a>(
            acked: &'a [&'a Value],
            k: &'static str,
        ) -> impl Iterator<Item = &'a &'a Value> + 'a {
            acked.iter().filter(move |v| v["op"] == json!(k))
        }
        let of = |k: &'static str| of_kind(&acked, k);

        let mut lost: BTreeMap<String, u64> = BTreeMap::new();
        let mut dup: BTreeMap<String, u64> = BTreeMap::new();
        let bump = |m: &mut BTreeMap<String, u64>, k: &str, n: u64| {
            *m.entry(k.to_string()).or_default() += n;
        };
        for k in [
            "counter_incr",
            "commitment_add",
            "commitment_dismiss",
            "commitment_sent_undelivered",
            "commitment_due_undelivered",
            "commitment_vanished",
            "task_create",
            "task_terminal",
            "outbox_enqueue",
            "outbox_undelivered",
        ] {
            bump(&mut lost, k, 0);
        }
        for k in [
            "sink_duplicate_keys",
            "commitment_redeliveries",
            "reenqueue_new_row",
        ] {
            bump(&mut dup, k, 0);
        }

        // ---- sink and raw log ----
        let mut sink_keys: HashMap<String, u64> = HashMap::new();
        let mut sink_commitments: HashMap<String, u64> = HashMap::new();
        // Every host's sink (one on SQLite): a key in two sinks is a
        // duplicate delivery.
        let sink_text: String = sinks
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        for line in sink_text.lines().filter(|l| !l.trim().is_empty()) {
            rep.sink_lines += 1;
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(k) = v["key"].as_str() {
                *sink_keys.entry(k.to_string()).or_default() += 1;
            }
            if let Some(c) = v["payload"]["commitmentId"].as_str() {
                *sink_commitments.entry(c.to_string()).or_default() += 1;
            }
        }
        for n in sink_keys.values().filter(|n| **n > 1) {
            bump(&mut dup, "sink_duplicate_keys", n - 1);
        }
        for n in sink_commitments.values().filter(|n| **n > 1) {
            bump(&mut dup, "commitment_redeliveries", n - 1);
        }
        let raw_text: String = sinks
            .iter()
            .map(|p| {
                let mut raw = p.clone().into_os_string();
                raw.push(".raw");
                std::fs::read_to_string(PathBuf::from(raw)).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut raw_keys = HashSet::new();
        // Outbox id -> pids that called the adapter for it.
        let mut raw_pids: HashMap<i64, HashSet<u64>> = HashMap::new();
        for line in raw_text.lines().filter(|l| !l.trim().is_empty()) {
            rep.raw_attempts += 1;
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let Some(k) = v["key"].as_str() {
                    raw_keys.insert(k.to_string());
                }
                if let (Some(id), Some(pid)) = (v["id"].as_i64(), v["pid"].as_u64()) {
                    raw_pids.entry(id).or_default().insert(pid);
                }
            }
        }
        rep.raw_resends = rep.raw_attempts.saturating_sub(raw_keys.len() as u64);

        // ---- counter ----
        match JsonStore::<Value>::open(self.dir.join(COUNTER_FILE), JsonOptions::default())
            .and_then(|s| s.load())
        {
            Ok(doc) => {
                let count = doc["count"].as_i64().unwrap_or(0);
                for id in 0..rep.clients {
                    let k = format!("c{id}");
                    let tally = doc["by"][&k].as_i64().unwrap_or(0);
                    let mine: Vec<&&Value> =
                        of("incr").filter(|v| v["client"] == json!(id)).collect();
                    let seen = mine
                        .iter()
                        .filter_map(|v| v["by"].as_i64())
                        .max()
                        .unwrap_or(0);
                    let need = (mine.len() as i64).max(seen);
                    if tally < need {
                        bump(&mut lost, "counter_incr", (need - tally) as u64);
                    }
                }
                let extra: i64 = doc["by"]
                    .as_object()
                    .map(|m| m.values().filter_map(|v| v.as_i64()).sum::<i64>())
                    .unwrap_or(0);
                rep.counter = json!({"count": count, "sum_by_client": extra});
                if count != extra {
                    rep.violations.insert(
                        "counter_count_not_sum_of_clients".into(),
                        (count - extra).unsigned_abs(),
                    );
                }
            }
            Err(e) => rep
                .stores_unloadable
                .push(format!("{}: {e}", self.dir.join(COUNTER_FILE).display())),
        }

        // ---- commitments ----
        match CommitmentsStore::open(&self.dir, CommitmentsConfig::default())
            .and_then(|s| s.snapshot())
        {
            Ok(snap) if snap.invalid.is_empty() => {
                let now = now_ms();
                let by_id: HashMap<&str, &lockstore::commitments::Commitment> = snap
                    .commitments
                    .iter()
                    .map(|c| (c.id.as_str(), c))
                    .collect();
                for v in of("commit_add") {
                    if !by_id.contains_key(v["id"].as_str().unwrap_or("")) {
                        bump(&mut lost, "commitment_add", 1);
                    }
                }
                bump(
                    &mut lost,
                    "commitment_vanished",
                    of("commit_unknown").count() as u64,
                );
                for v in of("commit_dismiss").filter(|v| v["changed"] == json!(true)) {
                    let st = by_id.get(v["id"].as_str().unwrap_or("")).map(|c| c.status);
                    if st != Some(CStatus::Dismissed) {
                        bump(&mut lost, "commitment_dismiss", 1);
                    }
                }
                for c in &snap.commitments {
                    if c.status == CStatus::Sent && !sink_commitments.contains_key(&c.id) {
                        bump(&mut lost, "commitment_sent_undelivered", 1);
                    }
                    if c.status.is_active() && c.is_due(super::commitments::at_ms(now)) {
                        bump(&mut lost, "commitment_due_undelivered", 1);
                    }
                }
            }
            Ok(snap) => rep.stores_unloadable.push(format!(
                "commitments: {} invalid records",
                snap.invalid.len()
            )),
            Err(e) => rep.stores_unloadable.push(format!("commitments: {e}")),
        }

        // ---- tasks ----
        match super::backend::open_tasks(&self.dir, RegistryOptions::default())
            .and_then(|r| r.list())
        {
            Ok(tasks) => {
                let by_id: HashMap<&str, &lockstore::tasks::TaskRecord> =
                    tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
                for t in &tasks {
                    *rep.tasks_by_status.entry(t.status.to_string()).or_default() += 1;
                    if t.status.is_active() {
                        rep.tasks_active_end += 1;
                        if t.owner_identity()
                            .is_some_and(|o| o.liveness() == Liveness::Dead)
                        {
                            rep.tasks_running_dead_owners += 1;
                        }
                    }
                }
                for v in of("task_create") {
                    if !by_id.contains_key(v["id"].as_str().unwrap_or("")) {
                        bump(&mut lost, "task_create", 1);
                    }
                }
                for v in of("task_finish")
                    .chain(of("task_cancel"))
                    .chain(of("task_run"))
                {
                    let want: Option<TaskStatus> =
                        v["status"].as_str().and_then(|s| s.parse().ok());
                    let got = by_id.get(v["id"].as_str().unwrap_or("")).map(|t| t.status);
                    if want.is_none() || got != want {
                        bump(&mut lost, "task_terminal", 1);
                    }
                }
            }
            Err(e) => rep.stores_unloadable.push(format!("tasks: {e}")),
        }

        // ---- outbox ----
        match super::backend::open_outbox(&self.dir, OutboxOptions::default())
            .and_then(|o| o.list(None, usize::MAX))
        {
            Ok(rows) => {
                let by_key: HashMap<&str, &lockstore::outbox::Entry> = rows
                    .iter()
                    .filter_map(|e| e.idempotency_key.as_deref().map(|k| (k, e)))
                    .collect();
                for v in of("outbox_enqueue") {
                    let key = v["key"].as_str().unwrap_or("");
                    match by_key.get(key) {
                        None => bump(&mut lost, "outbox_enqueue", 1),
                        Some(e) if e.id != v["id"].as_i64().unwrap_or(-1) => {
                            bump(&mut lost, "outbox_enqueue", 1)
                        }
                        Some(e) => {
                            if e.status != OStatus::Delivered || !sink_keys.contains_key(key) {
                                bump(&mut lost, "outbox_undelivered", 1);
                            }
                        }
                    }
                }
                if pg_mode {
                    // The claim that completed a delivered row must be one
                    // whose process called the adapter for it.
                    for e in rows.iter().filter(|e| e.status == OStatus::Delivered) {
                        let Some(by) = &e.claimed_by else { continue };
                        let called = raw_pids
                            .get(&e.id)
                            .is_some_and(|p| p.contains(&u64::from(by.pid)));
                        if !called {
                            rep.stale_completions_accepted += 1;
                        }
                    }
                }
                for v in of("outbox_reenqueue") {
                    if v["created"] != json!(false) || v["id"] != v["expectedId"] {
                        bump(&mut dup, "reenqueue_new_row", 1);
                    }
                }
            }
            Err(e) => rep.stores_unloadable.push(format!("outbox: {e}")),
        }

        // ---- logs: reclaims and daemon errors ----
        let mut reclaims = lockstore::lock::reclaim_count();
        if let Ok(rd) = std::fs::read_dir(&self.logs) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !(name.ends_with(".log") || name.ends_with(".err")) {
                    continue;
                }
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                reclaims += text.matches("reclaimed lock").count() as u64;
                if name.starts_with("daemon-") {
                    rep.daemon_error_lines +=
                        text.lines().filter(|l| l.contains("ERROR")).count() as u64;
                }
            }
        }
        rep.lock_reclaims = reclaims;

        rep.lost_total = lost.values().sum();
        rep.duplicates_total = dup.values().sum();
        rep.lost = lost;
        rep.duplicates = dup;
        let v = &mut rep.violations;
        v.insert("lost".into(), rep.lost_total);
        v.insert("duplicate_deliveries".into(), rep.duplicates_total);
        v.insert(
            "tasks_running_dead_owners".into(),
            rep.tasks_running_dead_owners,
        );
        v.insert(
            "stores_unloadable".into(),
            rep.stores_unloadable.len() as u64,
        );
        v.insert(
            "daemon_unexpected_exits".into(),
            rep.daemon_unexpected_exits.len() as u64,
        );
        v.insert(
            "client_unexpected_exits".into(),
            rep.client_unexpected_exits.len() as u64,
        );
        v.insert(
            "daemon_graceful_stop_failed".into(),
            u64::from(!rep.daemon_graceful_stop),
        );
        v.insert("not_drained".into(), u64::from(!rep.drained));
        if pg_mode {
            v.insert(
                "stale_completions_accepted".into(),
                rep.stale_completions_accepted,
            );
        }
        rep.ok = v.values().all(|n| *n == 0);
    }
}

fn print_text(r: &Report) {
    let kv = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    println!(
        "lockstore soak: {} s chaos, {} clients, seed {}, {:.1} s total",
        r.seconds,
        r.clients,
        r.seed,
        r.elapsed_ms as f64 / 1000.0
    );
    if r.backend == "postgres" {
        println!(
            "backend postgres: hosts {}; {} SIGSTOP past the lease (holding {} claims); {} database restarts; stale completions accepted: {}",
            r.hosts.join(", "),
            r.daemon_stops_past_lease,
            r.claims_held_when_stopped,
            r.database_restarts,
            r.stale_completions_accepted
        );
    }
    println!("operations acknowledged: {}", r.acknowledged_total);
    println!("  {}", kv(&r.acknowledged));
    println!(
        "operations failed (not acknowledged): {}",
        r.failed.values().sum::<u64>()
    );
    if !r.failed.is_empty() {
        println!("  {}", kv(&r.failed));
    }
    println!("lost: {}", r.lost_total);
    println!("  {}", kv(&r.lost));
    println!(
        "duplicate deliveries to the deduplicated sink: {}",
        r.duplicates_total
    );
    println!("  {}", kv(&r.duplicates));
    println!(
        "raw resends (absorbed by the sink): {} ({} adapter calls, {} sink lines)",
        r.raw_resends, r.raw_attempts, r.sink_lines
    );
    println!(
        "tasks left running by dead owners after maintenance: {} (active at end: {}; by status: {})",
        r.tasks_running_dead_owners,
        r.tasks_active_end,
        kv(&r.tasks_by_status)
    );
    println!("stores that fail to load: {}", r.stores_unloadable.len());
    for s in &r.stores_unloadable {
        println!("  {s}");
    }
    println!(
        "daemon: {} kills, {} restarts, {} unexpected exits, {} ERROR log lines; graceful stop {} ({})",
        r.daemon_kills,
        r.daemon_restarts,
        r.daemon_unexpected_exits.len(),
        r.daemon_error_lines,
        if r.daemon_graceful_stop { "ok" } else { "FAILED" },
        r.daemon_stop
    );
    println!(
        "clients: {} kills, {} unexpected exits; tasks run processes killed: {}",
        r.client_kills,
        r.client_unexpected_exits.len(),
        r.task_run_kills
    );
    println!("lock reclaims: {}", r.lock_reclaims);
    println!(
        "final drain: backlog at stop {}, {} passes, {}",
        r.backlog_at_stop,
        r.drain_passes,
        if r.drained {
            "nothing left due"
        } else {
            "NOT drained"
        }
    );
    println!("counter: {}", r.counter);
    println!(
        "result: {}",
        if r.ok { "OK (no violations)" } else { "FAILED" }
    );
    if !r.ok {
        for (k, v) in r.violations.iter().filter(|(_, v)| **v > 0) {
            println!("  violation {k}: {v}");
        }
    }
    println!("state dir (kept): {}", r.state_dir);
}

/// The parent, grandparent, … of `pid` up to init (from `/proc/<pid>/stat`,
/// field 4; the command name in field 2 may hold spaces and parentheses, so
/// the fields after the last `)` are read).
fn ancestors_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut cur = pid;
    while out.len() < 64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{cur}/stat")) else {
            break;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        match ppid {
            Some(p) if p > 1 => {
                out.push(p);
                cur = p;
            }
            _ => break,
        }
    }
    out
}
