//! `lockstore status --watch` in a real terminal (tmux): the first frame, a
//! redraw after the state changes, `q` ending it with the terminal restored;
//! and SIGTERM ending it with the restore sequences written. Waits poll the
//! pane's contents (or the output pipe) with a bounded deadline; no sleeps
//! stand in for synchronization.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockstore")
}

fn lockstore(state: &Path, args: &[&str]) -> Output {
    let o = Command::new(bin())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("LOCKSTORE_FAILPOINT")
        .output()
        .expect("run lockstore");
    assert!(
        o.status.success(),
        "lockstore {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn enqueue(state: &Path, n: usize) {
    for i in 0..n {
        lockstore(
            state,
            &[
                "outbox",
                "enqueue",
                "--channel",
                "c",
                "--target",
                "t",
                "--payload",
                &format!(r#"{{"n":{i}}}"#),
            ],
        );
    }
}

/// A daemon on `state` (its log discarded), stopped on drop.
struct Daemon(Child);

impl Daemon {
    fn start(state: &Path) -> Daemon {
        let c = Command::new(bin())
            .arg("--state-dir")
            .arg(state)
            .args(["daemon", "--tick", "100ms"])
            .env("RUST_LOG", "off")
            .env_remove("LOCKSTORE_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        Daemon(c)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Polls `f` until `Some` or `secs` pass (then panics with `what` and `last()`).
fn poll_until<T>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    last: impl Fn() -> String,
) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}; last seen:\n{}",
            last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmux server of this test alone (own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }
    fn new() -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Tmux {
            socket: format!("lockstore-test-{}-{nanos}", std::process::id()),
        }
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux")
    }
    fn capture(&self) -> String {
        let o = self.run(&["capture-pane", "-p", "-t", "watch"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn watch_redraws_in_place_and_quits_on_q() {
    if !Tmux::available() {
        println!("SKIP: tmux is not installed (needed to test status --watch in a terminal)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let state = state.as_path();
    enqueue(state, 1);
    let _daemon = Daemon::start(state);
    let tmux = Tmux::new();
    let cmd = format!(
        "{} --state-dir {} status --watch --interval 200ms; echo \"watch exited $?\"; read x",
        sh_quote(bin()),
        sh_quote(&state.display().to_string())
    );
    let o = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "watch",
        "-e",
        "RUST_LOG=warn",
        &cmd,
    ]);
    assert!(
        o.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The first frame, with the daemon running and the first delivery done.
    poll_until(
        30,
        "the first frame",
        || {
            let s = tmux.capture();
            (s.contains("lockstore status ·")
                && s.contains("DAEMON       running")
                && s.contains("delivered 1 "))
            .then_some(())
        },
        || tmux.capture(),
    );
    // The state changes: the redraw shows it, in place (one header only).
    enqueue(state, 3);
    let screen = poll_until(
        30,
        "the redraw after 3 more deliveries",
        || {
            let s = tmux.capture();
            s.contains("delivered 4 ").then_some(s)
        },
        || tmux.capture(),
    );
    assert_eq!(screen.matches("lockstore status ·").count(), 1, "{screen}");
    for want in [
        "COMPONENTS",
        "delivery            running",
        "BACKLOG",
        "DELIVERY     rate",
        "LOCKS",
        "daemon       held by pid",
        "LAST ERRORS",
    ] {
        assert!(screen.contains(want), "{want:?} missing from:\n{screen}");
    }
    println!(
        "--- status --watch in tmux (120x40) ---\n{}\n--- end ---",
        screen.trim_end()
    );

    // q ends it; the shell then runs, on the restored main screen.
    let o = tmux.run(&["send-keys", "-t", "watch", "q"]);
    assert!(o.status.success());
    let after = poll_until(
        30,
        "the watch to exit after q",
        || {
            let s = tmux.capture();
            s.contains("watch exited").then_some(s)
        },
        || tmux.capture(),
    );
    assert!(after.contains("watch exited 0"), "{after}");
    assert!(
        !after.contains("lockstore status ·"),
        "the alternate screen was not left:\n{after}"
    );
}

#[test]
fn watch_restores_the_terminal_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let mut child = Command::new(bin())
        .arg("--state-dir")
        .arg(state)
        .args(["status", "--watch", "--interval", "100ms"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut pipe = child.stdout.take().unwrap();
    let sink = out.clone();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut b) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    poll_until(
        30,
        "a frame on stdout",
        || text().contains("LAST ERRORS").then_some(()),
        text,
    );
    assert!(text().starts_with("\x1b[?1049h\x1b[?25l"), "{:?}", text());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    reader.join().unwrap();
    assert!(st.success(), "SIGTERM ends it cleanly: {st}");
    assert!(
        text().ends_with("\x1b[?25h\x1b[?1049l"),
        "terminal not restored: {:?}",
        text().chars().rev().take(40).collect::<String>()
    );
}
