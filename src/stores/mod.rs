//! The stores of an agent gateway, built only on the core layers.
pub mod commitments;

pub mod tasks;

pub mod outbox;
