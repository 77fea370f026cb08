//! `[heal]` configuration: data with defaults in one place, validated with errors that name the
//! key and its allowed range.
//!
//! Every duration is a number of seconds (`*_secs`, fractions allowed) so tests can shrink the
//! timings to sub-second values without a second code path.
//!
//! `HealConfig::default()` is the autoheal-parity configuration: exactly one rule, restart
//! containers labelled `sentinel.heal=true` that Docker reports `unhealthy`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{detect::engine::CONTAINER_SIGNALS, model::ActionKind};

/// The whole healing configuration (`[heal]` in the TOML file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealConfig {
    /// Master switch; when false the engine never talks to Docker and never acts.
    pub enabled: bool,
    /// Opt-in label name. Only the exact value `true`, set on the container, opts in.
    pub label: String,
    /// Accept the opt-in label when it only comes from the image (`LABEL` in a Dockerfile).
    /// Off by default: consent must come from whoever ran the container (FAULT-MATRIX L2).
    pub allow_image_label: bool,
    /// Decide and audit everything, act on nothing.
    pub dry_run: bool,
    /// Deprecated alias of `[docker] host`: the config loader moves it there (with one
    /// warning), so nothing reads it here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// Time-out of every Docker API call that is not an action (inspect, list, ping), seconds.
    pub api_timeout_secs: f64,
    /// Reconnect back-off while Docker is unreachable: first wait and cap, seconds.
    pub reconnect_initial_secs: f64,
    pub reconnect_max_secs: f64,
    /// Actions running at the same time (tokio Semaphore size).
    pub max_concurrent_actions: usize,
    /// How long a due action may wait for a concurrency permit before it is dropped
    /// (`not_recorded: permit_wait_timeout`, never a breaker failure).
    pub permit_wait_secs: f64,
    /// Hard time-out on every action (restart, stop, exec, ...), seconds.
    pub action_timeout_secs: f64,
    /// After an action, the container is not judged again for this long (post-action grace,
    /// FAULT-MATRIX D15).
    pub grace_secs: f64,
    /// After an action completes, the container must stay free of triggers for this long for the
    /// action to count as a success for its breaker; a new trigger inside it is a failure.
    pub verify_secs: f64,
    /// CrashLoopBackOff-like per-container back-off between actions.
    pub backoff: BackoffConfig,
    /// Per-container circuit breaker.
    pub breaker: BreakerConfig,
    /// Host-wide circuit breaker (failures of all containers together).
    pub global_breaker: BreakerConfig,
    /// Host-wide cap on actions in a sliding window.
    pub global_cap: RateCapConfig,
    /// Correlated-anomaly guard: if more than this fraction of labelled containers trip in the
    /// same evaluation (and at least `storm_min_containers`), act on none of them (D8).
    pub storm_fraction: f64,
    pub storm_min_containers: usize,
    /// Trips of different containers within this many seconds count as one storm.
    pub storm_window_secs: f64,
    /// A labelled container that becomes due waits this long before it is acted on, so that
    /// containers tripping together are all counted first (0 = act at once; the storm guard
    /// then only stops the containers after the first `storm_min_containers - 1`).
    pub storm_hold_secs: f64,
    /// How many recent decisions `snapshot()` carries.
    pub recent_actions: usize,
    /// The rules. Empty list = no healing at all (but Docker is still watched).
    pub rules: Vec<RuleConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Wait after the first action before the next one may run, seconds.
    pub initial_secs: f64,
    /// Growth factor per further action.
    pub multiplier: f64,
    /// Cap of the wait, seconds.
    pub max_secs: f64,
    /// A container with no action for this long starts again from `initial_secs`.
    pub reset_after_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures within `window_secs` that open the breaker.
    pub failure_threshold: u32,
    pub window_secs: f64,
    /// First OPEN wait, seconds; doubles on every re-open from HALF_OPEN, capped at
    /// `open_max_secs` (so it is never OPEN forever).
    pub open_secs: f64,
    pub open_max_secs: f64,
    /// Trial actions allowed in HALF_OPEN.
    pub half_open_trials: u32,
    /// Successful trials that close the breaker.
    pub close_after_successes: u32,
    /// A HALF_OPEN trial that reports no outcome within this goes back to OPEN (D11).
    pub half_open_max_wait_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateCapConfig {
    pub max_actions: u32,
    pub window_secs: f64,
}

/// One rule: which containers, what starts it, what to do, and its own limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub selector: Selector,
    pub trigger: Trigger,
    pub action: ActionConfig,
    /// Minimum time between two actions of this rule on one container, seconds (0 = none; the
    /// back-off still applies).
    #[serde(default)]
    pub cooldown_secs: f64,
    /// At most `max_actions` actions of this rule per container in `limit_window_secs`
    /// (0 = unlimited).
    #[serde(default)]
    pub max_actions: u32,
    #[serde(default = "default_limit_window")]
    pub limit_window_secs: f64,
}

fn default_limit_window() -> f64 {
    600.0
}

/// Container selector. Empty = every opted-in container. All given labels must match exactly;
/// `names` (without the leading `/`) is an allow-list when not empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    pub labels: BTreeMap<String, String>,
    pub names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Docker health status `unhealthy` (docker-autoheal parity).
    Unhealthy,
    /// An anomaly on `signal` for this container, sustained for `intervals` intervals.
    Anomaly {
        signal: Signal,
        #[serde(default = "one")]
        intervals: u32,
    },
    /// The container died (non-zero exit or OOM-killed) and its restart policy will not bring it
    /// back.
    Died {
        #[serde(default)]
        oom_only: bool,
    },
    /// HTTP(S) GET of `url` failing (no answer, non-2xx/3xx) or slower than `max_latency_ms`,
    /// for `intervals` consecutive intervals. Loopback or container addresses only (names are
    /// resolved, then checked).
    HttpProbe {
        url: String,
        #[serde(default = "default_probe_timeout")]
        timeout_ms: u64,
        #[serde(default)]
        max_latency_ms: Option<u64>,
        #[serde(default = "one")]
        intervals: u32,
        /// PEM file of CA certificates trusted for an `https://` url on top of the system's
        /// store (a private CA).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<std::path::PathBuf>,
    },
}

fn one() -> u32 {
    1
}
fn default_probe_timeout() -> u64 {
    2000
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    Restart {
        #[serde(default = "default_stop_timeout")]
        stop_timeout_secs: u32,
    },
    Stop {
        #[serde(default = "default_stop_timeout")]
        stop_timeout_secs: u32,
    },
    Start,
    Kill {
        #[serde(default = "default_signal")]
        signal: String,
    },
    /// Run `cmd` (argv, no shell) inside the container; its exit code is audited. Commands come
    /// only from this root-owned file, never from labels.
    Exec {
        cmd: Vec<String>,
    },
    /// Noisy neighbours (issue 20): cap the CPU of the container that a `runq_latency` anomaly
    /// names as the top contender, through Docker's `CpuQuota`/`CpuPeriod`. Only when the
    /// waiting container carries `protect_label=true` and the contender the opt-in label. The
    /// cap is lifted after `lift_after_intervals` intervals without the anomaly, on shutdown,
    /// and at the next start-up if the audit log shows it was never lifted.
    CapContender {
        /// CPUs the contender may use while capped (quota = cpus x period).
        cpus: f64,
        #[serde(default = "default_cap_period")]
        period_us: i64,
        #[serde(default = "default_lift_after")]
        lift_after_intervals: u32,
        #[serde(default = "default_protect_label")]
        protect_label: String,
        /// The contender's share of the protected container's run-queue wait in the interval
        /// (0..=1) at or above which it is capped: the main cause, not one of many.
        #[serde(default = "default_min_share")]
        min_share: f64,
        /// The wait behind the contender, as a percentage of the interval, at or above which it
        /// is capped: a neighbour that cost the protected container a sliver is left alone.
        #[serde(default = "default_min_wait_percent")]
        min_wait_percent: f64,
    },
}

fn default_min_share() -> f64 {
    0.5
}
fn default_min_wait_percent() -> f64 {
    1.0
}

fn default_cap_period() -> i64 {
    100_000
}
fn default_lift_after() -> u32 {
    3
}
pub fn default_protect_label() -> String {
    "sentinel.protect".into()
}

fn default_stop_timeout() -> u32 {
    10
}
fn default_signal() -> String {
    "SIGKILL".into()
}

impl ActionConfig {
    /// A `cap_contender` action's (CpuQuota, CpuPeriod), microseconds.
    pub fn cpu_quota(&self) -> Option<(i64, i64)> {
        match self {
            ActionConfig::CapContender {
                cpus, period_us, ..
            } => Some(((cpus * *period_us as f64).round() as i64, *period_us)),
            _ => None,
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            ActionConfig::Restart { .. } => ActionKind::Restart,
            ActionConfig::Stop { .. } => ActionKind::Stop,
            ActionConfig::Start => ActionKind::Start,
            ActionConfig::Kill { .. } => ActionKind::Kill,
            ActionConfig::Exec { .. } => ActionKind::Exec,
            ActionConfig::CapContender { .. } => ActionKind::CapContender,
        }
    }
}

impl Default for HealConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            label: "sentinel.heal".into(),
            allow_image_label: false,
            dry_run: false,
            docker_host: None,
            api_timeout_secs: 10.0,
            reconnect_initial_secs: 1.0,
            reconnect_max_secs: 30.0,
            max_concurrent_actions: 2,
            permit_wait_secs: 30.0,
            action_timeout_secs: 60.0,
            grace_secs: 10.0,
            verify_secs: 60.0,
            backoff: BackoffConfig::default(),
            breaker: BreakerConfig::default(),
            global_breaker: BreakerConfig::global_default(),
            global_cap: RateCapConfig::default(),
            storm_fraction: 0.5,
            storm_min_containers: 4,
            storm_window_secs: 10.0,
            storm_hold_secs: 1.0,
            recent_actions: 20,
            rules: vec![RuleConfig::autoheal()],
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        // FAULT-MATRIX D7: 10, 20, 40 s ... for a flapper; <= 7 restarts in 10 minutes.
        Self {
            initial_secs: 10.0,
            multiplier: 2.0,
            max_secs: 300.0,
            reset_after_secs: 600.0,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            window_secs: 600.0,
            open_secs: 60.0,
            open_max_secs: 1800.0,
            half_open_trials: 1,
            close_after_successes: 1,
            half_open_max_wait_secs: 300.0,
        }
    }
}

impl BreakerConfig {
    pub fn global_default() -> Self {
        Self {
            failure_threshold: 10,
            ..Self::default()
        }
    }
}

impl Default for RateCapConfig {
    fn default() -> Self {
        // FAULT-MATRIX D8: <= 10 actions host-wide in any 10 minutes.
        Self {
            max_actions: 10,
            window_secs: 600.0,
        }
    }
}

impl RuleConfig {
    /// The one rule that is on with no config file: restart opted-in unhealthy containers.
    pub fn autoheal() -> Self {
        Self {
            name: "autoheal".into(),
            selector: Selector::default(),
            trigger: Trigger::Unhealthy,
            action: ActionConfig::Restart {
                stop_timeout_secs: default_stop_timeout(),
            },
            cooldown_secs: 0.0,
            max_actions: 0,
            limit_window_secs: default_limit_window(),
        }
    }
}

/// One configuration error: the key (dotted path) and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("heal.{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Seconds as a `Duration`; callers only pass validated, finite, non-negative values.
pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 1e9))
}

struct Checker(Vec<ConfigError>);

impl Checker {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }
    fn range(&mut self, key: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && v >= lo && v <= hi) {
            self.err(
                key,
                format!("{v} is outside the allowed range {lo}..={hi} (seconds)"),
            );
        }
    }
    fn urange(&mut self, key: &str, v: u64, lo: u64, hi: u64) {
        if v < lo || v > hi {
            self.err(key, format!("{v} is outside the allowed range {lo}..={hi}"));
        }
    }
}

const DAY: f64 = 86_400.0;

impl HealConfig {
    /// All problems at once, each naming its key and the allowed range.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut c = Checker(Vec::new());
        if self.label.is_empty()
            || self.label.len() > 256
            || self.label.chars().any(char::is_control)
        {
            c.err("label", "must be 1..=256 printable characters");
        }
        if let Some(h) = &self.docker_host
            && !(h.starts_with("unix://") || h.starts_with("tcp://") || h.starts_with("http://"))
        {
            c.err("docker_host", "must start with unix://, tcp:// or http://");
        }
        c.range("api_timeout_secs", self.api_timeout_secs, 0.1, 600.0);
        c.range(
            "reconnect_initial_secs",
            self.reconnect_initial_secs,
            0.01,
            600.0,
        );
        c.range("reconnect_max_secs", self.reconnect_max_secs, 0.01, 3600.0);
        if self.reconnect_max_secs < self.reconnect_initial_secs {
            c.err("reconnect_max_secs", "must be >= reconnect_initial_secs");
        }
        c.urange(
            "max_concurrent_actions",
            self.max_concurrent_actions as u64,
            1,
            64,
        );
        c.range("permit_wait_secs", self.permit_wait_secs, 0.0, 3600.0);
        c.range("action_timeout_secs", self.action_timeout_secs, 0.1, 3600.0);
        c.range("grace_secs", self.grace_secs, 0.0, DAY);
        c.range("verify_secs", self.verify_secs, 0.0, DAY);
        let b = &self.backoff;
        c.range("backoff.initial_secs", b.initial_secs, 0.0, DAY);
        c.range("backoff.max_secs", b.max_secs, 0.0, DAY);
        if !(b.multiplier.is_finite() && (1.0..=10.0).contains(&b.multiplier)) {
            c.err(
                "backoff.multiplier",
                format!("{} is outside 1.0..=10.0", b.multiplier),
            );
        }
        if b.max_secs < b.initial_secs {
            c.err("backoff.max_secs", "must be >= backoff.initial_secs");
        }
        c.range(
            "backoff.reset_after_secs",
            b.reset_after_secs,
            0.0,
            7.0 * DAY,
        );
        for (name, br) in [
            ("breaker", &self.breaker),
            ("global_breaker", &self.global_breaker),
        ] {
            c.urange(
                &format!("{name}.failure_threshold"),
                br.failure_threshold.into(),
                1,
                1000,
            );
            c.range(
                &format!("{name}.window_secs"),
                br.window_secs,
                0.01,
                7.0 * DAY,
            );
            c.range(&format!("{name}.open_secs"), br.open_secs, 0.01, DAY);
            c.range(
                &format!("{name}.open_max_secs"),
                br.open_max_secs,
                0.01,
                DAY,
            );
            if br.open_max_secs < br.open_secs {
                c.err(format!("{name}.open_max_secs"), "must be >= open_secs");
            }
            c.urange(
                &format!("{name}.half_open_trials"),
                br.half_open_trials.into(),
                1,
                100,
            );
            c.urange(
                &format!("{name}.close_after_successes"),
                br.close_after_successes.into(),
                1,
                br.half_open_trials.max(1).into(),
            );
            c.range(
                &format!("{name}.half_open_max_wait_secs"),
                br.half_open_max_wait_secs,
                0.01,
                DAY,
            );
        }
        c.urange(
            "global_cap.max_actions",
            self.global_cap.max_actions.into(),
            1,
            100_000,
        );
        c.range(
            "global_cap.window_secs",
            self.global_cap.window_secs,
            0.01,
            7.0 * DAY,
        );
        if !(self.storm_fraction.is_finite()
            && self.storm_fraction > 0.0
            && self.storm_fraction <= 1.0)
        {
            c.err(
                "storm_fraction",
                format!("{} is outside (0.0, 1.0]", self.storm_fraction),
            );
        }
        c.range("storm_window_secs", self.storm_window_secs, 0.0, DAY);
        c.range("storm_hold_secs", self.storm_hold_secs, 0.0, 600.0);
        if self.storm_window_secs < self.storm_hold_secs {
            c.err("storm_window_secs", "must be >= storm_hold_secs");
        }
        c.urange("recent_actions", self.recent_actions as u64, 0, 10_000);
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let k = format!("rules[{i}]");
            if r.name.is_empty() || !names.insert(r.name.clone()) {
                c.err(format!("{k}.name"), "must be non-empty and unique");
            }
            c.range(&format!("{k}.cooldown_secs"), r.cooldown_secs, 0.0, DAY);
            c.range(
                &format!("{k}.limit_window_secs"),
                r.limit_window_secs,
                0.01,
                7.0 * DAY,
            );
            match &r.trigger {
                Trigger::Unhealthy | Trigger::Died { .. } => {}
                Trigger::Anomaly { intervals, .. } => {
                    c.urange(
                        &format!("{k}.trigger.intervals"),
                        (*intervals).into(),
                        1,
                        1000,
                    );
                }
                Trigger::HttpProbe {
                    url,
                    timeout_ms,
                    max_latency_ms,
                    intervals,
                    ca_file,
                } => {
                    match parse_probe_url(url) {
                        Err(m) => c.err(format!("{k}.trigger.url"), m),
                        Ok(t) => match ca_file {
                            Some(_) if !t.https => c.err(
                                format!("{k}.trigger.ca_file"),
                                "only applies to an https:// url",
                            ),
                            Some(p) => {
                                if let Err(m) = super::probe::read_ca_file(p) {
                                    c.err(format!("{k}.trigger.ca_file"), m);
                                }
                            }
                            None => {}
                        },
                    }
                    c.urange(&format!("{k}.trigger.timeout_ms"), *timeout_ms, 1, 60_000);
                    if let Some(l) = max_latency_ms {
                        c.urange(&format!("{k}.trigger.max_latency_ms"), *l, 1, *timeout_ms);
                    }
                    c.urange(
                        &format!("{k}.trigger.intervals"),
                        (*intervals).into(),
                        1,
                        1000,
                    );
                }
            }
            match &r.action {
                ActionConfig::Restart { stop_timeout_secs }
                | ActionConfig::Stop { stop_timeout_secs } => c.urange(
                    &format!("{k}.action.stop_timeout_secs"),
                    (*stop_timeout_secs).into(),
                    0,
                    3600,
                ),
                ActionConfig::Start => {}
                ActionConfig::Kill { signal } => {
                    if !valid_signal(signal) {
                        c.err(
                            format!("{k}.action.signal"),
                            "must be a signal name like SIGTERM/SIGKILL/SIGHUP or a number 1..=64",
                        );
                    }
                }
                ActionConfig::Exec { cmd } => {
                    if cmd.is_empty() || cmd[0].is_empty() {
                        c.err(format!("{k}.action.cmd"), "must be a non-empty argv list");
                    }
                }
                ActionConfig::CapContender {
                    cpus,
                    period_us,
                    lift_after_intervals,
                    protect_label,
                    min_share,
                    min_wait_percent,
                } => {
                    if !matches!(&r.trigger, Trigger::Anomaly { signal, .. } if signal.as_str() == "runq_latency")
                    {
                        c.err(
                            format!("{k}.trigger"),
                            "a cap_contender rule needs trigger kind \"anomaly\" on signal \"runq_latency\"",
                        );
                    }
                    c.urange(
                        &format!("{k}.action.period_us"),
                        (*period_us).max(0) as u64,
                        1000,
                        1_000_000,
                    );
                    // Docker refuses a quota under 1 ms.
                    let quota = cpus * *period_us as f64;
                    if !(cpus.is_finite() && *cpus <= 1024.0 && quota >= 1000.0) {
                        c.err(
                            format!("{k}.action.cpus"),
                            format!("{cpus} is outside the allowed range (cpus x period_us >= 1000 and cpus <= 1024)"),
                        );
                    }
                    c.urange(
                        &format!("{k}.action.lift_after_intervals"),
                        (*lift_after_intervals).into(),
                        1,
                        10_000,
                    );
                    if protect_label.is_empty()
                        || protect_label.len() > 256
                        || protect_label.chars().any(char::is_control)
                        || *protect_label == self.label
                    {
                        c.err(
                            format!("{k}.action.protect_label"),
                            "must be 1..=256 printable characters, not the opt-in label",
                        );
                    }
                    if !(*min_share > 0.0 && *min_share <= 1.0) {
                        c.err(
                            format!("{k}.action.min_share"),
                            format!(
                                "{min_share} is outside the allowed range (0 < min_share <= 1)"
                            ),
                        );
                    }
                    if !(0.0..=100.0).contains(min_wait_percent) {
                        c.err(
                            format!("{k}.action.min_wait_percent"),
                            format!("{min_wait_percent} is outside the allowed range (0..=100)"),
                        );
                    }
                }
            }
        }
        if c.0.is_empty() { Ok(()) } else { Err(c.0) }
    }

    pub fn action_timeout(&self) -> Duration {
        secs(self.action_timeout_secs)
    }
    pub fn permit_wait(&self) -> Duration {
        secs(self.permit_wait_secs)
    }
    pub fn api_timeout(&self) -> Duration {
        secs(self.api_timeout_secs)
    }
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let s = s.strip_prefix("SIG").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 10
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+')
}

/// A per-container signal the detection engine scores, by name. Only the names detection
/// defines (`detect::engine::CONTAINER_SIGNALS`, the one list) parse: a typo in a rule is a
/// config error listing the allowed names, not a trigger that never fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(&'static str);

impl Signal {
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::str::FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CONTAINER_SIGNALS
            .iter()
            .find(|&&name| name == s)
            .map(|&name| Signal(name))
            .ok_or_else(|| {
                format!(
                    "unknown signal {:?}: expected one of {}",
                    crate::sanitize::truncate(s, 64),
                    CONTAINER_SIGNALS.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A probe target: `http[s]://HOST[:PORT][/path]`. HOST is a literal IP, which must be loopback
/// or in a private/container range, or a name, resolved at each probe and used only for its
/// addresses in those ranges: DNS cannot steer a probe elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub https: bool,
    pub host: ProbeHost,
    pub port: u16,
    /// `HOST[:PORT]` as written: the Host header.
    pub authority: String,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeHost {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for ProbeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeHost::Ip(ip) => ip.fmt(f),
            ProbeHost::Name(n) => f.write_str(n),
        }
    }
}

pub fn parse_probe_url(url: &str) -> Result<ProbeTarget, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("path must not contain spaces or control characters".into());
    }
    let (host, port, bracketed) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or("unterminated [ipv6] address")?;
        (h, p.strip_prefix(':').unwrap_or(p), true)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p, false),
            None => (hostport, "", false),
        }
    };
    let port: u16 = match port {
        "" if https => 443,
        "" => 80,
        p => p
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {p:?} is not 1..=65535"))?,
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) if !probe_ip_allowed(ip) => {
            return Err(format!("{ip} is not allowed: only {PROBE_RANGES}"));
        }
        Ok(ip) => ProbeHost::Ip(ip),
        Err(_) if !bracketed && valid_host_name(host) => ProbeHost::Name(host.to_ascii_lowercase()),
        Err(_) => {
            return Err(format!(
                "host {:?} is neither an IP address nor a host name",
                crate::sanitize::truncate(host, 64)
            ));
        }
    };
    Ok(ProbeTarget {
        https,
        host,
        port,
        authority: hostport.to_string(),
        path: path.to_string(),
    })
}

/// What a probe may reach, for error messages.
pub const PROBE_RANGES: &str =
    "loopback (127.0.0.0/8, ::1) or container addresses (10/8, 172.16/12, 192.168/16, fc00::/7)";

pub fn probe_ip_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => probe_ip_allowed(IpAddr::V4(v4)),
            None => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn valid_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // All digits and dots is a malformed IPv4 address, not a name.
        && !h.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_is_the_single_autoheal_rule() {
        let c = HealConfig::default();
        c.validate().unwrap();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].trigger, Trigger::Unhealthy);
        assert_eq!(c.rules[0].action.kind(), ActionKind::Restart);
        assert_eq!(c.label, "sentinel.heal");
        assert!(!c.allow_image_label);
    }

    #[test]
    fn empty_toml_equals_default_and_round_trips() {
        let c: HealConfig = toml::from_str("").unwrap();
        assert_eq!(c, HealConfig::default());
        let s = toml::to_string(&c).unwrap();
        let back: HealConfig = toml::from_str(&s).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn full_rules_parse() {
        let src = r#"
            dry_run = true
            [breaker]
            failure_threshold = 2
            [[rules]]
            name = "web-probe"
            selector = { labels = { app = "web" }, names = ["web1"] }
            trigger = { kind = "http_probe", url = "http://127.0.0.1:8080/health", max_latency_ms = 500, intervals = 3 }
            action = { kind = "exec", cmd = ["/bin/sh", "-c", "kill -HUP 1"] }
            cooldown_secs = 30
            [[rules]]
            name = "oom"
            trigger = { kind = "died", oom_only = true }
            action = { kind = "start" }
            [[rules]]
            name = "cpu"
            trigger = { kind = "anomaly", signal = "cpu", intervals = 2 }
            action = { kind = "kill", signal = "SIGTERM" }
        "#;
        let c: HealConfig = toml::from_str(src).unwrap();
        c.validate().unwrap();
        assert_eq!(c.rules.len(), 3);
        assert_eq!(c.breaker.failure_threshold, 2);
        assert_eq!(c.breaker.open_secs, BreakerConfig::default().open_secs);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<HealConfig>("lable = \"x\"").is_err());
        assert!(toml::from_str::<HealConfig>("[breaker]\nthreshold = 1").is_err());
    }

    #[test]
    fn validation_names_key_and_range() {
        let mut c = HealConfig {
            max_concurrent_actions: 0,
            ..HealConfig::default()
        };
        c.breaker.open_secs = -1.0;
        c.rules.push(RuleConfig {
            name: "p".into(),
            trigger: Trigger::HttpProbe {
                url: "http://8.8.8.8/".into(),
                timeout_ms: 100,
                max_latency_ms: None,
                intervals: 1,
                ca_file: None,
            },
            ..RuleConfig::autoheal()
        });
        let errs = c.validate().unwrap_err();
        let text: Vec<String> = errs.iter().map(std::string::ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("heal.max_concurrent_actions:") && t.contains("1..=64")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("heal.breaker.open_secs:")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("heal.rules[1].trigger.url:") && t.contains("8.8.8.8")),
            "{text:?}"
        );
    }

    /// An anomaly trigger names a signal detection defines; a typo is an error listing them.
    #[test]
    fn anomaly_signal_is_one_of_the_detected_signals() {
        for &name in CONTAINER_SIGNALS.iter() {
            let src = format!(
                "[[rules]]\nname = \"r\"\ntrigger = {{ kind = \"anomaly\", signal = \"{name}\" }}\naction = {{ kind = \"restart\" }}\n"
            );
            let c: HealConfig = toml::from_str(&src).unwrap();
            assert!(
                matches!(c.rules[0].trigger, Trigger::Anomaly { signal, .. } if signal.as_str() == name)
            );
        }
        let typo = "[[rules]]\nname = \"r\"\ntrigger = { kind = \"anomaly\", signal = \"cpuu\" }\naction = { kind = \"restart\" }\n";
        let e = toml::from_str::<HealConfig>(typo).unwrap_err().to_string();
        assert!(
            e.contains("cpuu") && e.contains(&CONTAINER_SIGNALS.join(", ")),
            "{e}"
        );
        assert!("".parse::<Signal>().is_err());
        assert_eq!(
            "runq_latency".parse::<Signal>().unwrap().to_string(),
            "runq_latency"
        );
    }

    /// A signal is written back as its name, and the deprecated alias is not written at all.
    #[test]
    fn signals_round_trip_and_the_alias_is_not_written() {
        let mut c = HealConfig::default();
        c.rules.push(RuleConfig {
            name: "cpu".into(),
            trigger: Trigger::Anomaly {
                signal: "tcp_retrans".parse().unwrap(),
                intervals: 2,
            },
            ..RuleConfig::autoheal()
        });
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("signal = \"tcp_retrans\""), "{text}");
        assert!(!text.contains("docker_host"), "{text}");
        assert_eq!(toml::from_str::<HealConfig>(&text).unwrap(), c);
    }

    #[test]
    fn probe_urls() {
        assert!(parse_probe_url("http://127.0.0.1:8080/h").is_ok());
        assert!(parse_probe_url("http://[::1]:80/").is_ok());
        assert!(parse_probe_url("http://172.17.0.2/").is_ok());
        assert!(parse_probe_url("http://1.1.1.1/").is_err());
        assert!(parse_probe_url("http://[::ffff:1.1.1.1]/").is_err());
        assert!(parse_probe_url("ftp://127.0.0.1/").is_err());
        assert!(parse_probe_url("http://127.0.0.1/a b").is_err());
        assert!(parse_probe_url("http://127.0.0.1:0/").is_err());
        assert!(parse_probe_url("http://user@127.0.0.1/").is_err());
        assert!(parse_probe_url("http://999.1.1.1/").is_err());
        assert!(parse_probe_url("http://-web/").is_err());
        assert!(parse_probe_url("http://[localhost]/").is_err());
        let t = parse_probe_url("http://127.0.0.1:81").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.port, 81);
        assert!(!t.https);
        // Names are kept for resolution at probe time; https defaults to 443.
        let t = parse_probe_url("https://Web-1.internal/health?full=1").unwrap();
        assert_eq!(t.host, ProbeHost::Name("web-1.internal".into()));
        assert_eq!((t.https, t.port), (true, 443));
        assert_eq!(t.authority, "Web-1.internal");
        assert_eq!(t.path, "/health?full=1");
    }

    /// `ca_file` is checked at load: it must exist, hold PEM certificates, and go with https.
    #[test]
    fn probe_ca_file_is_validated_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |url: &str, ca: &std::path::Path| RuleConfig {
            name: "p".into(),
            trigger: Trigger::HttpProbe {
                url: url.into(),
                timeout_ms: 100,
                max_latency_ms: None,
                intervals: 1,
                ca_file: Some(ca.to_path_buf()),
            },
            ..RuleConfig::autoheal()
        };
        let check = |r: RuleConfig| {
            let c = HealConfig {
                rules: vec![r],
                ..HealConfig::default()
            };
            c.validate().map_err(|e| {
                assert_eq!(e.len(), 1, "{e:?}");
                format!("{}: {}", e[0].key, e[0].message)
            })
        };
        let missing = dir.path().join("missing.pem");
        let e = check(rule("https://localhost/", &missing)).unwrap_err();
        assert!(e.starts_with("rules[0].trigger.ca_file: "), "{e}");
        assert!(
            e.contains("missing.pem") && e.contains("No such file"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = check(rule("https://localhost/", &junk)).unwrap_err();
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");
        let good = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&good, cert.cert.pem()).unwrap();
        check(rule("https://localhost/", &good)).unwrap();
        let e = check(rule("http://localhost/", &good)).unwrap_err();
        assert!(e.contains("only applies to an https:// url"), "{e}");
    }
}
