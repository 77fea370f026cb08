//! Workload slowdown, the daemon's userspace cost, and the soak.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    Ctx,
    contenders::{self, Kind},
    loadavg, median, min_max,
    workers::{Timing, WORKLOADS, Workload},
};

const CONTENDERS: [Kind; 4] = [
    Kind::Sentinel,
    Kind::Bpftrace,
    Kind::NodeExporter,
    Kind::Floor,
];

struct Pair {
    kind: Kind,
    workload: Workload,
    base: Timing,
    with: Timing,
}

/// Interleaved: for each round and contender, every workload bare, then every workload with
/// the contender attached; each contender run is paired with the bare run just before it.
pub fn slowdown(ctx: &mut Ctx, rounds: usize) -> Result<()> {
    let mut pairs = Vec::new();
    let mut loads = Vec::new();
    let mut skipped: Vec<(Kind, String)> = Vec::new();
    for round in 1..=rounds {
        for kind in CONTENDERS {
            if skipped.iter().any(|(k, _)| *k == kind) {
                continue;
            }
            loads.push(loadavg());
            // The workload order rotates with the round, so no workload always runs right
            // after the same one (or right after a contender stopped).
            let mut order = WORKLOADS;
            order.rotate_left(round % WORKLOADS.len());
            let mut base = Vec::new();
            for w in order {
                base.push(w.run(ctx)?);
            }
            let running = match contenders::start(ctx, kind) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench: {} skipped: {e:#}", kind.name());
                    skipped.push((kind, format!("{e:#}")));
                    continue;
                }
            };
            // Let the contender's start-up work settle.
            std::thread::sleep(Duration::from_millis(500));
            for (i, w) in order.into_iter().enumerate() {
                let with = w.run(ctx)?;
                println!(
                    "round {round} {:<38} {:<28} wall {:.3} -> {:.3} s ({:.3}), cpu {:.3} -> {:.3} s ({:.3}), load {}",
                    kind.name(),
                    w.name(),
                    base[i].wall,
                    with.wall,
                    with.wall / base[i].wall,
                    base[i].cpu,
                    with.cpu,
                    with.cpu / base[i].cpu,
                    loadavg()
                );
                pairs.push(Pair {
                    kind,
                    workload: w,
                    base: base[i],
                    with,
                });
            }
            running.stop()?;
        }
    }

    let mut s = String::new();
    writeln!(
        s,
        "## Workload slowdown\n\n{rounds} interleaved rounds; in each, for each contender: every workload bare, then every workload with the contender running; the workload order rotates from round to round. Ratio = run with the contender / the bare run just before it; median of the paired ratios, min-max. Two clocks: the workload's CPU time (user + sys of its processes, getrusage; what the hooks add to the work, not inflated by other jobs holding the CPU) and its wall time (what a user feels on a quiet machine; on a busy one mostly noise). Workloads pinned to CPU {}. Load average (1 min) at each contender: {}.\n",
        super::workers::bench_cpu(),
        loads.join(" ")
    )?;
    for w in WORKLOADS {
        writeln!(
            s,
            "### {} ({} {})\n\n| contender | CPU bare (s) | CPU with (s) | CPU ratio | CPU ratio min-max | wall bare (s) | wall with (s) | wall ratio | wall ratio min-max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            w.name(),
            w.size(ctx.smoke),
            w.unit()
        )?;
        for kind in CONTENDERS {
            let p: Vec<&Pair> = pairs
                .iter()
                .filter(|p| p.kind == kind && p.workload == w)
                .collect();
            if p.is_empty() {
                continue;
            }
            let mut row = format!("| {} |", kind.name());
            for clock in [|t: &Timing| t.cpu, |t: &Timing| t.wall] {
                let base: Vec<f64> = p.iter().map(|p| clock(&p.base)).collect();
                let with: Vec<f64> = p.iter().map(|p| clock(&p.with)).collect();
                let ratios: Vec<f64> = p.iter().map(|p| clock(&p.with) / clock(&p.base)).collect();
                let (lo, hi) = min_max(&ratios);
                write!(
                    row,
                    " {:.3} | {:.3} | **{:.3}** | {:.3}-{:.3} |",
                    median(&base),
                    median(&with),
                    median(&ratios),
                    lo,
                    hi
                )?;
            }
            writeln!(s, "{row}")?;
        }
        writeln!(s)?;
    }
    for (kind, why) in &skipped {
        writeln!(s, "- {} not measured: {why}", kind.name())?;
    }
    ctx.section(&s);
    Ok(())
}

/// CPU time and memory of the daemon, idle and while each storm runs in a loop.
pub fn userspace(ctx: &mut Ctx) -> Result<()> {
    let window = if ctx.smoke {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(30)
    };
    let storm_window = if ctx.smoke {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(15)
    };
    let mut s = String::from(
        "## Userspace cost of the daemon\n\n`sentinel run --output json --no-docker`, output to a file. CPU from the sum of every thread's `/proc/PID/task/*/schedstat` run time (ns), cross-checked with utime+stime ticks of `/proc/PID/stat`; measured after a 3 s warm-up. RSS = VmRSS at the end of the window, HWM = VmHWM.\n\n| interval | load | window (s) | CPU, % of one core | CPU per interval (us) | utime+stime (ticks) | RSS (MB) | HWM (MB) | load avg |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (interval, secs) in [("1s", 1.0), ("100ms", 0.1)] {
        let running = contenders::start_sentinel(ctx, interval, &[], &format!("user-{interval}"))?;
        let pid = running.pid().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(3));
        let mut loads: Vec<(&str, Duration)> = vec![("idle", window)];
        for w in super::workers::WORKLOADS {
            loads.push((w.name(), storm_window));
        }
        for (what, win) in loads {
            let before = contenders::cpu_time(pid)?;
            let start = Instant::now();
            let la = loadavg();
            if what == "idle" {
                std::thread::sleep(win);
            } else {
                let w = super::workers::WORKLOADS
                    .into_iter()
                    .find(|w| w.name() == what)
                    .unwrap_or(Workload::PingPong);
                while start.elapsed() < win {
                    w.run(ctx)?;
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            let after = contenders::cpu_time(pid)?;
            let (rss, hwm) = contenders::memory_kb(pid)?;
            let cpu_ns = after.0.saturating_sub(before.0) as f64;
            let intervals = elapsed / secs;
            let line = format!(
                "| {interval} | {what} | {elapsed:.1} | {:.3}% | {:.0} | {} | {:.1} | {:.1} | {la} |\n",
                cpu_ns / (elapsed * 1e9) * 100.0,
                cpu_ns / intervals / 1e3,
                after.1.saturating_sub(before.1),
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
            );
            print!("{line}");
            s.push_str(&line);
        }
        running.stop()?;
    }
    s.push('\n');
    ctx.section(&s);
    Ok(())
}

/// Resident memory at a 10 ms interval, sampled every 10 s.
pub fn soak(ctx: &mut Ctx, length: Duration) -> Result<()> {
    let running = contenders::start_sentinel(ctx, "10ms", &[], "soak")?;
    let pid = running.pid().unwrap_or(0);
    let start = Instant::now();
    let cpu0 = contenders::cpu_time(pid)?;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut loads = Vec::new();
    while start.elapsed() < length {
        std::thread::sleep(Duration::from_secs(10).min(length));
        let (rss, _) = contenders::memory_kb(pid)?;
        samples.push((start.elapsed().as_secs(), rss));
        loads.push(loadavg());
        println!("soak {:>4} s: RSS {rss} kB", start.elapsed().as_secs());
    }
    let cpu1 = contenders::cpu_time(pid)?;
    let (_, hwm) = contenders::memory_kb(pid)?;
    let elapsed = start.elapsed().as_secs_f64();
    // The JSON output goes to a file: check the daemon kept its pace.
    let lines = running
        .stdout
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map_or(0, |t| t.lines().count());
    running.stop()?;
    let first = samples.first().map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let mut s = String::new();
    writeln!(
        s,
        "## Soak: 10 ms interval, {:.0} s\n\nVmRSS sampled every 10 s ({} samples). Intervals emitted: {lines} (expected about {:.0}). Daemon CPU over the soak: {:.2}% of one core. Load average (1 min) at the samples: {}.\n\n| first RSS (kB) | last RSS (kB) | max RSS (kB) | VmHWM (kB) | last - first (kB) |\n|---:|---:|---:|---:|---:|\n| {first} | {last} | {max} | {hwm} | {} |\n\nRSS by sample (s: kB): {}\n",
        elapsed,
        samples.len(),
        elapsed / 0.01,
        cpu1.0.saturating_sub(cpu0.0) as f64 / (elapsed * 1e9) * 100.0,
        loads.join(" "),
        last as i64 - first as i64,
        samples
            .iter()
            .map(|(t, r)| format!("{t}:{r}"))
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    ctx.section(&s);
    Ok(())
}
