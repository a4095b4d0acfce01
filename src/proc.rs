//! Process identity and liveness, read from Linux `/proc`.
//!
//! Used by the lock owner record, the task ledger (task owners) and the outbox
//! (claimers) to decide whether a recorded process is definitely dead. The rules
//! follow openclaw's `isLockOwnerDefinitelyStale` (fs-safe): a pid is dead when
//! `kill(pid, 0)` fails with ESRCH, the process is a zombie, or its start time
//! (field 22 of `/proc/<pid>/stat`, clock ticks since boot) differs from the
//! recorded one (pid recycling). EPERM counts as alive. A record from another host,
//! boot or pid namespace cannot be judged.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Identity of a process, stable for its lifetime and unique across pid reuse on
/// one boot of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22), if known.
    pub start_time: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`, if known.
    pub boot_id: Option<String>,
    /// Host name, if known.
    pub hostname: Option<String>,
    /// Inode of `/proc/<pid>/ns/pid`: the pid namespace, if known.
    pub pid_ns: Option<u64>,
}

impl ProcessIdentity {
    /// The calling process (pid, start time, boot id, host, pid namespace;
    /// read once per process from `/proc`).
    pub fn current() -> Self {
        current().clone()
    }

    /// The process `pid` on this host, as seen now: its start time (if it
    /// exists), this boot's id, this host's name and this process's pid
    /// namespace.
    pub fn of_pid(pid: u32) -> Self {
        let me = current();
        ProcessIdentity {
            pid,
            start_time: start_time_of(pid),
            boot_id: me.boot_id.clone(),
            hostname: me.hostname.clone(),
            pid_ns: me.pid_ns,
        }
    }

    /// Whether this process is running, stopped, definitely dead (gone, a
    /// zombie, or its pid reused: start time differs) or cannot be judged from
    /// here (another host, boot or pid namespace). The rules are fs-safe's
    /// `isLockOwnerDefinitelyStale` (openclaw).
    pub fn liveness(&self) -> Liveness {
        liveness(self)
    }
}

/// What can be said of a recorded process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Liveness {
    /// Alive and runnable (or sleeping).
    Running,
    /// Alive but stopped (state T or t: SIGSTOP, a debugger).
    Stopped,
    /// Definitely dead: no such pid, a zombie, or the pid was reused (start time
    /// differs).
    Dead,
    /// Another host, boot or pid namespace: cannot be judged from here.
    Unknown,
}

impl Liveness {
    /// Short lower-case name (`running`, `stopped`, `dead`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Running => "running",
            Liveness::Stopped => "stopped",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown (another host or pid namespace)",
        }
    }
}

/// Parses `/proc/<pid>/stat`: returns (state char, start time ticks).
fn read_stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    // Fields after comm start at field 3 (state); start time is field 22.
    let start = it.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// Whether process group `pgid` has a member that is not a zombie, judged
/// from `/proc/<pid>/stat` (field 3 state, field 5 process group) of every
/// process; `None` if `/proc` cannot be listed. (`kill(-pgid, 0)` counts
/// zombies, which an orphan stays until its new parent reaps it — never, under
/// an init that does not reap.)
pub(crate) fn group_has_live_member(pgid: u32) -> Option<bool> {
    let rd = std::fs::read_dir("/proc").ok()?;
    for de in rd.flatten() {
        let name = de.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let state = it.next().and_then(|x| x.chars().next());
        let pgrp = it.nth(1).and_then(|x| x.parse::<u32>().ok());
        if pgrp == Some(pgid) && !matches!(state, Some('Z' | 'X' | 'x')) {
            return Some(true);
        }
    }
    Some(false)
}

/// Start time (field 22 of `/proc/<pid>/stat`) of `pid`, if readable.
pub(crate) fn start_time_of(pid: u32) -> Option<u64> {
    read_stat(pid).map(|(_, t)| t)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), cached.
pub(crate) fn boot_id() -> Option<String> {
    static B: OnceLock<Option<String>> = OnceLock::new();
    B.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    })
    .clone()
}

/// This host's name, cached.
pub(crate) fn hostname() -> Option<String> {
    static H: OnceLock<Option<String>> = OnceLock::new();
    H.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|s| s.into_string().ok())
    })
    .clone()
}

fn pid_ns_of(pid: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// The calling process's identity, cached (pid, start time, boot id, host, pid ns).
pub(crate) fn current() -> &'static ProcessIdentity {
    static C: OnceLock<ProcessIdentity> = OnceLock::new();
    C.get_or_init(|| ProcessIdentity {
        pid: std::process::id(),
        start_time: start_time_of(std::process::id()),
        boot_id: boot_id(),
        hostname: hostname(),
        pid_ns: pid_ns_of("self"),
    })
}

/// The calling process's command line (arguments joined by spaces, at most 200
/// characters), cached.
pub(crate) fn command_line() -> &'static str {
    static C: OnceLock<String> = OnceLock::new();
    C.get_or_init(|| {
        let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let mut s: String = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    })
}

/// Judges a recorded process (see the module docs for the rules).
pub(crate) fn liveness(id: &ProcessIdentity) -> Liveness {
    let me = current();
    if let (Some(a), Some(b)) = (&id.hostname, &me.hostname) {
        if a != b {
            return Liveness::Unknown;
        }
    }
    if let (Some(a), Some(b)) = (&id.boot_id, &me.boot_id) {
        if a != b {
            return Liveness::Unknown;
        }
    }
    if let (Some(a), Some(b)) = (id.pid_ns, me.pid_ns) {
        if a != b {
            return Liveness::Unknown;
        }
    }
    pid_liveness(id.pid, id.start_time)
}

/// Judges a pid on this host and namespace, with an optional recorded start time.
pub(crate) fn pid_liveness(pid: u32, start_time: Option<u64>) -> Liveness {
    use nix::errno::Errno;
    if pid == 0 || pid > i32::MAX as u32 {
        return Liveness::Dead;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Err(Errno::ESRCH) => return Liveness::Dead,
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return Liveness::Unknown,
    }
    match read_stat(pid) {
        None => Liveness::Dead, // vanished between kill() and the read
        Some((state, started)) => {
            let zombie = matches!(state, 'Z' | 'X' | 'x');
            if zombie || start_time.is_some_and(|t| t != started) {
                Liveness::Dead
            } else if state == 'T' || state == 't' {
                Liveness::Stopped
            } else {
                Liveness::Running
            }
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` random bytes as lower-case hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for _ in 0..n {
        s.push_str(&format!("{:02x}", fastrand::u8(..)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_running_and_has_identity() {
        let me = current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time.is_some());
        assert_eq!(liveness(me), Liveness::Running);
    }

    #[test]
    fn wrong_start_time_is_dead() {
        let me = current();
        let mut other = me.clone();
        other.start_time = Some(me.start_time.unwrap() + 1);
        assert_eq!(liveness(&other), Liveness::Dead);
    }

    #[test]
    fn reaped_child_is_dead_and_other_host_unknown() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(pid_liveness(pid, None), Liveness::Dead);
        let mut other = current().clone();
        other.hostname = Some("elsewhere.invalid".into());
        assert_eq!(liveness(&other), Liveness::Unknown);
    }
}
