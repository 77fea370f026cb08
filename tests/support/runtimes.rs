//! Runtime-side helpers for the container tests: `sentinel top` captured in tmux.

use std::{
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not ready after {timeout:?}"))
}

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `sentinel top` in a tmux pane of 160x50, captured until `done(screen)` or 30 s; `q` quits
/// it. Returns the last screen.
pub fn top_screen(bin: &str, socket: &Path, done: impl Fn(&str) -> bool) -> String {
    let session = format!("snt-top-{}-{}", std::process::id(), rand_suffix());
    let cmd = format!(
        "{bin} top --refresh 500ms --status-socket {}",
        socket.display()
    );
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "50",
            &cmd,
        ])
        .env("TERM", "xterm-256color")
        .status()
        .unwrap()
        .success();
    assert!(started, "tmux new-session");
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut screen = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(700));
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap();
        screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&screen) {
            break;
        }
    }
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    screen
}

fn rand_suffix() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// tmux is installed (`cargo xtask test` installs it).
pub fn have_tmux() -> bool {
    super::require(
        "tmux",
        which("tmux"),
        "tmux missing (cargo xtask test installs it)",
    )
}
