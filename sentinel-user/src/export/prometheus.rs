//! Prometheus exposition of every interval, served at `GET /metrics`.
//!
//! The daemon feeds one [`Interval`] (plus the raw run-queue histogram delta, which the JSON
//! line only summarises) into [`Metrics::observe_interval`]; a scrape encodes the cumulative
//! state through `prometheus-client`'s encoder, under one lock, so every scrape is a consistent
//! snapshot of whole intervals. Per-interface (and later per-container) series are bounded:
//! only the top N by recent activity, plus explicitly pinned ones, are exported.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use sentinel_common::{HIST_BUCKETS, hist_bucket_range};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::{
    collect::loader::HOOKS,
    model::{
        BreakerState, CONTAINER_SERIES, Decision, DockerState, HealState, PUBLIC_COUNTERS,
        Published, PublishedRx,
    },
};

pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_TOP_INTERFACES: usize = 50;
pub const DEFAULT_TOP_CONTAINERS: usize = 50;
/// Cap on label values fed by detection and healing (signals, actions, breakers): anything
/// beyond is folded into `other`, so a bug or a hostile container count cannot blow up a scrape.
const MAX_LABEL_VALUES: usize = 500;
/// Connections served at once; at capacity the oldest is closed (see `serve`). Every connection
/// is bounded in time too (header read, whole connection) (FAULT-MATRIX E4).
const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `--metrics-addr`: an address like 127.0.0.1:9464 or [::1]:9464.
pub fn parse_addr(spec: &str) -> Result<SocketAddr, String> {
    spec.parse()
        .map_err(|_| format!("{spec:?} is not an address like 127.0.0.1:9464 or [::1]:9464"))
}

/// The endpoint has no authentication: an address other hosts can reach gets one loud warning.
pub fn exposure_warning(addr: SocketAddr) -> Option<String> {
    let ip = addr.ip();
    if ip.is_loopback() {
        None
    } else if ip.is_unspecified() {
        Some(format!(
            "metrics endpoint bound to {addr}: ALL interfaces, reachable from other hosts without \
             authentication; prefer 127.0.0.1, or restrict access with a firewall or an \
             authenticating reverse proxy"
        ))
    } else {
        Some(format!(
            "metrics endpoint bound to {addr}, which other hosts may reach without \
             authentication; restrict access with a firewall or an authenticating reverse proxy"
        ))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct MetricsConfig {
    /// Interfaces exported with their own series (busiest first).
    pub top_interfaces: usize,
    /// Containers exported with their own series (busiest first, plus pinned ones).
    pub top_containers: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            top_interfaces: DEFAULT_TOP_INTERFACES,
            top_containers: DEFAULT_TOP_CONTAINERS,
        }
    }
}

/// Cheap to clone: the daemon and the HTTP server share it.
#[derive(Clone, Debug)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
    registry: Arc<Registry>,
}

impl Metrics {
    pub fn new(config: MetricsConfig) -> Self {
        let state = Arc::new(Mutex::new(State::new(config)));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StateCollector(state.clone())));
        Self {
            state,
            registry: Arc::new(registry),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding the lock cannot leave half an interval behind that matters
        // more than losing metrics altogether: keep serving.
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Adds one published interval (drain loop -> watch channel -> [`follow`]).
    pub fn observe(&self, p: &Published) {
        self.with(|s| s.observe(p));
    }

    /// The exposition text (OpenMetrics, which Prometheus negotiates and parses).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!("cannot encode metrics: {e}");
        }
        out
    }
}

fn bounded_entry<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, other: K) -> &mut u64 {
    let key = if map.len() < MAX_LABEL_VALUES || map.contains_key(&key) {
        key
    } else {
        other
    };
    map.entry(key).or_default()
}

/// A bounded set of labelled series: everything observed is tracked with an exponentially
/// decayed activity score, and the top `limit` by score plus the pinned ones are exported.
/// Decay (rather than "busiest in the last interval") keeps the exported set stable from one
/// scrape to the next, so series do not flap in and out. Entries idle long enough to decay
/// away are forgotten, which bounds memory by the recently active keys.
#[derive(Debug)]
pub struct TopN<K, V> {
    limit: usize,
    /// foldhash (its DoS-resistant flavour: the keys are container names): SipHash over
    /// thousands of names per interval was a tenth of the daemon's CPU at 1000 containers.
    entries: HashMap<K, Tracked<V>, foldhash::quality::RandomState>,
}

#[derive(Debug)]
struct Tracked<V> {
    value: V,
    score: f64,
    pinned: bool,
    /// Observed since the last `decay`: an entry its source still reports (a listed idle
    /// container, with zeros) is kept whatever its score, so its counters never restart.
    seen: bool,
}

/// Contention pairs kept per exported one (see `TopN::keep_at_most`).
const CONTENTION_CANDIDATES: usize = 4;

/// Per-interval decay: an idle entry's score halves in about 7 intervals.
const DECAY: f64 = 0.9;
/// Below this score an unpinned entry is forgotten (it then restarts from zero if it comes
/// back, which Prometheus treats as a counter reset).
const FORGET_BELOW: f64 = 1e-3;

impl<K: Clone + Eq + Hash + Ord, V: Default> TopN<K, V> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            entries: HashMap::default(),
        }
    }

    /// Ages every score by one interval and forgets entries that went idle long ago and were
    /// not observed in the last interval (bounded still: what is observed every interval is
    /// what the interval lists).
    pub fn decay(&mut self) {
        self.entries.retain(|_, t| {
            t.score *= DECAY;
            let keep = t.pinned || t.seen || t.score >= FORGET_BELOW;
            t.seen = false;
            keep
        });
    }

    /// Unpins every entry `keep` rejects: a pin must be renewed by whoever set it, or an
    /// entry pinned once and never observed again (a gone container) would live for ever.
    pub fn unpin_unless(&mut self, keep: impl Fn(&K) -> bool) {
        for (k, t) in &mut self.entries {
            if t.pinned && !keep(k) {
                t.pinned = false;
            }
        }
    }

    /// Adds `activity` to `key`'s score and updates its value; the key is copied only when it
    /// is new (thousands of containers and pairs a second, each a string).
    pub fn observe<Q>(&mut self, key: &Q, activity: f64, pinned: bool, update: impl FnOnce(&mut V))
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        // One lookup for a tracked key; a new one is looked up again to be inserted.
        let t = match self.entries.get_mut(key) {
            Some(t) => t,
            None => self
                .entries
                .entry(key.to_owned().into())
                .or_insert_with(|| Tracked {
                    value: V::default(),
                    score: 0.0,
                    pinned,
                    seen: true,
                }),
        };
        t.score += activity.max(0.0);
        t.pinned = pinned;
        t.seen = true;
        update(&mut t.value);
    }

    /// Exported entries in key order: every pinned one, then the `limit` highest scores.
    pub fn selected(&self) -> Vec<(&K, &V)> {
        self.selected_where(|_| true)
    }

    /// `selected` among the entries `eligible` accepts.
    pub fn selected_where(&self, eligible: impl Fn(&K) -> bool) -> Vec<(&K, &V)> {
        let mut ranked: Vec<(&K, &Tracked<V>)> = self
            .entries
            .iter()
            .filter(|(k, t)| !t.pinned && eligible(k))
            .collect();
        ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then_with(|| a.0.cmp(b.0)));
        ranked.truncate(self.limit);
        ranked.extend(self.entries.iter().filter(|(k, t)| t.pinned && eligible(k)));
        ranked.sort_by(|a, b| a.0.cmp(b.0));
        ranked.into_iter().map(|(k, t)| (k, &t.value)).collect()
    }

    /// Entries exported besides the pinned ones.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|t| &t.value)
    }

    /// Forgets the lowest-scored unpinned entries beyond `max`. For keys that multiply (pairs
    /// of containers: at 1000 containers each interval names up to 3000 new ones, and decay
    /// alone let tens of thousands accumulate, a fifth of the daemon's CPU); a forgotten entry
    /// restarts from zero if it comes back, as after decay.
    pub fn keep_at_most(&mut self, max: usize) {
        if self.entries.len() <= max {
            return;
        }
        let pinned = self.entries.values().filter(|t| t.pinned).count();
        let room = max.saturating_sub(pinned);
        let mut ranked: Vec<(f64, &K)> = self
            .entries
            .iter()
            .filter(|(_, t)| !t.pinned)
            .map(|(k, t)| (t.score, k))
            .collect();
        if ranked.len() <= room {
            return;
        }
        if room == 0 {
            self.entries.retain(|_, t| t.pinned);
            return;
        }
        // The last one kept, in (score down, key up) order: everything after it goes.
        ranked.select_nth_unstable_by(room - 1, |a, b| {
            b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
        });
        let (cut_score, cut_key) = (ranked[room - 1].0, ranked[room - 1].1.clone());
        self.entries.retain(|k, t| {
            t.pinned
                || t.score
                    .total_cmp(&cut_score)
                    .then_with(|| cut_key.cmp(k))
                    .is_ge()
        });
    }

    /// The score a key not tracked now must reach to outlast `keep_at_most(max)` at the end of
    /// this interval: the lowest of the `max - pinned` highest unpinned scores, once that many
    /// are tracked (`None` while there is room). Scores only grow between the decay and
    /// `keep_at_most`, so a new key scoring less is outranked by that many at the cut and
    /// would be forgotten there: it need not be made at all.
    pub fn admission_bar(&self, max: usize) -> Option<f64> {
        let pinned = self.entries.values().filter(|t| t.pinned).count();
        let room = max.saturating_sub(pinned);
        if room == 0 {
            return Some(f64::INFINITY);
        }
        let mut scores: Vec<f64> = self
            .entries
            .values()
            .filter(|t| !t.pinned)
            .map(|t| t.score)
            .collect();
        if scores.len() < room {
            return None;
        }
        scores.select_nth_unstable_by(room - 1, |a, b| b.total_cmp(a));
        Some(scores[room - 1])
    }

    /// Forgets the entries `keep` rejects.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    /// Every tracked entry, exported or not.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, t)| (k, &t.value))
    }
}

#[derive(Debug, Default)]
struct IfaceTotals {
    name: String,
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
}

#[derive(Debug, Default)]
struct ContainerTotals {
    /// Docker id (64 hex), empty for a cgroup or the host.
    id: String,
    name: String,
    image: String,
    /// Runtime, and Kubernetes pod and namespace (empty when none owns it).
    runtime: String,
    pod: String,
    namespace: String,
    /// Per `model::CONTAINER_SERIES` row, its running total.
    totals: [f64; CONTAINER_SERIES.len()],
    /// Run-queue latency p99 of the last interval it was seen in, seconds.
    runq_p99_seconds: f64,
    /// Whether its network families are measured (the last record's).
    network: crate::model::Network,
}

/// A (victim, contender) pair as one string, `victim\0by`: looked up as a `&str` written
/// into a reused buffer, so a tracked pair costs no allocation; ordered as the pair (`\0`
/// sorts first, and no name holds one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Pair(String);

impl Pair {
    fn write(buf: &mut String, victim: &str, by: &str) {
        buf.clear();
        buf.push_str(victim);
        buf.push('\0');
        buf.push_str(by);
    }

    fn victim(&self) -> &str {
        self.0.split_once('\0').map_or(&self.0, |(v, _)| v)
    }

    fn by(&self) -> &str {
        self.0.split_once('\0').map_or("", |(_, b)| b)
    }
}

impl std::borrow::Borrow<str> for Pair {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for Pair {
    fn from(joined: String) -> Self {
        Self(joined)
    }
}

/// Cumulative wait of one container behind one contender.
#[derive(Debug, Default)]
struct PairTotals {
    seconds: f64,
}

/// Whom an anomaly or a healing decision is about, as a label: bounded, because a container
/// gets its own value only while its container series are exported (the rest is `other`), and
/// its entries go when it is forgotten.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// Host series and host-wide decisions (Docker connectivity, storm alerts, global breaker).
    Host,
    /// A container, by its key in `State::containers`.
    Container(String),
    /// A container that was not exported when it happened.
    Other,
}

/// Buckets of the drain-duration histogram, seconds.
const DRAIN_BUCKETS: [f64; 12] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
];
/// Run-queue latency buckets: powers of two of nanoseconds from 2^10 (about 1 us) to 2^34
/// (about 17 s). The kernel's buckets are log2 with sub-buckets, so every one of these bounds
/// is a kernel bucket boundary and the counts are exact; 25 bounds keep the series count
/// sensible (the kernel's 256 buckets would be 256 series).
const RUNQ_LOW_EXP: u32 = 10;
const RUNQ_HIGH_EXP: u32 = 34;

#[derive(Debug)]
struct State {
    intervals: u64,
    /// Published intervals this exporter never saw (the watch channel keeps only the latest).
    missed: u64,
    last_seq: Option<u64>,
    /// Cumulative kernel counters by name; `None` for a signal whose hook is not attached.
    kernel: Vec<(&'static str, Option<u64>)>,
    context_switches: u64,
    system: Option<crate::model::SystemGauges>,
    interval_seconds: f64,
    last_interval_unix: f64,
    /// Overflow events since start per map (the signal registry's `OVERFLOW_MAPS`).
    overflow: BTreeMap<String, u64>,
    map_entries: [u64; 2],
    map_capacity: [u64; 2],
    counter_resets: u64,
    attached: Vec<(&'static str, bool)>,
    recursion_misses: BTreeMap<String, u64>,
    runq_source: String,
    runq_buckets: Vec<u64>,
    runq_sum_seconds: f64,
    drain_buckets: [u64; DRAIN_BUCKETS.len() + 1],
    drain_sum: f64,
    drain_count: u64,
    ifaces: TopN<(u32, u32), IfaceTotals>,
    /// Keyed by Docker id, or by name for a cgroup or the host.
    containers: TopN<String, ContainerTotals>,
    /// (victim's container key, contender's name): the busiest pairs.
    contention: TopN<Pair, PairTotals>,
    /// Raised anomaly events by (scope, signal, severity, container).
    anomalies: BTreeMap<(String, String, String, Who), u64>,
    /// Open anomalies on container series: series name -> container key. Their containers are
    /// exported while the anomaly is open, so an alert can name them.
    open_anomalies: BTreeMap<String, String>,
    detection: crate::model::DetectionSummary,
    /// Healing decisions by (decision, action, container).
    decisions: BTreeMap<(Option<Decision>, &'static str, Who), u64>,
    /// `healing.counters.decisions` last seen: the interval's `actions` is a window of the
    /// latest decisions, and only those past this count are new.
    decisions_seen: Option<u64>,
    heal: Option<HealState>,
}

impl State {
    fn new(config: MetricsConfig) -> Self {
        Self {
            intervals: 0,
            missed: 0,
            last_seq: None,
            kernel: PUBLIC_COUNTERS
                .iter()
                .map(|&i| (sentinel_common::counter::NAMES[i], Some(0)))
                .collect(),
            context_switches: 0,
            system: None,
            interval_seconds: 0.0,
            last_interval_unix: 0.0,
            overflow: sentinel_common::registry::OVERFLOW_MAPS
                .iter()
                .map(|m| ((*m).to_string(), 0))
                .collect(),
            map_entries: [0; 2],
            map_capacity: [0; 2],
            counter_resets: 0,
            attached: HOOKS.iter().map(|h| (h.program, false)).collect(),
            recursion_misses: BTreeMap::new(),
            runq_source: String::new(),
            runq_buckets: vec![0; HIST_BUCKETS],
            runq_sum_seconds: 0.0,
            drain_buckets: [0; DRAIN_BUCKETS.len() + 1],
            drain_sum: 0.0,
            drain_count: 0,
            ifaces: TopN::new(config.top_interfaces),
            containers: TopN::new(config.top_containers),
            contention: TopN::new(config.top_containers),
            anomalies: BTreeMap::new(),
            open_anomalies: BTreeMap::new(),
            detection: Default::default(),
            decisions: BTreeMap::new(),
            decisions_seen: None,
            heal: None,
        }
    }

    fn observe(&mut self, p: &Published) {
        let iv = &p.interval;
        if let Some(last) = self.last_seq
            && iv.seq > last + 1
        {
            self.missed += iv.seq - last - 1;
        }
        self.last_seq = Some(iv.seq);
        self.intervals += 1;
        for (name, slot) in &mut self.kernel {
            *slot = match (iv.counters.get(*name).copied().flatten(), *slot) {
                (Some(d), Some(total)) => Some(total.wrapping_add(d)),
                // A disabled signal has no series at all, rather than a misleading 0.
                _ => None,
            };
        }
        self.context_switches += iv.system.context_switches;
        self.system = Some(iv.system.clone());
        self.interval_seconds = iv.interval_ms / 1000.0;
        self.last_interval_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let c = &iv.collector;
        for (map, n) in &c.overflow {
            *self.overflow.entry(map.clone()).or_default() += n;
        }
        self.map_entries = [c.iface_entries, c.container_entries];
        self.map_capacity = [c.iface_capacity, c.container_capacity];
        self.counter_resets += u64::from(c.reset);
        for (program, attached) in &mut self.attached {
            *attached = !c.disabled.iter().any(|d| d == program);
        }
        if !c.recursion_misses.is_empty() {
            self.recursion_misses.clone_from(&c.recursion_misses);
        }
        self.runq_source.clone_from(&c.runq_source);
        for (idx, &n) in p.runq_hist.iter().enumerate().take(HIST_BUCKETS) {
            if n == 0 || (4..8).contains(&idx) {
                continue;
            }
            self.runq_buckets[idx] += n;
        }
        // The kernel's exact sum, not bucket midpoints.
        self.runq_sum_seconds += iv.runqueue_latency_us.sum / 1e6;
        let drain = c.drain_us as f64 / 1e6;
        let slot = DRAIN_BUCKETS
            .iter()
            .position(|&b| drain <= b)
            .unwrap_or(DRAIN_BUCKETS.len());
        self.drain_buckets[slot] += 1;
        self.drain_sum += drain;
        self.drain_count += 1;
        self.ifaces.decay();
        for i in &iv.interfaces {
            let packets = (i.rx_packets + i.tx_packets) as f64;
            self.ifaces
                .observe(&(i.netns, i.ifindex), packets, false, |t| {
                    if t.name.is_empty() {
                        t.name = i.name.to_string();
                    }
                    t.rx_packets += i.rx_packets;
                    t.rx_bytes += i.rx_bytes;
                    t.tx_packets += i.tx_packets;
                    t.tx_bytes += i.tx_bytes;
                });
        }
        self.track_open_anomalies(iv);
        self.observe_containers(p);
        let exported: std::collections::HashSet<String> = self
            .containers
            .selected()
            .into_iter()
            .map(|(k, _)| k.clone())
            .collect();
        let who = |key: Option<String>| match key {
            None => Who::Host,
            Some(k) if exported.contains(&k) => Who::Container(k),
            Some(_) => Who::Other,
        };
        for a in iv.anomalies.iter().filter(|a| a.kind == "raised") {
            let (scope, key) = match anomaly_container(a) {
                Some(key) => ("container", Some(key)),
                None => ("host", None),
            };
            let whom = who(key);
            let key = (
                scope.to_string(),
                a.signal.clone(),
                a.severity.clone(),
                whom.clone(),
            );
            let other = (
                scope.to_string(),
                "other".to_string(),
                a.severity.clone(),
                whom,
            );
            *bounded_entry(&mut self.anomalies, key, other) += 1;
        }
        self.detection = iv.detection.clone();
        // Only the decisions this exporter has not counted yet: `actions` repeats the latest
        // `heal.recent_actions` decisions in every interval.
        if let Some(h) = &iv.healing {
            let total = h.counters.decisions;
            let new = total.saturating_sub(self.decisions_seen.unwrap_or(0));
            self.decisions_seen = Some(total);
            let shown = usize::try_from(new)
                .unwrap_or(usize::MAX)
                .min(iv.actions.len());
            for a in &iv.actions[iv.actions.len() - shown..] {
                let whom = who((!a.container_id.is_empty()).then(|| a.container_id.clone()));
                let key = (Some(a.decision), a.action.map_or("", |k| k.as_str()), whom);
                *bounded_entry(&mut self.decisions, key, (None, "other", Who::Other)) += 1;
            }
            // More decisions in one interval than the window holds: counted, not attributed.
            let unseen = new - shown as u64;
            if unseen > 0 {
                *self
                    .decisions
                    .entry((None, "other", Who::Other))
                    .or_default() += unseen;
            }
        }
        // A forgotten container's anomaly and decision series go with its other series.
        let tracked = |w: &Who| match w {
            Who::Container(k) => self.containers.contains(k),
            _ => true,
        };
        self.anomalies.retain(|(_, _, _, w), _| tracked(w));
        self.decisions.retain(|(_, _, w), _| tracked(w));
        self.heal.clone_from(&iv.healing);
    }

    /// Keeps `open_anomalies` in step with the detector: raised events add, cleared events and
    /// series no longer open remove.
    fn track_open_anomalies(&mut self, iv: &crate::model::Interval) {
        for a in &iv.anomalies {
            let Some(key) = anomaly_container(a) else {
                continue;
            };
            if a.kind == "raised" {
                if self.open_anomalies.len() < MAX_LABEL_VALUES {
                    self.open_anomalies.insert(a.series.clone(), key);
                }
            } else {
                self.open_anomalies.remove(&a.series);
            }
        }
        if iv.detection.enabled {
            let open: std::collections::HashSet<&str> =
                iv.detection.open.iter().map(String::as_str).collect();
            self.open_anomalies
                .retain(|series, _| open.contains(series.as_str()));
        }
    }

    /// Containers with a breaker (the ones healing manages) or an open anomaly are always
    /// exported; the rest compete for the top N by activity (on-CPU milliseconds plus packets).
    /// Contention pairs compete among themselves, by seconds waited.
    fn observe_containers(&mut self, p: &Published) {
        let mut pinned_keys: std::collections::HashSet<&str> = p
            .interval
            .healing
            .iter()
            .flat_map(|h| h.breakers.iter().map(|b| b.container_id.as_str()))
            .collect();
        pinned_keys.extend(self.open_anomalies.values().map(String::as_str));
        // Found by the L6 churn soak: a container pinned while it had a breaker stayed pinned
        // (exported, never forgotten) after it was gone.
        self.containers
            .unpin_unless(|key| pinned_keys.contains(key.as_str()));
        self.containers.decay();
        self.contention.decay();
        let pairs_kept = CONTENTION_CANDIDATES * self.contention.limit();
        let bar = self.contention.admission_bar(pairs_kept);
        let mut pair = String::new();
        for ct in &p.interval.containers {
            let key = container_key(ct);
            let activity = ct.stats.cpu_ns as f64 / 1e6 + (ct.rx_packets + ct.tx_packets) as f64;
            let pinned = pinned_keys.contains(key);
            for by in &ct.contention {
                // Scored in milliseconds waited, like CPU time above.
                let score = by.seconds * 1e3;
                Pair::write(&mut pair, key, &by.container);
                // A new pair below the bar would be forgotten at the cut below (a pair comes
                // once per interval: victims' keys and contenders' names are unique in it).
                if bar.is_some_and(|bar| score < bar) && !self.contention.contains(pair.as_str()) {
                    continue;
                }
                self.contention
                    .observe(pair.as_str(), score, false, |t| t.seconds += by.seconds);
            }
            self.containers.observe(key, activity, pinned, |t| {
                t.id.clone_from(&ct.id);
                // A container's labels stay those it was first exported with: a record that
                // lost its name or image (a gone container whose key lingers) must not move
                // its counters to a new label set.
                for (label, now) in [
                    (&mut t.name, &*ct.name),
                    (&mut t.image, &ct.image),
                    (&mut t.runtime, &ct.runtime),
                    (&mut t.pod, &ct.pod),
                    (&mut t.namespace, &ct.namespace),
                ] {
                    if label.is_empty() {
                        label.push_str(now);
                    }
                }
                t.runq_p99_seconds = ct.runqueue_latency_us.p99 / 1e6;
                t.network = ct.network;
                for (total, series) in t.totals.iter_mut().zip(&CONTAINER_SERIES) {
                    *total += series.value(ct).unwrap_or(0.0);
                }
            });
        }
        // Bounded by construction: four times the exported pairs, as candidates.
        self.contention.keep_at_most(pairs_kept);
        // A pair whose victim is forgotten goes with it.
        let containers = &self.containers;
        self.contention
            .retain(|pair| containers.contains(pair.victim()));
    }

    /// (upper bound in seconds, count in that bucket only) for the exposition.
    fn runq_exposition(&self) -> (Vec<(f64, u64)>, u64) {
        let bounds = RUNQ_HIGH_EXP - RUNQ_LOW_EXP + 1;
        let mut counts = vec![0u64; bounds as usize + 1];
        let mut total = 0;
        for (idx, &n) in self.runq_buckets.iter().enumerate() {
            // Indices 4..8 are never used by the kernel's bucketing (see `hist_bucket`).
            if n == 0 || (4..8).contains(&idx) {
                continue;
            }
            total += n;
            // Every kernel bucket lies entirely below or above a power of two: place it under
            // the first bound at or above its (exclusive) upper end.
            let high = hist_bucket_range(idx).1;
            let exp = 64 - (high - 1).leading_zeros();
            let slot = exp.saturating_sub(RUNQ_LOW_EXP).min(bounds) as usize;
            counts[slot] += n;
        }
        let out = (RUNQ_LOW_EXP..=RUNQ_HIGH_EXP)
            .map(|e| (1u64 << e) as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        (out, total)
    }
}

#[derive(Debug)]
struct StateCollector(Arc<Mutex<State>>);

type Labels<'a> = Vec<(&'static str, std::borrow::Cow<'a, str>)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = enc.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(m)
}

fn family<'a, V: Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels<'a>, V)>,
    emit: impl Fn(prometheus_client::encoding::MetricEncoder, V) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        emit(m.encode_family(&labels)?, v)?;
    }
    Ok(())
}

fn emit_counter(m: prometheus_client::encoding::MetricEncoder, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(m)
}

fn emit_counter_f64(m: prometheus_client::encoding::MetricEncoder, v: f64) -> std::fmt::Result {
    ConstCounter::new(v).encode(m)
}

fn emit_gauge(m: prometheus_client::encoding::MetricEncoder, v: f64) -> std::fmt::Result {
    ConstGauge::new(v).encode(m)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        family(
            &mut enc,
            "sentinel_build_info",
            "Sentinel build; the value is always 1.",
            MetricType::Gauge,
            [(vec![("version", env!("CARGO_PKG_VERSION").into())], 1.0)],
            emit_gauge,
        )?;
        counter(
            &mut enc,
            "sentinel_intervals",
            "Intervals drained since the daemon started.",
            s.intervals,
        )?;
        for (name, total) in &s.kernel {
            let Some(total) = total else { continue };
            counter(
                &mut enc,
                &format!("sentinel_{name}"),
                &format!("{name}, as counted in the kernel by sentinel's eBPF programs."),
                *total,
            )?;
        }
        counter(
            &mut enc,
            "sentinel_context_switches",
            "Context switches by the kernel's own count (/proc/stat ctxt), read in each drain.",
            s.context_switches,
        )?;
        if let Some(sys) = &s.system {
            // Ratios 0-1, as Prometheus conventions have them (the JSON keeps percentages).
            gauge(
                &mut enc,
                "sentinel_cpu_busy_ratio",
                "CPU busy time over the last interval, fraction of all CPUs (0-1).",
                None,
                sys.cpu_percent / 100.0,
            )?;
            gauge(
                &mut enc,
                "sentinel_memory_used_ratio",
                "Memory in use (total minus available), fraction of the total (0-1).",
                None,
                sys.mem_used_percent / 100.0,
            )?;
            gauge(
                &mut enc,
                "sentinel_disk_used_ratio",
                "Root filesystem space in use, fraction of its size (0-1).",
                None,
                sys.disk_used_percent / 100.0,
            )?;
            gauge(
                &mut enc,
                "sentinel_load1",
                "One-minute load average.",
                None,
                sys.load1,
            )?;
        }
        let (buckets, count) = s.runq_exposition();
        let m = enc.encode_descriptor(
            "sentinel_runqueue_latency",
            "Wakeup-to-on-CPU latency of tasks; the sum is estimated from bucket midpoints.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        encode_histogram(m, s.runq_sum_seconds, count, &buckets)?;

        // Per-interface series: bounded to the busiest N.
        let ifaces = s.ifaces.selected();
        let iface_labels = |k: &(u32, u32), t: &IfaceTotals| -> Labels<'static> {
            vec![
                ("netns", k.0.to_string().into()),
                ("interface", iface_label(&t.name, k.1).into()),
            ]
        };
        for (stem, help, get) in [
            (
                "sentinel_interface_rx_packets",
                "Packets received per (network namespace inode, interface), busiest interfaces only.",
                (|t: &IfaceTotals| t.rx_packets) as fn(&IfaceTotals) -> u64,
            ),
            (
                "sentinel_interface_rx_bytes",
                "Bytes received per (network namespace inode, interface), busiest interfaces only.",
                |t: &IfaceTotals| t.rx_bytes,
            ),
            (
                "sentinel_interface_tx_packets",
                "Packets transmitted per (network namespace inode, interface), busiest interfaces only.",
                |t: &IfaceTotals| t.tx_packets,
            ),
            (
                "sentinel_interface_tx_bytes",
                "Bytes transmitted per (network namespace inode, interface), busiest interfaces only.",
                |t: &IfaceTotals| t.tx_bytes,
            ),
        ] {
            family(
                &mut enc,
                stem,
                help,
                MetricType::Counter,
                ifaces.iter().map(|(k, t)| (iface_labels(k, t), get(t))),
                emit_counter,
            )?;
        }
        gauge(
            &mut enc,
            "sentinel_interfaces_tracked",
            "Interfaces with recent activity that sentinel tracks (only the busiest are exported).",
            None,
            s.ifaces.tracked() as f64,
        )?;

        // Per-container series: bounded like interfaces, plus the containers healing manages
        // and those with an open anomaly. Labelled by name and short id: a container recreated
        // under the same name is a new series, never a second sample of the old one.
        let labels = container_labels(&s.containers);
        let who_labels = |k: &str| -> Labels<'static> {
            let (name, id) = labels
                .get(k)
                .map_or(("other", ""), |(n, i)| (n.as_str(), i.as_str()));
            vec![
                ("container", name.to_string().into()),
                ("id", id.to_string().into()),
            ]
        };
        let containers = s.containers.selected();
        // Every container label of the container families names an exported container.
        let exported: std::collections::HashSet<&str> =
            containers.iter().map(|(k, _)| k.as_str()).collect();
        let row = |key: &String, t: &ContainerTotals| -> Labels<'static> {
            let mut l = who_labels(key);
            l.push(("image", t.image.clone().into()));
            // Where known only: an empty label is the same as none to Prometheus.
            for (name, value) in [
                ("runtime", &t.runtime),
                ("pod", &t.pod),
                ("namespace", &t.namespace),
            ] {
                if !value.is_empty() {
                    l.push((name, value.clone().into()));
                }
            }
            l
        };
        for (idx, series) in CONTAINER_SERIES.iter().enumerate() {
            family(
                &mut enc,
                &format!("sentinel_container_{}", series.stem()),
                &format!(
                    "{} Busiest, healing-managed and anomalous containers only.",
                    series.help
                ),
                MetricType::Counter,
                unique_rows(
                    containers
                        .iter()
                        // Not measured is no row, not a 0 (a container in the host's network
                        // namespace).
                        .filter(|(_, t)| !series.per_netns || t.network.measured())
                        .map(|(k, t)| (row(k, t), t.totals[idx])),
                    |a, b| a + b,
                ),
                emit_counter_f64,
            )?;
        }
        family(
            &mut enc,
            "sentinel_container_runqueue_latency_p99_seconds",
            "Run-queue latency p99 of the container's tasks over the last interval it ran in, \
             from log2 buckets (within 2x). Busiest, healing-managed and anomalous containers only.",
            MetricType::Gauge,
            unique_rows(
                containers
                    .iter()
                    .map(|(k, t)| (row(k, t), t.runq_p99_seconds)),
                f64::max,
            ),
            emit_gauge,
        )?;
        family(
            &mut enc,
            "sentinel_container_contention_seconds",
            "Time the container's tasks waited for a CPU behind another container (by), or \
             behind the host's own work (by=\"host\"), seconds; estimated per CPU in proportion \
             to on-CPU time. The busiest pairs only.",
            MetricType::Counter,
            unique_rows(
                s.contention
                    .selected_where(|pair| exported.contains(pair.victim()))
                    .into_iter()
                    .map(|(pair, t)| {
                        let mut l = who_labels(pair.victim());
                        l.push(("by", pair.by().to_string().into()));
                        (l, t.seconds)
                    }),
                |a, b| a + b,
            ),
            emit_counter_f64,
        )?;
        gauge(
            &mut enc,
            "sentinel_containers_tracked",
            "Containers with recent activity that sentinel tracks (only the busiest are exported).",
            None,
            s.containers.tracked() as f64,
        )?;

        // Sentinel's own health.
        let m = enc.encode_descriptor(
            "sentinel_drain_duration",
            "Time one drain of the kernel maps took.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let drain: Vec<(f64, u64)> = DRAIN_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(s.drain_buckets.iter().copied())
            .collect();
        encode_histogram(m, s.drain_sum, s.drain_count, &drain)?;
        gauge(
            &mut enc,
            "sentinel_interval",
            "Measured length of the last interval.",
            Some(&Unit::Seconds),
            s.interval_seconds,
        )?;
        gauge(
            &mut enc,
            "sentinel_last_interval_timestamp",
            "Unix time at which the last interval was drained.",
            Some(&Unit::Seconds),
            s.last_interval_unix,
        )?;
        counter(
            &mut enc,
            "sentinel_exporter_missed_intervals",
            "Intervals the metrics exporter did not see (their deltas are missing here).",
            s.missed,
        )?;
        family(
            &mut enc,
            "sentinel_map_overflow",
            "Events that found a bounded kernel map full (counted, never silently lost).",
            MetricType::Counter,
            s.overflow
                .iter()
                .map(|(map, n)| (vec![("map", map.as_str().into())], *n)),
            emit_counter,
        )?;
        family(
            &mut enc,
            "sentinel_map_entries",
            "Entries currently held in a bounded kernel map.",
            MetricType::Gauge,
            [
                (vec![("map", "ifaces".into())], s.map_entries[0] as f64),
                (vec![("map", "containers".into())], s.map_entries[1] as f64),
            ],
            emit_gauge,
        )?;
        family(
            &mut enc,
            "sentinel_map_capacity",
            "Capacity of a bounded kernel map.",
            MetricType::Gauge,
            [
                (vec![("map", "ifaces".into())], s.map_capacity[0] as f64),
                (vec![("map", "containers".into())], s.map_capacity[1] as f64),
            ],
            emit_gauge,
        )?;
        counter(
            &mut enc,
            "sentinel_kernel_count_resets",
            "Intervals in which a kernel counter went backwards (maps re-created).",
            s.counter_resets,
        )?;
        family(
            &mut enc,
            "sentinel_bpf_program_attached",
            "1 when the eBPF program is attached to its tracepoint, 0 when its signal is disabled.",
            MetricType::Gauge,
            s.attached
                .iter()
                .map(|(p, a)| (vec![("program", (*p).into())], if *a { 1.0 } else { 0.0 })),
            emit_gauge,
        )?;
        family(
            &mut enc,
            "sentinel_runq_source",
            "Where run-queue waits come from: sched_info (the kernel's own enqueue stamp) or \
             hash (a wakeup timestamp map); 1 for the one in use.",
            MetricType::Gauge,
            (!s.runq_source.is_empty())
                .then(|| (vec![("source", s.runq_source.as_str().into())], 1.0)),
            emit_gauge,
        )?;
        family(
            &mut enc,
            "sentinel_bpf_recursion_misses",
            "Runs of the program the kernel skipped because another BPF program was running on \
             that CPU: events counted nowhere (Linux 5.12+; absent before).",
            MetricType::Counter,
            s.recursion_misses
                .iter()
                .map(|(p, n)| (vec![("program", p.as_str().into())], *n)),
            emit_counter,
        )?;

        // Detection.
        let whom = |w: &Who| -> Labels<'static> {
            match w {
                Who::Host => vec![("container", "".into()), ("id", "".into())],
                Who::Other => vec![("container", "other".into()), ("id", "".into())],
                Who::Container(k) => who_labels(k),
            }
        };
        family(
            &mut enc,
            "sentinel_anomalies_raised",
            "Anomaly events raised, by scope (host or container), signal, severity and container \
             (empty for the host; other for a container not exported when it happened).",
            MetricType::Counter,
            unique_rows(
                s.anomalies
                    .iter()
                    .map(|((scope, signal, severity, who), v)| {
                        let mut l: Labels<'_> = vec![
                            ("scope", scope.as_str().into()),
                            ("signal", signal.as_str().into()),
                            ("severity", severity.as_str().into()),
                        ];
                        l.extend(whom(who));
                        (l, *v)
                    }),
                |a, b| a + b,
            ),
            emit_counter,
        )?;
        let d = &s.detection;
        gauge(
            &mut enc,
            "sentinel_anomalies_open",
            "Series with an open (raised, not yet cleared) anomaly.",
            None,
            d.open.len() as f64,
        )?;
        family(
            &mut enc,
            "sentinel_detection_series",
            "Series tracked by the detection engine, by life-cycle state.",
            MetricType::Gauge,
            [
                ("warming_up", d.warming_up),
                ("ready", d.ready),
                ("fallback", d.fallback),
            ]
            .map(|(state, n)| (vec![("state", state.into())], n as f64)),
            emit_gauge,
        )?;
        gauge(
            &mut enc,
            "sentinel_detection_series_statistical_only",
            "Series judged by the robust statistics alone: every learned-model seat (detect.learned_max_series) was taken when they were made.",
            None,
            d.statistical_only as f64,
        )?;
        // Cumulative in the engine: a counter (a gauge with this help misled rate()).
        counter(
            &mut enc,
            "sentinel_detection_series_overflow",
            "Observations that found the series table full (detect.max_series) since the daemon started.",
            d.series_overflow,
        )?;

        // Healing.
        family(
            &mut enc,
            "sentinel_heal_decisions",
            "Healing decisions (audit records but intents), by decision, action and container \
             (empty for host-wide records; other for a container not exported when it happened).",
            MetricType::Counter,
            unique_rows(
                s.decisions.iter().map(|((decision, action, who), v)| {
                    let mut l: Labels<'_> = vec![
                        (
                            "decision",
                            decision.map_or("other", Decision::as_str).into(),
                        ),
                        ("action", (*action).into()),
                    ];
                    l.extend(whom(who));
                    (l, *v)
                }),
                |a, b| a + b,
            ),
            emit_counter,
        )?;
        if let Some(h) = &s.heal {
            let c = &h.counters;
            for (name, help, v) in [
                (
                    "sentinel_heal_actions_taken",
                    "Healing actions that ran and succeeded.",
                    c.actions_taken,
                ),
                (
                    "sentinel_heal_actions_failed",
                    "Healing actions that ran and failed.",
                    c.actions_failed,
                ),
                (
                    "sentinel_heal_actions_skipped",
                    "Due healing actions the safety gate skipped.",
                    c.skipped,
                ),
                (
                    "sentinel_heal_actions_not_recorded",
                    "Due healing actions dropped before acting.",
                    c.not_recorded,
                ),
                (
                    "sentinel_audit_write_errors",
                    "Audit log writes that failed (no action is taken unaudited).",
                    c.audit_write_errors,
                ),
                (
                    "sentinel_heal_dropped_events",
                    "Docker events dropped by the healing engine's bounded queue.",
                    c.dropped_events,
                ),
                (
                    "sentinel_docker_reconnects",
                    "Reconnections to the Docker Engine API.",
                    c.docker_reconnects,
                ),
            ] {
                counter(&mut enc, name, help, v)?;
            }
            gauge(
                &mut enc,
                "sentinel_docker_up",
                "1 when the healing engine is connected to the Docker Engine API.",
                None,
                if h.docker == DockerState::Up {
                    1.0
                } else {
                    0.0
                },
            )?;
            gauge(
                &mut enc,
                "sentinel_heal_in_flight",
                "Healing actions running now.",
                None,
                h.in_flight as f64,
            )?;
            gauge(
                &mut enc,
                "sentinel_heal_global_breaker_state",
                "Global circuit breaker: 0 closed, 1 half-open, 2 open.",
                None,
                breaker_value(h.global_breaker.state),
            )?;
            family(
                &mut enc,
                "sentinel_breaker_state",
                "Circuit breaker per container: 0 closed, 1 half-open, 2 open.",
                MetricType::Gauge,
                unique_rows(
                    h.breakers.iter().take(MAX_LABEL_VALUES).map(|b| {
                        let (name, id) = labels.get(b.container_id.as_str()).map_or_else(
                            || {
                                (
                                    container_label(&b.container_name, &b.container_id),
                                    short_id(&b.container_id).to_string(),
                                )
                            },
                            Clone::clone,
                        );
                        (
                            vec![("container", name.into()), ("id", id.into())],
                            breaker_value(b.view.state),
                        )
                    }),
                    f64::max,
                ),
                emit_gauge,
            )?;
        }
        if let Some(bytes) = crate::heap::allocated_bytes() {
            gauge(
                &mut enc,
                "sentinel_heap_allocated_bytes",
                "Bytes in live heap allocations, by the allocator's count (the resident size also \
                 holds freed memory kept for reuse, rounded to whole pages).",
                None,
                bytes as f64,
            )?;
        }
        encode_process(&mut enc)
    }
}

/// The `process_*` metrics every Prometheus client library exports (the Go and Python
/// clients' names), read from /proc/self at scrape time, so the usual dashboards and alerts
/// for a process's RSS, file descriptors and CPU work on sentinel too. A file that cannot be
/// read leaves its metrics out rather than reporting 0.
fn encode_process(enc: &mut DescriptorEncoder) -> std::fmt::Result {
    let Some(p) = ProcessStats::read() else {
        return Ok(());
    };
    counter_f64(
        enc,
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    )?;
    for (name, help, v) in [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Some(p.resident_bytes),
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Some(p.virtual_bytes),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        ("process_threads", "Number of OS threads.", Some(p.threads)),
    ] {
        if let Some(v) = v {
            gauge(enc, name, help, None, v)?;
        }
    }
    Ok(())
}

fn counter_f64(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// Sentinel's own process, from /proc/self.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        use nix::unistd::{SysconfVar, sysconf};
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()? as f64;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()? as f64;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s));
        let mut p = Self::parse(&stat, ticks, page, boot)?;
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        p.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft as f64);
        Some(p)
    }

    /// `/proc/self/stat` (proc(5)): fields after the command, which is in parentheses and may
    /// hold spaces and parentheses itself, so the split is at the last `)`.
    fn parse(stat: &str, ticks: f64, page: f64, boot: Option<f64>) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state): field N is f[N - 3].
        let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
        Some(Self {
            cpu_seconds: (num(14)? + num(15)?) / ticks,
            threads: num(20)?,
            start_time_seconds: boot.map(|b| b + num(22).unwrap_or(0.0) / ticks),
            virtual_bytes: num(23)?,
            resident_bytes: num(24)? * page,
            open_fds: None,
            max_fds: None,
        })
    }
}

/// Boot time (unix seconds) from /proc/stat's `btime` line.
fn parse_btime(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn breaker_value(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

fn encode_histogram(
    mut m: prometheus_client::encoding::MetricEncoder,
    sum: f64,
    count: u64,
    buckets: &[(f64, u64)],
) -> std::fmt::Result {
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, buckets, None)
}

/// Interface names come from the kernel (up to 15 bytes) but are set by whoever creates the
/// device, possibly inside a container: the encoder escapes them; an empty one gets its index.
fn iface_label(name: &str, ifindex: u32) -> String {
    if name.is_empty() {
        format!("if{ifindex}")
    } else {
        name.to_string()
    }
}

fn container_label(name: &str, id: &str) -> String {
    if name.is_empty() {
        short_id(id).to_string()
    } else {
        name.to_string()
    }
}

/// The 12 hex digits Docker shows.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A container's key in the exporter: its Docker id, or its name for a cgroup or the host.
fn container_key(ct: &crate::model::ContainerDelta) -> &str {
    if ct.id.is_empty() { &ct.name } else { &ct.id }
}

/// The container key of an anomaly on a container series (`container.<name>.<signal>`).
fn anomaly_container(a: &crate::model::AnomalyRecord) -> Option<String> {
    if let Some(id) = a.container_id.as_deref().filter(|id| !id.is_empty()) {
        return Some(id.to_string());
    }
    let rest = a.series.strip_prefix("container.")?;
    Some(
        rest.strip_suffix(a.signal.as_str())
            .and_then(|r| r.strip_suffix('.'))
            .unwrap_or(rest)
            .to_string(),
    )
}

/// `container` and `id` label values of every tracked container: its name (the short id while
/// it has none) and Docker's 12-digit short id (empty for a cgroup or the host); the full id
/// where two tracked containers share a short one. Keys are unique, so label pairs are too:
/// a container recreated under an old name differs by its id.
fn container_labels(c: &TopN<String, ContainerTotals>) -> HashMap<&str, (String, String)> {
    let mut shorts: HashMap<&str, usize> = HashMap::new();
    for (_, t) in c.iter() {
        if !t.id.is_empty() {
            *shorts.entry(short_id(&t.id)).or_default() += 1;
        }
    }
    c.iter()
        .map(|(key, t)| {
            let id = if t.id.is_empty() {
                String::new()
            } else if shorts.get(short_id(&t.id)).copied().unwrap_or(0) > 1 {
                t.id.clone()
            } else {
                short_id(&t.id).to_string()
            };
            (key.as_str(), (container_label(&t.name, &t.id), id))
        })
        .collect()
}

/// Rows with one label set merged into one sample (`merge`: add for counters, the larger for
/// gauges), first appearance first. Label sets are unique by construction; this makes it hold
/// for every input, so no scrape ever carries two samples with one label set.
fn unique_rows<'a, V: Copy>(
    rows: impl IntoIterator<Item = (Labels<'a>, V)>,
    merge: impl Fn(V, V) -> V,
) -> Vec<(Labels<'a>, V)> {
    let mut out: Vec<(Labels<'a>, V)> = Vec::new();
    let mut at: HashMap<Labels<'a>, usize> = HashMap::new();
    for (labels, v) in rows {
        match at.get(&labels) {
            Some(&i) => out[i].1 = merge(out[i].1, v),
            None => {
                at.insert(labels.clone(), out.len());
                out.push((labels, v));
            }
        }
    }
    out
}

/// Feeds every published interval into `metrics` until the channel closes.
pub async fn follow(metrics: Metrics, mut rx: PublishedRx) {
    loop {
        if let Some(p) = rx.borrow_and_update().clone() {
            metrics.observe(&p);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serves `GET /metrics` (404 elsewhere) until the task is aborted. Keep-alive is off (a scrape
/// is one request) so an idle client cannot hold a connection slot between scrapes.
///
/// At most `MAX_CONNECTIONS` are served at once. When a new one arrives at capacity the OLDEST
/// is closed, not the new one: idle or half-sent connections (a hostile or broken scraper) are
/// always the old ones, while a real scrape finishes in milliseconds. Waiting for a free slot
/// instead let 200 idle connections lock scrapes out for longer than a scrape time-out (row E4).
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let mut live: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
        std::collections::VecDeque::with_capacity(MAX_CONNECTIONS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        live.retain(|task| !task.is_finished());
        if live.len() >= MAX_CONNECTIONS
            && let Some(oldest) = live.pop_front()
        {
            oldest.abort();
            debug!("metrics: {MAX_CONNECTIONS} connections open; closed the oldest");
        }
        let metrics = metrics.clone();
        live.push_back(tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics: connection from {peer}: {e}"),
                Err(_) => debug!("metrics: connection from {peer} timed out"),
            }
        }));
    }
}

fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            if openmetrics {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    to_text_format(&metrics.encode()),
                )
            }
        }
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: sentinel serves /metrics\n".into(),
        ),
    }
}

/// The classic text format (0.0.4) for clients that do not ask for OpenMetrics (curl,
/// `promtool check metrics`, older scrapers). The encoder writes OpenMetrics only; the formats
/// differ, for what sentinel exports, in three ways: a counter family is named with its
/// `_total` suffix, there are no `# UNIT` lines and no `# EOF` terminator.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Binds the listener (before the programs load, so a taken port fails fast).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics on {addr}: pick another --metrics-addr, or --no-metrics")
    })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!("metrics at http://{local}/metrics");
    if let Some(w) = exposure_warning(local) {
        warn!("{w}");
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnomalyRecord, AuditRecord, ContainerDelta, IfaceDelta, Interval};
    use sentinel_common::hist_bucket;

    fn published(seq: u64) -> Published {
        let mut iv = Interval {
            seq,
            interval_ms: 1000.0,
            ..Default::default()
        };
        for &i in &PUBLIC_COUNTERS {
            iv.counters
                .insert(sentinel_common::counter::NAMES[i].to_string(), Some(10));
        }
        iv.counters.insert("tcp_retransmits".into(), None);
        iv.collector.disabled = vec!["snt_tcp_retransmit_skb".into()];
        let mut hist = vec![0u64; HIST_BUCKETS];
        hist[hist_bucket(10_000)] = 90; // 10 us
        hist[hist_bucket(3_000_000)] = 10; // 3 ms
        Published {
            interval: iv,
            series: Vec::new(),
            runq_hist: hist,
        }
    }

    /// The healing state of an interval whose decision count is `decisions`.
    fn heal_state(decisions: u64) -> HealState {
        serde_json::from_value(serde_json::json!({
            "docker": "up", "dry_run": false,
            "global_breaker": {"state": "CLOSED", "failures_in_window": 0, "wait_secs": 60.0},
            "breakers": [],
            "actions_in_global_window": 0, "in_flight": 0, "permits_available": 2,
            "permits_total": 2,
            "counters": crate::model::HealCounters { decisions, ..Default::default() },
        }))
        .unwrap()
    }

    /// Every sample's series (name and labels): none may appear twice in one scrape.
    fn assert_unique_series(text: &str) -> usize {
        let mut seen = std::collections::HashSet::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            assert!(
                seen.insert(series.to_string()),
                "two samples of {series}:\n{text}"
            );
        }
        seen.len()
    }

    /// A 64-hex id whose short form is `i` in 12 digits.
    fn long_id(i: u64) -> String {
        format!("{i:012}{}", "e".repeat(52))
    }

    fn container(id: &str, name: &str, cpu_ms: u64) -> ContainerDelta {
        ContainerDelta {
            id: id.into(),
            name: name.into(),
            image: "web:1".into(),
            stats: sentinel_common::ContainerStats {
                cpu_ns: cpu_ms * 1_000_000,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A container in the host's network namespace has no network rows (not measured), not
    /// rows of 0; its other families are there, and a container with its own namespace has
    /// all of them.
    #[test]
    fn a_container_without_its_own_network_has_no_network_rows() {
        let m = Metrics::new(MetricsConfig {
            top_interfaces: 3,
            top_containers: 5,
        });
        let mut p = published(0);
        let mut own = container(&long_id(1), "own", 10);
        own.rx_packets = 4;
        let mut shared = container(&long_id(2), "shared", 20);
        shared.network = crate::model::Network::Host;
        p.interval.containers = vec![own, shared];
        m.observe(&p);
        let text = m.encode();
        let rows = |family: &str, name: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{container=\"{name}\"")))
                .count()
        };
        for family in [
            "sentinel_container_net_rx_packets_total",
            "sentinel_container_net_tx_bytes_total",
            "sentinel_container_tcp_retransmits_total",
            "sentinel_container_tcp_resets_total",
        ] {
            assert_eq!(rows(family, "own"), 1, "{family}: {text}");
            assert_eq!(rows(family, "shared"), 0, "{family}: {text}");
        }
        assert_eq!(
            rows("sentinel_container_cpu_seconds_total", "shared"),
            1,
            "{text}"
        );
        assert!(text.contains("sentinel_container_net_rx_packets_total{container=\"own\""));
    }

    /// `docker rm -f web; docker run --name web ...`: the old and the new `web` are both
    /// tracked for a while (the old one decays away); each keeps its own series, told apart by
    /// the short id, and no scrape has two samples with one label set. Short ids that collide
    /// fall back to the full id.
    #[test]
    fn a_container_recreated_under_its_name_never_shares_a_label_set() {
        let m = Metrics::new(MetricsConfig::default());
        let old = format!("{}{}", "a".repeat(12), "1".repeat(52));
        let new = format!("{}{}", "b".repeat(12), "2".repeat(52));
        let mut p = published(0);
        p.interval.containers = vec![container(&old, "web", 50)];
        m.observe(&p);
        let mut p = published(1);
        p.interval.containers = vec![container(&new, "web", 70)];
        m.observe(&p);
        let text = m.encode();
        assert_unique_series(&text);
        assert!(text.contains(
            "sentinel_container_cpu_seconds_total{container=\"web\",id=\"aaaaaaaaaaaa\",image=\"web:1\"} 0.05"
        ), "{text}");
        assert!(text.contains(
            "sentinel_container_cpu_seconds_total{container=\"web\",id=\"bbbbbbbbbbbb\",image=\"web:1\"} 0.07"
        ));
        // Same short id, different containers (possible, if unlikely): full ids.
        let clash = format!("{}{}", "a".repeat(12), "3".repeat(52));
        let mut p = published(2);
        p.interval.containers = vec![container(&clash, "web", 10)];
        m.observe(&p);
        let text = m.encode();
        assert_unique_series(&text);
        assert!(text.contains(&format!("id=\"{old}\"")), "{text}");
        assert!(text.contains(&format!("id=\"{clash}\"")));
        // And in the classic format Prometheus' promtool reads.
        assert_unique_series(&to_text_format(&text));
    }

    #[test]
    fn rows_with_one_label_set_are_merged() {
        let rows: Vec<(Labels<'static>, u64)> = vec![
            (vec![("container", "web".into())], 2),
            (vec![("container", "db".into())], 1),
            (vec![("container", "web".into())], 3),
        ];
        let out = unique_rows(rows, |a, b| a + b);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (vec![("container", "web".into())], 5));
    }

    /// The interval's `actions` repeats the latest decisions every interval: each is counted
    /// once, by the decision count; more new ones than the window holds count as `other`.
    #[test]
    fn decisions_are_counted_once_and_name_their_container() {
        let m = Metrics::new(MetricsConfig::default());
        let web = "c".repeat(64);
        let mut p = published(0);
        p.interval.containers = vec![container(&web, "web", 100)];
        let mut skipped = AuditRecord::new(&web, "web", Decision::Skipped, "backoff");
        skipped.action = Some(crate::model::ActionKind::Restart);
        let docker = AuditRecord::new("", "", Decision::Docker, "reachable");
        p.interval.actions = vec![docker, skipped];
        p.interval.healing = Some(heal_state(2));
        m.observe(&p);
        // Nothing new: the same window, the same count.
        let mut p2 = p.clone();
        p2.interval.seq = 1;
        m.observe(&p2);
        let text = m.encode();
        assert!(text.contains(
            "sentinel_heal_decisions_total{decision=\"skipped\",action=\"restart\",container=\"web\",id=\"cccccccccccc\"} 1"
        ), "{text}");
        assert!(text.contains(
            "sentinel_heal_decisions_total{decision=\"docker\",action=\"\",container=\"\",id=\"\"} 1"
        ));
        // 5 new decisions, a window of 2: 2 attributed, 3 counted as other.
        let mut p3 = p.clone();
        p3.interval.seq = 2;
        p3.interval.healing = Some(heal_state(7));
        m.observe(&p3);
        let text = m.encode();
        assert!(text.contains(
            "sentinel_heal_decisions_total{decision=\"skipped\",action=\"restart\",container=\"web\",id=\"cccccccccccc\"} 2"
        ), "{text}");
        assert!(text.contains(
            "sentinel_heal_decisions_total{decision=\"other\",action=\"other\",container=\"other\",id=\"\"} 3"
        ), "{text}");
        assert_unique_series(&text);
    }

    /// Per-container run-queue latency, contention pairs (the busiest only), a container
    /// anomaly labelled with its container (and the container kept exported while it is open),
    /// the TCP map overflow and the 0-1 ratios.
    #[test]
    fn container_runq_contention_anomalies_overflow_and_ratios() {
        let m = Metrics::new(MetricsConfig {
            top_interfaces: 3,
            top_containers: 2,
        });
        let mut p = published(0);
        p.interval.system.cpu_percent = 37.5;
        p.interval.system.mem_used_percent = 50.0;
        p.interval.collector.overflow.insert("netns_tcp".into(), 4);
        p.interval.containers = (0..6u64)
            .map(|i| {
                let mut c = container(&long_id(i), &format!("c{i}"), 10 + i);
                c.runqueue_latency_us = crate::model::LatencySummary {
                    p99: 2000.0,
                    sum: 1_500_000.0,
                    count: 300,
                    ..Default::default()
                };
                c.contention = vec![
                    crate::model::ContendedBy {
                        container: "noisy".into(),
                        seconds: 0.1 * (i + 1) as f64,
                    },
                    crate::model::ContendedBy {
                        container: "host".into(),
                        seconds: 0.01,
                    },
                ];
                c
            })
            .collect();
        // c0 is the quietest (not in the top 2) but has an open anomaly: exported anyway.
        p.interval.anomalies = vec![AnomalyRecord {
            kind: "raised".into(),
            series: "container.c0.runq_latency".into(),
            signal: "runq_latency".into(),
            container_id: Some(long_id(0)),
            severity: "warning".into(),
            ..Default::default()
        }];
        p.interval.detection.enabled = true;
        p.interval.detection.open = vec!["container.c0.runq_latency".into()];
        m.observe(&p);
        let text = m.encode();
        assert_unique_series(&text);
        assert!(text.contains("sentinel_cpu_busy_ratio 0.375\n"), "{text}");
        assert!(text.contains("sentinel_memory_used_ratio 0.5\n"));
        assert!(!text.contains("_percent"), "{text}");
        assert!(text.contains("sentinel_map_overflow_total{map=\"netns_tcp\"} 4"));
        let id0 = "0".repeat(12);
        assert!(text.contains(
            "sentinel_container_runqueue_wait_seconds_total{container=\"c5\",id=\"000000000005\",image=\"web:1\"} 1.5"
        ), "{text}");
        assert!(text.contains("sentinel_container_runqueue_waits_total{container=\"c5\""));
        assert!(text.contains("sentinel_container_runqueue_latency_p99_seconds{container=\"c5\""));
        assert!(text.contains(&format!(
            "sentinel_anomalies_raised_total{{scope=\"container\",signal=\"runq_latency\",severity=\"warning\",container=\"c0\",id=\"{id0}\"}} 1"
        )), "{text}");
        let cpu_rows = text
            .lines()
            .filter(|l| l.starts_with("sentinel_container_cpu_seconds_total{"))
            .count();
        assert_eq!(cpu_rows, 3, "top 2 plus the anomalous one");
        // 12 pairs observed, 2 exported: the largest waits (c5 and c4 behind noisy).
        let pairs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sentinel_container_contention_seconds_total{"))
            .collect();
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        assert!(
            pairs.iter().all(|l| l.contains("by=\"noisy\"")),
            "{pairs:?}"
        );
        assert!(
            pairs
                .iter()
                .any(|l| l.contains("container=\"c5\"") && l.contains("} 0.6")),
            "{pairs:?}"
        );
        // Cleared: the pin goes, c0 competes again (and loses).
        let mut p = published(1);
        p.interval.detection.enabled = true;
        p.interval.containers = (1..6u64)
            .map(|i| container(&long_id(i), &format!("c{i}"), 100))
            .collect();
        m.observe(&p);
        let text = m.encode();
        assert!(!text.contains("sentinel_container_cpu_seconds_total{container=\"c0\""));
    }

    #[test]
    fn process_stats_from_proc() {
        // proc(5) fields; the command holds spaces and a parenthesis.
        let stat = "4242 (sentinel (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 1000 123456789 4000 18446744073709551615";
        let p = ProcessStats::parse(stat, 100.0, 4096.0, Some(1_700_000_000.0)).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7.0);
        assert_eq!(p.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(p.virtual_bytes, 123_456_789.0);
        assert_eq!(p.resident_bytes, 4000.0 * 4096.0);
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
        let live = ProcessStats::read().expect("/proc/self readable");
        assert!(live.resident_bytes > 1e6 && live.threads >= 1.0, "{live:?}");
        assert!(live.open_fds.unwrap() >= 3.0 && live.max_fds.unwrap() >= live.open_fds.unwrap());
        let m = Metrics::new(MetricsConfig::default());
        let text = m.encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "sentinel_heap_allocated_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert!(to_text_format(&text).contains("# TYPE process_cpu_seconds_total counter"));
    }

    #[test]
    fn addresses_and_exposure_warning() {
        assert!(parse_addr("127.0.0.1:9464").is_ok());
        assert!(parse_addr("[::1]:9464").is_ok());
        assert!(parse_addr("localhost").is_err());
        assert_eq!(
            exposure_warning(parse_addr("127.0.0.1:9464").unwrap()),
            None
        );
        assert_eq!(exposure_warning(parse_addr("[::1]:9464").unwrap()), None);
        let w = exposure_warning(parse_addr("0.0.0.0:9464").unwrap()).unwrap();
        assert!(
            w.contains("0.0.0.0:9464") && w.contains("ALL interfaces"),
            "{w}"
        );
        assert!(exposure_warning(parse_addr("[::]:9464").unwrap()).is_some());
        assert!(exposure_warning(parse_addr("10.1.2.3:9464").unwrap()).is_some());
    }

    #[test]
    fn exposition_has_counters_histogram_and_no_disabled_series() {
        let m = Metrics::new(MetricsConfig::default());
        m.observe(&published(0));
        let mut p = published(1);
        p.interval.anomalies = vec![
            AnomalyRecord {
                kind: "raised".into(),
                series: "container.web.cpu".into(),
                signal: "cpu".into(),
                severity: "critical".into(),
                ..Default::default()
            },
            AnomalyRecord {
                kind: "cleared".into(),
                series: "sched_switch".into(),
                signal: "sched_switch".into(),
                severity: "warning".into(),
                ..Default::default()
            },
        ];
        let mut taken = AuditRecord::new("id", "web", Decision::Taken, "done");
        taken.action = Some(crate::model::ActionKind::Restart);
        p.interval.actions = vec![taken];
        p.interval.healing = Some(heal_state(1));
        m.observe(&p);
        let text = m.encode();
        assert!(text.contains("sentinel_sched_switch_total 20\n"), "{text}");
        assert!(
            !text.contains("sentinel_tcp_retransmits_total"),
            "disabled: no series"
        );
        assert!(
            text.contains("sentinel_bpf_program_attached{program=\"snt_tcp_retransmit_skb\"} 0")
        );
        assert!(text.contains("sentinel_bpf_program_attached{program=\"snt_sched_switch\"} 1"));
        assert!(text.contains("sentinel_intervals_total 2\n"));
        // 180 samples at 10 us fall below 2^14 ns (16.4 us); all 200 below 2^22 ns (4.2 ms).
        assert!(
            text.contains("sentinel_runqueue_latency_seconds_bucket{le=\"0.000016384\"} 180"),
            "{text}"
        );
        assert!(text.contains("sentinel_runqueue_latency_seconds_bucket{le=\"0.004194304\"} 200"));
        assert!(text.contains("sentinel_runqueue_latency_seconds_bucket{le=\"+Inf\"} 200"));
        assert!(text.contains("sentinel_runqueue_latency_seconds_count 200"));
        // `web` was never an exported container: its anomaly counts under `other`.
        assert!(text.contains(
            "sentinel_anomalies_raised_total{scope=\"container\",signal=\"cpu\",severity=\"critical\",container=\"other\",id=\"\"} 1"
        ), "{text}");
        assert!(
            !text.contains("signal=\"sched_switch\""),
            "cleared events are not raised"
        );
        assert!(
            text.contains("sentinel_heal_decisions_total{decision=\"taken\",action=\"restart\",container=\"other\",id=\"\"} 1"),
            "{text}"
        );
        assert!(text.contains("sentinel_exporter_missed_intervals_total 0"));
        assert!(text.contains("sentinel_build_info{version=\""));
        assert!(text.ends_with("# EOF\n"));

        m.observe(&published(5));
        assert!(
            m.encode()
                .contains("sentinel_exporter_missed_intervals_total 3")
        );
    }

    /// Issue 17: a container listed idle (zeros) in every interval keeps its series and its
    /// totals for as long as it is listed, far past the activity floor (no counter reset);
    /// the busiest-N cap still holds, and once it is no longer listed it decays away.
    #[test]
    fn a_listed_idle_container_stays_exported_until_it_is_no_longer_listed() {
        let m = Metrics::new(MetricsConfig {
            top_interfaces: 3,
            top_containers: 2,
        });
        let (idle, busy, third) = (long_id(1), long_id(2), long_id(3));
        let row = |text: &str, name: &str| -> Option<String> {
            text.lines()
                .find(|l| {
                    l.starts_with("sentinel_container_cpu_seconds_total{")
                        && l.contains(&format!("container=\"{name}\""))
                })
                .map(str::to_string)
        };
        let mut p = published(0);
        p.interval.containers = vec![
            container(&idle, "sleeper", 40),
            container(&busy, "spin", 900),
        ];
        m.observe(&p);
        let first = row(&m.encode(), "sleeper").expect("exported while active");
        assert!(first.ends_with(" 0.04"), "{first}");
        // 200 intervals (score 40 * 0.9^200 is far below the floor) listed with zeros.
        for seq in 1..=200 {
            let mut p = published(seq);
            p.interval.containers = vec![
                container(&busy, "spin", 900),
                container(&idle, "sleeper", 0),
            ];
            m.observe(&p);
        }
        let text = m.encode();
        assert_unique_series(&text);
        assert_eq!(
            row(&text, "sleeper").as_deref(),
            Some(first.as_str()),
            "{text}"
        );
        // The cap holds: a third, busier container takes the idle one's place in the top 2,
        // though the idle one stays tracked (its totals kept for when it is back on top).
        let mut p = published(201);
        p.interval.containers = vec![
            container(&busy, "spin", 900),
            container(&third, "batch", 500),
            container(&idle, "sleeper", 0),
        ];
        m.observe(&p);
        let text = m.encode();
        assert!(row(&text, "sleeper").is_none(), "{text}");
        assert!(text.contains("sentinel_containers_tracked 3"), "{text}");
        // No longer listed (gone): forgotten once its score is below the floor.
        for seq in 202..=400 {
            let mut p = published(seq);
            p.interval.containers = vec![container(&busy, "spin", 900)];
            m.observe(&p);
        }
        let text = m.encode();
        assert!(text.contains("sentinel_containers_tracked 1"), "{text}");
        assert!(row(&text, "sleeper").is_none(), "{text}");
    }

    #[test]
    fn interface_and_container_series_are_bounded_to_the_busiest() {
        let m = Metrics::new(MetricsConfig {
            top_interfaces: 3,
            top_containers: 2,
        });
        let mut p = published(0);
        p.interval.interfaces = (0..20)
            .map(|i| IfaceDelta {
                netns: 1,
                ifindex: i,
                name: format!("veth{i}").into(),
                rx_packets: u64::from(i) * 100,
                ..Default::default()
            })
            .collect();
        p.interval.containers = (0..10u64)
            .map(|i| ContainerDelta {
                id: format!("{i:064}"),
                name: format!("c{i}\"\n").into(),
                image: "nginx".into(),
                stats: sentinel_common::ContainerStats {
                    cpu_ns: i * 1_000_000,
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        m.observe(&p);
        let text = m.encode();
        let rows = text
            .lines()
            .filter(|l| l.starts_with("sentinel_interface_rx_packets_total{"))
            .count();
        assert_eq!(rows, 3, "{text}");
        assert!(text.contains("interface=\"veth19\""));
        assert!(!text.contains("interface=\"veth5\""));
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sentinel_container_cpu_seconds_total{"))
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows.iter().any(|r| r.contains("container=\"c9\\\"\\n\"")),
            "{rows:?}"
        );
        assert!(text.contains("sentinel_containers_tracked 10"));
    }

    #[test]
    fn classic_text_format_names_counters_with_total() {
        let m = Metrics::new(MetricsConfig::default());
        m.observe(&published(0));
        let text = to_text_format(&m.encode());
        assert!(
            text.contains("# HELP sentinel_sched_switch_total sched_switch, as"),
            "{text}"
        );
        assert!(text.contains("# TYPE sentinel_sched_switch_total counter\n"));
        assert!(text.contains("# TYPE sentinel_runqueue_latency_seconds histogram\n"));
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
        assert!(text.contains("sentinel_sched_switch_total 10\n"));
    }

    #[test]
    fn top_n_keeps_at_most_its_cap_and_the_busiest() {
        let mut t: TopN<u32, u64> = TopN::new(2);
        t.observe(&0, 0.5, true, |_| {});
        for k in 1..=100 {
            t.observe(&k, f64::from(k), false, |v| *v += 1);
        }
        t.keep_at_most(8);
        assert_eq!(t.tracked(), 8);
        // The pinned entry stays whatever its score; the 7 busiest fill the rest.
        let mut kept: Vec<u32> = t.iter().map(|(k, _)| *k).collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![0, 94, 95, 96, 97, 98, 99, 100]);
        t.keep_at_most(100);
        assert_eq!(t.tracked(), 8, "under the cap nothing goes");
    }

    /// Leaving out the new keys below `admission_bar` changes nothing: over many intervals of
    /// new and tracked keys (ties included), the table keeps exactly the entries, scores and
    /// values it keeps when every key is observed and the cut alone decides.
    #[test]
    fn keys_below_the_admission_bar_are_the_ones_the_cut_forgets() {
        let max = 12;
        let (mut all, mut barred) = (TopN::<u32, u32>::new(3), TopN::<u32, u32>::new(3));
        all.observe(&1000, 0.1, true, |_| {});
        barred.observe(&1000, 0.1, true, |_| {});
        let mut skipped = 0;
        for round in 0..400u64 {
            all.decay();
            barred.decay();
            let bar = barred.admission_bar(max);
            for j in 0..30u64 {
                let h = (round * 31 + j).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                // Unique within an interval, as pairs are; some come back, some are new.
                let key = (j + 30 * ((round / 7 + j * (h >> 62)) % 5)) as u32;
                // Coarse scores, many 0 (which decay does not change): ties at the bar.
                let score = ((h >> 20) % 8 * u64::from(h >> 40 & 7 == 0)) as f64;
                all.observe(&key, score, false, |v| *v += 1);
                if bar.is_some_and(|bar| score < bar) && !barred.contains(&key) {
                    skipped += 1;
                    continue;
                }
                barred.observe(&key, score, false, |v| *v += 1);
            }
            all.keep_at_most(max);
            barred.keep_at_most(max);
            let table = |t: &TopN<u32, u32>| {
                let mut v: Vec<(u32, u64, u32, bool)> = t
                    .entries
                    .iter()
                    .map(|(k, e)| (*k, e.score.to_bits(), e.value, e.pinned))
                    .collect();
                v.sort_unstable();
                v
            };
            assert_eq!(table(&all), table(&barred), "round {round}");
            assert!(all.tracked() <= max);
        }
        assert!(skipped > 1000, "the bar left out {skipped} keys");
    }

    #[test]
    fn top_n_forgets_idle_entries() {
        let mut t: TopN<u32, u64> = TopN::new(2);
        t.observe(&1, 100.0, false, |v| *v += 1);
        for _ in 0..200 {
            t.decay();
        }
        assert_eq!(t.tracked(), 0);
        t.observe(&2, 1.0, true, |_| {});
        for _ in 0..200 {
            t.decay();
        }
        assert_eq!(t.tracked(), 1, "pinned entries stay");
        // The pin is not renewed (the container and its breaker are gone): forgotten.
        t.unpin_unless(|_| false);
        for _ in 0..200 {
            t.decay();
        }
        assert_eq!(t.tracked(), 0, "an unpinned entry decays away");
    }
}
