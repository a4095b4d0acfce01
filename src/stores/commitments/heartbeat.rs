//! Selection rules over loaded records (pure functions, times in Unix ms): the
//! expiry pass and what the heartbeat delivers (openclaw
//! `listDueCommitmentsForSession` / `listDueCommitmentSessionKeys`).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::record::{sort_commitments, Commitment, Status};
use super::{CAP_WINDOW_MS, EXPIRE_AFTER_MS, MAX_PER_HEARTBEAT};

/// The expiry pass: active records with `latestMs + 72 h < now` become
/// `expired` with `expiredAtMs = updatedAtMs = now`. Returns how many expired.
pub(crate) fn expire(records: &mut [Commitment], now: i64) -> usize {
    let mut n = 0;
    for r in records.iter_mut() {
        if r.status.is_active() && r.due_window.latest_ms.saturating_add(EXPIRE_AFTER_MS) < now {
            r.status = Status::Expired;
            r.expired_at_ms = Some(now);
            r.updated_at_ms = now;
            n += 1;
        }
    }
    n
}

fn sent_recently(r: &Commitment, now: i64) -> bool {
    r.status == Status::Sent && r.sent_at_ms.is_some_and(|t| t >= now - CAP_WINDOW_MS)
}

/// Due records of one session (openclaw `listDueCommitmentsForSession` steps
/// 2–5): rolling 24 h sent count vs `max_per_day`, at most 3 per heartbeat.
pub(crate) fn due_for_session(
    records: &[Commitment],
    agent_id: &str,
    session_key: &str,
    now: i64,
    limit: Option<usize>,
    max_per_day: usize,
) -> Vec<Commitment> {
    let mine = |r: &&Commitment| r.agent_id == agent_id && r.session_key == session_key;
    let sent = records
        .iter()
        .filter(mine)
        .filter(|r| sent_recently(r, now))
        .count();
    let remaining = max_per_day.saturating_sub(sent);
    let limit = limit
        .unwrap_or(MAX_PER_HEARTBEAT)
        .min(remaining)
        .min(MAX_PER_HEARTBEAT);
    if limit == 0 {
        return Vec::new();
    }
    let mut v: Vec<Commitment> = records
        .iter()
        .filter(mine)
        .filter(|r| r.due_at(now))
        .cloned()
        .collect();
    sort_commitments(&mut v);
    v.truncate(limit);
    v
}

/// Distinct due session keys of one agent under the daily cap, sorted, at most
/// `limit` (openclaw `listDueCommitmentSessionKeys`, linear).
pub(crate) fn due_session_keys(
    records: &[Commitment],
    agent_id: &str,
    now: i64,
    limit: Option<usize>,
    max_per_day: usize,
) -> Vec<String> {
    let mut sent: HashMap<&str, usize> = HashMap::new();
    let mut due: HashSet<&str> = HashSet::new();
    for r in records.iter().filter(|r| r.agent_id == agent_id) {
        if sent_recently(r, now) {
            *sent.entry(r.session_key.as_str()).or_default() += 1;
        }
        if r.due_at(now) {
            due.insert(r.session_key.as_str());
        }
    }
    let mut keys: Vec<String> = due
        .into_iter()
        .filter(|k| sent.get(k).copied().unwrap_or(0) < max_per_day)
        .map(str::to_owned)
        .collect();
    keys.sort();
    if let Some(l) = limit {
        keys.truncate(l);
    }
    keys
}

/// The heartbeat's whole pass over one load: per agent with active records,
/// its due session keys (at most `max_sessions_per_agent`), and per key the
/// due records with the default limit.
pub(crate) fn due_for_heartbeat(
    records: &[Commitment],
    now: i64,
    max_sessions_per_agent: Option<usize>,
    max_per_day: usize,
) -> Vec<Commitment> {
    let agents: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.status.is_active())
        .map(|r| r.agent_id.as_str())
        .collect();
    let mut out = Vec::new();
    for agent in agents {
        for key in due_session_keys(records, agent, now, max_sessions_per_agent, max_per_day) {
            out.extend(due_for_session(
                records,
                agent,
                &key,
                now,
                None,
                max_per_day,
            ));
        }
    }
    out
}
