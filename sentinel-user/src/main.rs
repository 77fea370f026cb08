//! `sentinel`: command-line dispatch only.

#![deny(clippy::undocumented_unsafe_blocks)]

mod selftest;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand};
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

/// Exit status of `sentinel run` when the configuration is invalid (sysexits.h EX_CONFIG): the
/// unit's `RestartPreventExitStatus=` keeps systemd from restarting a daemon that cannot start.
const EX_CONFIG: u8 = 78;

/// Sections of sentinel(1) that clap does not know about: (title, [(item, text)]).
const MAN_SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "EXIT STATUS",
        &[
            ("0", "Success."),
            (
                "1",
                "sentinel cannot run (privileges, kernel BTF, another instance running) or a \
                 command failed; `sentinel config check` exits 1 for an invalid file.",
            ),
            ("2", "Invalid command-line arguments."),
            (
                "78",
                "`sentinel run`: the configuration is invalid (EX_CONFIG). The systemd unit \
                 does not restart it (RestartPreventExitStatus=78).",
            ),
        ],
    ),
    (
        "FILES",
        &[
            (
                "/etc/sentinel/sentinel.toml",
                "Configuration; every key is optional (`sentinel config show` prints them all).",
            ),
            (
                "/run/sentinel/sentinel.sock",
                "Status socket of `sentinel status` and `sentinel top` (status.socket).",
            ),
            (
                "/var/log/sentinel/audit.jsonl",
                "Healing audit log, one JSON object per decision (daemon.audit_log).",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "SENTINEL_LOG",
                "Log filter on stderr, e.g. `debug` or `sentinel=debug,aya=warn`.",
            ),
            ("RUST_LOG", "Log filter when SENTINEL_LOG is not set."),
            (
                "DOCKER_HOST",
                "Docker Engine API endpoint (default unix:///var/run/docker.sock).",
            ),
        ],
    ),
    (
        "SEE ALSO",
        &[(
            "",
            "sentinel-run(1), sentinel-status(1), sentinel-top(1), sentinel-check(1), \
             sentinel-config(1), sentinel-replay(1), systemctl(1), journalctl(1)",
        )],
    ),
];

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
    /// Print a shell completion script, e.g. `sentinel completions bash >
    /// /etc/bash_completion.d/sentinel`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one page per command into DIR.
    Manpage {
        /// Write sentinel.1, sentinel-run.1, ... into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The config file, found as `sentinel run` finds it.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file (TOML). Default: /etc/sentinel/sentinel.toml if it exists, else built-in
    /// defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accept a config file that is group/other-writable or owned by another user.
    #[arg(long)]
    allow_insecure_config: bool,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        Ok(match config::resolve_path(self.config.as_deref()) {
            Some(path) => config::load(&path, self.allow_insecure_config)?,
            None => Config::default(),
        })
    }
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Print the daemon's snapshot as JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's status socket. [config: status.socket]
    #[arg(long)]
    status_socket: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Args)]
struct TopArgs {
    /// The daemon's status socket. [config: status.socket]
    #[arg(long)]
    status_socket: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
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
    #[command(flatten)]
    config: ConfigArgs,
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
        let mut cfg = self.config.load()?;
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

/// `--status-socket`, else the config's `status.socket`.
fn status_socket(flag: Option<&PathBuf>, cfg: &ConfigArgs) -> anyhow::Result<PathBuf> {
    match flag {
        Some(p) => Ok(p.clone()),
        None => Ok(cfg.load()?.status.socket),
    }
}

fn print_status(args: &StatusArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let socket = status_socket(args.status_socket.as_ref(), &args.config)?;
    let snap = status::fetch(&socket, Duration::from_secs(3))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &snap)?;
        writeln!(out)?;
    } else {
        out.write_all(status::render_text(&snap).as_bytes())?;
    }
    Ok(())
}

/// The log filter: `SENTINEL_LOG`, else the ecosystem's `RUST_LOG`, else `info`. An unset or
/// empty variable falls through to the next; a filter that does not parse is reported (the
/// warning is logged once logging is up) and `info` is used.
fn log_filter(
    sentinel_log: Option<&str>,
    rust_log: Option<&str>,
) -> (tracing_subscriber::EnvFilter, Option<String>) {
    let chosen = [("SENTINEL_LOG", sentinel_log), ("RUST_LOG", rust_log)]
        .into_iter()
        .find_map(|(var, v)| v.filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
    let info = || tracing_subscriber::EnvFilter::new("info");
    match chosen {
        None => (info(), None),
        Some((var, value)) => match tracing_subscriber::EnvFilter::try_new(value) {
            Ok(filter) => (filter, None),
            Err(e) => (
                info(),
                Some(format!(
                    "{var}={value:?} is not a log filter ({e}); using info"
                )),
            ),
        },
    }
}

fn init_logging(format: LogFormat) {
    let env = |name| std::env::var(name).ok();
    let (filter, problem) = log_filter(env("SENTINEL_LOG").as_deref(), env("RUST_LOG").as_deref());
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
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// sentinel(1): clap's sections, then [`MAN_SECTIONS`].
fn render_manpage(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    for (title, items) in MAN_SECTIONS {
        writeln!(w, ".SH \"{title}\"")?;
        for (item, text) in *items {
            if item.is_empty() {
                writeln!(w, ".PP\n{}", roff_escape(text))?;
            } else {
                writeln!(
                    w,
                    ".TP\n\\fB{}\\fR\n{}",
                    roff_escape(item),
                    roff_escape(text)
                )?;
            }
        }
    }
    man.render_version_section(w)
}

/// Text for a roff line: backslashes and hyphens escaped, no line starting with a control
/// character.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn manpage(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        return Ok(render_manpage(&mut std::io::stdout().lock())?);
    };
    let write = || -> std::io::Result<()> {
        // One page per command, then sentinel(1) again with the sections clap does not know.
        clap_mangen::generate_to(Cli::command(), dir)?;
        let mut page = std::fs::File::create(dir.join("sentinel.1"))?;
        render_manpage(&mut page)?;
        std::io::Write::flush(&mut page)
    };
    write().map_err(|e| anyhow::anyhow!("cannot write man pages into {}: {e}", dir.display()))
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
            eprintln!(
                "{} (see `sentinel --help`)",
                sentinel::sanitize::printable(first, sentinel::sanitize::MAX_ERROR)
            );
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => match args.options() {
            Ok(opts) => daemon::run(opts),
            Err(e) => {
                eprintln!("{}", sentinel::sanitize::error_line(&e));
                // A config problem will not go away by itself: a distinct status, so the unit
                // does not restart it.
                return if e.downcast_ref::<config::ConfigError>().is_some() {
                    ExitCode::from(EX_CONFIG)
                } else {
                    ExitCode::FAILURE
                };
            }
        },
        Command::Config(cmd) => config_command(cmd),
        Command::Check(args) => {
            let cfg = match args.config.load() {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{}", sentinel::sanitize::error_line(&e));
                    return ExitCode::FAILURE;
                }
            };
            let report = sentinel::check::run(&sentinel::check::CheckOptions::for_config(&cfg));
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
        Command::Top(args) => status_socket(args.status_socket.as_ref(), &args.config)
            .and_then(|socket| top::run(&socket, args.refresh)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sentinel",
                &mut std::io::stdout().lock(),
            );
            Ok(())
        }
        Command::Manpage { dir } => manpage(dir.as_deref()),
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
            eprintln!("{}", sentinel::sanitize::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    fn level(sentinel_log: Option<&str>, rust_log: Option<&str>) -> (Option<LevelFilter>, bool) {
        let (filter, problem) = log_filter(sentinel_log, rust_log);
        (filter.max_level_hint(), problem.is_some())
    }

    #[test]
    fn rust_log_is_honoured_and_sentinel_log_wins() {
        assert_eq!(level(None, None), (Some(LevelFilter::INFO), false));
        assert_eq!(
            level(None, Some("debug")),
            (Some(LevelFilter::DEBUG), false)
        );
        assert_eq!(
            level(Some("warn"), Some("debug")),
            (Some(LevelFilter::WARN), false)
        );
        // An empty SENTINEL_LOG (e.g. `Environment=SENTINEL_LOG=`) does not hide RUST_LOG.
        assert_eq!(
            level(Some(""), Some("trace")),
            (Some(LevelFilter::TRACE), false)
        );
        assert_eq!(
            level(None, Some("sentinel=debug,aya=warn")),
            (Some(LevelFilter::DEBUG), false)
        );
    }

    #[test]
    fn a_log_filter_that_does_not_parse_is_reported_not_ignored() {
        let (filter, problem) = log_filter(None, Some("sentinel=[[["));
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::INFO));
        let problem = problem.expect("a warning");
        assert!(problem.starts_with("RUST_LOG="), "{problem}");
        let (_, problem) = log_filter(Some("=nope="), Some("debug"));
        assert!(problem.expect("a warning").starts_with("SENTINEL_LOG="));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_cover_every_visible_subcommand() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sentinel", &mut buf);
            let text = String::from_utf8(buf).expect("utf-8");
            for sub in Cli::command()
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
            {
                assert!(
                    text.contains(sub.get_name()),
                    "{shell}: no {}",
                    sub.get_name()
                );
            }
            assert!(text.contains("status-socket"), "{shell}: flags of run");
        }
    }

    #[test]
    fn man_pages_name_every_command_and_the_exit_statuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        manpage(Some(dir.path())).expect("pages written");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for page in [
            "sentinel.1",
            "sentinel-run.1",
            "sentinel-status.1",
            "sentinel-top.1",
            "sentinel-check.1",
            "sentinel-replay.1",
            "sentinel-config.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("selftest")),
            "hidden commands get no page: {names:?}"
        );
        let main = std::fs::read_to_string(dir.path().join("sentinel.1")).expect("sentinel.1");
        assert!(
            main.starts_with(".ie") || main.contains(".TH sentinel 1"),
            "{main}"
        );
        assert!(main.contains("EX_CONFIG"), "exit statuses documented");
        assert!(main.contains("RUST_LOG"), "environment documented");
        let run = std::fs::read_to_string(dir.path().join("sentinel-run.1")).expect("run page");
        assert!(run.contains("drop\\-capabilities"), "run's flags: {run}");
    }
}
