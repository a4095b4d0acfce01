//! [`OutboxOptions`]: how [`super::Outbox::open`] configures a connection.

use std::time::Duration;

use super::RetryPolicy;
use crate::sqlite::SqliteOptions;

/// Options of [`super::Outbox::open`]. `Default`: durable commits
/// (`synchronous=FULL`), 5 s busy timeout, 30 s retry deadline, openclaw's
/// retry policy, no default TTL.
#[derive(Debug, Clone, Default)]
pub struct OutboxOptions {
    /// SQLite options (durability, busy timeout, retry deadline).
    pub sqlite: SqliteOptions,
    /// Retry policy of [`super::Outbox::fail`].
    pub retry: RetryPolicy,
    /// Time to live applied when [`super::NewMessage::ttl`] is `None`; `None` =
    /// never expire. Must be at least 1 ms (else enqueue fails with
    /// [`super::OutboxError::InvalidTtl`]); stored with millisecond precision.
    pub default_ttl: Option<Duration>,
}
