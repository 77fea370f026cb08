//! `sentinel`: command-line dispatch only.

mod selftest;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use sentinel::{
    collect::loader::{KeyMode, LoadOptions, RunqSource},
    config::{self, Config},
    daemon::{self, RunOptions},
    export::{
        OutputFormat,
        prometheus::{self, MetricsConfig},
        serve::ExportOptions,
        status, top,
    },
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
    /// Validate a config file, or print the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Kernel portability checks for `cargo xtask vmtest` (attach, offsets, synthetic events).
    #[command(hide = true)]
    Selftest(selftest::SelftestArgs),
    /// Preflight: can this host run sentinel? One line per item: ok, warn or fail, and what to
    /// do. Exits non-zero iff sentinel could not run.
    Check(CheckArgs),
    /// Print the running daemon's latest interval, detectors, breakers and last actions.
    Status(StatusArgs),
    /// Live terminal view of the running daemon (q, Esc or Ctrl-C quits).
    Top(TopArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Print the daemon's snapshot as JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's status socket.
    #[arg(long, default_value = status::DEFAULT_SOCKET)]
    status_socket: PathBuf,
}

#[derive(clap::Args)]
struct TopArgs {
    /// The daemon's status socket.
    #[arg(long, default_value = status::DEFAULT_SOCKET)]
    status_socket: PathBuf,
    /// Refresh period, e.g. 1s, 500ms (100ms..1m).
    #[arg(long, default_value = "1s", value_parser = parse_refresh)]
    refresh: Duration,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate FILE without running anything; exit status 1 if it is invalid.
    Check {
        file: PathBuf,
        /// Accept a file that is group/other-writable or owned by another user.
        #[arg(long)]
        allow_insecure_config: bool,
    },
    /// Print the effective configuration (built-in defaults, overridden by FILE) as TOML.
    Show { file: Option<PathBuf> },
}

/// Flags override the config file, which overrides the built-in defaults; a flag left out
/// keeps the file's value.
#[derive(clap::Args)]
struct RunArgs {
    /// Config file (TOML). Default: /etc/sentinel/sentinel.toml if it exists, else built-in
    /// defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accept a config file that is group/other-writable or owned by another user.
    #[arg(long)]
    allow_insecure_config: bool,
    /// Drain interval, e.g. 1s, 100ms (10ms..1h). [config: daemon.interval, default 1s]
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Refuse to run with any signal disabled (a tracepoint missing or a program rejected):
    /// exit non-zero naming them instead of running degraded.
    #[arg(long)]
    strict: bool,
    /// Exit cleanly after this long, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Interval output on stdout. [config: daemon.output, default text]
    #[arg(long, value_enum)]
    output: Option<OutputFormat>,
    /// Capacity of the per-(network namespace, interface) kernel map. [config:
    /// collector.iface_capacity]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    iface_capacity: Option<u32>,
    /// Capacity of the per-container kernel map. [config: collector.container_capacity]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    container_capacity: Option<u32>,
    /// How the kernel identifies a task's container: cgroup v2 id, or mount namespace inode
    /// (cgroup v1 hosts). `auto` picks by the host's cgroup layout. [config:
    /// collector.container_key]
    #[arg(long, value_enum)]
    container_key: Option<KeyMode>,
    /// Where run-queue waits come from: `sched_info` (the kernel's own enqueue stamp, no map
    /// operation per event), `hash` (a wakeup timestamp map, any kernel), `auto` (sched_info
    /// where the kernel keeps it). [config: collector.runq_source]
    #[arg(long, value_enum)]
    runq_source: Option<RunqSource>,
    /// Do not contact the Docker Engine API: containers are named by cgroup path / id and
    /// healing is off. [config: daemon.docker = false]
    #[arg(long)]
    no_docker: bool,
    /// Healing decides and audits everything but acts on nothing. [config: heal.dry_run]
    #[arg(long)]
    dry_run: bool,
    /// Healing audit log (JSON lines). [config: daemon.audit_log]
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Testing aid: treat this tracepoint as missing from the kernel (repeatable).
    #[arg(long, hide = true)]
    simulate_missing_hook: Vec<String>,
    /// Testing aid: make the verifier reject the TCP programs (an out-of-range offset).
    #[arg(long, hide = true)]
    simulate_verifier_reject: bool,
    /// Serve Prometheus metrics at this address. It has no authentication: binding anything
    /// but loopback is allowed, with a warning. [config: metrics.addr, default 127.0.0.1:9464]
    #[arg(long, value_parser = prometheus::parse_addr)]
    metrics_addr: Option<SocketAddr>,
    /// Do not serve Prometheus metrics. [config: metrics.enabled = false]
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// Containers exported with their own Prometheus series: the busiest N, plus the ones
    /// healing manages. [config: metrics.top_containers, default 50]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    metrics_top_containers: Option<u32>,
    /// Unix socket for `sentinel status` and `sentinel top` (mode 0600); its directory, created
    /// 0700, also holds the single-instance lock. [config: status.socket]
    #[arg(long)]
    status_socket: Option<PathBuf>,
    /// Once the programs are attached, drop every capability but CAP_SYS_PTRACE (still needed
    /// to read /proc/PID/ns/* of other processes).
    #[arg(long)]
    drop_capabilities: bool,
}

impl RunArgs {
    fn options(self) -> anyhow::Result<RunOptions> {
        let mut cfg = match config::resolve_path(self.config.as_deref()) {
            Some(path) => config::load(&path, self.allow_insecure_config)?,
            None => Config::default(),
        };
        if let Some(v) = self.output {
            cfg.daemon.output = v;
        }
        if self.no_docker {
            cfg.daemon.docker = false;
        }
        if let Some(v) = self.audit_log {
            cfg.daemon.audit_log = v;
        }
        if let Some(v) = self.iface_capacity {
            cfg.collector.iface_capacity = v;
        }
        if let Some(v) = self.container_capacity {
            cfg.collector.container_capacity = v;
        }
        if let Some(v) = self.container_key {
            cfg.collector.container_key = v;
        }
        if let Some(v) = self.runq_source {
            cfg.collector.runq_source = v;
        }
        if self.dry_run {
            cfg.heal.dry_run = true;
        }
        if let Some(v) = self.metrics_addr {
            cfg.metrics.addr = v.to_string();
            cfg.metrics.enabled = true;
        }
        if self.no_metrics {
            cfg.metrics.enabled = false;
        }
        if let Some(v) = self.metrics_top_containers {
            cfg.metrics.top_containers = v;
        }
        if let Some(v) = self.status_socket {
            cfg.status.socket = v;
        }
        // The config loader validated the address; a flag was parsed by clap.
        let metrics_addr = if cfg.metrics.enabled {
            Some(prometheus::parse_addr(&cfg.metrics.addr).map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        let exporters = ExportOptions {
            metrics_addr,
            metrics: MetricsConfig {
                top_containers: cfg.metrics.top_containers as usize,
                ..MetricsConfig::default()
            },
            status_socket: cfg.status.socket.clone(),
        };
        Ok(RunOptions {
            interval: self.interval.unwrap_or_else(|| cfg.interval()),
            duration: self.duration,
            output: cfg.daemon.output,
            docker: cfg.daemon.docker,
            load: LoadOptions {
                iface_capacity: cfg.collector.iface_capacity,
                container_capacity: cfg.collector.container_capacity,
                key_mode: cfg.collector.container_key,
                runq_source: cfg.collector.runq_source,
                simulate_missing: self.simulate_missing_hook,
                simulate_verifier_reject: self.simulate_verifier_reject,
                ..LoadOptions::default()
            },
            config: cfg,
            exporters,
            drop_capabilities: self.drop_capabilities,
            strict: self.strict,
        })
    }
}

fn config_command(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check {
            file,
            allow_insecure_config,
        } => {
            config::load(&file, allow_insecure_config)?;
            println!("{}: ok", file.display());
        }
        ConfigCommand::Show { file } => {
            let cfg = match file {
                Some(path) => config::load(&path, true)?,
                None => Config::default(),
            };
            print!("{}", toml::to_string(&cfg)?);
        }
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    config::parse_interval(s)
}

fn parse_refresh(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err(format!("{s} is outside the allowed range 100ms..1m"));
    }
    Ok(d)
}

fn print_status(args: &StatusArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let snap = status::fetch(&args.status_socket, Duration::from_secs(3))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &snap)?;
        writeln!(out)?;
    } else {
        out.write_all(status::render_text(&snap).as_bytes())?;
    }
    Ok(())
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
        Command::Run(args) => args.options().and_then(daemon::run),
        Command::Config(cmd) => config_command(cmd),
        Command::Check(args) => {
            let report = sentinel::check::run(&sentinel::check::CheckOptions::default());
            if let Err(e) =
                sentinel::check::print(&report, args.json, &mut std::io::stdout().lock())
            {
                eprintln!("error: cannot write the report: {e}");
                return ExitCode::FAILURE;
            }
            return if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Status(args) => print_status(&args),
        Command::Top(args) => top::run(&args.status_socket, args.refresh),
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
