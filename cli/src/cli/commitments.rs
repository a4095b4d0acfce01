//! `lockstore commitments`: list, add, snooze and dismiss follow-ups in
//! `<state>/commitments/commitments.json` (openclaw's `openclaw commitments`,
//! reference §4.10), every command one exclusive section of the store.
//!
//! Exit codes: 0 ok; 1 usage / bad input / unknown id; 2 corrupt store or
//! invalid records (file untouched); 3 lock timeout; 4 other I/O.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use lockstore::commitments::{
    Candidate, Commitment, CommitmentsConfig, CommitmentsError, CommitmentsStore, InferredItem,
    Kind, Scope, Sensitivity, Source, Status, StatusFilter, StatusOutcome, TerminalStatus,
};
use lockstore::Durability;

use super::{cli_lock_options, exit, CliError, CliResult};

/// Arguments of `lockstore commitments`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CommitmentsArgs {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    list: ListArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct Common {
    /// Give up waiting for the store lock after this many ms [default: 60000].
    #[arg(long, global = true)]
    lock_timeout_ms: Option<u64>,
    /// fsync policy: full (survives power loss) or process (survives a crash).
    #[arg(long, global = true, default_value = "full")]
    durability: Durability,
    /// Move invalid records to commitments.json.invalid-<ms>.json and go on
    /// (default: refuse, exit 2, file untouched).
    #[arg(long, global = true)]
    quarantine_invalid: bool,
    /// Clock override in unix ms (tests).
    #[arg(long, global = true, hide = true)]
    now_ms: Option<i64>,
}

#[derive(Args, Debug, Default)]
struct ListArgs {
    /// Every status (default: active = pending + snoozed).
    #[arg(long)]
    all: bool,
    /// Only this agent's commitments.
    #[arg(long)]
    agent: Option<String>,
    /// pending (= active: pending + snoozed), sent, dismissed, snoozed or expired.
    #[arg(long)]
    status: Option<String>,
    /// JSON `{count, status, agentId, store, commitments}`.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List commitments (the default).
    List(ListArgs),
    /// Dismiss active commitments; reports dismissed, unknown and not-active ids
    /// (exit 1 if any id is unknown).
    Dismiss {
        /// Commitment ids (or unique prefixes, at least 4 characters).
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print the outcome as JSON (camelCase keys, as the records).
        #[arg(long)]
        json: bool,
    },
    /// Create (or merge into an active one with the same scope and dedupe key) a
    /// commitment from flags, or from a JSON object on stdin with --stdin.
    Add(Box<AddArgs>),
    /// Snooze active commitments until TIME (unix ms, RFC 3339 / ISO 8601, or
    /// +30m / +2h / +1d from now).
    Snooze {
        /// Commitment ids (or unique prefixes, at least 4 characters).
        #[arg(required = true)]
        ids: Vec<String>,
        /// Snooze until TIME: unix ms, RFC 3339 (2026-05-12T09:00:00Z) or +30m / +2h / +1d.
        #[arg(long)]
        until: String,
        /// Print the outcome as JSON (camelCase keys, as the records).
        #[arg(long)]
        json: bool,
    },
    /// Count a delivery attempt (what the daemon's heartbeat does); with --repeat
    /// K, K separate locked sections (JSON reports the first and last section's
    /// clock, firstMs/lastMs). Exit 1 if any id is unknown.
    MarkAttempted {
        /// Commitment ids (or unique prefixes, at least 4 characters).
        #[arg(required = true)]
        ids: Vec<String>,
        /// Count K attempts, each a separate locked section.
        #[arg(long, default_value_t = 1, value_name = "K")]
        repeat: u64,
        /// Print the outcome as JSON (camelCase keys, as the records).
        #[arg(long)]
        json: bool,
    },
    /// Mark active commitments sent (what the heartbeat does after delivery).
    MarkSent {
        /// Commitment ids (or unique prefixes, at least 4 characters).
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print the outcome as JSON (camelCase keys, as the records).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct AddArgs {
    /// Read one JSON object (camelCase record/candidate fields) from stdin.
    #[arg(long)]
    stdin: bool,
    /// Agent id of the scope (required without --stdin).
    #[arg(long)]
    agent: Option<String>,
    /// Session key of the scope (required without --stdin).
    #[arg(long)]
    session: Option<String>,
    /// Channel of the scope, e.g. telegram (required without --stdin).
    #[arg(long)]
    channel: Option<String>,
    /// Account on the channel, if any.
    #[arg(long)]
    account: Option<String>,
    /// Recipient on the channel (default: the session's).
    #[arg(long)]
    to: Option<String>,
    /// Thread id within the channel, if any.
    #[arg(long)]
    thread: Option<String>,
    /// Sender id the commitment answers, if any.
    #[arg(long)]
    sender: Option<String>,
    /// event_check_in | deadline_check | care_check_in | open_loop
    #[arg(long, default_value = "open_loop")]
    kind: Kind,
    /// routine | personal | care
    #[arg(long, default_value = "routine")]
    sensitivity: Sensitivity,
    /// inferred_user_context | agent_promise
    #[arg(long, default_value = "agent_promise")]
    source: Source,
    /// Why the follow-up is due (shown to the agent).
    #[arg(long)]
    reason: Option<String>,
    /// The suggested message text.
    #[arg(long)]
    text: Option<String>,
    /// Merge key within the scope (default: the text).
    #[arg(long)]
    dedupe_key: Option<String>,
    /// Confidence of the inference, 0 to 1.
    #[arg(long, default_value_t = 1.0)]
    confidence: f64,
    /// Window start (TIME; default now).
    #[arg(long)]
    earliest: Option<String>,
    /// Window end (TIME; default = earliest).
    #[arg(long)]
    latest: Option<String>,
    /// IANA time zone of the due window, e.g. Europe/Berlin.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Id of the message the commitment came from, if any.
    #[arg(long)]
    source_message_id: Option<String>,
    /// Id of the agent run the commitment came from, if any.
    #[arg(long)]
    source_run_id: Option<String>,
    /// Print the created or merged record as JSON (camelCase, as the file).
    #[arg(long)]
    json: bool,
}

impl From<CommitmentsError> for CliError {
    fn from(e: CommitmentsError) -> Self {
        match e {
            CommitmentsError::Core(e) => e.into(),
            e @ CommitmentsError::InvalidRecords { .. } => CliError {
                code: exit::CORRUPT,
                msg: e.to_string(),
            },
            e @ CommitmentsError::InvalidInput { .. } => CliError::usage(e.to_string()),
            e => CliError {
                code: exit::IO,
                msg: e.to_string(),
            },
        }
    }
}

/// Runs `lockstore commitments` on the store under `state_dir`.
pub fn run(a: CommitmentsArgs, state_dir: &Path) -> CliResult {
    let cfg = CommitmentsConfig {
        lock: cli_lock_options(a.common.lock_timeout_ms),
        durability: a.common.durability,
        quarantine_invalid: a.common.quarantine_invalid,
        ..Default::default()
    };
    let now = a.common.now_ms.unwrap_or_else(crate::cli::now_ms);
    let store = CommitmentsStore::open(state_dir, cfg)?;
    let cmd = match a.cmd {
        Some(Cmd::Dismiss { ids, json }) => Some(Cmd::Dismiss {
            ids: resolve_ids(&store, ids, now)?,
            json,
        }),
        Some(Cmd::MarkSent { ids, json }) => Some(Cmd::MarkSent {
            ids: resolve_ids(&store, ids, now)?,
            json,
        }),
        Some(Cmd::Snooze { ids, until, json }) => Some(Cmd::Snooze {
            ids: resolve_ids(&store, ids, now)?,
            until,
            json,
        }),
        Some(Cmd::MarkAttempted { ids, repeat, json }) => Some(Cmd::MarkAttempted {
            ids: resolve_ids(&store, ids, now)?,
            repeat,
            json,
        }),
        c => c,
    };
    match cmd {
        None => list(&store, &a.list, now),
        Some(Cmd::List(l)) => list(&store, &l, now),
        Some(Cmd::Dismiss { ids, json }) => {
            let out = store.mark_status(&ids, TerminalStatus::Dismissed, at_ms(now))?;
            report(&out, "dismissed", json, None)
        }
        Some(Cmd::MarkSent { ids, json }) => {
            let out = store.mark_status(&ids, TerminalStatus::Sent, at_ms(now))?;
            report(&out, "sent", json, None)
        }
        Some(Cmd::Snooze { ids, until, json }) => {
            let until = parse_time(&until, now).map_err(CliError::usage)?;
            let out = store.snooze(&ids, at_ms(until), at_ms(now))?;
            report(&out, "snoozed", json, Some(until))
        }
        Some(Cmd::MarkAttempted { ids, repeat, json }) => {
            let mut hit = Vec::new();
            let (mut first_ms, mut last_ms) = (None, 0);
            for _ in 0..repeat.max(1) {
                let now = a.common.now_ms.unwrap_or_else(crate::cli::now_ms);
                hit = store.mark_attempted(&ids, at_ms(now))?;
                first_ms.get_or_insert(now);
                last_ms = now;
            }
            let mut unknown: Vec<String> = Vec::new();
            for id in ids.iter().map(|s| s.trim().to_string()) {
                if !id.is_empty() && !hit.contains(&id) && !unknown.contains(&id) {
                    unknown.push(id);
                }
            }
            if json {
                println!(
                    "{}",
                    json!({"attempted": hit, "unknown": unknown, "repeat": repeat.max(1), "firstMs": first_ms, "lastMs": last_ms})
                );
            } else {
                if !hit.is_empty() {
                    println!("Attempted ({}x): {}", repeat.max(1), hit.join(", "));
                }
            }
            unknown_err(&unknown)
        }
        Some(Cmd::Add(add)) => run_add(&store, *add, now),
    }
}

/// Replaces each abbreviated id by the one commitment id it is a unique
/// prefix of (git style, [`super::resolve_prefix`]); exact ids and ids that
/// match nothing stay (the store reports the latter as unknown). An
/// ambiguous prefix is an error listing the candidates.
fn resolve_ids(store: &CommitmentsStore, ids: Vec<String>, now: i64) -> CliResult<Vec<String>> {
    let all = store.list(StatusFilter::All, None, at_ms(now))?;
    let known: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    ids.into_iter()
        .map(|id| {
            let t = id.trim();
            if known.contains(&t) {
                return Ok(id);
            }
            Ok(match super::resolve_prefix("commitment", t, &known)? {
                Some(i) => known[i].to_string(),
                None => id,
            })
        })
        .collect()
}

fn unknown_err(unknown: &[String]) -> CliResult {
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "unknown commitment id(s): {}",
            unknown.join(", ")
        )))
    }
}

fn report(out: &StatusOutcome, verb: &str, json: bool, until: Option<i64>) -> CliResult {
    if json {
        let mut v = json!({
            verb: out.changed,
            "unknown": out.unknown,
            "notActive": out.already_terminal,
        });
        if let Some(u) = until {
            v["untilMs"] = json!(u);
            v["until"] = json!(iso(u));
        }
        println!("{v}");
    } else {
        let mut label = verb[..1].to_uppercase() + &verb[1..];
        if let Some(u) = until {
            label = format!("{label} until {}", iso(u));
        }
        if !out.changed.is_empty() {
            println!("{label}: {}", out.changed.join(", "));
        }
        if !out.already_terminal.is_empty() {
            println!(
                "Not active (already sent, dismissed or expired): {}",
                out.already_terminal.join(", ")
            );
        }
    }
    unknown_err(&out.unknown)
}

fn list(store: &CommitmentsStore, l: &ListArgs, now: i64) -> CliResult {
    let (filter, label): (StatusFilter, Option<&str>) = if l.all {
        (StatusFilter::All, None)
    } else {
        match l.status.as_deref() {
            None | Some("pending") => (StatusFilter::Active, Some("pending")),
            Some(s) => match s.parse::<Status>() {
                Ok(st) => (StatusFilter::Only(st), Some(st.as_str())),
                Err(_) => {
                    return Err(CliError::usage(format!(
                        "Unknown commitment status: {s}. Use one of: {}",
                        Status::ALL
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            },
        }
    };
    let rows = store.list(filter, l.agent.as_deref(), at_ms(now))?;
    let path = store.path().display().to_string();
    if l.json {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            count: usize,
            status: Option<&'a str>,
            agent_id: Option<&'a str>,
            store: &'a str,
            commitments: &'a [Commitment],
        }
        let out = Out {
            count: rows.len(),
            status: label,
            agent_id: l.agent.as_deref(),
            store: &path,
            commitments: &rows,
        };
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| CliError::usage(format!("cannot serialize: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    println!("Commitments: {}", rows.len());
    println!("Store: {}", sanitize(&path));
    let mut filters = vec![format!(
        "Status: {}",
        match label {
            Some("pending") => "pending (pending + snoozed)",
            Some(s) => s,
            None => "all",
        }
    )];
    if let Some(a) = &l.agent {
        filters.push(format!("Agent: {}", sanitize(a)));
    }
    println!("{}", filters.join("  "));
    if rows.is_empty() {
        println!(
            "No commitments found. Run lockstore commitments --all to include sent, dismissed and expired ones."
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<16} {:<24} {:<24} {:<28} Suggested text",
        "ID", "Status", "Kind", "Due", "Snoozed until", "Scope"
    );
    for r in &rows {
        println!("{}", row(r));
    }
    Ok(())
}

fn row(r: &Commitment) -> String {
    let target = r.to.as_deref().unwrap_or(&r.session_key);
    let scope = format!("{}/{}/{}", r.agent_id, r.channel, target);
    // A snooze of an active commitment (the daemon skips it until then).
    let snoozed = match r.snoozed_until_ms {
        Some(ms) if r.status.is_active() => iso(ms),
        _ => "-".to_string(),
    };
    format!(
        "{:<24} {:<10} {:<16} {:<24} {:<24} {:<28} {}",
        sanitize(&r.id),
        r.status.as_str(),
        r.kind.as_str(),
        iso(r.due_window.earliest_ms),
        snoozed,
        truncate(&sanitize(&scope), 28),
        truncate(&sanitize(&r.suggested_text), 90)
    )
}

/// Replaces control characters (terminal escapes, newlines) with U+FFFD.
fn sanitize(s: &str) -> String {
    super::text::clean(s).into_owned()
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn run_add(store: &CommitmentsStore, a: AddArgs, now: i64) -> CliResult {
    let (item, cand) = if a.stdin {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| CliError::usage(format!("reading stdin: {e}")))?;
        add_from_json(&buf, now)?
    } else {
        let need = |v: Option<String>, flag: &str| {
            v.ok_or_else(|| CliError::usage(format!("commitments add: --{flag} is required")))
        };
        let earliest = match &a.earliest {
            Some(t) => parse_time(t, now).map_err(CliError::usage)?,
            None => now,
        };
        let latest = match &a.latest {
            Some(t) => parse_time(t, now).map_err(CliError::usage)?,
            None => earliest,
        };
        let text = need(a.text, "text")?;
        let item = InferredItem {
            scope: Scope {
                agent_id: need(a.agent, "agent")?,
                session_key: need(a.session, "session")?,
                channel: need(a.channel, "channel")?,
                account_id: a.account,
                to: a.to,
                thread_id: a.thread,
                sender_id: a.sender,
            },
            source_message_id: a.source_message_id,
            source_run_id: a.source_run_id,
        };
        let cand = Candidate {
            kind: a.kind,
            sensitivity: a.sensitivity,
            source: a.source,
            reason: a.reason.unwrap_or_else(|| text.clone()),
            dedupe_key: a.dedupe_key.unwrap_or_else(|| text.clone()),
            suggested_text: text,
            confidence: a.confidence,
            earliest_ms: earliest,
            latest_ms: latest,
            timezone: a.timezone,
        };
        (item, cand)
    };
    let created = store.upsert_inferred(&item, std::slice::from_ref(&cand), at_ms(now))?;
    if a.json {
        println!(
            "{}",
            json!({"created": created, "merged": created.is_empty(), "store": store.path().display().to_string()})
        );
    } else if let Some(c) = created.first() {
        println!("Created {} (due {})", c.id, iso(c.due_window.earliest_ms));
    } else {
        println!(
            "Merged into the active commitment with dedupe key {:?} in this scope",
            cand.dedupe_key.trim()
        );
    }
    Ok(())
}

/// Parses the `add --stdin` object: the scope and provenance fields of a record
/// plus the candidate fields; the window as `earliestMs`/`latestMs`/`timezone`
/// or a `dueWindow` object.
fn add_from_json(s: &str, _now: i64) -> CliResult<(InferredItem, Candidate)> {
    let bad = |m: String| CliError::usage(format!("commitments add --stdin: {m}"));
    let mut v: Value = serde_json::from_str(s).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Some(m) = v.as_object_mut() else {
        return Err(bad("expected a JSON object".into()));
    };
    if let Some(Value::Object(w)) = m.remove("dueWindow") {
        for (k, x) in w {
            m.entry(k).or_insert(x);
        }
    }
    let text = m.get("suggestedText").cloned();
    if let Some(t) = &text {
        m.entry("dedupeKey").or_insert_with(|| t.clone());
        m.entry("reason").or_insert_with(|| t.clone());
    }
    m.entry("kind").or_insert_with(|| json!("open_loop"));
    m.entry("sensitivity").or_insert_with(|| json!("routine"));
    m.entry("source").or_insert_with(|| json!("agent_promise"));
    m.entry("confidence").or_insert_with(|| json!(1.0));
    m.entry("timezone").or_insert_with(|| json!("UTC"));
    if let Some(e) = m.get("earliestMs").cloned() {
        m.entry("latestMs").or_insert(e);
    }
    let item: InferredItem = serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
    let cand: Candidate = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    Ok((item, cand))
}

// ---- time: unix ms, RFC 3339 / ISO 8601, relative +N{s,m,h,d,w} ----

pub use lockstore::timefmt::iso_ms as iso;

/// The instant `ms` Unix milliseconds after the epoch (before it when
/// negative): the CLI keeps its clock (`--now-ms`) and TIME arguments in ms and
/// passes [`SystemTime`] to the store.
pub(crate) fn at_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// Parses TIME: all digits = unix ms; `+N` with unit s, m, h, d or w = now plus
/// that; `YYYY-MM-DD` (UTC midnight); or RFC 3339 (`2026-05-12T09:00:00Z`,
/// `…T11:00:00.5+02:00`; a space may replace `T`).
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "invalid time {s:?}: use unix ms, +30m/+2h/+1d, or RFC 3339 like 2026-05-12T09:00:00Z"
        )
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|_| bad());
    }
    if let Some(rel) = s.strip_prefix('+') {
        let (num, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(mult)
            .and_then(|d| now.checked_add(d))
            .ok_or_else(bad);
    }
    lockstore::timefmt::parse_ms(s).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parsing() {
        let now = 1_000_000;
        assert_eq!(parse_time("1715504400000", now), Ok(1_715_504_400_000));
        assert_eq!(parse_time("+2h", now), Ok(now + 7_200_000));
        assert_eq!(parse_time("+30m", now), Ok(now + 1_800_000));
        assert_eq!(parse_time("1970-01-02", now), Ok(86_400_000));
        assert_eq!(
            parse_time("2024-05-12T09:00:00Z", now),
            Ok(1_715_504_400_000)
        );
        assert_eq!(
            parse_time("2024-05-12T11:00:00.5+02:00", now),
            Ok(1_715_504_400_500)
        );
        assert_eq!(parse_time("2024-05-12T09:00Z", now), Ok(1_715_504_400_000));
        for bad in [
            "",
            "tomorrow",
            "+2y",
            "2024-02-30",
            "2024-05-12T09:00:00",
            "2024-13-01",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
        assert_eq!(iso(1_715_504_400_500), "2024-05-12T09:00:00.500Z");
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
    }
}
