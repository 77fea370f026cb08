//! The configuration file: one TOML file, every key optional (defaults built in), validated as a
//! whole before anything starts. Errors name the file, the line, the key and what is allowed.
//!
//! Command-line flags override the file; the file overrides the built-in defaults.

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    collect::loader::{KeyMode, RunqSource},
    detect::DetectConfig,
    export::OutputFormat,
    heal::config::HealConfig,
};

/// Where `sentinel run` looks when `--config` is not given. A missing default file is not an
/// error (the built-in defaults apply); a missing file named with `--config` is.
pub const DEFAULT_PATH: &str = "/etc/sentinel/sentinel.toml";
/// Larger files are rejected before parsing: a config is a few KiB, and a bound keeps a hostile
/// file from costing time or memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub collector: CollectorConfig,
    pub metrics: MetricsConfig,
    pub status: StatusConfig,
    /// The Docker Engine API connection naming, healing and `sentinel check` share.
    pub docker: DockerConfig,
    pub detect: DetectConfig,
    pub heal: HealConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Docker endpoint (`unix:///path`, `tcp://host:port`). Unset: `DOCKER_HOST`, then
    /// `unix:///var/run/docker.sock`. `heal.docker_host` is its deprecated alias.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Drain interval (humantime: `1s`, `250ms`), 10ms..1h.
    pub interval: String,
    /// Interval output on stdout: `text`, `json` or `none`.
    pub output: OutputFormat,
    /// Name containers and heal through the Docker Engine API.
    pub docker: bool,
    /// Append-only JSON-lines audit log of every healing decision.
    pub audit_log: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            interval: "1s".into(),
            output: OutputFormat::Text,
            docker: true,
            audit_log: PathBuf::from("/var/log/sentinel/audit.jsonl"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Entries of the kernel's per-(network namespace, interface) map.
    pub iface_capacity: u32,
    /// Entries of the kernel's per-container map.
    pub container_capacity: u32,
    /// How the kernel keys containers: `auto`, `cgroup` (cgroup v2 id) or `mntns`.
    pub container_key: KeyMode,
    /// Where run-queue waits come from: `auto`, `sched_info` or `hash`.
    pub runq_source: RunqSource,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            iface_capacity: sentinel_common::IFACE_MAP_CAPACITY,
            container_capacity: sentinel_common::CONTAINER_MAP_CAPACITY,
            container_key: KeyMode::Auto,
            runq_source: RunqSource::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics.
    pub enabled: bool,
    /// Listen address; loopback by default, never all interfaces unless configured.
    pub addr: String,
    /// Per-container series: the busiest N, plus every container labelled for healing.
    pub top_containers: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: "127.0.0.1:9464".into(),
            top_containers: 50,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Unix socket of `sentinel status` / `sentinel top` (mode 0600, directory 0700).
    pub socket: PathBuf,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/sentinel/sentinel.sock"),
        }
    }
}

/// A configuration problem, rendered on one line: `FILE: line N: key K: message`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The interval, validated by [`Config::validate`].
    pub fn interval(&self) -> Duration {
        parse_interval(&self.daemon.interval).unwrap_or(Duration::from_secs(1))
    }

    /// Every range and cross-field check; the first problem found per section.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if let Err(e) = parse_interval(&self.daemon.interval) {
            errors.push(("daemon.interval".into(), e));
        }
        if self.daemon.audit_log.as_os_str().is_empty() {
            errors.push((
                "daemon.audit_log".into(),
                "must be a file path (the healing audit trail cannot be turned off)".into(),
            ));
        }
        for (key, v) in [
            ("collector.iface_capacity", self.collector.iface_capacity),
            (
                "collector.container_capacity",
                self.collector.container_capacity,
            ),
        ] {
            if !(1..=1_000_000).contains(&v) {
                errors.push((key.into(), format!("{v} is outside 1..=1000000")));
            }
        }
        if self.metrics.enabled
            && let Err(e) = self.metrics.addr.parse::<std::net::SocketAddr>()
        {
            errors.push((
                "metrics.addr".into(),
                format!(
                    "{:?} is not an IP:port address ({e}); e.g. \"127.0.0.1:9464\"",
                    self.metrics.addr
                ),
            ));
        }
        if !(1..=10_000).contains(&self.metrics.top_containers) {
            errors.push((
                "metrics.top_containers".into(),
                format!("{} is outside 1..=10000", self.metrics.top_containers),
            ));
        }
        if !self.status.socket.is_absolute() {
            errors.push((
                "status.socket".into(),
                format!("{} is not an absolute path", self.status.socket.display()),
            ));
        }
        if let Some(h) = &self.docker.host
            && !(h.starts_with("unix://") || h.starts_with("tcp://") || h.starts_with("http://"))
        {
            errors.push((
                "docker.host".into(),
                format!("{:?} must start with unix://, tcp:// or http://", h),
            ));
        }
        if let Err(e) = self.detect.validate() {
            errors.push(("detect".into(), e));
        }
        if let Err(list) = self.heal.validate() {
            for e in list {
                errors.push((
                    format!("heal.{}", e.key.trim_start_matches("heal.")),
                    e.message,
                ));
            }
        }
        errors
    }
}

pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e} (examples: 500ms, 10s, 5m)"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is outside the allowed range 10ms..1h"));
    }
    Ok(d)
}

/// Which file to read: the one named on the command line, else the default path if it exists.
pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Path::new(DEFAULT_PATH)
            .exists()
            .then(|| PathBuf::from(DEFAULT_PATH)),
    }
}

/// Reads, parses and validates a config file. `allow_insecure` skips the ownership and mode
/// check (the file can name commands run inside containers, so by default only a file that
/// root owns and no one else can write is accepted).
pub fn load(path: &Path, allow_insecure: bool) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let err = |message: String| ConfigError {
        file: file.clone(),
        line: None,
        key: None,
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "{} bytes is larger than the {} byte limit for a config file",
            meta.len(),
            MAX_FILE_BYTES
        )));
    }
    if !allow_insecure {
        check_ownership(&meta).map_err(err)?;
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    parse_bytes(&bytes, &file)
}

/// Everything `sentinel config check` does after the file-system checks: the size bound, UTF-8,
/// parsing and validation. `file` names the input in errors. The fuzz target `config` calls this.
pub fn parse_bytes(bytes: &[u8], file: &str) -> Result<Config, ConfigError> {
    let err = |message: String| ConfigError {
        file: file.to_string(),
        line: None,
        key: None,
        message,
    };
    // Also checked on the file's metadata before reading; here for input that is not a file.
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(err(format!(
            "{} bytes is larger than the {} byte limit for a config file",
            bytes.len(),
            MAX_FILE_BYTES
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        err(format!(
            "not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    parse(text, file)
}

fn check_ownership(meta: &std::fs::Metadata) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "owned by uid {} (mode {mode:04o}); it must be owned by root or by the user running \
             sentinel, since it defines commands run inside containers (--allow-insecure-config \
             to override)",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group or others write it; run `chmod go-w` on it, since it \
             defines commands run inside containers (--allow-insecure-config to override)"
        ));
    }
    Ok(())
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    // A leading BOM is legal in a UTF-8 file but not in TOML; editors on other systems add it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let located = |e: toml::de::Error, key: Option<String>| ConfigError {
        file: file.to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
        key,
        message: one_line(e.message()),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| located(e, None))?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // The path holds the file's own keys (e.g. a label name), which may contain anything.
        let key = (path != ".").then(|| printable(&path));
        located(e.into_inner(), key)
    })?;
    if let Some(alias) = config.heal.docker_host.take() {
        let key = "heal.docker_host".to_string();
        if config.docker.host.as_ref().is_some_and(|h| *h != alias) {
            return Err(ConfigError {
                file: file.to_string(),
                line: key_line(text, &key),
                key: Some(key),
                message: "deprecated alias of docker.host, which is set to another value: \
                          keep only [docker] host"
                    .into(),
            });
        }
        tracing::warn!(
            "config {file}: heal.docker_host is deprecated; use `host` in a [docker] table"
        );
        config.docker.host = Some(alias);
    }
    if let Some((key, message)) = config.validate().into_iter().next() {
        return Err(ConfigError {
            file: file.to_string(),
            line: key_line(text, &key),
            key: Some(key),
            message: one_line(&message),
        });
    }
    Ok(config)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Best-effort line of `section.key` for a validation error (the key may be defaulted, i.e.
/// absent from the file; then there is no line).
fn key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.')?;
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        if current == section
            && line
                .split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        {
            return Some(i + 1);
        }
    }
    None
}

/// Error text on one line and bounded, whatever the input contained.
fn one_line(message: &str) -> String {
    crate::sanitize::one_line(message, 300)
}

/// A key path from the file on one line: control characters escaped, length bounded.
fn printable(key: &str) -> String {
    crate::sanitize::printable(key, 200)
}

/// The documented example config, shipped in the repository; a test keeps it valid.
pub const EXAMPLE: &str = include_str!("../../deploy/sentinel.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, "t.toml").expect_err("must be rejected")
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("", "t.toml").unwrap(), Config::default());
    }

    #[test]
    fn example_file_is_valid_and_matches_the_defaults_it_documents() {
        let cfg = parse(EXAMPLE, "sentinel.example.toml").unwrap();
        assert_eq!(cfg.daemon, DaemonConfig::default());
        assert_eq!(cfg.collector, CollectorConfig::default());
        assert_eq!(cfg.metrics, MetricsConfig::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[daemon]\ninterval = \"1s\"\nintervall = \"2s\"\n");
        let s = e.to_string();
        assert_eq!(e.line, Some(3), "{s}");
        assert!(s.starts_with("config t.toml: line 3"), "{s}");
        assert!(s.contains("intervall"), "{s}");
        assert!(s.contains("expected one of"), "{s}");
    }

    #[test]
    fn wrong_type_names_the_key_path() {
        let e = err("[collector]\niface_capacity = \"many\"\n");
        assert_eq!(e.key.as_deref(), Some("collector.iface_capacity"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = err("[detect]\nwarmup = -5\n");
        assert_eq!(e.key.as_deref(), Some("detect.warmup"), "{e}");
    }

    #[test]
    fn out_of_range_values_say_what_is_allowed() {
        for (text, key, allowed) in [
            (
                "[daemon]\ninterval = \"0s\"\n",
                "daemon.interval",
                "10ms..1h",
            ),
            (
                "[daemon]\ninterval = \"-1s\"\n",
                "daemon.interval",
                "examples",
            ),
            (
                "[daemon]\ninterval = \"99999999999999h\"\n",
                "daemon.interval",
                "",
            ),
            (
                "[collector]\ncontainer_capacity = 0\n",
                "collector.container_capacity",
                "1..=1000000",
            ),
            (
                "[metrics]\naddr = \"localhost\"\n",
                "metrics.addr",
                "IP:port",
            ),
        ] {
            let e = err(text);
            let s = e.to_string();
            assert_eq!(e.key.as_deref(), Some(key), "{s}");
            assert!(s.contains(allowed), "{s}");
            assert!(!s.contains('\n'), "one line: {s}");
        }
        let e = err("[collector]\ncontainer_capacity = 0\n");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn heal_and_detect_validation_is_part_of_the_check() {
        let e = err("[heal.breaker]\nfailure_threshold = 0\n");
        assert!(e.key.as_deref().unwrap_or("").starts_with("heal."), "{e}");
        let e = err("[detect]\nwarmup = 0\n");
        assert_eq!(e.key.as_deref(), Some("detect"), "{e}");
        assert!(e.to_string().contains("warmup"), "{e}");
    }

    #[test]
    fn hostile_bytes_are_rejected_on_one_line_without_panic() {
        let deep = format!("x = {}", "[".repeat(100_000));
        let inputs: Vec<String> = vec![
            deep,
            "a = \"\0\"\n".into(),
            "\u{feff}[daemon]\r\ninterval = \"2s\"\r\n".into(),
            "[daemon]\ninterval = \"\u{1b}[2J\"\n".into(),
            "[[[[[[".into(),
        ];
        for text in inputs {
            let started = std::time::Instant::now();
            match parse(&text, "t.toml") {
                Ok(cfg) => assert_eq!(cfg.daemon.interval, "2s", "BOM + CRLF parse"),
                Err(e) => {
                    let s = e.to_string();
                    assert!(!s.contains('\n') && !s.contains('\u{1b}'), "{s:?}");
                    assert!(s.len() < 600, "{s}");
                }
            }
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }

    /// The fuzz harness's one-line check caught this (input kept as
    /// fuzz/regressions/config/crash-control-chars-in-key-path.toml): a key path echoed from the
    /// file carried its control characters, and its full length, into the error line.
    #[test]
    fn key_paths_from_the_file_are_escaped_in_errors() {
        let e = err("[[heal.rules]]\nselector = { labels = { \"a\\u001b[2J\\nb\" = 1 } }\n");
        let s = e.to_string();
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert!(s.contains(r"labels.a\u{1b}[2J\nb"), "{s}");
        let long = format!(
            "[[heal.rules]]\nselector = {{ labels = {{ {} = 1 }} }}\n",
            "k".repeat(5000)
        );
        assert!(err(&long).to_string().len() < 600);
    }

    #[test]
    fn insecure_files_are_refused_unless_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "[daemon]\ninterval = \"2s\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = load(&path, false).expect_err("world-writable");
        assert!(e.to_string().contains("mode 0666"), "{e}");
        assert_eq!(load(&path, true).unwrap().daemon.interval, "2s");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&path, false).unwrap().daemon.interval, "2s");
        std::fs::write(&path, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(
            load(&path, false)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        std::fs::write(&path, b"a = \"\xff\"\n").unwrap();
        assert!(
            load(&path, false)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }

    #[test]
    fn every_key_is_documented_in_the_example() {
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines() {
            let key = line.split_once(" = ").map(|(k, _)| k).unwrap_or(line);
            if key.is_empty() {
                continue;
            }
            let documented = EXAMPLE.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} =")) || l == key
            });
            assert!(
                documented,
                "{key} missing from deploy/sentinel.example.toml"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10_000))]
        /// FAULT-MATRIX C6: every valid config survives serialize -> parse unchanged.
        #[test]
        fn valid_configs_round_trip(
            ms in 10u64..3_600_000,
            output in 0usize..3,
            docker: bool,
            iface in 1u32..=1_000_000,
            containers in 1u32..=1_000_000,
            key in 0usize..3,
            metrics: bool,
            port in 1u16..,
            top in 1u32..=10_000,
            dry_run: bool,
            label in "[a-z][a-z0-9._-]{0,30}",
            audit in "/[a-z0-9_/]{1,40}",
        ) {
            let mut cfg = Config::default();
            cfg.daemon.interval = format!("{ms}ms");
            cfg.daemon.output = [OutputFormat::Text, OutputFormat::Json, OutputFormat::None][output];
            cfg.daemon.docker = docker;
            cfg.daemon.audit_log = PathBuf::from(audit);
            cfg.collector.iface_capacity = iface;
            cfg.collector.container_capacity = containers;
            cfg.collector.container_key = [KeyMode::Auto, KeyMode::Cgroup, KeyMode::Mntns][key];
            cfg.metrics.enabled = metrics;
            cfg.metrics.addr = format!("127.0.0.1:{port}");
            cfg.metrics.top_containers = top;
            cfg.heal.dry_run = dry_run;
            cfg.heal.label = label;
            proptest::prop_assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
            let text = toml::to_string(&cfg).unwrap();
            proptest::prop_assert_eq!(parse(&text, "t.toml").unwrap(), cfg);
        }
    }

    /// One key for the one Docker connection; `heal.docker_host` still works, as an alias.
    #[test]
    fn docker_host_and_its_deprecated_alias() {
        let cfg = parse("[docker]\nhost = \"tcp://127.0.0.1:2375\"\n", "t.toml").unwrap();
        assert_eq!(cfg.docker.host.as_deref(), Some("tcp://127.0.0.1:2375"));
        let cfg = parse("[heal]\ndocker_host = \"unix:///run/d.sock\"\n", "t.toml").unwrap();
        assert_eq!(cfg.docker.host.as_deref(), Some("unix:///run/d.sock"));
        assert_eq!(cfg.heal.docker_host, None, "moved, not read twice");
        // `config show` prints the new key only.
        let shown = toml::to_string(&cfg).unwrap();
        assert!(
            shown.contains("[docker]\nhost = \"unix:///run/d.sock\""),
            "{shown}"
        );
        assert!(!shown.contains("docker_host"), "{shown}");
        let same = "[docker]\nhost = \"unix:///a\"\n[heal]\ndocker_host = \"unix:///a\"\n";
        assert_eq!(
            parse(same, "t.toml").unwrap().docker.host.as_deref(),
            Some("unix:///a")
        );
        let e = err("[docker]\nhost = \"unix:///a\"\n[heal]\ndocker_host = \"unix:///b\"\n");
        assert_eq!(e.key.as_deref(), Some("heal.docker_host"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = err("[docker]\nhost = \"ssh://box\"\n");
        assert_eq!(e.key.as_deref(), Some("docker.host"), "{e}");
        assert!(e.to_string().contains("unix://"), "{e}");
    }

    #[test]
    fn round_trip_of_the_defaults() {
        let cfg = Config::default();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(parse(&text, "t.toml").unwrap(), cfg);
    }
}
