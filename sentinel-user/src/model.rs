//! The hand-off types between stages, both ways. `Interval` is the spine: one drained period of
//! kernel counters, per-interface deltas, run-queue latency and system gauges. Every later stage
//! (exporters, detection, healing) reads it; none reaches back into the collector. Detection and
//! healing hand their results back in the same interval, typed (`AnomalyRecord`, `HealState`,
//! `AuditRecord`); JSON is only the exporters' business. `Published` is what the daemon hands
//! to the exporters after every interval.

use std::{collections::BTreeMap, sync::Arc};

use sentinel_common::ContainerStats;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::detect::SeriesState;

/// The public counters (the JSON `counters` object), as the signal registry lists them; the
/// rest are collector health.
pub const PUBLIC_COUNTERS: [usize; sentinel_common::registry::PUBLIC_COUNT] =
    sentinel_common::registry::PUBLIC;

/// What the daemon publishes after every interval, for the metrics endpoint, the status
/// socket and `sentinel top`. Readers take the latest (`tokio::sync::watch`): a slow reader
/// never holds up the drain and never makes the daemon buffer. Healing's state and decisions
/// travel inside the interval (`healing`, `actions`).
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub interval: Interval,
    /// Every series the detection engine tracks: name, life-cycle state, last score; in no
    /// particular order (sorting thousands of names every interval for a status nobody may
    /// ask for cost more than detecting; the status socket sorts what it sends).
    pub series: Vec<SeriesStatus>,
    /// The interval's raw run-queue latency histogram (log2 buckets, see `hist_bucket_range`),
    /// for the Prometheus histogram; the JSON interval only carries its summary.
    #[serde(skip)]
    pub runq_hist: Vec<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeriesStatus {
    pub name: std::sync::Arc<str>,
    pub state: SeriesState,
    pub score: f64,
}

pub type PublishedRx = watch::Receiver<Option<Arc<Published>>>;

/// One drained interval, exactly as printed by `sentinel run --output json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// End of the interval, RFC 3339 (UTC).
    pub ts: String,
    /// Measured length of the interval (monotonic clock), milliseconds.
    pub interval_ms: f64,
    /// Sequence number, 0 for the first interval of a run.
    pub seq: u64,
    /// Per-interval deltas by counter name; `null` when the signal is disabled (its hook could
    /// not attach), never a misleading 0.
    pub counters: BTreeMap<String, Option<u64>>,
    pub runqueue_latency_us: LatencySummary,
    pub interfaces: Vec<IfaceDelta>,
    pub system: SystemGauges,
    /// Every running container (idle ones with zeros), and other cgroups with kernel activity
    /// in the interval, busiest first.
    #[serde(default)]
    pub containers: Vec<ContainerDelta>,
    /// Docker Engine API state: `up`, `unreachable` (names may be stale, ids still exact),
    /// `connecting` or `disabled`. The one state naming and healing share.
    #[serde(default)]
    pub docker: DockerState,
    /// The other runtimes' API states, by runtime (`podman`, `containerd`): `absent` (no
    /// socket), `connecting`, `up`, `unreachable`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtimes: BTreeMap<String, RuntimeState>,
    pub collector: CollectorHealth,
    /// Anomaly events raised or cleared in this interval (detection engine).
    #[serde(default)]
    pub anomalies: Vec<AnomalyRecord>,
    /// Detector life cycle over all series: how many are warming up, ready, in fallback.
    #[serde(default)]
    pub detection: DetectionSummary,
    /// Healing engine state: Docker connectivity (`up` / `monitor_only`), breakers, counters.
    /// Absent when healing is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healing: Option<HealState>,
    /// The most recent healing decisions (audit records, `heal.recent_actions` of them).
    #[serde(default)]
    pub actions: Vec<AuditRecord>,
    /// Cumulative kernel totals, only on the final interval of a run (after every program was
    /// detached): the sum of all intervals' deltas equals these exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_totals: Option<BTreeMap<String, u64>>,
}

/// Run-queue waits of an interval, in microseconds. Percentiles come from the histogram
/// (within 12.5% globally, 2x per container); `mean` and `sum` from the kernel's exact sum.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    #[serde(default)]
    pub mean: f64,
    #[serde(default)]
    pub sum: f64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IfaceDelta {
    /// Network namespace inode (as `readlink /proc/PID/ns/net` shows it).
    pub netns: u32,
    pub ifindex: u32,
    /// Shared with the drain's name table: a drain of thousands of interfaces clones no
    /// string.
    pub name: std::sync::Arc<str>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// One container's activity over the interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerDelta {
    /// The runtime's container id (64 hex for Docker, podman, containerd under Kubernetes and
    /// CRI-O), or empty for a cgroup no runtime owns / the host.
    pub id: String,
    /// Container name (`<namespace>/<pod>/<container>` for a Kubernetes container), or the
    /// cgroup path (`host` for the host's own namespace). Shared, not copied, from one
    /// interval to the next (and with the contenders that name it).
    pub name: Arc<str>,
    pub image: String,
    /// The runtime that owns the container: `docker`, `podman`, `containerd`, `crio`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// Kubernetes pod name and namespace, when Kubernetes owns the container (a pod's sandbox,
    /// the `pause` container, included).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Kernel key: cgroup id or mount namespace inode (see `sentinel run --container-key`).
    pub key: u64,
    /// The kernel's typed record over the interval, whole (each field a delta): its scalars
    /// are JSON fields of their own (`cpu_ns`, `ctx_switches`, `forks`, ...), its run-queue
    /// histogram is summarized in `runqueue_latency_us`.
    #[serde(flatten)]
    pub stats: ContainerStats,
    /// On-CPU time as a percentage of one CPU over the interval.
    pub cpu_percent: f64,
    pub runqueue_latency_us: LatencySummary,
    /// Whose traffic the network fields below are: the container's own network namespace's,
    /// or nobody's (they are then 0 and not measured; see [`Network`]).
    #[serde(default)]
    pub network: Network,
    /// Traffic and TCP events of the container's network namespace.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tcp_retransmits: u64,
    pub tcp_resets: u64,
    /// Whom the container's tasks waited behind for a CPU in the interval, the 3 largest first
    /// (other containers, `host`; see `contention.rs` for the estimate and its limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contention: Vec<ContendedBy>,
    /// Seconds its tasks waited behind its own other tasks.
    #[serde(default)]
    pub contention_self_seconds: f64,
}

/// Where a container's network fields come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Its own network namespace: the fields are its traffic and TCP events. (Also what a
    /// record written before this field existed is read as.)
    #[default]
    Own,
    /// It shares the host's network namespace (`--network host`): its traffic cannot be told
    /// from the host's, which the `host` record carries. Not measured: the fields stay 0, and
    /// detection, heal triggers and `/metrics` leave them out.
    Host,
    /// No process with its key showed a network namespace. Not measured, as for `Host`.
    Unknown,
}

impl Network {
    /// The network fields are this container's own.
    pub fn measured(self) -> bool {
        self == Network::Own
    }
}

/// One per-container counter series: the one list the exporter's per-container families
/// derive from (`sentinel_container_<name>[_<unit>]_total`, in this order). A new signal of
/// the kernel's `ContainerStats` gets its row here; nothing else names it field by field.
pub struct ContainerSeries {
    pub name: &'static str,
    /// The unit `read` returns, and the name's suffix (empty for a plain count).
    pub unit: &'static str,
    pub help: &'static str,
    /// The interval's delta, in `unit`.
    pub read: fn(&ContainerDelta) -> f64,
    /// The signal name detection and heal triggers watch this delta by
    /// (`container.<name>.<watch>`, `signal = "<watch>"` in a rule); `None`: exported only.
    pub watch: Option<&'static str>,
    /// Counted per network namespace: measured only for a container with its own
    /// ([`Network::Own`]).
    pub per_netns: bool,
}

impl ContainerSeries {
    /// The metric name's stem: `<name>` or `<name>_<unit>`.
    pub fn stem(&self) -> String {
        if self.unit.is_empty() {
            self.name.to_string()
        } else {
            format!("{}_{}", self.name, self.unit)
        }
    }

    /// The interval's delta, or `None` where the container's record does not measure it (a
    /// network series of a container without its own network namespace).
    pub fn value(&self, c: &ContainerDelta) -> Option<f64> {
        (!self.per_netns || c.network.measured()).then(|| (self.read)(c))
    }
}

/// Every per-container counter, in exposition order.
pub const CONTAINER_SERIES: [ContainerSeries; 15] = [
    ContainerSeries {
        name: "cpu",
        unit: "seconds",
        help: "On-CPU time of the container's tasks, seconds.",
        read: |c| c.stats.cpu_ns as f64 / 1e9,
        watch: None,
        per_netns: false,
    },
    ContainerSeries {
        name: "context_switches",
        unit: "",
        help: "Context switches of the container's tasks.",
        read: |c| c.stats.switches as f64,
        watch: None,
        per_netns: false,
    },
    ContainerSeries {
        name: "forks",
        unit: "",
        help: "Processes started in the container (threads are not counted).",
        read: |c| c.stats.forks as f64,
        watch: None,
        per_netns: false,
    },
    ContainerSeries {
        name: "execs",
        unit: "",
        help: "Programs executed in the container.",
        read: |c| c.stats.execs as f64,
        watch: None,
        per_netns: false,
    },
    ContainerSeries {
        name: "exits",
        unit: "",
        help: "Processes that exited in the container.",
        read: |c| c.stats.exits as f64,
        watch: None,
        per_netns: false,
    },
    ContainerSeries {
        name: "abnormal_exits",
        unit: "",
        help: "Processes that exited with a non-zero code or by a signal.",
        read: |c| c.stats.abnormal_exits as f64,
        watch: Some("abnormal_exits"),
        per_netns: false,
    },
    ContainerSeries {
        name: "oom_kills",
        unit: "",
        help: "Processes of the container killed by the OOM killer.",
        read: |c| c.stats.oom_kills as f64,
        watch: Some("oom_kills"),
        per_netns: false,
    },
    ContainerSeries {
        name: "net_rx_packets",
        unit: "",
        help: "Packets received in the container's network namespace.",
        read: |c| c.rx_packets as f64,
        watch: None,
        per_netns: true,
    },
    ContainerSeries {
        name: "net_rx_bytes",
        unit: "",
        help: "Bytes received in the container's network namespace.",
        read: |c| c.rx_bytes as f64,
        watch: None,
        per_netns: true,
    },
    ContainerSeries {
        name: "net_tx_packets",
        unit: "",
        help: "Packets transmitted in the container's network namespace.",
        read: |c| c.tx_packets as f64,
        watch: None,
        per_netns: true,
    },
    ContainerSeries {
        name: "net_tx_bytes",
        unit: "",
        help: "Bytes transmitted in the container's network namespace.",
        read: |c| c.tx_bytes as f64,
        watch: None,
        per_netns: true,
    },
    ContainerSeries {
        name: "tcp_retransmits",
        unit: "",
        help: "TCP retransmissions in the container's network namespace.",
        read: |c| c.tcp_retransmits as f64,
        watch: Some("tcp_retrans"),
        per_netns: true,
    },
    ContainerSeries {
        name: "tcp_resets",
        unit: "",
        help: "TCP resets in the container's network namespace.",
        read: |c| c.tcp_resets as f64,
        watch: Some("tcp_resets"),
        per_netns: true,
    },
    ContainerSeries {
        name: "runqueue_wait",
        unit: "seconds",
        help: "Time the container's tasks waited for a CPU (wakeup to on-CPU), seconds: the \
               kernel's exact sum.",
        read: |c| c.runqueue_latency_us.sum / 1e6,
        watch: None,
        per_netns: false,
    },
    ContainerSeries {
        name: "runqueue_waits",
        unit: "",
        help: "Run-queue waits of the container's tasks (wakeup to on-CPU).",
        read: |c| c.runqueue_latency_us.count as f64,
        watch: None,
        per_netns: false,
    },
];

/// One contender of a container: who held the CPU while it waited, and for how long.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContendedBy {
    pub container: Arc<str>,
    pub seconds: f64,
}

/// A container's top contender in one interval, with its share of the container's run-queue
/// wait (0-1): what `sentinel top` shows as "slowed by" and a `runq_latency` anomaly names.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SlowedBy {
    pub container: String,
    pub seconds: f64,
    pub share: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SystemGauges {
    pub cpu_percent: f64,
    pub mem_used_percent: f64,
    pub disk_used_percent: f64,
    pub load1: f64,
    /// Context switches over the interval by the kernel's own count (`ctxt` in /proc/stat),
    /// read in the same drain as the BPF counters.
    pub context_switches: u64,
}

/// One anomaly event as the interval output carries it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AnomalyRecord {
    /// `raised` or `cleared`.
    pub kind: String,
    /// Series name: a host series (`sched_switch`, `system.cpu_percent`, ...) or a container
    /// series (`container.<name>.<signal>`).
    pub series: String,
    /// The signal measured: the host series name, or the container signal (`cpu`,
    /// `runq_latency`, ...), so that no reader has to take the series name apart.
    #[serde(default)]
    pub signal: String,
    /// Container id when the series is a container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// On a container's `runq_latency` series: whom it waited behind most in the interval
    /// (noisy neighbours, issue 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowed_by: Option<SlowedBy>,
    pub value: f64,
    pub baseline: f64,
    pub score: f64,
    /// `warning` or `critical`.
    pub severity: String,
}

/// Detector life cycle counts, and events open at the end of the interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DetectionSummary {
    pub enabled: bool,
    pub series: u64,
    pub warming_up: u64,
    pub ready: u64,
    pub fallback: u64,
    /// Observations of series that found the series table full, since the daemon started.
    pub series_overflow: u64,
    /// Series judged by the robust statistics alone because `detect.learned_max_series`
    /// detectors held a learned model when they were made (0 for the statistical detector).
    #[serde(default)]
    pub statistical_only: u64,
    /// Series with an open (raised, not yet cleared) anomaly.
    pub open: Vec<String>,
}

/// Sentinel's own health for the interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CollectorHealth {
    /// Signals whose hook did not attach, by program name.
    pub disabled: Vec<String>,
    /// Events that found a bounded kernel map full, per map (counted, never silently lost):
    /// every map of the signal registry's `OVERFLOW_MAPS`, 0 included.
    #[serde(default)]
    pub overflow: BTreeMap<String, u64>,
    /// The same for the interface and run-queue maps, as earlier versions reported them.
    pub iface_overflow_packets: u64,
    pub runq_start_overflow: u64,
    /// Interface entries currently held in the kernel map, and its capacity.
    pub iface_entries: u64,
    pub iface_capacity: u64,
    /// Events that found the per-container map full, and its occupancy and capacity.
    #[serde(default)]
    pub container_overflow: u64,
    #[serde(default)]
    pub container_entries: u64,
    #[serde(default)]
    pub container_capacity: u64,
    /// A cumulative counter went backwards (counters reset): deltas were taken from zero.
    pub reset: bool,
    /// Time the drain itself took, microseconds.
    pub drain_us: u64,
    /// Where run-queue waits come from: `sched_info` (the kernel's own stamp) or `hash`.
    #[serde(default)]
    pub runq_source: String,
    /// Interval lines not written to stdout since start because its reader was too slow (the
    /// drain never waits for it).
    #[serde(default)]
    pub output_dropped: u64,
    /// Runs the kernel skipped per program since start because another BPF program was already
    /// running on that CPU (`recursion_misses` of the program's fdinfo, Linux 5.12+): events
    /// counted neither here nor anywhere else, so they are reported, never hidden (row K12).
    /// Refreshed every `RECURSION_MISSES_EVERY` intervals; empty before the first read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recursion_misses: BTreeMap<String, u64>,
}

/// Docker Engine API connectivity: one state, shared by container naming, healing and the
/// interval output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerState {
    /// Not connected yet since start (first attempt in progress).
    Connecting,
    Up,
    /// Unreachable: names may be stale; healing is monitor-only.
    Unreachable,
    /// Not contacted at all (`--no-docker`, `daemon.docker = false`).
    #[default]
    Disabled,
}

impl DockerState {
    pub fn as_str(self) -> &'static str {
        match self {
            DockerState::Connecting => "connecting",
            DockerState::Up => "up",
            DockerState::Unreachable => "unreachable",
            DockerState::Disabled => "disabled",
        }
    }

    /// The same state as healing names it: unreachable is `monitor_only`.
    pub fn heal_str(self) -> &'static str {
        match self {
            DockerState::Unreachable => "monitor_only",
            other => other.as_str(),
        }
    }
}

impl PartialEq<&str> for DockerState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for DockerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// API state of an optional runtime (podman, containerd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeState {
    /// Its socket is not there: not installed or not started here.
    #[default]
    Absent,
    Connecting,
    Up,
    /// The socket is there but does not answer: names may be stale, ids stay exact.
    Unreachable,
}

impl RuntimeState {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeState::Absent => "absent",
            RuntimeState::Connecting => "connecting",
            RuntimeState::Up => "up",
            RuntimeState::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for RuntimeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `healing.docker` says `monitor_only` where the interval says `unreachable`: same state.
mod heal_docker {
    use super::DockerState;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &DockerState, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.heal_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<DockerState, D::Error> {
        let s = String::deserialize(de)?;
        Ok(match s.as_str() {
            "up" => DockerState::Up,
            "monitor_only" | "unreachable" => DockerState::Unreachable,
            "connecting" => DockerState::Connecting,
            _ => DockerState::Disabled,
        })
    }
}

/// A circuit breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }
}

/// What kind of Docker action a rule takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Restart,
    Stop,
    Start,
    Kill,
    Exec,
    /// Cap the CPU of the container a protected one waits behind (issue 20).
    CapContender,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Restart => "restart",
            ActionKind::Stop => "stop",
            ActionKind::Start => "start",
            ActionKind::Kill => "kill",
            ActionKind::Exec => "exec",
            ActionKind::CapContender => "cap_contender",
        }
    }
}

/// The `decision` of an audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// About to act; written before the action runs.
    Intent,
    /// Acted, Docker did it.
    Taken,
    /// Acted, it failed.
    Failed,
    /// Not acted: `reason` says which check refused.
    Skipped,
    /// Dropped before acting (permit wait), no breaker effect.
    NotRecorded,
    /// Cancelled at shutdown.
    Cancelled,
    /// A breaker changed state.
    Breaker,
    /// Docker connectivity changed.
    Docker,
    /// Storm guard started or ended.
    Alert,
    /// A CPU cap sentinel set was lifted (the container's previous quota restored).
    Lifted,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Intent => "intent",
            Decision::Taken => "taken",
            Decision::Failed => "failed",
            Decision::Skipped => "skipped",
            Decision::NotRecorded => "not_recorded",
            Decision::Cancelled => "cancelled",
            Decision::Breaker => "breaker",
            Decision::Docker => "docker",
            Decision::Alert => "alert",
            Decision::Lifted => "lifted",
        }
    }
}

/// One healing decision: a line of the audit log and an entry of the interval's `actions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC wall-clock time of the decision.
    pub ts: String,
    pub container_id: String,
    pub container_name: String,
    pub decision: Decision,
    /// Why: the trigger (intent), `done`, the error kind (failed), the gate's reason
    /// (skipped), the transition's reason (breaker), ...
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// State of the container's breaker after this decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_breaker: Option<BreakerState>,
    /// For `breaker` lines: previous state and the OPEN wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BreakerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// `cap_contender` lines: the CPU quota set or restored, and the one it replaced, so a
    /// later process can lift a cap this one could not (a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuCap>,
}

/// A CFS bandwidth setting as Docker's `CpuQuota`/`CpuPeriod` (microseconds; quota 0 or -1 =
/// unlimited), and the one it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCap {
    pub quota: i64,
    pub period: i64,
    pub prev_quota: i64,
    pub prev_period: i64,
}

/// A circuit breaker as status and metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakerView {
    pub state: BreakerState,
    pub failures_in_window: usize,
    pub wait_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_remaining_secs: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerBreaker {
    pub container_id: String,
    pub container_name: String,
    #[serde(flatten)]
    pub view: BreakerView,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealCounters {
    pub actions_taken: u64,
    pub actions_failed: u64,
    pub skipped: u64,
    pub not_recorded: u64,
    pub audit_write_errors: u64,
    pub dropped_events: u64,
    pub docker_reconnects: u64,
    /// Evaluation passes cut short by their time budget (Docker slow or hung, D3).
    pub passes_cut_short: u64,
    /// Records written to the audit log since start.
    #[serde(default)]
    pub audit_records: u64,
    /// Times the audit log was found rotated (renamed or removed) and a new file was started.
    #[serde(default)]
    pub audit_rotations: u64,
    /// Decisions (audit records other than `intent`) since start: how far the interval's
    /// `actions` window moved, so a reader can tell the new ones from those already seen.
    #[serde(default)]
    pub decisions: u64,
}

/// The healing engine's state: the `healing` object of the interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealState {
    /// `up`, `monitor_only` (Docker unreachable), `connecting` or `disabled`.
    #[serde(with = "heal_docker")]
    pub docker: DockerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub dry_run: bool,
    pub global_breaker: BreakerView,
    pub breakers: Vec<ContainerBreaker>,
    pub actions_in_global_window: usize,
    pub in_flight: usize,
    pub permits_available: usize,
    pub permits_total: usize,
    pub counters: HealCounters,
}

/// Healing as `sentinel status` shows it: the state and the recent decisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealStatus {
    #[serde(flatten)]
    pub state: HealState,
    /// Last decisions, oldest first.
    #[serde(default)]
    pub recent: Vec<AuditRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container record as sentinel wrote it before it carried the kernel's typed record
    /// (field for field, in that order): it reads into `stats`, and writes back with the same
    /// names and values.
    const RECORD: &str = r#"{"id":"abc","name":"web","image":"nginx","runtime":"docker","pod":"p","namespace":"n","key":4026531832,"cpu_ns":102584666,"cpu_percent":10.25,"ctx_switches":44,"runqueue_latency_us":{"p50":49.152,"p99":12582.912,"max":12582.912,"mean":2356.85,"sum":108415.277,"count":46},"forks":1,"execs":2,"exits":3,"abnormal_exits":4,"oom_kills":5,"rx_packets":6,"rx_bytes":7,"tx_packets":8,"tx_bytes":9,"tcp_retransmits":10,"tcp_resets":11,"contention":[{"container":"host","seconds":0.5}],"contention_self_seconds":0.108415277}"#;

    #[test]
    fn container_record_json_is_unchanged_by_the_typed_kernel_record() {
        let c: ContainerDelta = serde_json::from_str(RECORD).unwrap();
        let s = c.stats;
        assert_eq!(
            [
                s.cpu_ns,
                s.switches,
                s.forks,
                s.execs,
                s.exits,
                s.abnormal_exits,
                s.oom_kills
            ],
            [102_584_666, 44, 1, 2, 3, 4, 5]
        );
        assert_eq!((c.rx_bytes, c.tcp_resets), (7, 11));
        let mut before: serde_json::Value = serde_json::from_str(RECORD).unwrap();
        // What was added since: whose traffic the network fields are (a record without it was
        // written when every container was taken to have its own namespace).
        assert_eq!(c.network, Network::Own);
        before["network"] = "own".into();
        assert_eq!(serde_json::to_value(&c).unwrap(), before);
        // The run-queue fields of the kernel's record are summarized, never written raw.
        let written = serde_json::to_string(&c).unwrap();
        assert!(!written.contains("runq_hist") && !written.contains("runq_wait_ns"));
    }

    /// The per-container `/metrics` families keep their names, in their order.
    #[test]
    fn container_series_keep_their_metric_names() {
        let stems: Vec<String> = CONTAINER_SERIES.iter().map(ContainerSeries::stem).collect();
        assert_eq!(
            stems,
            [
                "cpu_seconds",
                "context_switches",
                "forks",
                "execs",
                "exits",
                "abnormal_exits",
                "oom_kills",
                "net_rx_packets",
                "net_rx_bytes",
                "net_tx_packets",
                "net_tx_bytes",
                "tcp_retransmits",
                "tcp_resets",
                "runqueue_wait_seconds",
                "runqueue_waits",
            ]
        );
        let c: ContainerDelta = serde_json::from_str(RECORD).unwrap();
        let read: Vec<f64> = CONTAINER_SERIES.iter().map(|s| (s.read)(&c)).collect();
        let want = [
            0.102_584_666,
            44.0,
            1.0,
            2.0,
            3.0,
            4.0,
            5.0,
            6.0,
            7.0,
            8.0,
            9.0,
            10.0,
            11.0,
            0.108_415_277,
            46.0,
        ];
        for (i, (got, want)) in read.iter().zip(want).enumerate() {
            assert!((got - want).abs() < 1e-12, "{}: {got} != {want}", stems[i]);
        }
    }
}
