//! A `sentinel run --output json` child process whose intervals the test reads.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
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

/// One plain HTTP/1.0 GET; returns (status code, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// `sentinel status --json` of the daemon behind a status socket.
pub fn status_json(socket: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--status-socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sentinel status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// The metrics address a daemon reports (a test daemon's port is ephemeral).
pub fn metrics_addr_of(socket: &Path) -> String {
    let snap = status_json(socket);
    snap["metrics_addr"]
        .as_str()
        .expect("metrics_addr in status")
        .to_string()
}

/// A gauge's or counter's value in a `/metrics` text (a metric without labels).
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The daemon's memory, as the memory tests bound it: the resident size counts pages,
/// including freed memory the allocator keeps for reuse; the heap's live allocations are what
/// a leak in the heap grows, to the byte.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `sentinel_heap_allocated_bytes`, in KiB: the heap's live allocations by the allocator's
    /// own count.
    pub heap_kib: u64,
    /// VmRSS.
    pub rss_kib: u64,
}

impl Memory {
    /// Each figure's larger value.
    pub fn max(self, other: Memory) -> Memory {
        Memory {
            heap_kib: self.heap_kib.max(other.heap_kib),
            rss_kib: self.rss_kib.max(other.rss_kib),
        }
    }
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

    /// The daemon's status socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("sentinel.sock")
    }

    pub fn status_json(&self) -> serde_json::Value {
        status_json(&self.socket())
    }

    /// The daemon's memory now (it must serve /metrics: not started with `--no-metrics`).
    pub fn memory(&self) -> Memory {
        let addr = metrics_addr_of(&self.socket());
        let (code, metrics) =
            http_get(&addr, "/metrics", Duration::from_secs(10)).expect("scrape /metrics");
        assert_eq!(code, 200, "{metrics}");
        let heap = metric_value(&metrics, "sentinel_heap_allocated_bytes")
            .expect("sentinel_heap_allocated_bytes in /metrics");
        Memory {
            heap_kib: heap as u64 / 1024,
            rss_kib: super::rss_kib(self.pid()),
        }
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
