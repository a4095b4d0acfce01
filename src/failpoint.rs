//! Crash-test failpoints: `abort()` at a named point, so the multi-process
//! crash tests can kill a writer exactly there. Compiled only with feature
//! `failpoints` (lockstore's own tests turn it on through a dev-dependency);
//! without it [`hit`] is an empty inline function and release builds of the
//! binary have no failpoint at all.
//!
//! `LOCKSTORE_FAILPOINT=<name>` chooses the point (read once per process);
//! `LOCKSTORE_FAILPOINT_SKIP=N` lets the first N hits of it pass.
//!
//! [`fails`] is the other kind: an injected *error* instead of an abort, for
//! transient faults a long-running process must survive (a full disk). It is
//! active while `LOCKSTORE_FAILPOINT` names it and the file named by
//! `LOCKSTORE_FAILPOINT_WHILE` exists (always, when that variable is unset), so
//! a test "frees the space" by deleting that file.

/// Aborts the process if `name` is the chosen failpoint (feature
/// `failpoints`); otherwise does nothing.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static FP: OnceLock<(Option<String>, u64)> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let (fp, skip) = FP.get_or_init(|| {
        (
            std::env::var("LOCKSTORE_FAILPOINT").ok(),
            std::env::var("LOCKSTORE_FAILPOINT_SKIP")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        )
    });
    if fp.as_deref() == Some(name) && HITS.fetch_add(1, Ordering::SeqCst) >= *skip {
        eprintln!("lockstore: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Without feature `failpoints`: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}

/// Whether the injected-error failpoint `name` fails now (feature
/// `failpoints`): `LOCKSTORE_FAILPOINT` names it and the file named by
/// `LOCKSTORE_FAILPOINT_WHILE` exists (checked on every call; always when the
/// variable is unset).
#[cfg(feature = "failpoints")]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn fails(name: &str) -> bool {
    use std::sync::OnceLock;
    static FP: OnceLock<(Option<String>, Option<std::path::PathBuf>)> = OnceLock::new();
    let (fp, while_file) = FP.get_or_init(|| {
        (
            std::env::var("LOCKSTORE_FAILPOINT").ok(),
            std::env::var_os("LOCKSTORE_FAILPOINT_WHILE").map(Into::into),
        )
    });
    fp.as_deref() == Some(name) && while_file.as_ref().is_none_or(|f| f.exists())
}

/// Without feature `failpoints`: never.
#[cfg(not(feature = "failpoints"))]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
#[inline(always)]
pub(crate) fn fails(_name: &str) -> bool {
    false
}
