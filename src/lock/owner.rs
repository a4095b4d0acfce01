//! The owner record written into a held lock file.
//!
//! After acquiring the flock, the holder truncates the lock file and writes one
//! JSON object at offset 0 (no rename: the lock file's inode never changes). On a
//! clean release it rewrites the record with `released: true`. Readers parse it
//! leniently; lock correctness never depends on it — the kernel's flock does. The
//! record exists to say who holds or held the lock (wait messages, timeouts,
//! `lockstore status`) and to detect a holder that died without releasing.

use serde::{Deserialize, Serialize};

use crate::proc::{self, Liveness, ProcessIdentity};

/// The JSON owner record kept in `<store>.lock`. All fields are optional on read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OwnerRecord {
    /// Holder's pid.
    pub pid: u32,
    /// Holder's start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
    pub start_time: Option<u64>,
    /// Holder's boot id.
    pub boot_id: Option<String>,
    /// Holder's host name.
    pub hostname: Option<String>,
    /// Inode of the holder's pid namespace.
    pub pid_ns: Option<u64>,
    /// Holder's uid.
    pub uid: Option<u32>,
    /// Holder's command line (truncated to 200 characters).
    pub cmd: Option<String>,
    /// lockstore version of the holder.
    pub version: Option<String>,
    /// When the lock was acquired (Unix ms).
    pub acquired_at_ms: i64,
    /// Random per-acquisition token (16 hex digits).
    pub token: String,
    /// Increases by one with every acquisition of this lock file.
    pub generation: u64,
    /// True once the holder released the lock cleanly.
    pub released: bool,
    /// When the lock was released (Unix ms), if it was.
    pub released_at_ms: Option<i64>,
}

impl OwnerRecord {
    /// A fresh record for the calling process with the given generation.
    pub fn for_current(generation: u64) -> Self {
        let me = proc::current();
        OwnerRecord {
            pid: me.pid,
            start_time: me.start_time,
            boot_id: me.boot_id.clone(),
            hostname: me.hostname.clone(),
            pid_ns: me.pid_ns,
            uid: Some(nix::unistd::getuid().as_raw()),
            cmd: Some(proc::command_line().to_string()),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            acquired_at_ms: proc::now_ms(),
            token: proc::random_hex(8),
            generation,
            released: false,
            released_at_ms: None,
        }
    }

    /// Lenient parse: `None` for an empty or unparseable file.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let end = bytes
            .iter()
            .rposition(|b| *b == b'}')
            .map(|i| i + 1)
            .unwrap_or(0);
        serde_json::from_slice(&bytes[..end]).ok()
    }

    /// The holder's process identity.
    pub fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
            boot_id: self.boot_id.clone(),
            hostname: self.hostname.clone(),
            pid_ns: self.pid_ns,
        }
    }
}

/// What a waiter knows about the current holder of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderInfo {
    /// The owner record read from the lock file.
    pub record: OwnerRecord,
    /// The holder's state as judged now.
    pub liveness: Liveness,
    /// How long it has held the lock (now − `acquired_at_ms`; zero if the
    /// clock stepped back).
    #[serde(rename = "held_ms", serialize_with = "ser_ms")]
    pub held: std::time::Duration,
}

impl HolderInfo {
    /// Reads and judges the holder from a record.
    pub fn judge(record: OwnerRecord) -> Self {
        let liveness = proc::liveness(&record.identity());
        let held_ms = (proc::now_ms() - record.acquired_at_ms).max(0);
        HolderInfo {
            record,
            liveness,
            held: std::time::Duration::from_millis(held_ms as u64),
        }
    }

    /// One-phrase description: `held by pid N <cmd>, running, for 12 s`, with a
    /// hint when the recorded holder is dead but the lock is still held.
    pub fn describe(&self) -> String {
        let cmd = self.record.cmd.as_deref().unwrap_or("?");
        let state = match self.liveness {
            Liveness::Dead => "dead or restarted (the lock is still held, probably through an inherited file descriptor; see /proc/locks)",
            other => other.as_str(),
        };
        format!(
            "held by pid {} {}, {}, for {} s",
            self.record.pid,
            cmd,
            state,
            self.held.as_secs()
        )
    }
}

/// `held` is written as whole milliseconds (`held_ms` in `lockstore status --json`).
fn ser_ms<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}
