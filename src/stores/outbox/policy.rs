//! The retry policy: backoff table, retry budget, jitter, and the error texts
//! that are permanent whatever the adapter says.

use std::time::Duration;

/// Retry policy of [`super::Outbox::fail`]. Default: openclaw's `[5 s, 25 s,
/// 2 min, 10 min]` (the last repeats), at most 5 retries, plus up to 20 %
/// jitter added on top (never earlier than the table).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before retry n (index n − 1); the last value repeats. Empty: retry
    /// at once. Stored with millisecond precision.
    pub backoff: Vec<Duration>,
    /// Retries allowed after the first attempt; the failure after the last one
    /// makes the entry dead (`attempts_exhausted`).
    pub max_retries: u32,
    /// Jitter factor: a uniform extra in `[0, delay × jitter]` (negative = 0).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: [5, 25, 120, 600].map(Duration::from_secs).to_vec(),
            max_retries: 5,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Base delay (before jitter) of retry `n` (1-based), openclaw's
    /// `computeBackoffMs`: zero for n = 0 or an empty table, else the table at
    /// n − 1 clamped to the last entry.
    pub fn base_delay(&self, n: u32) -> Duration {
        match (n, self.backoff.last()) {
            (0, _) | (_, None) => Duration::ZERO,
            (n, Some(last)) => self.backoff.get(n as usize - 1).copied().unwrap_or(*last),
        }
    }

    /// [`Self::base_delay`] in ms for a stored (i64) attempt count.
    pub(crate) fn base_delay_ms(&self, n: i64) -> i64 {
        let n = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        duration_ms(self.base_delay(n))
    }
}

/// Whole milliseconds of `d`, saturating at `i64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Permanent-error patterns of openclaw's delivery queue (openclaw-stores.md §6.2),
/// matched case-insensitively by [`is_permanent_error`]. `*` stands for "any
/// text" (the regexes' `.*`).
pub(crate) const PERMANENT_PATTERNS: &[&str] = &[
    "no conversation reference found",
    "chat not found",
    "user not found",
    "bot was blocked by the user",
    "forbidden: bot was kicked",
    "chat_id is empty",
    "recipient is not a valid",
    "outbound not configured for channel",
    "ambiguous discord recipient",
    "bot*not*member",
    "ambiguous*recipient",
    "user*not in room",
];

/// True if `error` matches one of [`PERMANENT_PATTERNS`] (case-insensitive):
/// [`super::Outbox::fail`] then makes the entry dead at once.
pub(crate) fn is_permanent_error(error: &str) -> bool {
    let e = error.to_lowercase();
    PERMANENT_PATTERNS.iter().any(|p| glob_contains(&e, p))
}

/// `pattern` parts separated by `*` occur in order in `s`.
fn glob_contains(s: &str, pattern: &str) -> bool {
    let mut rest = s;
    for part in pattern.split('*') {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_patterns_are_case_insensitive_globs() {
        assert!(is_permanent_error("400: Bad Request: CHAT NOT FOUND"));
        assert!(is_permanent_error("the Bot is not a Member of the channel"));
        assert!(is_permanent_error("User @x:y is not in room !r"));
        assert!(!is_permanent_error("ETIMEDOUT connecting"));
        assert!(!is_permanent_error("member bot"));
    }

    #[test]
    fn backoff_table_matches_openclaw() {
        let p = RetryPolicy::default();
        let v: Vec<i64> = (0..=6).map(|n| p.base_delay_ms(n)).collect();
        assert_eq!(v, [0, 5_000, 25_000, 120_000, 600_000, 600_000, 600_000]);
        assert_eq!(p.base_delay(2), Duration::from_secs(25));
        assert_eq!(p.base_delay_ms(-1), 0);
    }
}
