//! `sentinel`: command-line dispatch only.

mod selftest;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use sentinel::{
    collect::loader::{KeyMode, LoadOptions},
    daemon::{self, RunOptions},
    export::OutputFormat,
};

#[derive(Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Watches the kernel through eBPF, finds what goes wrong, repairs it."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs and print one interval of kernel and system metrics per line.
    Run(RunArgs),
    /// Stream a recorded series (CSV `timestamp,value` or `sentinel run --output json` lines)
    /// through the detection engine and write `timestamp,value,anomaly_score`.
    Replay(sentinel::replay::ReplayArgs),
    /// Kernel portability checks for `cargo xtask vmtest` (attach, offsets, synthetic events).
    #[command(hide = true)]
    Selftest(selftest::SelftestArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Drain interval, e.g. 1s, 100ms (10ms..1h).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Exit cleanly after this long, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Capacity of the per-(network namespace, interface) kernel map.
    #[arg(long, default_value_t = sentinel_common::IFACE_MAP_CAPACITY, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    iface_capacity: u32,
    /// Capacity of the per-container kernel map.
    #[arg(long, default_value_t = sentinel_common::CONTAINER_MAP_CAPACITY, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    container_capacity: u32,
    /// How the kernel identifies a task's container: cgroup v2 id, or mount namespace inode
    /// (cgroup v1 hosts). `auto` picks by the host's cgroup layout.
    #[arg(long, value_enum, default_value_t = KeyMode::Auto)]
    container_key: KeyMode,
    /// Do not contact the Docker Engine API (containers are then named by cgroup path / id).
    #[arg(long)]
    no_docker: bool,
    /// Testing aid: treat this tracepoint as missing from the kernel (repeatable).
    #[arg(long, hide = true)]
    simulate_missing_hook: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is outside the allowed range 10ms..1h"));
    }
    Ok(d)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SENTINEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // tracing-subscriber also installs the `log` bridge, so aya-log records from the kernel
    // side come out here like every other line.
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, not clap's usage block: the first line names the flag and the problem.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (see `sentinel --help`)");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => daemon::run(RunOptions {
            interval: args.interval,
            duration: args.duration,
            output: args.output,
            docker: !args.no_docker,
            load: LoadOptions {
                iface_capacity: args.iface_capacity,
                container_capacity: args.container_capacity,
                key_mode: args.container_key,
                simulate_missing: args.simulate_missing_hook,
                ..LoadOptions::default()
            },
        }),
        Command::Replay(args) => sentinel::replay::run(&args),
        Command::Selftest(args) => match selftest::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
