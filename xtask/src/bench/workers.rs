//! The fixed workloads, run as child processes of this binary pinned to one CPU, so one run
//! is a fixed amount of work whose wall time the workload itself reports.

use std::{
    io::{Read, Write},
    net::UdpSocket,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Hidden worker subcommands (`cargo xtask bench worker ...`).
#[derive(clap::Subcommand)]
pub enum Worker {
    /// Pipe ping-pong with a child process: every round trip is two context switches.
    #[command(hide = true)]
    Pingpong { round_trips: u64 },
    /// The other end of `pingpong`: echoes stdin to stdout one byte at a time.
    #[command(hide = true)]
    Pong,
    /// Small UDP datagrams over loopback, sent and received in batches by one thread.
    #[command(hide = true)]
    Udp { datagrams: u64 },
    /// fork + exec + wait of /bin/true.
    #[command(hide = true)]
    Forkexec { count: u64 },
    /// `count` child processes, each in its own mount namespace, each waking every 300 ms;
    /// they die with this process.
    #[command(hide = true)]
    Sleepers { count: u32 },
}

/// The CPU the workloads are pinned to (the last one, the first is where IRQs tend to go).
pub fn bench_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1
}

pub fn run(worker: Worker) -> Result<()> {
    let cpu0 = cpu_ns();
    let elapsed = match worker {
        Worker::Pingpong { round_trips } => pingpong(round_trips)?,
        Worker::Pong => return pong(),
        Worker::Udp { datagrams } => udp(datagrams)?,
        Worker::Forkexec { count } => forkexec(count)?,
        Worker::Sleepers { count } => return sleepers(count),
    };
    // Includes the start-up before the clock runs (a few ms at most, the same for every run).
    let cpu = cpu_ns().saturating_sub(cpu0);
    println!("elapsed_ns={}", elapsed.as_nanos());
    println!("cpu_ns={cpu}");
    Ok(())
}

fn sleepers(count: u32) -> Result<()> {
    for i in 0..count {
        // SAFETY: this process is single-threaded here; the child only makes system calls.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: plain system calls in the child.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    libc::_exit(1);
                }
                // 270-330 ms, so the wake-ups spread over the interval.
                let period_ns = 270_000_000 + (i as i64 * 7_919_000) % 60_000_000;
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: period_ns,
                };
                loop {
                    libc::nanosleep(&ts, std::ptr::null_mut());
                }
            }
        }
    }
    loop {
        // SAFETY: waits for any child; the sleepers never exit on their own.
        if unsafe { libc::wait(std::ptr::null_mut()) } < 0 {
            return Ok(());
        }
    }
}

/// User + system CPU time of this process and its waited-for children (the pong process, the
/// /bin/true runs): the work done, without the time spent waiting for a CPU held by others.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            for tv in [ru.ru_utime, ru.ru_stime] {
                total += tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
            }
        }
    }
    total
}

fn pingpong(round_trips: u64) -> Result<Duration> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["bench", "pong"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the pong process")?;
    let mut to = child.stdin.take().context("pong stdin")?;
    let mut from = child.stdout.take().context("pong stdout")?;
    let mut byte = [0u8; 1];
    // One warm-up trip, so the child has started before the clock runs.
    to.write_all(&byte)?;
    from.read_exact(&mut byte)?;
    let start = Instant::now();
    for _ in 0..round_trips {
        to.write_all(&byte)?;
        from.read_exact(&mut byte)?;
    }
    let elapsed = start.elapsed();
    drop(to);
    child.wait()?;
    Ok(elapsed)
}

fn pong() -> Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut byte = [0u8; 1];
    while stdin.read(&mut byte)? == 1 {
        stdout.write_all(&byte)?;
        stdout.flush()?;
    }
    Ok(())
}

const UDP_BATCH: u64 = 32;

fn udp(datagrams: u64) -> Result<Duration> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    rx.set_read_timeout(Some(Duration::from_secs(5)))?;
    let payload = [0x5au8; 64];
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut sent = 0;
    while sent < datagrams {
        // A batch fits the default receive buffer, so no datagram is dropped.
        let batch = UDP_BATCH.min(datagrams - sent);
        for _ in 0..batch {
            tx.send(&payload)?;
        }
        for _ in 0..batch {
            rx.recv(&mut buf).context("a datagram was lost")?;
        }
        sent += batch;
    }
    Ok(start.elapsed())
}

fn forkexec(count: u64) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        let status = Command::new("/bin/true").status()?;
        if !status.success() {
            bail!("/bin/true failed");
        }
    }
    Ok(start.elapsed())
}

/// The three storms and their fixed sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    PingPong,
    Udp,
    ForkExec,
}

pub const WORKLOADS: [Workload; 3] = [Workload::PingPong, Workload::Udp, Workload::ForkExec];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::PingPong => "ctx-switch (pipe ping-pong)",
            Workload::Udp => "UDP loopback (netns)",
            Workload::ForkExec => "fork/exec",
        }
    }

    pub fn size(self, smoke: bool) -> u64 {
        let full = match self {
            Workload::PingPong => 200_000,
            Workload::Udp => 200_000,
            Workload::ForkExec => 2_000,
        };
        if smoke { full / 100 } else { full }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::PingPong => "round trips",
            Workload::Udp => "datagrams",
            Workload::ForkExec => "fork+exec",
        }
    }

    /// Runs the workload once; its own wall time and CPU time.
    pub fn run(self, ctx: &super::Ctx) -> Result<Timing> {
        let cpu = bench_cpu().to_string();
        let n = self.size(ctx.smoke).to_string();
        let mut cmd = match self {
            Workload::Udp => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ctx.netns.name, "taskset", "-c", &cpu]);
                c.arg(&ctx.exe).args(["bench", "udp", &n]);
                c
            }
            _ => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu]).arg(&ctx.exe).arg("bench");
                c.arg(if self == Workload::PingPong {
                    "pingpong"
                } else {
                    "forkexec"
                })
                .arg(&n);
                c
            }
        };
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running the {} workload", self.name()))?;
        if !out.status.success() {
            bail!("the {} workload failed ({})", self.name(), out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|ns| ns as f64 / 1e9)
                .with_context(|| format!("the {} workload printed no {name}: {text}", self.name()))
        };
        Ok(Timing {
            wall: field("elapsed_ns=")?,
            cpu: field("cpu_ns=")?,
        })
    }
}

/// Seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub wall: f64,
    pub cpu: f64,
}

/// A network namespace of the bench's own, with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create() -> Result<Self> {
        let name = format!("snt-bench-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()?
            .success();
        if !ok {
            bail!("cannot create network namespace {name}");
        }
        let ns = Netns { name };
        let ok = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()?
            .success();
        if !ok {
            bail!("cannot bring up loopback in {}", ns.name);
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
