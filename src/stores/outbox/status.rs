//! [`Status`]: the lifecycle state of an outbox entry.

use serde::{Deserialize, Serialize};

use super::OutboxError;

/// Status of an entry. Stored (and serialized, and parsed by `FromStr`) as its
/// snake_case name: `pending`, `in_flight`, `delivered`, `dead`, `expired`,
/// `unknown` — these exact strings are on disk (`entries.status`), so a
/// variant's name never changes. `Display` prints the same name (and honours
/// width/padding).
///
/// Ordered in lifecycle order (the declaration order), which is also the
/// order of [`super::OutboxStats::by_status`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = OutboxError,
    parse_err_fn = unknown_status
)]
#[non_exhaustive]
pub enum Status {
    /// Waiting; due at `next_attempt_at`.
    Pending,
    /// Claimed by a worker (claim token, claimer, lease).
    InFlight,
    /// Delivered: a tombstone (payload dropped, idempotency key kept).
    Delivered,
    /// Dead letter: permanent error or attempts exhausted.
    Dead,
    /// The TTL passed before delivery.
    Expired,
    /// The send may have happened but its outcome is unknown; needs an operator.
    Unknown,
}

fn unknown_status(s: &str) -> OutboxError {
    OutboxError::UnknownStatus { value: s.into() }
}

impl Status {
    /// All statuses, in lifecycle order.
    pub const ALL: &'static [Status] = <Status as strum::VariantArray>::VARIANTS;

    /// The stored name (`pending`, `in_flight`, ...).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Terminal for the worker (only an operator `retry` moves it again).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Delivered | Status::Dead | Status::Expired | Status::Unknown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_disk_are_stable_and_agree_with_serde() {
        let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pending",
                "in_flight",
                "delivered",
                "dead",
                "expired",
                "unknown"
            ]
        );
        for s in Status::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
        }
        assert_eq!(format!("{:<10}|", Status::Dead), "dead      |");
        assert!(matches!(
            "InFlight".parse::<Status>(),
            Err(OutboxError::UnknownStatus { value }) if value == "InFlight"
        ));
    }
}
