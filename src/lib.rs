//! lockstore: crash-safe, lost-update-free state files for local-first daemons and
//! their CLIs.
//!
//! Layers, bottom up (a lower layer never imports an upper one):
//! * [`proc`] — process identity and liveness (`/proc`).
//! * [`lock`] — the cross-process lock: `flock` on `<store>.lock` with an owner
//!   record, backoff until a deadline, stale-holder reporting and reclaim.
//! * [`queue`] — the in-process FIFO writer queue (through the [`sync`] shim, so
//!   loom and shuttle models check the real code).
//! * [`writer`] — composes the two: [`writer::run_exclusive`].
//! * [`atomic`] — crash-safe atomic file saves.
//! * [`json`] — JSON documents updated under the writer.
//!
//! See docs/lock-protocol.md for the protocol and failure model.
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

pub mod atomic;
pub mod error;
mod failpoint;
#[cfg(any(loom, shuttle))]
#[doc(hidden)]
pub mod group;
#[cfg(not(any(loom, shuttle)))]
pub(crate) mod group;
pub mod json;
pub mod lock;
pub mod paths;
pub mod proc;
pub mod queue;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod stores;
pub(crate) mod sync;
pub mod timefmt;
pub mod writer;

pub use atomic::Durability;
pub use error::{Error, Result};
pub use json::{JsonOptions, JsonStore};
pub use lock::LockOptions;
pub use writer::{run_exclusive, Exclusive, Writer};

/// The rusqlite version lockstore is built with, so a user shares one SQLite
/// with it (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use rusqlite;
