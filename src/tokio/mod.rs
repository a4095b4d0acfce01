//! Async (tokio) handles on lockstore's stores (feature `tokio`), the way
//! `tokio::fs` mirrors `std::fs`: the same methods, argument types and errors
//! as the sync handles, as `async fn`s; no runtime worker thread ever blocks on
//! SQLite or on a lock.
//!
//! - [`TaskRegistry`] (with feature `tasks`): an `Arc` of the sync
//!   [`crate::tasks::TaskRegistry`]; each call runs on tokio's blocking pool.
//! - [`Outbox`] (with feature `outbox`): one connection on a dedicated thread,
//!   driven by a command channel.
//!
//! See docs/tasks.md and docs/outbox.md, section "Async handles".

#[cfg(feature = "tasks")]
mod tasks;
#[cfg(feature = "tasks")]
pub use tasks::TaskRegistry;

#[cfg(feature = "outbox")]
mod outbox;
#[cfg(feature = "outbox")]
pub use outbox::Outbox;
