//! `cargo xtask chaos --minutes N --seed S`: the chaos soak (FAULT-MATRIX S1, `tests/chaos.rs`)
//! for longer than CI runs it. Builds the eBPF object, runs the `chaos_soak` test in release
//! with the seed and length in its environment, streams its output, and prints the summary
//! the test wrote (`CHAOS-SUMMARY` lines) grouped: faults injected by kind, actions audited,
//! restarts observed, breaker transitions, checks passed. Histories are kept in
//! `target/chaos/seed-S-Nmin` (or `--out`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::build_ebpf;

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Length of the nemesis schedule, minutes (1..=1440).
    #[arg(long, default_value_t = 20.0)]
    minutes: f64,
    /// Seed of the schedule; the same seed replays the same schedule. Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Where the histories go (default target/chaos/seed-S-Nmin).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: &ChaosArgs) -> Result<()> {
    if !(1.0..=1440.0).contains(&args.minutes) {
        bail!(
            "--minutes {} is outside the allowed range 1..=1440",
            args.minutes
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    build_ebpf::run(&build_ebpf::Options { release: true })?;
    let root = build_ebpf::workspace_root();
    let out = args.out.clone().unwrap_or_else(|| {
        root.join("target/chaos")
            .join(format!("seed-{seed}-{}min", args.minutes))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    build_ebpf::step(&format!(
        "chaos soak: seed {seed}, {} min, histories in {}",
        args.minutes,
        out.display()
    ));
    let started = Instant::now();
    let mut child = Command::new(build_ebpf::cargo())
        .current_dir(&root)
        .args([
            "test",
            "--release",
            "-p",
            "sentinel-user",
            "--test",
            "chaos",
            "--",
            "chaos_soak",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SENTINEL_CHAOS_SEED", seed.to_string())
        .env("SENTINEL_CHAOS_MINUTES", args.minutes.to_string())
        .env("SENTINEL_CHAOS_OUT", &out)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut summary: Vec<(String, String)> = Vec::new();
    let mut violations = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("CHAOS-SUMMARY ") {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            summary.push((k.to_string(), v.to_string()));
        } else if line.starts_with("VIOLATION") {
            violations.push(line);
        }
    }
    let status = child.wait()?;
    print_summary(&summary, &violations, started.elapsed().as_secs_f64(), seed);
    if !status.success() {
        bail!(
            "chaos soak failed (seed {seed}; replay: cargo xtask chaos --minutes {} --seed \
             {seed}); histories in {}",
            args.minutes,
            out.display()
        );
    }
    if summary.is_empty() {
        bail!("the chaos test printed no summary (skipped? it needs root, BTF and docker.io)");
    }
    Ok(())
}

fn print_summary(summary: &[(String, String)], violations: &[String], wall: f64, seed: u64) {
    let m: BTreeMap<&str, &str> = summary
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let get = |k: &str| m.get(k).copied().unwrap_or("0");
    println!("\n=== chaos summary (seed {seed}, wall time {wall:.0} s) ===");
    println!(
        "length: {} min; sentinel runs: {}; final exit: {}",
        get("minutes"),
        get("sentinel_runs"),
        get("final_exit")
    );
    let faults: Vec<String> = m
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("fault.").map(|k| format!("{k} {v}")))
        .collect();
    println!(
        "faults injected: {} ({})",
        get("faults_total"),
        faults.join(", ")
    );
    let audited: Vec<String> = m
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("audit_").map(|k| format!("{k} {v}")))
        .collect();
    println!("audit lines: {}", audited.join(", "));
    println!(
        "restarts observed by Docker: {}; taken but unobservable (event stream down): {}; \
         max actions in a global-cap window: {}",
        get("docker_restarts"),
        get("taken_unobservable"),
        get("max_actions_in_global_window")
    );
    let breakers: Vec<String> = m
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("breaker_").map(|k| format!("{k} {v}")))
        .collect();
    println!(
        "breaker transitions: {}",
        if breakers.is_empty() {
            "none".to_string()
        } else {
            breakers.join(", ")
        }
    );
    println!(
        "program-list samples: {}, programs held by sentinel (max): {}; RSS max {} KiB, fds \
         max {} ({} samples)",
        get("prog_samples"),
        get("programs_held_max"),
        get("rss_kib_max"),
        get("fds_max"),
        get("res_samples")
    );
    for i in 1..=6 {
        println!("{}", m.get(format!("check{i}").as_str()).unwrap_or(&"?"));
    }
    for v in violations {
        println!("{v}");
    }
}
