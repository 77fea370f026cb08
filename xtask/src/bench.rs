//! `cargo xtask bench`: what sentinel costs, measured the way a skeptical SRE would.
//!
//! Parts (all by default; `--only` picks some):
//! - `kernel`: ns per event of each sentinel program (kernel `bpf_stats`) next to the floor
//!   (one per-CPU array increment) on the same hook and attach kind.
//! - `process-events`: exec and exit against the floor plus the task's container key, each
//!   attached first, over alternating rounds (their per-run figures are noisy in one run).
//! - `slowdown`: fixed workloads timed bare and with each contender attached, interleaved.
//! - `userspace`: the daemon's CPU time and resident memory, idle and under each storm.
//! - `soak`: resident memory at a 10 ms interval over a long run.
//! - `drain`: the daemon's own drain time with its kernel maps filled.
//! - `containers`: the daemon's CPU time with 1000 live containers.
//! - `runq`: run-queue waits against the kernel's run_delay and bpftrace's runqlat.
//!
//! The workloads are this binary's hidden `bench worker ...` subcommands. Nothing here asserts a
//! timing: results are printed and written as a markdown report.

mod contenders;
mod kernel;
mod measure;
mod workers;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::build_ebpf;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    worker: Option<workers::Worker>,
    /// Tiny workloads, one round, short windows, no soak: keeps the harness working (CI).
    #[arg(long)]
    smoke: bool,
    /// Interleaved rounds of the slowdown part.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of the soak at a 10 ms interval, in seconds.
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Run only these parts (repeatable).
    #[arg(long, value_enum)]
    only: Vec<Part>,
    /// Do not build the eBPF object and the release binary first.
    #[arg(long)]
    no_build: bool,
    /// Where to write the markdown report (default target/bench/report.md).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Kernel,
    ProcessEvents,
    Slowdown,
    Userspace,
    Soak,
    Drain,
    Containers,
    Runq,
}

/// What every part needs: paths, sizes, the report being written.
pub struct Ctx {
    root: PathBuf,
    sentinel: PathBuf,
    ebpf_object: PathBuf,
    exe: PathBuf,
    dir: PathBuf,
    netns: workers::Netns,
    smoke: bool,
    report: String,
}

impl Ctx {
    fn section(&mut self, text: &str) {
        print!("{text}");
        self.report.push_str(text);
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(worker) = args.worker {
        return workers::run(worker);
    }
    let root = build_ebpf::workspace_root();
    if !args.no_build {
        build_ebpf::run(&build_ebpf::Options { release: true })?;
        let mut cmd = std::process::Command::new(build_ebpf::cargo());
        cmd.current_dir(&root).args([
            "build",
            "--release",
            "-p",
            "sentinel-user",
            "--bin",
            "sentinel",
        ]);
        build_ebpf::status(&mut cmd, "building sentinel (release)")?;
    }
    preflight()?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let mut ctx = Ctx {
        sentinel: root.join("target/release/sentinel"),
        ebpf_object: root.join("target/sentinel-ebpf/sentinel.bpf.o"),
        exe: std::env::current_exe().context("cannot find the xtask binary")?,
        netns: workers::Netns::create()?,
        dir,
        root,
        smoke: args.smoke,
        report: String::new(),
    };
    for path in [&ctx.sentinel, &ctx.ebpf_object] {
        if !path.exists() {
            bail!("{} is missing: run without --no-build", path.display());
        }
    }
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let header = header(&ctx, &args)?;
    ctx.section(&header);
    if want(Part::Kernel) {
        // Both run-queue sources on this one kernel (the daemon picks sched_info here), and
        // for the default source both attach orders: programs on one hook run in the order
        // they were attached, and the first one takes the cache misses on the data they share
        // (the task, its namespaces), which the ones after it find warm.
        kernel::per_event(&mut ctx, "sched_info", false)?;
        kernel::per_event(&mut ctx, "sched_info", true)?;
        kernel::per_event(&mut ctx, "hash", false)?;
    }
    if want(Part::ProcessEvents) {
        kernel::process_events(&mut ctx, if args.smoke { 1 } else { 7 })?;
    }
    if want(Part::Slowdown) {
        let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
        measure::slowdown(&mut ctx, rounds)?;
    }
    if want(Part::Userspace) {
        measure::userspace(&mut ctx)?;
    }
    if want(Part::Drain) {
        kernel::drain(&mut ctx)?;
    }
    if want(Part::Containers) {
        kernel::live_containers(&mut ctx)?;
    }
    if want(Part::Runq) {
        kernel::runq_agreement(&mut ctx)?;
    }
    if want(Part::Soak) && !args.smoke && args.soak_secs > 0 {
        measure::soak(&mut ctx, Duration::from_secs(args.soak_secs))?;
    }
    let out = args.out.unwrap_or_else(|| ctx.dir.join("report.md"));
    fs::write(&out, &ctx.report).with_context(|| format!("writing {}", out.display()))?;
    println!("\nreport written to {}", out.display());
    Ok(())
}

fn preflight() -> Result<()> {
    if !nix_is_root() {
        bail!("the bench loads BPF programs and creates a network namespace: run it as root");
    }
    for tool in ["ip", "taskset"] {
        if which(tool).is_none() {
            bail!("`{tool}` not found (apt-get install iproute2 util-linux)");
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The 1-minute load average, recorded next to every result: the machine is shared.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn header(ctx: &Ctx, args: &BenchArgs) -> Result<String> {
    let mut s = String::new();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let rev = std::process::Command::new("git")
        .current_dir(&ctx.root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(s, "# Sentinel benchmark\n")?;
    writeln!(
        s,
        "- date (UTC): {}\n- machine: {cpus} CPUs, {cpu}\n- kernel: {}\n- sentinel: {} (commit {rev})\n- command: `cargo xtask bench{}`\n- load average (1 min) at start: {}\n",
        utc_now(),
        kernel.trim(),
        ctx.sentinel.display(),
        if args.smoke { " --smoke" } else { "" },
        loadavg()
    )?;
    Ok(s)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Median of a sample (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
