//! Supervision of the daemon's components: each one that fails is restarted
//! after a capped exponential backoff with jitter, and reopens its stores on
//! restart; one on a corrupt or too-new store stays `failed` (retried slowly)
//! while the others keep running. See docs/daemon.md.

use std::time::{Duration, Instant};

use super::report::{ComponentReport, Health};
use crate::cli::{exit, now_ms, CliError};

/// First restart delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Largest restart delay after a transient failure (before jitter). Bounds how
/// long after the cause is gone (space freed, WAL back) a component resumes.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Retry period of a component whose store is corrupt or too new: the store
/// is left untouched; an operator who repairs or replaces it need not restart
/// the daemon.
pub const CORRUPT_RETRY: Duration = Duration::from_secs(60);
/// A restarted long-running component (delivery) that has run this long
/// without failing is healthy again: its backoff starts over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The restart delay after `failures` failures in a row (1 = first):
/// `d = min(cap, base · 2^(failures-1))`, then "equal jitter" — uniform in
/// `[d/2, d]` — so restarts of components failing together spread out while
/// the delay never exceeds the cap.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let d = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP);
    let half = d / 2;
    half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
}

/// Whether `e` means the store itself is unusable (corrupt, not SQLite, too
/// new): restarting cannot help until an operator acts.
pub fn is_corrupt(e: &CliError) -> bool {
    e.code == exit::CORRUPT
}

/// One supervised component's state.
#[derive(Debug)]
pub struct Component {
    name: &'static str,
    health: Health,
    since_ms: i64,
    started: Option<Instant>,
    restarts: u64,
    failures: u32,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
    next_attempt: Option<Instant>,
    next_attempt_at_ms: Option<i64>,
}

impl Component {
    /// A component not started yet.
    pub fn new(name: &'static str) -> Self {
        Component {
            name,
            health: Health::Starting,
            since_ms: now_ms(),
            started: None,
            restarts: 0,
            failures: 0,
            last_error: None,
            last_error_at_ms: None,
            next_attempt: None,
            next_attempt_at_ms: None,
        }
    }

    /// Its health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Whether it may (re)start now: not waiting out a backoff.
    pub fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }

    fn set(&mut self, h: Health) {
        if self.health != h {
            self.health = h;
            self.since_ms = now_ms();
        }
    }

    /// It is being (re)started: counts a restart after a failure, logs it.
    pub fn starting(&mut self) {
        match self.health {
            Health::Starting => {
                tracing::info!(component = self.name, "component started");
            }
            Health::Restarting | Health::Failed => {
                self.restarts += 1;
                tracing::info!(
                    component = self.name,
                    restarts = self.restarts,
                    "component restarted"
                );
            }
            Health::Running | Health::Stopped => {}
        }
        self.started = Some(Instant::now());
        self.next_attempt = None;
        self.next_attempt_at_ms = None;
        self.set(Health::Running);
    }

    /// One unit of work succeeded (a tick pass): the backoff starts over.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A long-running component is still running: after [`HEALTHY_AFTER`]
    /// without failure its backoff starts over.
    pub fn still_running(&mut self) {
        if self.failures > 0 && self.started.is_some_and(|t| t.elapsed() >= HEALTHY_AFTER) {
            self.failures = 0;
        }
    }

    /// It failed with `e`: `restarting` after [`backoff`], or `failed` (retry
    /// after [`CORRUPT_RETRY`]) if the store is corrupt. Logs the failure.
    pub fn failed(&mut self, e: &CliError) {
        self.failures = self.failures.saturating_add(1);
        let corrupt = is_corrupt(e);
        let delay = if corrupt {
            CORRUPT_RETRY
        } else {
            backoff(self.failures)
        };
        let now = now_ms();
        self.last_error = Some(e.msg.clone());
        self.last_error_at_ms = Some(now);
        self.next_attempt = Some(Instant::now() + delay);
        self.next_attempt_at_ms = Some(now + delay.as_millis() as i64);
        self.started = None;
        self.set(if corrupt {
            Health::Failed
        } else {
            Health::Restarting
        });
        tracing::error!(
            component = self.name,
            health = self.health.as_str(),
            failures = self.failures,
            retry_in_ms = delay.as_millis() as u64,
            error = %e.msg,
            "component failed"
        );
    }

    /// The daemon stopped.
    pub fn stopped(&mut self) {
        self.next_attempt_at_ms = None;
        self.set(Health::Stopped);
    }

    /// Its line of the report.
    pub fn report(&self) -> ComponentReport {
        ComponentReport {
            name: self.name.to_string(),
            health: self.health,
            since_ms: self.since_ms,
            restarts: self.restarts,
            consecutive_failures: self.failures,
            last_error: self.last_error.clone(),
            last_error_at_ms: self.last_error_at_ms,
            next_attempt_at_ms: self.next_attempt_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for _ in 0..200 {
            let b1 = backoff(1);
            assert!(b1 >= BACKOFF_BASE / 2 && b1 <= BACKOFF_BASE, "{b1:?}");
            let b3 = backoff(3);
            assert!(b3 >= BACKOFF_BASE * 2 && b3 <= BACKOFF_BASE * 4, "{b3:?}");
            for n in [6, 10, 40, u32::MAX] {
                let b = backoff(n);
                assert!(b >= BACKOFF_CAP / 2 && b <= BACKOFF_CAP, "{n}: {b:?}");
            }
        }
        // Jitter: not all the same.
        let v: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(8)).collect();
        assert!(v.len() > 1);
    }

    #[test]
    fn transient_failure_restarts_corrupt_fails() {
        let mut c = Component::new("delivery");
        c.starting();
        assert_eq!(c.health(), Health::Running);
        c.failed(&CliError {
            code: exit::IO,
            msg: "database or disk is full".into(),
        });
        assert_eq!(c.health(), Health::Restarting);
        assert!(!c.due(Instant::now()));
        let r = c.report();
        assert_eq!(r.last_error.as_deref(), Some("database or disk is full"));
        assert!(r.next_attempt_at_ms.unwrap() - r.last_error_at_ms.unwrap() <= 5_000);
        c.starting();
        assert_eq!(c.report().restarts, 1);
        c.failed(&CliError {
            code: exit::CORRUPT,
            msg: "file is not a database".into(),
        });
        assert_eq!(c.health(), Health::Failed);
        let r = c.report();
        assert_eq!(
            r.next_attempt_at_ms.unwrap() - r.last_error_at_ms.unwrap(),
            CORRUPT_RETRY.as_millis() as i64
        );
    }
}
