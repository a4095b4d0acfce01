//! The commitments store (feature `commitments`): the JSON ledger of follow-ups
//! an agent promised or inferred ("check in after the interview on Friday"),
//! shared by the daemon's heartbeat (which delivers due ones and bumps their
//! attempt counters) and the CLI (which lists, adds, snoozes and dismisses
//! them).
//!
//! Semantics follow openclaw's file-era commitments store (`src/commitments/*`,
//! reference §4): the same file `<state>/commitments/commitments.json`, the same
//! envelope `{"version": 1, "commitments": [...]}`, the same record fields
//! (camelCase) and enum strings (snake_case), the same merge, expiry, due-window
//! and rolling-24 h cap rules. What differs (see docs/commitments.md):
//!
//! * **No lost updates** (openclaw #81145): the store is a
//!   [`crate::JsonStore`] of [`CommitmentsFile`]; every change is one exclusive
//!   section (in-process FIFO + cross-process `flock`): load → expire/modify →
//!   atomic save, group-committed with other threads' queued changes. An
//!   operation that changes nothing (a read with nothing to expire, an unknown
//!   id) answers from a lock-free load of the committed file and writes
//!   nothing.
//! * **Invalid records are never dropped silently**: the incumbent skipped them
//!   and they vanished at the next write. Records are validated by serde (the
//!   attributes on [`Commitment`]); a load that finds an invalid one makes every
//!   operation return [`CommitmentsError::InvalidRecords`] naming the file,
//!   record index, id and field path, and nothing is written — unless
//!   [`CommitmentsConfig::quarantine_invalid`] is set, in which case the bad
//!   records are first saved (fsynced) to `commitments.json.invalid-<unix
//!   ms>.json` and the store goes on without them.
//! * A wrong envelope (not JSON, not an object, missing or unknown version,
//!   `commitments` not an array) is [`crate::Error::Corrupt`], never read as an
//!   empty store and never overwritten.
//! * [`CommitmentsStore::mark_status`] reports which ids changed, which are
//!   unknown and which were already terminal.
//! * [`CommitmentsStore::list_due_session_keys`] is linear (openclaw #105787).
//!
//! Times are passed in as [`std::time::SystemTime`] (`now`, so tests control
//! the clock); records keep them as Unix epoch milliseconds (`i64`), the file's
//! format.

mod error;
mod file;
mod heartbeat;
mod quarantine;
mod record;
mod store;
mod validate;

use std::time::Duration;

use crate::atomic::Durability;
use crate::lock::LockOptions;

pub use error::{CommitmentsError, InputProblem, Result};
pub use file::CommitmentsFile;
pub use record::{
    Candidate, Commitment, DueWindow, InferredItem, Kind, ParseEnumError, Scope, Sensitivity,
    Source, Status,
};
pub use store::{CommitmentsStore, StatusFilter, StatusOutcome, TerminalStatus};
pub use validate::InvalidRecord;

/// Envelope version of `commitments.json` (openclaw's file era).
pub const FILE_VERSION: u64 = 1;
/// Active records expire this long after `dueWindow.latestMs`: 72 h (openclaw
/// `DEFAULT_COMMITMENT_EXPIRE_AFTER_HOURS`).
pub const EXPIRE_AFTER: Duration = Duration::from_secs(72 * 3600);
/// Rolling window of the per-session sent cap (`maxPerDay`): 24 h.
pub const CAP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Default `maxPerDay` (openclaw `commitments.maxPerDay`).
pub const DEFAULT_MAX_PER_DAY: u32 = 3;
/// At most this many commitments are delivered per heartbeat (openclaw
/// `DEFAULT_COMMITMENT_MAX_PER_HEARTBEAT`).
pub const MAX_PER_HEARTBEAT: usize = 3;
/// Default limit of [`CommitmentsStore::list_pending_for_scope`].
pub const DEFAULT_PENDING_LIMIT: usize = 20;

pub(crate) const EXPIRE_AFTER_MS: i64 = EXPIRE_AFTER.as_millis() as i64;
pub(crate) const CAP_WINDOW_MS: i64 = CAP_WINDOW.as_millis() as i64;

/// Store configuration.
#[derive(Debug, Clone)]
pub struct CommitmentsConfig {
    /// `commitments.enabled`: gates the heartbeat helpers
    /// ([`CommitmentsStore::list_due_for_session`],
    /// [`CommitmentsStore::list_due_session_keys`],
    /// [`CommitmentsStore::list_due_for_heartbeat`]). Reads and mutators always
    /// work. Default false (openclaw).
    pub enabled: bool,
    /// `commitments.maxPerDay`: sent commitments per agent+session in any rolling
    /// 24 h. Default 3; 0 is treated as the default (openclaw requires a positive
    /// integer).
    pub max_per_day: u32,
    /// How to wait for the lock.
    pub lock: LockOptions,
    /// fsync policy of saves. Default [`Durability::Full`].
    pub durability: Durability,
    /// Move invalid records to `commitments.json.invalid-<ms>.json` and go on,
    /// instead of failing with [`CommitmentsError::InvalidRecords`]. Default false.
    pub quarantine_invalid: bool,
}

impl Default for CommitmentsConfig {
    fn default() -> Self {
        CommitmentsConfig {
            enabled: false,
            max_per_day: DEFAULT_MAX_PER_DAY,
            lock: LockOptions::default(),
            durability: Durability::Full,
            quarantine_invalid: false,
        }
    }
}
