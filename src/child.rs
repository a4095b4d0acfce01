//! Child processes in their own process group, ended as a group.
//!
//! One mechanism for every command lockstore runs on a user's behalf (`lockstore
//! tasks run` and the outbox's `exec:` adapter): the child is spawned in a new
//! process group (`setpgid(0, 0)` in the child, through
//! [`std::os::unix::process::CommandExt::process_group`]) whose id is the
//! child's pid, so everything it starts (a shell's background jobs, a pipeline)
//! is in that group unless it leaves it on purpose (`setsid`). On a timeout or
//! an interruption the whole group is ended: `SIGTERM` to the group, a grace
//! period for it to exit, then `SIGKILL` to whatever is left — the sequence
//! timeout(1) with `--kill-after` and service managers use. Signalling only the
//! direct child (what `Child::kill` does) leaves its children running, holding
//! the pipes and doing the work the caller believes stopped.
//!
//! The group is not the caller's, so a terminal's Ctrl-C (sent to the
//! foreground group) reaches the caller only; the caller decides (see
//! [`GroupChild::wait`]'s `interrupted`). As with timeout(1) without
//! `--foreground`, a child in its own group that reads from the controlling
//! terminal is stopped by `SIGTTIN`: give it another stdin.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How often [`GroupChild::wait`] and [`GroupChild::terminate`] look at the
/// child, the deadline and the interruption flag.
const TICK: Duration = Duration::from_millis(10);

/// How often [`GroupChild::terminate`] looks whether the group is gone (each
/// look reads `/proc/*/stat`).
const GROUP_TICK: Duration = Duration::from_millis(50);

/// After the final `SIGKILL`, how long [`GroupChild::terminate`] waits for the
/// group's members to be dead (a killed process is gone, or a zombie, once the
/// kernel has run its exit).
const KILL_SETTLE: Duration = Duration::from_secs(1);

/// How a child waited for by [`GroupChild::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The child exited by itself (or died of a signal lockstore did not send);
    /// the rest of its group is left as it is.
    Exited(ExitStatus),
    /// The deadline passed: the group was terminated; the child's final status.
    TimedOut(ExitStatus),
    /// `interrupted` returned a signal number: the group was terminated; the
    /// signal and the child's final status.
    Interrupted {
        /// The signal number `interrupted` returned (e.g. 15 for `SIGTERM`).
        signal: i32,
        /// The child's final status.
        status: ExitStatus,
    },
}

/// A child process leading its own process group (see the module docs).
/// Dropping it before the child was reaped kills the group (`SIGKILL`) and
/// reaps the child, so no group outlives a panic or an early return.
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    status: Option<ExitStatus>,
}

/// Spawns `cmd` as the leader of a new process group (its pgid is its pid).
/// The caller's stdio settings are kept; take pipes with
/// [`GroupChild::child_mut`].
///
/// Errors: the [`Command::spawn`] error (`NotFound`: no such program;
/// `PermissionDenied`: not executable; the raw OS error otherwise, e.g. ENOEXEC).
pub fn spawn_group(cmd: &mut Command) -> io::Result<GroupChild> {
    use std::os::unix::process::CommandExt;
    let child = cmd.process_group(0).spawn()?;
    Ok(GroupChild {
        child,
        status: None,
    })
}

impl GroupChild {
    /// The child's pid (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying [`Child`] (to take its stdin/stdout/stderr pipes).
    /// Do not wait on it directly: use [`GroupChild::wait`].
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `sig` to every process of the group. A group already gone is not
    /// an error.
    pub fn signal_group(&self, sig: Signal) -> io::Result<()> {
        match killpg(self.pgid(), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// True while some process of the group is alive (a zombie does not
    /// count: it has ended, only its parent has not reaped it).
    fn group_alive(&self) -> bool {
        // EPERM: a member changed its credentials (setuid): still there.
        if matches!(killpg(self.pgid(), None), Err(Errno::ESRCH)) {
            return false;
        }
        crate::proc::group_has_live_member(self.child.id()).unwrap_or(true)
    }

    /// Reaps the child if it has exited; its status.
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for the child to exit, checking every 10 ms whether `deadline`
    /// has passed or `interrupted` returns a signal number; in either case the
    /// group is ended with [`GroupChild::terminate`]`(grace)`. When the child
    /// exits by itself the rest of its group (background jobs it left) is not
    /// touched; call [`GroupChild::signal_group`] to end it.
    ///
    /// Errors: `waitpid` or `killpg` failures (not expected for a child we
    /// spawned).
    pub fn wait(
        &mut self,
        deadline: Option<Instant>,
        interrupted: &dyn Fn() -> Option<i32>,
        grace: Duration,
    ) -> io::Result<Ended> {
        loop {
            if let Some(st) = self.try_reap()? {
                return Ok(Ended::Exited(st));
            }
            if let Some(signal) = interrupted() {
                let status = self.terminate(grace)?;
                return Ok(Ended::Interrupted { signal, status });
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Ended::TimedOut(self.terminate(grace)?));
            }
            std::thread::sleep(TICK);
        }
    }

    /// Ends the whole group: `SIGTERM` to the group, then up to `grace` for
    /// the child to exit and the rest of the group to be gone, then `SIGKILL`
    /// to the group (a zero `grace` sends `SIGKILL` at once); reaps the child
    /// and waits up to 1 s for the killed group to disappear. Returns the
    /// child's exit status (its own, if it had already exited).
    ///
    /// Errors: `waitpid` or `killpg` failures.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if !grace.is_zero() {
            self.signal_group(Signal::SIGTERM)?;
            let until = Instant::now() + grace;
            loop {
                // The pgid stays allocated while any member lives, so it
                // cannot name another group once the leader is reaped.
                if self.try_reap()?.is_some() && !self.group_alive() {
                    break;
                }
                if Instant::now() >= until {
                    break;
                }
                std::thread::sleep(GROUP_TICK);
            }
        }
        self.signal_group(Signal::SIGKILL)?;
        let status = match self.status {
            Some(s) => s,
            None => {
                let s = self.child.wait()?;
                self.status = Some(s);
                s
            }
        };
        let until = Instant::now() + KILL_SETTLE;
        while self.group_alive() && Instant::now() < until {
            std::thread::sleep(GROUP_TICK);
        }
        Ok(status)
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.signal_group(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn dead(pid: i32) -> bool {
        crate::proc::pid_liveness(pid as u32, None) == crate::Liveness::Dead
    }

    #[test]
    fn timeout_ends_the_background_jobs_of_the_child() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("gc");
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "sleep 31 & echo $! > {}; exec sleep 32",
                f.display()
            ))
            .stdin(Stdio::null());
        let mut g = spawn_group(&mut c).unwrap();
        let pid = g.id() as i32;
        let t0 = Instant::now();
        let end = g
            .wait(
                Some(Instant::now() + Duration::from_secs(2)),
                &|| None,
                Duration::from_secs(5),
            )
            .unwrap();
        assert!(matches!(end, Ended::TimedOut(_)), "{end:?}");
        assert!(t0.elapsed() < Duration::from_secs(20));
        let gc: i32 = std::fs::read_to_string(&f)
            .expect("sh did not write its job's pid within 2 s (machine overloaded?)")
            .trim()
            .parse()
            .unwrap();
        assert!(dead(pid));
        assert!(dead(gc), "background job {gc} survived the timeout");
    }

    #[test]
    fn interruption_ends_the_group_and_reports_the_signal() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let mut g = spawn_group(&mut c).unwrap();
        let end = g.wait(None, &|| Some(15), Duration::from_secs(5)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        match end {
            Ended::Interrupted { signal, status } => {
                assert_eq!(signal, 15);
                assert_eq!(status.signal(), Some(15));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn exit_is_reported_and_the_group_left_alone() {
        let mut c = Command::new("sh");
        c.args(["-c", "exit 3"]);
        let mut g = spawn_group(&mut c).unwrap();
        match g.wait(None, &|| None, Duration::ZERO).unwrap() {
            Ended::Exited(s) => assert_eq!(s.code(), Some(3)),
            e => panic!("{e:?}"),
        }
    }
}
