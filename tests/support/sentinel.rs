//! A `sentinel run --output json` child process whose intervals the test reads.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, channel},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use sentinel::model::Interval;

pub const BIN: &str = env!("CARGO_BIN_EXE_sentinel");

/// `sentinel` as user nobody (uid/gid 65534) with no capabilities, through `setpriv`; the
/// caller adds the subcommand and its arguments.
pub fn as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        BIN,
    ]);
    cmd
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub struct SentinelRun {
    child: Option<Child>,
    lines: Receiver<Interval>,
    pub intervals: Vec<Interval>,
    stderr: Option<JoinHandle<String>>,
    /// The status socket's directory (removed on drop).
    pub runtime_dir: std::path::PathBuf,
}

pub struct Finished {
    pub status: ExitStatus,
    pub intervals: Vec<Interval>,
    pub stderr: String,
    /// Time from SIGTERM to exit.
    pub exit_time: Duration,
}

impl SentinelRun {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Tests never write the host's audit log.
        let audit = std::env::temp_dir().join(format!(
            "sentinel-test-audit-{}-{n}.jsonl",
            std::process::id(),
        ));
        // Tests run daemons side by side: each gets its own status socket (and instance lock)
        // and an ephemeral metrics port, unless the test chooses them.
        let runtime_dir = std::env::temp_dir().join(format!("snt-run-{}-{n}", std::process::id()));
        let socket = runtime_dir.join("sentinel.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("run").args(["--output", "json"]);
        if !args.contains(&"--audit-log") {
            cmd.arg("--audit-log").arg(&audit);
        }
        if !args.contains(&"--status-socket") {
            cmd.arg("--status-socket").arg(&socket);
        }
        if !args.contains(&"--metrics-addr") && !args.contains(&"--no-metrics") {
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .env("SENTINEL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sentinel");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let iv: Interval = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("sentinel printed a line that is not an Interval ({e}): {line}")
                });
                if tx.send(iv).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            child: Some(child),
            lines,
            intervals: Vec::new(),
            stderr: Some(stderr),
            runtime_dir,
        }
    }

    /// Waits for the next interval (the programs are attached once the first one arrives).
    pub fn next_interval(&mut self, timeout: Duration) -> Interval {
        match self.lines.recv_timeout(timeout) {
            Ok(iv) => {
                self.intervals.push(iv.clone());
                iv
            }
            Err(_) => {
                let finished = self.stop();
                panic!(
                    "no interval within {timeout:?}; sentinel exited {:?}; stderr:\n{}",
                    finished.status, finished.stderr
                );
            }
        }
    }

    /// Takes the intervals already printed and not read yet, without waiting: what follows
    /// ended after this call.
    pub fn drain_pending(&mut self) -> Vec<Interval> {
        let pending: Vec<Interval> = self.lines.try_iter().collect();
        self.intervals.extend(pending.iter().cloned());
        pending
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, then collects every interval printed until exit.
    pub fn stop(&mut self) -> Finished {
        let mut child = self.child.take().expect("running");
        let sent = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let exit_time = sent.elapsed();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let mut intervals = std::mem::take(&mut self.intervals);
        intervals.extend(self.lines.iter());
        Finished {
            status,
            intervals,
            stderr,
            exit_time,
        }
    }
}

impl Drop for SentinelRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// Sum of one counter over intervals (a disabled counter sums as 0).
pub fn sum_counter(intervals: &[Interval], name: &str) -> u64 {
    intervals
        .iter()
        .map(|iv| iv.counters.get(name).copied().flatten().unwrap_or(0))
        .sum()
}
