//! Developer tasks: `cargo xtask <command>`.

mod bench;
mod build_ebpf;
mod chaos;
mod dist;
mod fuzz;
mod licenses;
mod nab;
mod nab_against;
mod nab_calm;
mod nab_channels;
mod nab_crop;
mod nab_cv;
mod packages;
mod vmtest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Sentinel developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (installs the nightly's rust-src and bpf-linker on first use).
    BuildEbpf(build_ebpf::Options),
    /// Build the eBPF object, then run the whole test suite (what CI runs).
    Test(TestOptions),
    /// Replay the NAB corpus through every detector and score it.
    Nab(nab::NabArgs),
    /// Measure sentinel's overhead (kernel, workloads, daemon, drain) against its peers.
    Bench(bench::BenchArgs),
    /// Kernel portability matrix: boot Debian's 6.1 and 6.12 kernels under QEMU and check each.
    Vmtest(vmtest::VmtestArgs),
    /// Long soak rows (M2 event storm, L6 container churn): the CI variant runs 3 minutes each.
    Soak(SoakArgs),
    /// Fuzz one input parser with cargo-fuzz for a while (nightly; see FUZZING.md).
    Fuzz(fuzz::FuzzArgs),
    /// Chaos soak (FAULT-MATRIX S1): seeded faults against sentinel and a private dockerd,
    /// judged by the history checker.
    Chaos(chaos::ChaosArgs),
    /// Release artifacts under target/dist/: the static binary's tarball, the Debian package,
    /// the container image, SHA256SUMS.
    Dist(dist::DistArgs),
}

#[derive(clap::Args)]
struct SoakArgs {
    /// Length of each soak test (the fault matrix asks for 10).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
}

#[derive(clap::Args)]
struct TestOptions {
    /// Extra arguments for `cargo test`, after `--`.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::BuildEbpf(opts) => build_ebpf::run(&opts),
        Command::Test(opts) => test(&opts),
        Command::Nab(args) => nab::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Vmtest(args) => vmtest::run(&args),
        Command::Soak(args) => soak(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Chaos(args) => chaos::run(&args),
        Command::Dist(args) => dist::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(opts: &TestOptions) -> anyhow::Result<()> {
    packages::ensure(packages::TEST_PACKAGES)?;
    build_ebpf::run(&build_ebpf::Options { release: true })?;
    // tests/dist.rs installs, loads and unpacks these (the static build is reused by vmtest).
    dist::build()?;
    let root = build_ebpf::workspace_root();
    // One test thread per binary: the privileged tests measure the host's kernel counters and
    // must not disturb each other.
    let mut cmd = std::process::Command::new(build_ebpf::cargo());
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--release"])
        .args(&opts.cargo_args);
    if !opts.cargo_args.iter().any(|a| a == "--") {
        cmd.args(["--", "--test-threads=1"]);
    }
    build_ebpf::status(&mut cmd, "cargo test")
}

/// `cargo xtask soak --minutes N`: the soak tests (tests/soak.rs) at full length.
fn soak(args: &SoakArgs) -> anyhow::Result<()> {
    packages::ensure(packages::TEST_PACKAGES)?;
    build_ebpf::run(&build_ebpf::Options { release: true })?;
    let mut cmd = std::process::Command::new(build_ebpf::cargo());
    cmd.current_dir(build_ebpf::workspace_root())
        .args(["test", "--release", "--test", "soak", "--"])
        .args(["--test-threads=1", "--nocapture"])
        .env("SENTINEL_SOAK_MINUTES", args.minutes.to_string());
    build_ebpf::status(&mut cmd, "cargo test --test soak")
}
