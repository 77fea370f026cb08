//! The hand-off types between stages. `Interval` is the spine: one drained period of kernel
//! counters, per-interface deltas, run-queue latency and system gauges. Every later stage
//! (exporters, detection, healing) reads it; none reaches back into the collector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Containers (or, without Docker, cgroups) with kernel activity in the interval, busiest
    /// first.
    #[serde(default)]
    pub containers: Vec<ContainerDelta>,
    /// Docker Engine API state: `up`, `unreachable` (names may be stale, ids still exact), or
    /// `disabled`.
    #[serde(default)]
    pub docker: String,
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
    pub healing: Option<serde_json::Value>,
    /// Healing decisions (audit records) made since the previous interval.
    #[serde(default)]
    pub actions: Vec<serde_json::Value>,
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
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// One container's activity over the interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerDelta {
    /// Docker container id (64 hex), or empty for a non-Docker cgroup / the host.
    pub id: String,
    /// Container name, or the cgroup path (`host` for the host's own namespace).
    pub name: String,
    pub image: String,
    /// Kernel key: cgroup id or mount namespace inode (see `sentinel run --container-key`).
    pub key: u64,
    pub cpu_ns: u64,
    /// On-CPU time as a percentage of one CPU over the interval.
    pub cpu_percent: f64,
    pub ctx_switches: u64,
    pub runqueue_latency_us: LatencySummary,
    /// New processes (threads are not counted here).
    pub forks: u64,
    pub execs: u64,
    /// Processes that exited, and those with a non-zero exit code or killed by a signal.
    pub exits: u64,
    pub abnormal_exits: u64,
    pub oom_kills: u64,
    /// Traffic and TCP events of the container's network namespace.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tcp_retransmits: u64,
    pub tcp_resets: u64,
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
    /// Container id when the series is a container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
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
    /// Observations of series that found the series table full.
    pub series_overflow: u64,
    /// Series with an open (raised, not yet cleared) anomaly.
    pub open: Vec<String>,
}

/// Sentinel's own health for the interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CollectorHealth {
    /// Signals whose hook did not attach, by program name.
    pub disabled: Vec<String>,
    /// Events that found a bounded kernel map full (counted, never silently lost).
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
