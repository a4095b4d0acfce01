//! `lockstore status --watch`: the status as one screen redrawn in place every
//! `--interval`, like `top`: daemon and component health, backlog by store,
//! delivery rate, oldest pending, lock holders, last errors.
//!
//! Terminal control is plain ANSI/VT100 (alternate screen, cursor home, clear to
//! end of line / screen, hide cursor) and termios through `nix` (already a
//! dependency): keys are read unbuffered without echo; ISIG stays on so Ctrl-C
//! is SIGINT. `q`, Ctrl-C (SIGINT) and SIGTERM end it with exit 0; the
//! terminal (termios, cursor, main screen) is restored on every exit path,
//! panics included.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use serde_json::Value;

use super::{clean, collect, component_lines, daemon_line, fmt_counts, human_ms, lock_line};
use crate::cli::daemon::{install_signal_handlers, stop_requested};
use crate::cli::{now_ms, CliResult};

/// Enter: alternate screen, hide cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Leave: show cursor, main screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

/// Restores the terminal when dropped.
struct TermGuard {
    saved: Option<Termios>,
}

impl TermGuard {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(old) = &saved {
            let mut t = old.clone();
            t.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
            t.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
            t.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t);
        }
        let mut out = std::io::stdout();
        let _ = out.write_all(ENTER.as_bytes());
        let _ = out.flush();
        TermGuard { saved }
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
        if let Some(old) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, old);
        }
    }
}

/// Terminal size (columns, rows) of stdout; 120×40 if it is not a terminal.
fn size() -> (usize, usize) {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let r = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        (ws.ws_col as usize, ws.ws_row as usize)
    } else {
        (120, 40)
    }
}

/// Delivered-count samples over the last few seconds, for the rate.
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(5);

    /// Adds a sample; returns deliveries per second over the window, if there
    /// are two samples (a prune that removed delivered rows resets it).
    fn add(&mut self, delivered: u64) -> Option<f64> {
        let now = Instant::now();
        if self.samples.back().is_some_and(|&(_, n)| delivered < n) {
            self.samples.clear();
        }
        self.samples.push_back((now, delivered));
        while self.samples.len() > 2 && now - self.samples[1].0 >= Self::WINDOW {
            self.samples.pop_front();
        }
        let &(t0, n0) = self.samples.front()?;
        let dt = (now - t0).as_secs_f64();
        (self.samples.len() > 1 && dt > 0.0).then(|| (delivered - n0) as f64 / dt)
    }
}

/// The screen's lines for the status document `v`.
pub fn screen(v: &Value, rate: Option<f64>, interval: Duration) -> Vec<String> {
    let now = v["now_ms"].as_i64().unwrap_or(0);
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(now as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_default();
    let d = &v["daemon"];
    let mut l = vec![
        format!(
            "lockstore status · {} · {time} · every {} ms · q quits",
            clean(v["state_dir"].as_str().unwrap_or("?")),
            interval.as_millis()
        ),
        String::new(),
        format!("BACKEND      {}", super::backend_line(v)),
        format!("DAEMON       {}", daemon_line(d)),
    ];
    if let Some(a) = d["adapter"].as_str() {
        l.push(format!("adapter      {}", clean(a)));
    }
    l.push(String::new());
    l.push("COMPONENTS".into());
    let comps = component_lines(d, now, false);
    if comps.is_empty() {
        l.push("  (no report from a running daemon)".into());
    }
    l.extend(comps.into_iter().map(|c| format!("  {c}")));
    l.push(String::new());
    l.push("BACKLOG".into());
    let o = &v["outbox"];
    l.push(match o["error"].as_str() {
        Some(e) => format!("  outbox       error: {}", clean(e)),
        None => format!(
            "  outbox       {} · due now {} · dead letters {}",
            fmt_counts(&o["by_status"]),
            o["due_now"],
            o["dead_letters"]
        ),
    });
    let t = &v["tasks"];
    l.push(match t["error"].as_str() {
        Some(e) => format!("  tasks        error: {}", clean(e)),
        None => format!(
            "  tasks        queued {} · running {} · total {} · audit {} warnings, {} errors",
            t["queued"], t["running"], t["total"], t["audit"]["warnings"], t["audit"]["errors"]
        ),
    });
    let c = &v["commitments"];
    l.push(match c["error"].as_str() {
        Some(e) => format!("  commitments  error: {}", clean(e)),
        None => format!("  commitments  {}", fmt_counts(&c["by_status"])),
    });
    l.push(String::new());
    l.push(format!(
        "DELIVERY     rate {} · delivered {} · oldest pending {}",
        rate.map(|r| format!("{r:.1}/s"))
            .unwrap_or_else(|| "-".into()),
        o["by_status"]["delivered"].as_u64().unwrap_or(0),
        o["oldest_pending_age_ms"]
            .as_i64()
            .map(human_ms)
            .unwrap_or_else(|| "-".into())
    ));
    l.push(String::new());
    l.push("LOCKS".into());
    for (name, h) in v["locks"].as_object().into_iter().flatten() {
        l.push(format!("  {name:<12} {}", lock_line(h)));
    }
    l.push(String::new());
    l.push("LAST ERRORS".into());
    let mut errors: Vec<(i64, String)> = d["components"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, c)| {
            let e = c["last_error"].as_str()?;
            let at = c["last_error_at_ms"].as_i64().unwrap_or(0);
            Some((
                at,
                format!(
                    "  {:<19} {} ago: {}",
                    clean(name),
                    human_ms(now - at),
                    clean(e)
                ),
            ))
        })
        .collect();
    for (store, s) in [
        ("outbox", o),
        ("tasks", t),
        ("commitments", c),
        ("daemon report", &d["report_error"]),
    ] {
        let e = s["error"].as_str().or(s.as_str());
        if let Some(e) = e {
            errors.push((now, format!("  {store:<19} now: {}", clean(e))));
        }
    }
    errors.sort_by_key(|e| std::cmp::Reverse(e.0));
    if errors.is_empty() {
        l.push("  none".into());
    }
    l.extend(errors.into_iter().map(|(_, s)| s));
    l
}

/// Draws `lines` from the top-left corner, each cut to the width, clearing
/// what the previous frame left.
fn draw(out: &mut impl Write, lines: &[String]) -> std::io::Result<()> {
    let (cols, rows) = size();
    let mut buf = String::from("\x1b[H");
    for (i, line) in lines.iter().take(rows).enumerate() {
        let cut: String = line.chars().take(cols.saturating_sub(1)).collect();
        buf.push_str(&cut);
        buf.push_str("\x1b[K");
        if i + 1 < rows.min(lines.len()) {
            buf.push_str("\r\n");
        }
    }
    buf.push_str("\x1b[J");
    out.write_all(buf.as_bytes())?;
    out.flush()
}

/// Waits up to `d` for a key; true if it asks to quit (q, Q, Ctrl-C read as a
/// byte). Returns early on a stop request (SIGINT/SIGTERM).
fn wait_key(d: Duration, stdin_open: &mut bool) -> bool {
    let end = Instant::now() + d;
    while !stop_requested() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if !*stdin_open {
            std::thread::sleep(left.min(Duration::from_millis(20)));
            continue;
        }
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let ms = left.as_millis().min(50) as u16;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {}
            Ok(_) => {
                let mut b = [0u8; 64];
                match nix::unistd::read(fd, &mut b) {
                    Ok(0) => *stdin_open = false,
                    Ok(n) => {
                        if b[..n].iter().any(|&c| c == b'q' || c == b'Q' || c == 3) {
                            return true;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => *stdin_open = false,
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => *stdin_open = false,
        }
    }
    true
}

/// Runs `lockstore status --watch`.
pub fn run(state: &Path, interval: Duration) -> CliResult {
    install_signal_handlers()?;
    let interval = interval.max(Duration::from_millis(50));
    let guard = TermGuard::enter();
    let mut out = std::io::stdout();
    let mut rate = Rate {
        samples: VecDeque::new(),
    };
    let mut stdin_open = true;
    loop {
        let v = collect(state, now_ms());
        let r = rate.add(v["outbox"]["by_status"]["delivered"].as_u64().unwrap_or(0));
        if draw(&mut out, &screen(&v, r, interval)).is_err() {
            // The terminal went away: nothing left to show.
            break;
        }
        if wait_key(interval, &mut stdin_open) {
            break;
        }
    }
    drop(guard);
    Ok(())
}
