//! The delivery outbox (feature `outbox`): a SQLite queue of outbound messages that delivers every
//! message at least once, never blindly twice, expires what is too old and keeps
//! dead letters listable, retryable and prunable.
//!
//! With feature `postgres` the same [`Outbox`] can live in a shared
//! PostgreSQL database instead ([`Outbox::connect`]; private module `pg.rs`):
//! same states and compare-and-set transitions, plus fencing tokens,
//! per-host leases, `LISTEN/NOTIFY` wake-ups and one maintenance leader
//! (docs/postgres.md). What follows describes the SQLite backend.
//!
//! Database: its own file `<state>/outbox/outbox.sqlite`
//! ([`crate::paths::outbox_db`]), not a shared state DB: the delivery worker
//! writes several short transactions per message, and a separate file keeps that
//! write traffic (and its WAL) from contending with the task ledger's writers;
//! it also lets an operator back up, restore or wipe the outbox alone (openclaw
//! deletes all queue rows on restore so a restored state cannot replay sends).
//!
//! Every operation is one `BEGIN IMMEDIATE` transaction ([`crate::sqlite::immediate`])
//! and every transition of a claimed row is a compare-and-set on
//! `(id, status, claim_token)`: a late or stale worker gets [`Outcome::Stale`]
//! (the row's current status, unchanged), never an error and never a move of a
//! terminal row (the review defect of openclaw PR #29998, where a late `fail`
//! resurrected a delivered row). Times are passed in (`now: SystemTime`), so
//! tests control the clock, and stored as integer milliseconds since the Unix
//! epoch (which is also what [`Entry`]'s `*_at` fields hold); spans (TTL,
//! lease, backoff, retention) are [`std::time::Duration`]s, kept with
//! millisecond precision.
//!
//! States (see docs/outbox.md for the diagram): `pending` → `in_flight` →
//! `delivered` (tombstone) | `pending` (retry with backoff) | `dead` |
//! `unknown`; `pending` → `expired` (TTL). Backoff and permanent-error patterns
//! follow openclaw's delivery queue (openclaw-stores.md §6.2).

//!
//! Layout of this module (one concept per file): [`OutboxError`] (error.rs),
//! [`Status`] (status.rs), [`Entry`], [`Outcome`], [`Enqueued`] (entry.rs),
//! [`OutboxOptions`] (options.rs), [`RetryPolicy`] and the permanent-error
//! patterns (policy.rs), [`Outbox`] open and reads (store.rs),
//! [`Outbox::enqueue`] (enqueue.rs), claim and the compare-and-set transitions
//! (transitions.rs), [`Outbox::rescue`] (rescue.rs), expiry and
//! [`Outbox::prune`] (retention.rs), [`Outbox::stats`] (stats.rs), the schema
//! and row codec (schema.rs, private); the delivery [`worker`], the shipped
//! [`adapters`] and the openclaw [`legacy`] file-queue import.
//!
//! Needs feature `outbox`.

pub mod adapters;
pub mod legacy;
pub mod worker;

#[cfg(feature = "tokio")]
mod async_handle;
mod enqueue;
mod entry;
mod error;
#[cfg(feature = "postgres")]
mod holders;
mod options;
#[cfg(feature = "postgres")]
mod pg;
mod policy;
mod rescue;
mod retention;
mod schema;
mod stats;
mod status;
mod store;
mod transitions;
#[cfg(feature = "tokio")]
mod worker_async;
#[cfg(feature = "tokio")]
#[doc(hidden)] // public as `lockstore::tokio::Outbox`
pub use async_handle::Outbox as AsyncOutbox;

pub use enqueue::NewMessage;
pub use entry::{Enqueued, Entry, Outcome};
pub use error::{OutboxError, Result};
#[cfg(feature = "postgres")]
pub use holders::{lease_holders, LeaseHolder};
pub use options::OutboxOptions;
pub use policy::RetryPolicy;
pub use rescue::RescueReport;
pub use retention::{PruneReport, Retention};
pub use stats::OutboxStats;
pub use status::Status;
pub use store::Outbox;
pub use transitions::Failure;

pub(crate) use crate::failpoint::hit as failpoint;
