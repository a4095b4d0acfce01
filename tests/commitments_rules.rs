//! The commitments store's rules (openclaw reference §4): expiry, merge,
//! rolling 24 h cap, snooze, sort order, legacy fields, invalid records, the
//! envelope, and loading a file in the incumbent's format.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::commitments::{
    Candidate, Commitment, CommitmentsConfig, CommitmentsError, CommitmentsStore, InferredItem,
    Kind, Scope, Sensitivity, Source, Status, StatusFilter, TerminalStatus, EXPIRE_AFTER,
};
use lockstore::Durability;
use rstest::rstest;
use serde_json::{json, Value};

const NOW: i64 = 1_780_000_000_000;
const H: i64 = 3_600_000;

/// The instant `ms` Unix ms after the epoch.
fn t(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn scope() -> Scope {
    Scope {
        agent_id: "main".into(),
        session_key: "s1".into(),
        channel: "telegram".into(),
        ..Default::default()
    }
}

fn item() -> InferredItem {
    InferredItem {
        scope: scope(),
        ..Default::default()
    }
}

fn cand(dedupe: &str, earliest: i64, latest: i64) -> Candidate {
    Candidate {
        kind: Kind::EventCheckIn,
        sensitivity: Sensitivity::Routine,
        source: Source::InferredUserContext,
        reason: "reason".into(),
        suggested_text: "text".into(),
        dedupe_key: dedupe.into(),
        confidence: 0.8,
        earliest_ms: earliest,
        latest_ms: latest,
        timezone: "UTC".into(),
    }
}

fn open(dir: &Path, enabled: bool, max_per_day: u32) -> CommitmentsStore {
    CommitmentsStore::open(
        dir,
        CommitmentsConfig {
            enabled,
            max_per_day,
            durability: Durability::Process,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A valid record as JSON, for writing files by hand.
fn record(id: &str, status: &str, earliest: i64, latest: i64, created: i64) -> Value {
    json!({
        "id": id, "agentId": "main", "sessionKey": "s1", "channel": "telegram",
        "kind": "open_loop", "sensitivity": "routine", "source": "agent_promise",
        "status": status, "reason": "r", "suggestedText": "t", "dedupeKey": id,
        "confidence": 0.9,
        "dueWindow": {"earliestMs": earliest, "latestMs": latest, "timezone": "UTC"},
        "createdAtMs": created, "updatedAtMs": created, "attempts": 0
    })
}

fn write_file(dir: &Path, records: Vec<Value>) -> PathBuf {
    let p = lockstore::paths::commitments_file(dir);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let doc = json!({"version": 1, "commitments": records});
    std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    p
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

#[rstest]
#[case::pending_past_72h("pending", -72 * H - 1, "expired")]
#[case::pending_at_72h_boundary("pending", -72 * H, "pending")]
#[case::snoozed_past_72h("snoozed", -100 * H, "expired")]
#[case::pending_future("pending", 5 * H, "pending")]
#[case::sent_untouched("sent", -500 * H, "sent")]
#[case::dismissed_untouched("dismissed", -500 * H, "dismissed")]
fn expiry(#[case] status: &str, #[case] latest_offset: i64, #[case] want: &str) {
    let d = tempfile::tempdir().unwrap();
    let latest = NOW + latest_offset;
    let p = write_file(
        d.path(),
        vec![record("cm_x", status, latest - H, latest, NOW - 600 * H)],
    );
    let before = std::fs::read(&p).unwrap();
    let s = open(d.path(), true, 3);
    let all = s.list(StatusFilter::All, None, t(NOW)).unwrap();
    assert_eq!(all[0].status.as_str(), want);
    if want == "expired" && status != "expired" {
        assert_eq!(all[0].expired_at_ms, Some(NOW));
        assert_eq!(all[0].updated_at_ms, NOW);
        // Persisted by the read helper.
        assert!(std::fs::read_to_string(&p).unwrap().contains("\"expired\""));
    } else {
        assert_eq!(std::fs::read(&p).unwrap(), before, "no change → no write");
    }
}

#[test]
fn expiry_runs_inside_upsert_so_an_expired_record_is_not_merged() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), true, 3);
    let old = s
        .upsert_inferred(
            &item(),
            &[cand("k", NOW - 200 * H, NOW - 100 * H)],
            t(NOW - 200 * H),
        )
        .unwrap();
    let made = s
        .upsert_inferred(&item(), &[cand("k", NOW, NOW + H)], t(NOW))
        .unwrap();
    assert_eq!(
        made.len(),
        1,
        "the old one expired first, so a new one is created"
    );
    let all = s.list(StatusFilter::All, None, t(NOW)).unwrap();
    let o = all.iter().find(|r| r.id == old[0].id).unwrap();
    assert_eq!(o.status, Status::Expired);
    assert_eq!(EXPIRE_AFTER, Duration::from_millis(72 * H as u64));
}

/// Merge rules: (existing status, candidate tweak, merged?).
#[rstest]
#[case::same_key_whitespace("pending", " k ", None, true)]
#[case::snoozed_is_active("snoozed", "k", None, true)]
#[case::different_key("pending", "other", None, false)]
#[case::dismissed_not_merged("dismissed", "k", None, false)]
#[case::sent_not_merged("sent", "k", None, false)]
#[case::other_scope("pending", "k", Some("someone-else"), false)]
fn merge_or_insert(
    #[case] existing: &str,
    #[case] key: &str,
    #[case] to: Option<&str>,
    #[case] merged: bool,
) {
    let d = tempfile::tempdir().unwrap();
    let mut r = record("cm_old", existing, NOW, NOW + H, NOW - H);
    r["dedupeKey"] = "k".into();
    r["attempts"] = 2.into();
    write_file(d.path(), vec![r]);
    let s = open(d.path(), true, 3);
    let mut it = item();
    it.scope.to = to.map(str::to_owned);
    let mut c = cand(key, NOW - 2 * H, NOW + 5 * H);
    c.reason = "new reason".into();
    c.suggested_text = "new text".into();
    c.confidence = 0.95;
    c.timezone = "Europe/Berlin".into();
    let made = s.upsert_inferred(&it, &[c], t(NOW)).unwrap();
    let all = s.list(StatusFilter::All, None, t(NOW)).unwrap();
    if merged {
        assert!(made.is_empty(), "merge returns no new records");
        assert_eq!(all.len(), 1);
        let m = &all[0];
        assert_eq!(m.id, "cm_old");
        assert_eq!(
            (m.reason.as_str(), m.suggested_text.as_str()),
            ("new reason", "new text")
        );
        assert_eq!(m.confidence, 0.95);
        assert_eq!(m.due_window.earliest_ms, NOW - 2 * H);
        assert_eq!(m.due_window.latest_ms, NOW + 5 * H);
        assert_eq!(m.due_window.timezone, "Europe/Berlin");
        assert_eq!(
            (m.updated_at_ms, m.created_at_ms, m.attempts),
            (NOW, NOW - H, 2)
        );
    } else {
        assert_eq!(made.len(), 1);
        assert_eq!(all.len(), 2);
        let n = &made[0];
        assert_eq!(
            (n.status, n.attempts, n.created_at_ms),
            (Status::Pending, 0, NOW)
        );
        assert_eq!(n.dedupe_key, key.trim());
    }
}

#[rstest]
#[case::empty_text_keeps_old("", "", 0.1, "r", "t", 0.9)]
#[case::lower_confidence_keeps_max("nr", "nt", 0.1, "nr", "nt", 0.9)]
#[case::narrower_window_keeps_wide("nr", "", 0.99, "nr", "t", 0.99)]
fn merge_fields(
    #[case] reason: &str,
    #[case] text: &str,
    #[case] conf: f64,
    #[case] want_reason: &str,
    #[case] want_text: &str,
    #[case] want_conf: f64,
) {
    let d = tempfile::tempdir().unwrap();
    let mut r = record("cm_old", "pending", NOW - 3 * H, NOW + 3 * H, NOW - H);
    r["dedupeKey"] = "k".into();
    write_file(d.path(), vec![r]);
    let s = open(d.path(), true, 3);
    let mut c = cand("k", NOW - H, NOW + H);
    c.reason = reason.into();
    c.suggested_text = text.into();
    c.confidence = conf;
    assert!(s.upsert_inferred(&item(), &[c], t(NOW)).unwrap().is_empty());
    let m = &s.list(StatusFilter::All, None, t(NOW)).unwrap()[0];
    assert_eq!(
        (m.reason.as_str(), m.suggested_text.as_str()),
        (want_reason, want_text)
    );
    assert_eq!(m.confidence, want_conf);
    assert_eq!(
        (m.due_window.earliest_ms, m.due_window.latest_ms),
        (NOW - 3 * H, NOW + 3 * H)
    );
}

#[rstest]
#[case::empty_dedupe(|c: &mut Candidate| c.dedupe_key = "  ".into())]
#[case::negative_confidence(|c: &mut Candidate| c.confidence = -0.1)]
#[case::nan_confidence(|c: &mut Candidate| c.confidence = f64::NAN)]
#[case::inverted_window(|c: &mut Candidate| c.latest_ms = c.earliest_ms - 1)]
#[case::empty_text_on_insert(|c: &mut Candidate| c.suggested_text = "".into())]
fn invalid_candidates_write_nothing(#[case] tweak: fn(&mut Candidate)) {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), true, 3);
    let mut c = cand("k", NOW, NOW + H);
    tweak(&mut c);
    let r = s.upsert_inferred(&item(), &[cand("ok", NOW, NOW + H), c], t(NOW));
    assert!(
        matches!(r, Err(CommitmentsError::InvalidInput { .. })),
        "{r:?}"
    );
    assert!(
        !s.path().exists(),
        "nothing written, not even the valid candidate"
    );
}

/// Rolling 24 h cap: (maxPerDay, sent offsets before now, due records, expected).
#[rstest]
#[case::two_sent_in_window(3, vec![H, 2 * H], 5, 1)]
#[case::sent_outside_window(3, vec![25 * H, 30 * H], 5, 3)]
#[case::exactly_24h_counts(3, vec![24 * H, H], 5, 1)]
#[case::per_heartbeat_cap(10, vec![], 5, 3)]
#[case::cap_reached(2, vec![H, 3 * H], 5, 0)]
#[case::fewer_due_than_limit(3, vec![], 2, 2)]
#[case::zero_means_default(0, vec![H, H], 5, 1)]
fn rolling_24h_cap(
    #[case] max: u32,
    #[case] sent_ago: Vec<i64>,
    #[case] due: usize,
    #[case] want: usize,
) {
    let d = tempfile::tempdir().unwrap();
    let mut recs = Vec::new();
    for (i, ago) in sent_ago.iter().enumerate() {
        let mut r = record(
            &format!("cm_sent{i}"),
            "sent",
            NOW - 40 * H,
            NOW + H,
            NOW - 50 * H,
        );
        r["sentAtMs"] = (NOW - ago).into();
        recs.push(r);
    }
    for i in 0..due {
        recs.push(record(
            &format!("cm_due{i}"),
            "pending",
            NOW - H,
            NOW + H,
            NOW - 2 * H,
        ));
    }
    // Not due: future window, other session, snoozed.
    recs.push(record(
        "cm_future",
        "pending",
        NOW + H,
        NOW + 2 * H,
        NOW - H,
    ));
    let mut other = record("cm_other", "pending", NOW - H, NOW + H, NOW - H);
    other["sessionKey"] = "s2".into();
    recs.push(other);
    write_file(d.path(), recs);
    let s = open(d.path(), true, max);
    let got = s.list_due_for_session("main", "s1", t(NOW), None).unwrap();
    assert_eq!(got.len(), want);
    assert!(got
        .iter()
        .all(|r| r.session_key == "s1" && r.status == Status::Pending));
    let keys = s.list_due_session_keys("main", t(NOW), None).unwrap();
    let want_keys: Vec<&str> = if want > 0 {
        vec!["s1", "s2"]
    } else {
        vec!["s2"]
    };
    assert_eq!(keys, want_keys);
    // Disabled: the heartbeat helpers return nothing; reads still work.
    let off = open(d.path(), false, max);
    assert!(off
        .list_due_for_session("main", "s1", t(NOW), None)
        .unwrap()
        .is_empty());
    assert!(off
        .list_due_session_keys("main", t(NOW), None)
        .unwrap()
        .is_empty());
    assert!(!off
        .list(StatusFilter::All, None, t(NOW))
        .unwrap()
        .is_empty());
}

#[rstest]
#[case::limit_one(Some(1), 1)]
#[case::limit_above_cap(Some(10), 3)]
fn due_limit(#[case] limit: Option<usize>, #[case] want: usize) {
    let d = tempfile::tempdir().unwrap();
    write_file(
        d.path(),
        (0..5)
            .map(|i| record(&format!("cm_{i}"), "pending", NOW - H, NOW + H, NOW - H))
            .collect(),
    );
    let s = open(d.path(), true, 10);
    assert_eq!(
        s.list_due_for_session("main", "s1", t(NOW), limit)
            .unwrap()
            .len(),
        want
    );
}

/// Snooze: (snoozed until, query time, due?, in pending-for-scope?).
#[rstest]
#[case::before_until(NOW + H, NOW, false, false)]
#[case::at_until(NOW + H, NOW + H, true, true)]
#[case::after_until(NOW + H, NOW + 2 * H, true, true)]
fn snooze(#[case] until: i64, #[case] at: i64, #[case] due: bool, #[case] pending: bool) {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), true, 3);
    let id = s
        .upsert_inferred(&item(), &[cand("k", NOW - H, NOW + 10 * H)], t(NOW - H))
        .unwrap()[0]
        .id
        .clone();
    let out = s
        .snooze(&[&id, &"cm_missing".to_string()], t(until), t(NOW))
        .unwrap();
    assert_eq!(out.changed, vec![id.clone()]);
    assert_eq!(out.unknown, vec!["cm_missing".to_string()]);
    let r = &s
        .list(StatusFilter::Only(Status::Snoozed), None, t(NOW))
        .unwrap()[0];
    assert_eq!((r.snoozed_until_ms, r.updated_at_ms), (Some(until), NOW));
    assert_eq!(
        !s.list_due_for_session("main", "s1", t(at), None)
            .unwrap()
            .is_empty(),
        due
    );
    assert_eq!(
        !s.list_pending_for_scope(&scope(), t(at), None)
            .unwrap()
            .is_empty(),
        pending
    );
    // Snoozed is active: it can be dismissed; then it is terminal for snooze.
    let out = s
        .mark_status(&[&id], TerminalStatus::Dismissed, t(NOW))
        .unwrap();
    assert_eq!(out.changed, vec![id.clone()]);
    let out = s.snooze(&[&id], t(until), t(NOW)).unwrap();
    assert_eq!(out.already_terminal, vec![id]);
}

#[test]
fn mark_status_reports_changed_unknown_terminal_and_writes_only_on_change() {
    let d = tempfile::tempdir().unwrap();
    let p = write_file(
        d.path(),
        vec![
            record("cm_a", "pending", NOW, NOW + H, NOW),
            record("cm_b", "sent", NOW, NOW + H, NOW),
        ],
    );
    let s = open(d.path(), true, 3);
    let i0 = ino(&p);
    let out = s
        .mark_status(
            &[" cm_b ", "cm_zz", "cm_b", ""],
            TerminalStatus::Sent,
            t(NOW),
        )
        .unwrap();
    assert!(out.changed.is_empty());
    assert_eq!(out.unknown, vec!["cm_zz"]);
    assert_eq!(out.already_terminal, vec!["cm_b"]);
    assert_eq!(ino(&p), i0, "nothing changed → no write");
    let out = s
        .mark_status(&["cm_a"], TerminalStatus::Sent, t(NOW + 5))
        .unwrap();
    assert_eq!(out.changed, vec!["cm_a"]);
    assert_ne!(ino(&p), i0);
    let a = s
        .list(StatusFilter::Only(Status::Sent), None, t(NOW))
        .unwrap();
    let a = a.iter().find(|r| r.id == "cm_a").unwrap();
    assert_eq!((a.sent_at_ms, a.updated_at_ms), (Some(NOW + 5), NOW + 5));
    // Attempts count whatever the status; unknown ids write nothing.
    let i1 = ino(&p);
    assert!(s.mark_attempted(&["cm_nope"], t(NOW)).unwrap().is_empty());
    assert_eq!(ino(&p), i1);
    assert_eq!(
        s.mark_attempted(&["cm_b", "cm_b "], t(NOW + 9)).unwrap(),
        vec!["cm_b"]
    );
    let b = s.list(StatusFilter::All, None, t(NOW)).unwrap();
    let b = b.iter().find(|r| r.id == "cm_b").unwrap();
    assert_eq!(
        (b.attempts, b.last_attempt_at_ms, b.status),
        (1, Some(NOW + 9), Status::Sent)
    );
}

/// Sort by (earliestMs, createdAtMs, id) whatever the file order.
#[rstest]
#[case(vec![("cm_c", 2, 1), ("cm_b", 1, 5), ("cm_a", 1, 5), ("cm_d", 1, 2)], vec!["cm_d", "cm_a", "cm_b", "cm_c"])]
#[case(vec![("cm_z", 0, 0), ("cm_y", 0, 1)], vec!["cm_z", "cm_y"])]
fn sort_order(#[case] recs: Vec<(&str, i64, i64)>, #[case] want: Vec<&str>) {
    let d = tempfile::tempdir().unwrap();
    write_file(
        d.path(),
        recs.iter()
            .map(|(id, e, c)| record(id, "pending", NOW + e * H, NOW + 10 * H, NOW - 10 * H + c))
            .collect(),
    );
    let s = open(d.path(), true, 3);
    let ids = |v: Vec<Commitment>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list(StatusFilter::Active, None, t(NOW)).unwrap()),
        want
    );
    assert_eq!(
        ids(s.list_pending_for_scope(&scope(), t(NOW), None).unwrap()),
        want
    );
    assert_eq!(
        ids(s.list_pending_for_scope(&scope(), t(NOW), Some(1)).unwrap()),
        want[..1].to_vec()
    );
}

#[rstest]
#[case::user_text(vec!["sourceUserText"])]
#[case::both(vec!["sourceUserText", "sourceAssistantText"])]
fn legacy_fields_are_stripped_and_force_one_rewrite(#[case] fields: Vec<&str>) {
    let d = tempfile::tempdir().unwrap();
    let mut r = record("cm_a", "pending", NOW, NOW + H, NOW);
    for f in &fields {
        r[*f] = "raw private text".into();
    }
    let p = write_file(
        d.path(),
        vec![r, record("cm_b", "pending", NOW, NOW + H, NOW)],
    );
    let s = open(d.path(), true, 3);
    assert_eq!(s.snapshot().unwrap().legacy_stripped, 1);
    let i0 = ino(&p);
    let all = s.list(StatusFilter::All, None, t(NOW)).unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.extra.is_empty()));
    assert_ne!(ino(&p), i0, "a plain read rewrote the file");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(!text.contains("raw private text"));
    let i1 = ino(&p);
    s.list(StatusFilter::All, None, t(NOW)).unwrap();
    assert_eq!(ino(&p), i1, "second read: nothing to strip, no write");
}

/// Invalid records: (field to break, value, reported field).
#[rstest]
#[case::missing_kind("kind", None, "kind")]
#[case::bad_status("status", Some(json!("done")), "status")]
#[case::negative_confidence("confidence", Some(json!(-1)), "confidence")]
#[case::string_attempts("attempts", Some(json!("3")), "attempts")]
#[case::empty_id("id", Some(json!("")), "id")]
#[case::missing_agent("agentId", None, "agentId")]
#[case::numeric_to("to", Some(json!(5)), "to")]
#[case::float_timestamp("sentAtMs", Some(json!(1.5)), "sentAtMs")]
#[case::inverted_window("dueWindow", Some(json!({"earliestMs": 10, "latestMs": 5, "timezone": "UTC"})), "dueWindow.latestMs")]
#[case::window_without_tz("dueWindow", Some(json!({"earliestMs": 1, "latestMs": 5})), "dueWindow.timezone")]
fn invalid_record_is_reported_and_never_overwritten(
    #[case] field: &str,
    #[case] value: Option<Value>,
    #[case] reported: &str,
) {
    let d = tempfile::tempdir().unwrap();
    let mut bad = record("cm_bad", "pending", NOW, NOW + H, NOW);
    match value {
        Some(v) => bad[field] = v,
        None => {
            bad.as_object_mut().unwrap().remove(field);
        }
    }
    let p = write_file(
        d.path(),
        vec![record("cm_ok", "pending", NOW, NOW + H, NOW), bad.clone()],
    );
    let before = std::fs::read(&p).unwrap();
    let s = open(d.path(), true, 3);
    let err = s
        .mark_status(&["cm_ok"], TerminalStatus::Dismissed, t(NOW))
        .unwrap_err();
    let CommitmentsError::InvalidRecords { path, records } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(path, s.path());
    assert_eq!((records.len(), records[0].index), (1, 1));
    assert_eq!(records[0].field, reported);
    let msg = err.to_string();
    assert!(
        msg.contains("commitments.json") && msg.contains("record #1"),
        "{msg}"
    );
    assert!(msg.contains(&format!("field {reported}")), "{msg}");
    assert!(
        s.list(StatusFilter::All, None, t(NOW)).is_err(),
        "reads refuse too"
    );
    assert_eq!(std::fs::read(&p).unwrap(), before, "file untouched");

    // Opt-in quarantine: bad record to the side file first, then the rewrite.
    let q = CommitmentsStore::open(
        d.path(),
        CommitmentsConfig {
            quarantine_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    let out = q
        .mark_status(&["cm_ok"], TerminalStatus::Dismissed, t(NOW))
        .unwrap();
    assert_eq!(out.changed, vec!["cm_ok"]);
    let side: Vec<PathBuf> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("commitments.json.invalid-"))
        .collect();
    assert_eq!(side.len(), 1);
    let sv: Value = serde_json::from_slice(&std::fs::read(&side[0]).unwrap()).unwrap();
    assert_eq!(sv["records"][0]["record"], bad);
    assert_eq!(sv["records"][0]["index"], 1);
    let after = s.snapshot().unwrap();
    assert!(after.invalid.is_empty());
    assert_eq!(after.commitments.len(), 1);
}

#[rstest]
#[case::not_json(b"{\"version\": 1, \"commitments\": [".to_vec(), "invalid JSON")]
#[case::newer_version(br#"{"version": 2, "commitments": []}"#.to_vec(), "unknown version 2")]
#[case::no_version(br#"{"commitments": []}"#.to_vec(), "missing \"version\"")]
#[case::not_array(br#"{"version": 1, "commitments": {}}"#.to_vec(), "not an array")]
#[case::top_array(b"[]".to_vec(), "not a JSON object")]
fn bad_envelope_is_corrupt_and_untouched(#[case] bytes: Vec<u8>, #[case] reason: &str) {
    let d = tempfile::tempdir().unwrap();
    let p = lockstore::paths::commitments_file(d.path());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, &bytes).unwrap();
    let s = CommitmentsStore::open(
        d.path(),
        CommitmentsConfig {
            quarantine_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    let e = s
        .upsert_inferred(&item(), &[cand("k", NOW, NOW + H)], t(NOW))
        .unwrap_err();
    assert!(
        matches!(&e, CommitmentsError::Core(lockstore::Error::Corrupt { reason: r, .. }) if r.contains(reason)),
        "{e}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
}

#[test]
fn unknown_fields_survive_a_rewrite() {
    let d = tempfile::tempdir().unwrap();
    let mut r = record("cm_a", "pending", NOW, NOW + H, NOW);
    r["futureField"] = json!({"x": 1});
    let p = lockstore::paths::commitments_file(d.path());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(
        &p,
        serde_json::to_vec(&json!({"version": 1, "commitments": [r], "meta": "kept"})).unwrap(),
    )
    .unwrap();
    let s = open(d.path(), true, 3);
    s.mark_attempted(&["cm_a"], t(NOW)).unwrap();
    let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    assert_eq!(v["commitments"][0]["futureField"], json!({"x": 1}));
    assert_eq!(v["meta"], "kept");
    assert_eq!(v["commitments"][0]["attempts"], 1);
}

#[test]
fn openclaw_fixture_loads() {
    let d = tempfile::tempdir().unwrap();
    let p = lockstore::paths::commitments_file(d.path());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openclaw-commitments.json"
        ),
        &p,
    )
    .unwrap();
    let s = open(d.path(), true, 3);
    let snap = s.snapshot().unwrap();
    assert!(snap.invalid.is_empty(), "{:?}", snap.invalid);
    assert_eq!((snap.commitments.len(), snap.legacy_stripped), (6, 2));
    let now = 1_778_000_000_000;
    let all = s.list(StatusFilter::All, None, t(now)).unwrap();
    let statuses: Vec<Status> = Status::ALL
        .iter()
        .copied()
        .filter(|st| all.iter().any(|r| r.status == *st))
        .collect();
    assert_eq!(statuses.len(), 5, "every status is represented");
    let r = all
        .iter()
        .find(|r| r.id == "cm_mopqa1b2_0a1b2c3d4e")
        .unwrap();
    assert_eq!(r.kind, Kind::EventCheckIn);
    assert_eq!(r.account_id.as_deref(), Some("default"));
    assert_eq!(r.source_run_id.as_deref(), Some("run-7f3a"));
    assert!(r.extra.is_empty());
    // The interview check-in is due for its session; the tax one is snoozed
    // until 1778010000000, the care one was sent 14 h ago (1 of 3 today).
    let due = s
        .list_due_for_session("main", "agent:main:telegram:direct:4242", t(now), None)
        .unwrap();
    assert_eq!(
        due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["cm_mopqa1b2_0a1b2c3d4e"]
    );
    assert_eq!(
        s.list_due_session_keys("main", t(now + 20_000_000), None)
            .unwrap(),
        vec![
            "agent:main:discord:channel:99",
            "agent:main:telegram:direct:4242"
        ]
    );
    // Round trip: our rewrite loads again with identical records.
    let again = open(d.path(), true, 3).snapshot().unwrap();
    assert_eq!(again.commitments.len(), 6);
    assert_eq!(again.legacy_stripped, 0);
}

/// The daemon's one-load heartbeat pass equals the per-session read helpers.
#[test]
fn heartbeat_pass_equals_per_session_helpers() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), true, 2);
    for agent in ["a1", "a2"] {
        for session in ["s1", "s2", "s3"] {
            let it = InferredItem {
                scope: Scope {
                    agent_id: agent.into(),
                    session_key: session.into(),
                    channel: "telegram".into(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let cands: Vec<Candidate> = (0..5)
                .map(|i| cand(&format!("k{i}"), NOW - (i as i64) * H, NOW + H))
                .collect();
            s.upsert_inferred(&it, &cands, t(NOW - 10 * H)).unwrap();
        }
    }
    // a1/s2 hit its daily cap: two sent in the last 24 h.
    let a1s2: Vec<String> = s
        .list(StatusFilter::All, Some("a1"), t(NOW))
        .unwrap()
        .into_iter()
        .filter(|c| c.session_key == "s2")
        .map(|c| c.id)
        .take(2)
        .collect();
    s.mark_status(&a1s2, TerminalStatus::Sent, t(NOW - H))
        .unwrap();
    let mut expected = Vec::new();
    for agent in ["a1", "a2"] {
        for key in s.list_due_session_keys(agent, t(NOW), Some(2)).unwrap() {
            expected.extend(s.list_due_for_session(agent, &key, t(NOW), None).unwrap());
        }
    }
    let got = s.list_due_for_heartbeat(t(NOW), Some(2)).unwrap();
    let ids = |v: &[Commitment]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&expected));
    // 2 agents × 2 sessions (limit) × min(3 per heartbeat, maxPerDay 2), and
    // a1/s2 (at its cap) skipped.
    assert_eq!(got.len(), 8);
    assert!(got
        .iter()
        .all(|c| !(c.agent_id == "a1" && c.session_key == "s2")));
    assert!(open(d.path(), false, 2)
        .list_due_for_heartbeat(t(NOW), None)
        .unwrap()
        .is_empty());
}

/// Files the store wrote before it moved onto JsonStore (captured from that
/// code): a no-op leaves them alone, and a change is byte-identical to what the
/// old code wrote for the same change.
#[test]
fn files_written_by_the_previous_store_round_trip_byte_for_byte() {
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let (before, after) = (
        fixture("commitments-lockstore-v1.json"),
        fixture("commitments-lockstore-v1-dismissed.json"),
    );
    let d = tempfile::tempdir().unwrap();
    let p = lockstore::paths::commitments_file(d.path());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, &before).unwrap();
    let s = open(d.path(), true, 3);
    let when = t(1_780_000_200_000);
    let snap = s.snapshot().unwrap();
    assert_eq!((snap.commitments.len(), snap.invalid.len()), (3, 0));
    assert_eq!(snap.other["meta"], json!({"writer": "someone"}));
    assert_eq!(s.list(StatusFilter::All, None, when).unwrap().len(), 3);
    assert!(s.mark_attempted(&["cm_nope"], when).unwrap().is_empty());
    assert_eq!(std::fs::read(&p).unwrap(), before, "no-op: untouched");
    let out = s
        .mark_status(&["cm_b"], TerminalStatus::Dismissed, when)
        .unwrap();
    assert_eq!(out.changed, vec!["cm_b"]);
    assert_eq!(
        String::from_utf8(std::fs::read(&p).unwrap()).unwrap(),
        String::from_utf8(after).unwrap()
    );
}

/// The error of an invalid record names the file, the record's index and id
/// and the field path, for a nested field too.
#[test]
fn invalid_record_error_names_file_index_id_and_path() {
    let d = tempfile::tempdir().unwrap();
    let mut bad = record("cm_bad", "pending", NOW, NOW + H, NOW);
    bad["dueWindow"]["earliestMs"] = json!("soon");
    let p = write_file(
        d.path(),
        vec![
            record("cm_a", "pending", NOW, NOW + H, NOW),
            record("cm_b", "pending", NOW, NOW + H, NOW),
            bad,
        ],
    );
    let s = open(d.path(), true, 3);
    let err = s.list(StatusFilter::All, None, t(NOW)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&p.display().to_string())
            && msg.contains("record #2 (cm_bad): field dueWindow.earliestMs: invalid type"),
        "{msg}"
    );
    // The lock-free snapshot reports it instead of failing.
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.invalid[0].field, "dueWindow.earliestMs");
    assert_eq!(snap.commitments.len(), 2);
}

/// Invalid input is a typed problem naming the store file.
#[test]
fn invalid_input_is_typed() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), true, 3);
    let mut c = cand("k", NOW, NOW + H);
    c.latest_ms = NOW - 1;
    let e = s.upsert_inferred(&item(), &[c], t(NOW)).unwrap_err();
    let CommitmentsError::InvalidInput { path, problem } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(path, s.path());
    assert_eq!(
        *problem,
        lockstore::commitments::InputProblem::InvertedWindow {
            candidate: 0,
            earliest_ms: NOW,
            latest_ms: NOW - 1
        }
    );
    let mut c = cand("k", NOW, NOW + H);
    c.reason = " ".into();
    let e = s.upsert_inferred(&item(), &[c], t(NOW)).unwrap_err();
    assert!(
        e.to_string()
            .contains("reason must be non-empty for a new commitment (dedupeKey \"k\")"),
        "{e}"
    );
    assert!(!s.path().exists());
}
