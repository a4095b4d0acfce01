//! The stores of an agent gateway, built only on the core layers.
#[cfg(feature = "commitments")]
pub mod commitments;

#[cfg(feature = "tasks")]
pub mod tasks;

#[cfg(feature = "outbox")]
pub mod outbox;
