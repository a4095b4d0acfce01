//! lockstore: crash-safe, lost-update-free state files for local-first daemons and
//! their CLIs.
//!
//! Every store path gets an in-process FIFO writer queue over a cross-process
//! `flock` on `<store>.lock`; every load → modify → save runs inside both
//! ([`run_exclusive`], [`JsonStore::update`]) and saves atomically (temp file,
//! fsync, rename, directory fsync). A crashed holder's lock is released by the
//! kernel; the next holder reclaims it and removes the dead writer's temp files.
//!
//! The core needs no feature. Optional subsystems (all off by default):
//!
//! | feature | what |
//! | --- | --- |
//! | `sqlite` | `lockstore::Collection` (typed keyed records in one SQLite file, docs/collections.md) and `lockstore::sqlite`: SQLite conventions (WAL verified, busy timeout, `BEGIN IMMEDIATE` with retry, migrations); re-exports `lockstore::rusqlite` so you share one SQLite with lockstore |
//! | `tasks` | `lockstore::tasks`: the task ledger (SQLite) with audit and maintenance |
//! | `outbox` | `lockstore::outbox`: the delivery outbox (SQLite): at least once, never blindly twice |
//! | `commitments` | `lockstore::commitments`: the commitments JSON store |
//! | `sidecar` | `lockstore::lock::sidecar`: the `@openclaw/fs-safe` compatible lock protocol |
//! | `tokio` | `lockstore::tokio`: async `JsonStore` and `run_exclusive` (the FIFO wait is an `.await`; the section runs on the blocking pool), async `TaskRegistry` and `Outbox` handles, `outbox::worker::run_async` |
//! | `failpoints` | crash-test failpoints for lockstore's own tests; never in release builds |
//!
//! See docs/lock-protocol.md for the protocol and failure model, and
//! docs/architecture.md for the layers.
//!
//! ```
//! use lockstore::{JsonOptions, JsonStore};
//!
//! #[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
//! struct State {
//!     reminders: Vec<String>,
//! }
//!
//! # fn main() -> Result<(), lockstore::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("reminders.json");
//! let store: JsonStore<State> =
//!     JsonStore::open(&path, JsonOptions { version: Some(1), ..Default::default() })?;
//! // queue slot → flock → load → modify → fsync'd atomic save → release
//! store.update(|s| s.reminders.push("call back".into()))?;
//! assert_eq!(store.load()?.reminders, vec!["call back".to_string()]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Layers, bottom up; a lower layer never imports an upper one.
// process identity → lock → queue (through the sync shim) → writer → atomic → json → stores.
mod atomic;
pub mod child;
#[cfg(feature = "sqlite")]
mod collection;
mod error;
mod failpoint;
#[cfg(any(loom, shuttle))]
#[doc(hidden)]
pub mod group;
#[cfg(not(any(loom, shuttle)))]
mod group;
mod json;
mod json_doc;
pub mod lock;
pub mod paths;
#[cfg(feature = "postgres")]
pub mod postgres;
mod proc;
#[cfg(any(loom, shuttle))]
#[doc(hidden)]
pub mod queue;
#[cfg(not(any(loom, shuttle)))]
#[allow(dead_code)] // parts are used only by the loom/shuttle models
mod queue;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod stores;
mod sync;
pub mod timefmt;
#[cfg(feature = "tokio")]
pub mod tokio;
mod writer;

pub use atomic::{write_atomic, Durability};
/// A typed keyed collection in one SQLite file (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use collection::Collection;
#[cfg(feature = "sqlite")]
pub use collection::{CollectionOptions, Encoding, ImportReport, Record, Scan, Tx};
pub use error::{Error, Result};
pub use group::GroupCommitStats;
pub use json::{GroupCommit, JsonOptions, JsonStore, Migrate, QuarantineOutcome};
pub use json_doc::{DocumentError, JsonDocument, JsonPointer};
pub use lock::{HolderInfo, LockOptions, LockProtocol, OwnerRecord, WaitCallback};
pub use proc::{Liveness, ProcessIdentity};
pub use writer::{run_exclusive, Exclusive, Writer};

#[cfg(feature = "commitments")]
pub use stores::commitments;
#[cfg(feature = "outbox")]
pub use stores::outbox;
#[cfg(feature = "tasks")]
pub use stores::tasks;

/// The rusqlite lockstore is built with (feature `sqlite`): depend on it
/// through this re-export, or on the same rusqlite version, so one SQLite is
/// linked.
#[cfg(feature = "sqlite")]
pub use rusqlite;

/// Hooks for lockstore's own tests (feature `testing`); not a stable API.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::atomic::temp_files;
    /// The task ledger's schema steps (for bare-SQLite baselines in the bench).
    #[cfg(feature = "tasks")]
    pub use crate::stores::tasks::MIGRATIONS as TASK_MIGRATIONS;
    pub use crate::writer::live_queues;
}
