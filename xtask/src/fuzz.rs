//! `cargo xtask fuzz --target T --seconds N`: one libFuzzer run of a `fuzz/` target (nightly
//! and cargo-fuzz required), seeded from `fuzz/seeds/T` and `fuzz/regressions/T`, continuing
//! past crashes (saved under `fuzz/artifacts/T/`). See FUZZING.md.

use std::{fs, process::Command};

use anyhow::{Context, Result, bail};

use crate::build_ebpf::workspace_root;

#[derive(clap::Args, Clone, Debug)]
pub struct FuzzArgs {
    /// Fuzz target: config, replay_csv or replay_json.
    #[arg(long, value_parser = ["config", "replay_csv", "replay_json"])]
    target: String,
    /// Fuzzing time in seconds.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Sanitizer of the fuzz build: address (AddressSanitizer) or none (a quicker build and
    /// more executions per second; panics, stack overflows, time-outs and memory limits are
    /// caught either way).
    #[arg(long, default_value = "address", value_parser = ["address", "none"])]
    sanitizer: String,
}

/// cargo-fuzz, installed on first use (CI starts without it).
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz (once)");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .context("cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz: {status}");
    }
    Ok(())
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    ensure_cargo_fuzz()?;
    let fuzz = workspace_root().join("fuzz");
    let t = &args.target;
    let corpus = fuzz.join("corpus").join(t);
    fs::create_dir_all(&corpus).with_context(|| format!("{}", corpus.display()))?;
    // The working corpus is not committed; it starts from the committed inputs.
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz.join(dir).join(t)) else {
            continue;
        };
        for e in entries {
            let p = e?.path();
            if let Some(name) = p.file_name() {
                fs::copy(&p, corpus.join(name))?;
            }
        }
    }
    // One interval line of the JSON output is about 1 KiB.
    let max_len = if t == "replay_json" { 16384 } else { 8192 };
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args([
            "+nightly",
            "fuzz",
            "run",
            "-O",
            "--sanitizer",
            &args.sanitizer,
            t,
        ])
        .arg(&corpus)
        .arg("--")
        .args([
            "-fork=1",
            "-ignore_crashes=1",
            "-ignore_timeouts=1",
            "-ignore_ooms=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ])
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-max_total_time={}", args.seconds))
        .status()
        .context("cargo +nightly fuzz (install with `cargo install cargo-fuzz`)")?;
    if !status.success() {
        bail!("cargo fuzz run {t}: {status}");
    }
    let artifacts = fuzz.join("artifacts").join(t);
    let crashes = fs::read_dir(&artifacts)
        .map(std::iter::Iterator::count)
        .unwrap_or(0);
    if crashes > 0 {
        bail!("{crashes} crash input(s) in {}", artifacts.display());
    }
    Ok(())
}
