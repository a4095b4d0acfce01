//! The stores of an agent gateway, built only on the core layers.

pub mod outbox;
