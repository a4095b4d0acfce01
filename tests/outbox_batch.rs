//! Batched outbox calls on both backends: `enqueue_many` and `ack_many` (one
//! transaction per batch, a compare-and-set per item, one outcome per item).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::outbox::{Enqueued, Failure, NewMessage, Outbox, OutboxError, Outcome, Status};
use rstest::rstest;
use serde_json::json;

#[path = "support/outbox_backend.rs"]
mod support;
use support::{Backend, Db};

const LEASE: Duration = Duration::from_secs(60);

/// The instant `ms` milliseconds after the Unix epoch (the tests' clock).
fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.try_into().unwrap())
}

macro_rules! db_or_skip {
    ($b:expr) => {
        match Db::new($b) {
            Some(d) => d,
            None => return,
        }
    };
}

fn msg(i: usize, key: Option<&str>) -> NewMessage {
    NewMessage {
        channel: "tg".into(),
        target: format!("u{i}"),
        payload: json!({"n": i}),
        idempotency_key: key.map(String::from),
        ..Default::default()
    }
}

/// (id, claim token) of each claimed entry, oldest first.
fn claims(ob: &Outbox, n: usize, now: i64) -> Vec<(i64, String)> {
    let v = ob.claim(n, LEASE, at(now)).unwrap();
    assert_eq!(v.len(), n, "expected {n} due entries at {now}");
    v.into_iter()
        .map(|e| (e.id, e.claim_token.unwrap()))
        .collect()
}

fn refs(v: &[(i64, String)]) -> Vec<(i64, &str)> {
    v.iter().map(|(i, t)| (*i, t.as_str())).collect()
}

#[rstest]
fn ack_many_refuses_the_stale_item_and_applies_the_others(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let ids: Vec<i64> = ob
        .enqueue_many(&[msg(0, None), msg(1, None), msg(2, None)], at(1000))
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    let old = claims(&ob, 3, 1000);
    assert_eq!(old.iter().map(|c| c.0).collect::<Vec<_>>(), ids);
    // The middle claim is taken away: failed (retry due at once), re-claimed
    // by someone else with a new token. Its row is in flight again.
    let f = Failure {
        error: "503".into(),
        retry_after: Some(Duration::from_millis(1)),
        ..Default::default()
    };
    assert_eq!(
        ob.fail(old[1].0, &old[1].1, &f, at(1001)).unwrap(),
        Outcome::Applied(Status::Pending)
    );
    let new = claims(&ob, 1, 2000);
    assert_eq!(new[0].0, old[1].0);
    assert_ne!(new[0].1, old[1].1);

    let out = ob.ack_many(&refs(&old), at(3000)).unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Applied(Status::Delivered),
            Outcome::Stale(Some(Status::InFlight)),
            Outcome::Applied(Status::Delivered),
        ]
    );
    // The stale item's row is untouched: still in flight under the new
    // claim, payload kept; the current claimer can still ack it.
    let e = ob.get(old[1].0).unwrap().unwrap();
    assert_eq!(e.status, Status::InFlight);
    assert_eq!(e.claim_token.as_deref(), Some(new[0].1.as_str()));
    assert!(e.payload.is_some());
    assert_eq!(ob.get(old[0].0).unwrap().unwrap().status, Status::Delivered);
    assert_eq!(
        ob.ack_many(&refs(&new), at(3001)).unwrap(),
        vec![Outcome::Applied(Status::Delivered)]
    );
    // A second ack of a delivered row, a token never issued and a missing
    // row are all stale, in the batch's order.
    let bogus = [
        (old[0].0, old[0].1.as_str()),
        (old[2].0, "not-a-token"),
        (999_999, "1-0-abc"),
    ];
    assert_eq!(
        ob.ack_many(&bogus, at(3002)).unwrap(),
        vec![
            Outcome::Stale(Some(Status::Delivered)),
            Outcome::Stale(Some(Status::Delivered)),
            Outcome::Stale(None),
        ]
    );
}

#[rstest]
fn empty_batches_touch_nothing(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let ob = d.open();
    assert_eq!(ob.enqueue_many(&[], at(1000)).unwrap(), vec![]);
    assert_eq!(ob.ack_many(&[], at(1000)).unwrap(), vec![]);
    assert!(ob.list(None, 10).unwrap().is_empty());
}

#[rstest]
fn duplicates_in_a_batch_apply_once(#[values(Backend::Sqlite, Backend::Postgres)] b: Backend) {
    let d = db_or_skip!(b);
    let ob = d.open();
    // A key repeated in one enqueue batch: one row, later occurrences Existing.
    let e = ob
        .enqueue_many(
            &[msg(0, Some("k")), msg(1, None), msg(2, Some("k"))],
            at(1000),
        )
        .unwrap();
    assert!(matches!(e[0], Enqueued::Created(_)));
    assert!(matches!(e[1], Enqueued::Created(_)));
    assert_eq!(e[2], Enqueued::Existing(e[0].id()));
    assert_eq!(ob.list(None, 10).unwrap().len(), 2);
    // A claim repeated in one ack batch: its first occurrence applies.
    let c = claims(&ob, 2, 1000);
    let batch = [
        (c[0].0, c[0].1.as_str()),
        (c[1].0, c[1].1.as_str()),
        (c[0].0, c[0].1.as_str()),
    ];
    assert_eq!(
        ob.ack_many(&batch, at(2000)).unwrap(),
        vec![
            Outcome::Applied(Status::Delivered),
            Outcome::Applied(Status::Delivered),
            Outcome::Stale(Some(Status::Delivered)),
        ]
    );
    let st = ob.stats(at(2000)).unwrap();
    assert_eq!(st.by_status[&Status::Delivered], 2, "{st:?}");
}

#[rstest]
fn an_invalid_message_enqueues_none_of_the_batch(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let mut bad = msg(1, None);
    bad.channel.clear();
    let err = ob
        .enqueue_many(&[msg(0, None), bad, msg(2, None)], at(1000))
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutboxError::EmptyField {
                field: "channel",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(ob.list(None, 10).unwrap().is_empty());
}

#[rstest]
fn enqueue_many_writes_the_rows_enqueue_writes(
    #[values(Backend::Sqlite, Backend::Postgres)] b: Backend,
) {
    let d = db_or_skip!(b);
    let ob = d.open();
    let mut m = msg(7, Some("one"));
    m.account_id = Some("acct".into());
    m.ttl = Some(Duration::from_secs(5));
    let one = ob.enqueue(&m, at(1000)).unwrap().id();
    let mut m2 = m.clone();
    m2.idempotency_key = Some("many".into());
    // A key enqueued earlier is Existing; the new one is created.
    let v = ob.enqueue_many(&[m.clone(), m2], at(1000)).unwrap();
    assert_eq!(v[0], Enqueued::Existing(one));
    let Enqueued::Created(many) = v[1] else {
        panic!("{v:?}")
    };
    let (mut a, mut c) = (
        ob.get(one).unwrap().unwrap(),
        ob.get(many).unwrap().unwrap(),
    );
    assert_eq!(c.expires_at, Some(6000));
    assert_eq!(c.status, Status::Pending);
    (a.id, a.idempotency_key, c.id, c.idempotency_key) = (0, None, 0, None);
    assert_eq!(format!("{a:?}"), format!("{c:?}"));
}
