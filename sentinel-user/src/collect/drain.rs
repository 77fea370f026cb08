//! Turns cumulative per-CPU kernel values into exact per-interval deltas.
//!
//! Why no event is lost or counted twice: the kernel maps are never reset. Each drain reads the
//! cumulative value of every (key, CPU) slot and subtracts the value read by the previous
//! drain, which it keeps. The deltas therefore telescope: over any run their sum is the last
//! value read minus the first baseline, and the baseline is zero because sentinel creates its
//! maps empty. An increment racing with a read shows up in exactly one of two consecutive
//! reads. A value that goes backwards is a reset (a map re-created under us), not a 2^64 spike:
//! the delta is then the new absolute value and the interval is flagged. Removing a key from a
//! keyed map is the one place a count could vanish: only keys that were drained and then stayed
//! idle for a whole interval are removed (see `KeyedDrain::idle`).

use std::collections::{HashMap, HashSet};

use hdrhistogram::Histogram;
use sentinel_common::{
    CONTAINER_HIST_BUCKETS, CONTAINER_SCALARS, ContainerKey, Counters, HIST_BUCKETS, IDLE_KEY,
    IfaceKey, IfaceStats, LatencyHist, OnCpu, counter, hist_bucket_range,
};

use crate::model::{IfaceDelta, LatencySummary};

/// `ContainerStats` as plain u64 fields (scalars, then the histogram).
pub const CONTAINER_FIELDS: usize = CONTAINER_SCALARS + CONTAINER_HIST_BUCKETS;

/// Everything one drain reads from the kernel, per CPU.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    pub counters: Vec<Counters>,
    pub hist: Vec<LatencyHist>,
    pub ifaces: Vec<(IfaceKey, Vec<IfaceStats>)>,
    pub containers: Vec<(ContainerKey, Vec<[u64; CONTAINER_FIELDS]>)>,
    pub netns_tcp: Vec<(u32, Vec<[u64; 2]>)>,
    /// Per CPU, the slice running when the snapshot was taken (empty once detached).
    pub oncpu: Vec<OnCpu>,
    /// CLOCK_MONOTONIC just before `oncpu` was read.
    pub oncpu_now_ns: u64,
}

/// Deltas of one interval.
#[derive(Clone, Debug)]
pub struct DrainDelta {
    pub counters: [u64; counter::COUNT],
    pub hist: [u64; HIST_BUCKETS],
    /// Interfaces with any activity in the interval, sorted by key.
    pub ifaces: Vec<IfaceDelta>,
    /// Containers (keys) with any activity in the interval, sorted by key.
    pub containers: Vec<(ContainerKey, [u64; CONTAINER_FIELDS])>,
    pub netns_tcp: Vec<(u32, [u64; 2])>,
    pub reset: bool,
}

/// Delta of one monotonic counter; see the module comment for wrap versus reset.
#[inline]
pub fn counter_delta(prev: u64, cur: u64, reset: &mut bool) -> u64 {
    let delta = cur.wrapping_sub(prev);
    if delta <= i64::MAX as u64 {
        // Includes a genuine wrap past u64::MAX: wrapping arithmetic gives the true increase.
        delta
    } else {
        *reset = true;
        // The new absolute value is what was counted since the reset; one beyond 2^63 cannot
        // come from a fresh counter and is dropped rather than reported as a spike.
        if cur <= 1 << 63 { cur } else { 0 }
    }
}

/// Per-(key, CPU) deltas of a keyed per-CPU map whose values are `N` monotonic u64 counters.
/// Bounded by the kernel map: a key lives here only while it is in the kernel map.
pub struct KeyedDrain<K, const N: usize> {
    prev: HashMap<K, KeyedPrev<N>>,
}

struct KeyedPrev<const N: usize> {
    per_cpu: Vec<[u64; N]>,
    /// Consecutive drains without any change.
    idle_drains: u32,
}

impl<K, const N: usize> Default for KeyedDrain<K, N> {
    fn default() -> Self {
        Self {
            prev: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash + Ord, const N: usize> KeyedDrain<K, N> {
    /// Deltas of the keys with any change, sorted by key.
    pub fn apply(
        &mut self,
        entries: &[(K, Vec<[u64; N]>)],
        reset: &mut bool,
    ) -> Vec<(K, [u64; N])> {
        let mut out = Vec::new();
        for (key, per_cpu) in entries {
            let prev = self.prev.entry(*key).or_insert_with(|| KeyedPrev {
                per_cpu: Vec::new(),
                idle_drains: 0,
            });
            let mut sums = [0u64; N];
            for (cpu, cur) in per_cpu.iter().enumerate() {
                let before = prev.per_cpu.get(cpu).copied().unwrap_or([0; N]);
                for j in 0..N {
                    sums[j] = sums[j].wrapping_add(counter_delta(before[j], cur[j], reset));
                }
            }
            prev.per_cpu.clone_from(per_cpu);
            if sums == [0; N] {
                prev.idle_drains = prev.idle_drains.saturating_add(1);
            } else {
                prev.idle_drains = 0;
                out.push((*key, sums));
            }
        }
        // A key no longer in the kernel map has no previous value any more.
        if self.prev.len() > entries.len() {
            let live: HashSet<K> = entries.iter().map(|(k, _)| *k).collect();
            self.prev.retain(|k, _| live.contains(k));
        }
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Keys idle for at least `drains` drains: only these may be removed from the kernel map,
    /// because a removal can race with an increment only on an entry still in use.
    pub fn idle(&self, drains: u32) -> impl Iterator<Item = K> + '_ {
        self.prev
            .iter()
            .filter(move |(_, p)| p.idle_drains >= drains)
            .map(|(k, _)| *k)
    }

    pub fn len(&self) -> usize {
        self.prev.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prev.is_empty()
    }

    pub fn forget(&mut self, key: &K) {
        self.prev.remove(key);
    }
}

/// Previous reads, one per (key, CPU).
#[derive(Default)]
pub struct Drain {
    prev_counters: Vec<Counters>,
    prev_hist: Vec<LatencyHist>,
    pub ifaces: KeyedDrain<IfaceKey, 4>,
    iface_names: HashMap<IfaceKey, String>,
    pub containers: KeyedDrain<ContainerKey, CONTAINER_FIELDS>,
    pub netns_tcp: KeyedDrain<u32, 2>,
    running: RunningSlices,
    /// Sum of the latest cumulative reads over CPUs (the kernel's total since load).
    cumulative: [u64; counter::COUNT],
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, snap: &RawSnapshot) -> DrainDelta {
        let mut reset = false;
        let mut counters = [0u64; counter::COUNT];
        self.cumulative = [0; counter::COUNT];
        for (cpu, cur) in snap.counters.iter().enumerate() {
            let prev = self
                .prev_counters
                .get(cpu)
                .map(|p| p.values)
                .unwrap_or([0; counter::COUNT]);
            for i in 0..counter::COUNT {
                counters[i] =
                    counters[i].wrapping_add(counter_delta(prev[i], cur.values[i], &mut reset));
                self.cumulative[i] = self.cumulative[i].wrapping_add(cur.values[i]);
            }
        }
        self.prev_counters.clone_from(&snap.counters);

        let mut hist = [0u64; HIST_BUCKETS];
        for (cpu, cur) in snap.hist.iter().enumerate() {
            let prev = self.prev_hist.get(cpu).map(|p| &p.buckets);
            for (b, slot) in hist.iter_mut().enumerate() {
                let before = prev.map_or(0, |p| p[b]);
                *slot += counter_delta(before, cur.buckets[b], &mut reset);
            }
        }
        self.prev_hist.clone_from(&snap.hist);

        let iface_values: Vec<(IfaceKey, Vec<[u64; 4]>)> = snap
            .ifaces
            .iter()
            .map(|(k, per_cpu)| {
                (
                    *k,
                    per_cpu
                        .iter()
                        .map(|s| [s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes])
                        .collect(),
                )
            })
            .collect();
        let changed = self.ifaces.apply(&iface_values, &mut reset);
        for (key, per_cpu) in &snap.ifaces {
            if !self.iface_names.contains_key(key)
                && let Some(stats) = per_cpu.iter().find(|s| s.name[0] != 0)
            {
                self.iface_names.insert(*key, ifname(&stats.name));
            }
        }
        if self.iface_names.len() > self.ifaces.len() {
            let live: HashSet<IfaceKey> = snap.ifaces.iter().map(|(k, _)| *k).collect();
            self.iface_names.retain(|k, _| live.contains(k));
        }
        let ifaces = changed
            .into_iter()
            .map(|(key, d)| IfaceDelta {
                netns: key.netns,
                ifindex: key.ifindex,
                name: self.iface_names.get(&key).cloned().unwrap_or_default(),
                rx_packets: d[0],
                rx_bytes: d[1],
                tx_packets: d[2],
                tx_bytes: d[3],
            })
            .collect();
        let mut containers = self.containers.apply(&snap.containers, &mut reset);
        self.running
            .credit(snap.oncpu_now_ns, &snap.oncpu, &mut containers);
        let netns_tcp = self.netns_tcp.apply(&snap.netns_tcp, &mut reset);
        DrainDelta {
            counters,
            hist,
            ifaces,
            containers,
            netns_tcp,
            reset,
        }
    }

    /// Sum over CPUs of the latest cumulative counter values.
    pub fn cumulative(&self) -> &[u64; counter::COUNT] {
        &self.cumulative
    }

    pub fn idle_ifaces(&self, drains: u32) -> impl Iterator<Item = IfaceKey> + '_ {
        self.ifaces.idle(drains)
    }

    pub fn iface_entries(&self) -> usize {
        self.ifaces.len()
    }

    pub fn forget_container(&mut self, key: &ContainerKey) {
        self.containers.forget(key);
        self.running.forget(key);
    }

    pub fn forget_iface(&mut self, key: &IfaceKey) {
        self.ifaces.forget(key);
        self.iface_names.remove(key);
    }
}

/// Credits on-CPU time of slices that are still running at a drain.
///
/// The kernel adds a slice's time to its container only when the task leaves the CPU, so a
/// task that spins alone on a CPU would otherwise show no CPU time for as long as it is not
/// preempted, then all of it at once. Each drain credits the part of each CPU's running slice
/// not credited yet; when the slice ends, the kernel adds the whole slice and what was
/// credited before is owed back by that container, paid from its next kernel deltas. Every
/// slice is counted exactly once over the run: the credits and the debt cancel. A debt is
/// bounded by one slice per CPU and dropped with the container.
#[derive(Default)]
struct RunningSlices {
    per_cpu: Vec<Option<Slice>>,
    debt: HashMap<ContainerKey, u64>,
}

#[derive(Clone, Copy)]
struct Slice {
    since_ns: u64,
    key: ContainerKey,
    credited: u64,
}

impl RunningSlices {
    fn credit(
        &mut self,
        now_ns: u64,
        oncpu: &[OnCpu],
        containers: &mut Vec<(ContainerKey, [u64; CONTAINER_FIELDS])>,
    ) {
        if oncpu.is_empty() || now_ns == 0 {
            // Detached: no slice runs on; the debt is still paid from the final deltas.
            self.pay_debt(containers);
            return;
        }
        self.per_cpu.resize(oncpu.len(), None);
        for (slot, cur) in self.per_cpu.iter_mut().zip(oncpu) {
            if let Some(prev) = *slot
                && prev.since_ns != cur.since_ns
            {
                // Ended since the last drain: the kernel counted all of it.
                *self.debt.entry(prev.key).or_default() += prev.credited;
                *slot = None;
            }
            if cur.since_ns == 0 || cur.key == IDLE_KEY || cur.since_ns > now_ns {
                // No slice yet, the idle task, or one that began after the clock was read.
                continue;
            }
            let slice = slot.get_or_insert(Slice {
                since_ns: cur.since_ns,
                key: cur.key,
                credited: 0,
            });
            let running = now_ns - cur.since_ns;
            let add = running.saturating_sub(slice.credited);
            slice.credited = slice.credited.max(running);
            if add > 0 {
                add_cpu_ns(containers, slice.key, add);
            }
        }
        self.pay_debt(containers);
    }

    fn pay_debt(&mut self, containers: &mut [(ContainerKey, [u64; CONTAINER_FIELDS])]) {
        if self.debt.is_empty() {
            return;
        }
        for (key, d) in containers.iter_mut() {
            if let Some(owed) = self.debt.get_mut(key) {
                let paid = (*owed).min(d[0]);
                d[0] -= paid;
                *owed -= paid;
            }
        }
        self.debt.retain(|_, owed| *owed > 0);
    }

    /// Forgets the debt of a container whose entry was removed.
    fn forget(&mut self, key: &ContainerKey) {
        self.debt.remove(key);
    }
}

fn add_cpu_ns(
    containers: &mut Vec<(ContainerKey, [u64; CONTAINER_FIELDS])>,
    key: ContainerKey,
    ns: u64,
) {
    match containers.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(i) => containers[i].1[0] += ns,
        Err(i) => {
            let mut d = [0; CONTAINER_FIELDS];
            d[0] = ns;
            containers.insert(i, (key, d));
        }
    }
}

fn ifname(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Summarises a histogram delta. Each bucket is recorded at its midpoint, so percentiles are
/// accurate to the bucket width (25% of the value).
pub struct LatencySummarizer {
    hist: Histogram<u64>,
}

impl Default for LatencySummarizer {
    fn default() -> Self {
        Self {
            // 1 ns .. about 73 minutes with 3 significant digits; larger waits are clamped.
            hist: Histogram::new_with_bounds(1, 1 << 42, 3).expect("static histogram bounds"),
        }
    }
}

impl LatencySummarizer {
    pub fn summarize(&mut self, buckets: &[u64; HIST_BUCKETS]) -> LatencySummary {
        self.hist.reset();
        let mut count = 0u64;
        for (idx, &n) in buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (low, high) = hist_bucket_range(idx);
            let mid = (low + (high - low) / 2).clamp(1, self.hist.high());
            // Saturating: an absurd count must not panic the daemon.
            let _ = self.hist.record_n(mid, n);
            count += n;
        }
        self.finish(count)
    }
}

impl LatencySummarizer {
    /// Summarises a per-container histogram (plain log2 buckets, 2x resolution).
    pub fn summarize_log2(&mut self, buckets: &[u64]) -> LatencySummary {
        self.hist.reset();
        let mut count = 0u64;
        for (b, &n) in buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let low = 1u64 << b;
            let mid = (low + low / 2).clamp(1, self.hist.high());
            let _ = self.hist.record_n(mid, n);
            count += n;
        }
        self.finish(count)
    }

    fn finish(&self, count: u64) -> LatencySummary {
        if count == 0 {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            p50: us(self.hist.value_at_quantile(0.50)),
            p99: us(self.hist.value_at_quantile(0.99)),
            max: us(self.hist.max()),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_common::hist_bucket;

    fn counters(values: &[(usize, u64)]) -> Counters {
        let mut c = Counters {
            values: [0; counter::COUNT],
        };
        for &(i, v) in values {
            c.values[i] = v;
        }
        c
    }

    fn snap(per_cpu: Vec<Counters>) -> RawSnapshot {
        RawSnapshot {
            counters: per_cpu,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_telescope_to_the_final_cumulative_count() {
        let mut drain = Drain::new();
        let mut total = 0u64;
        let mut cpu = [0u64; 3];
        for step in 1..=200u64 {
            for (i, c) in cpu.iter_mut().enumerate() {
                *c += step * (i as u64 + 1) % 7;
            }
            let s = snap(
                cpu.iter()
                    .map(|&v| counters(&[(counter::SCHED_SWITCH, v)]))
                    .collect(),
            );
            let d = drain.apply(&s);
            assert!(!d.reset);
            total += d.counters[counter::SCHED_SWITCH];
        }
        assert_eq!(total, cpu.iter().sum::<u64>());
        assert_eq!(drain.cumulative()[counter::SCHED_SWITCH], total);
    }

    #[test]
    fn wrap_past_u64_max_is_exact() {
        let mut reset = false;
        assert_eq!(counter_delta(u64::MAX - 2, 5, &mut reset), 8);
        assert!(!reset);
        let mut drain = Drain::new();
        drain.apply(&snap(vec![counters(&[(0, u64::MAX - 10)])]));
        let d = drain.apply(&snap(vec![counters(&[(0, 4)])]));
        assert_eq!(d.counters[0], 15);
        assert!(!d.reset);
    }

    #[test]
    fn a_decrease_is_a_reset_not_a_huge_delta() {
        let mut drain = Drain::new();
        drain.apply(&snap(vec![counters(&[(0, 1_000_000)])]));
        let d = drain.apply(&snap(vec![counters(&[(0, 40)])]));
        assert!(d.reset);
        assert_eq!(d.counters[0], 40);
        let d = drain.apply(&snap(vec![counters(&[(0, 45)])]));
        assert!(!d.reset);
        assert_eq!(d.counters[0], 5);
    }

    #[test]
    fn no_delta_ever_exceeds_2_pow_63() {
        let mut drain = Drain::new();
        let values = [
            5u64,
            u64::MAX,
            3,
            1 << 63,
            (1 << 63) + 1,
            0,
            u64::MAX / 2,
            7,
        ];
        for v in values {
            let d = drain.apply(&snap(vec![counters(&[(0, v)])]));
            assert!(
                d.counters[0] <= 1 << 63,
                "value {v} gave delta {}",
                d.counters[0]
            );
        }
    }

    #[test]
    fn new_cpu_or_key_starts_from_zero_and_gone_keys_are_forgotten() {
        let key = IfaceKey {
            netns: 7,
            ifindex: 1,
        };
        let stats = |rx| IfaceStats {
            rx_packets: rx,
            rx_bytes: rx * 100,
            tx_packets: 0,
            tx_bytes: 0,
            name: *b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let mut drain = Drain::new();
        let mut s = RawSnapshot {
            ifaces: vec![(key, vec![stats(3), stats(4)])],
            ..Default::default()
        };
        let d = drain.apply(&s);
        assert_eq!(d.ifaces.len(), 1);
        assert_eq!(d.ifaces[0].rx_packets, 7);
        assert_eq!(d.ifaces[0].name, "lo");
        let d = drain.apply(&s);
        assert!(d.ifaces.is_empty(), "idle interfaces are not reported");
        assert_eq!(drain.idle_ifaces(1).collect::<Vec<_>>(), vec![key]);
        s.ifaces.clear();
        drain.apply(&s);
        assert_eq!(drain.iface_entries(), 0);
    }

    #[test]
    fn keyed_drain_sums_cpus_and_reports_only_changed_keys() {
        let mut kd: KeyedDrain<u64, 2> = KeyedDrain::default();
        let mut reset = false;
        let d = kd.apply(
            &[(1, vec![[1, 2], [3, 4]]), (2, vec![[0, 0], [0, 0]])],
            &mut reset,
        );
        assert_eq!(d, vec![(1, [4, 6])]);
        let d = kd.apply(
            &[(1, vec![[1, 2], [5, 4]]), (2, vec![[0, 0], [0, 9]])],
            &mut reset,
        );
        assert_eq!(d, vec![(1, [2, 0]), (2, [0, 9])]);
        assert!(!reset);
        let d = kd.apply(&[(1, vec![[1, 2], [5, 4]])], &mut reset);
        assert!(d.is_empty());
        assert_eq!(kd.len(), 1, "key 2 left the kernel map, so it is forgotten");
        assert_eq!(kd.idle(1).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn latency_summary_matches_recorded_buckets() {
        let mut buckets = [0u64; HIST_BUCKETS];
        buckets[hist_bucket(10_000)] += 98; // 10 us
        buckets[hist_bucket(2_000_000)] += 2; // 2 ms
        let s = LatencySummarizer::default().summarize(&buckets);
        assert_eq!(s.count, 100);
        assert!((8.0..=12.5).contains(&s.p50), "p50 {}", s.p50);
        assert!((1600.0..=2500.0).contains(&s.p99), "p99 {}", s.p99);
        assert!(s.max >= s.p99);
        assert_eq!(
            LatencySummarizer::default()
                .summarize(&[0; HIST_BUCKETS])
                .count,
            0
        );
    }

    fn running_snap(now: u64, oncpu: &[(u64, u64)], cpu_ns: &[(u64, u64)]) -> RawSnapshot {
        RawSnapshot {
            oncpu: oncpu
                .iter()
                .map(|&(since_ns, key)| OnCpu { since_ns, key })
                .collect(),
            oncpu_now_ns: now,
            containers: cpu_ns
                .iter()
                .map(|&(key, ns)| {
                    let mut v = [0u64; CONTAINER_FIELDS];
                    v[0] = ns;
                    (key, vec![v])
                })
                .collect(),
            ..Default::default()
        }
    }

    fn cpu_of(delta: &DrainDelta, key: u64) -> u64 {
        delta
            .containers
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, d)| d[0])
    }

    #[test]
    fn a_running_slice_is_credited_as_it_runs_and_counted_once_when_it_ends() {
        let mut drain = Drain::new();
        // Container 7 got the CPU at t=100 and is still on it at t=300 and t=500.
        let d1 = drain.apply(&running_snap(300, &[(100, 7)], &[]));
        let d2 = drain.apply(&running_snap(500, &[(100, 7)], &[]));
        assert_eq!((cpu_of(&d1, 7), cpu_of(&d2, 7)), (200, 200));
        // It left at t=600 (the kernel added the whole slice, 500 ns); container 9 runs since.
        let d3 = drain.apply(&running_snap(700, &[(600, 9)], &[(7, 500)]));
        assert_eq!(cpu_of(&d3, 7), 100, "only the part not credited before");
        assert_eq!(cpu_of(&d3, 9), 100);
        let total_7: u64 = [&d1, &d2, &d3].iter().map(|d| cpu_of(d, 7)).sum();
        assert_eq!(total_7, 500, "the slice, exactly once");
    }

    #[test]
    fn debt_is_paid_from_later_deltas_and_idle_is_never_credited() {
        let mut drain = Drain::new();
        let d1 = drain.apply(&running_snap(1_000, &[(0, 7), (400, IDLE_KEY)], &[]));
        assert!(d1.containers.is_empty(), "no slice yet and the idle task");
        let d2 = drain.apply(&running_snap(2_000, &[(1_500, 7), (400, IDLE_KEY)], &[]));
        assert_eq!(cpu_of(&d2, 7), 500);
        // The slice ended after the ONCPU read but before the CONTAINERS read of the previous
        // drain would have seen it: here the kernel delta shows up one drain late, in pieces.
        let d3 = drain.apply(&running_snap(3_000, &[(2_600, 8)], &[(7, 300)]));
        assert_eq!(cpu_of(&d3, 7), 0, "300 of the 500 owed paid");
        let d4 = drain.apply(&running_snap(4_000, &[(2_600, 8)], &[(7, 1_100)]));
        assert_eq!(
            cpu_of(&d4, 7),
            600,
            "the remaining 200 owed paid, then counted"
        );
        // Detached: nothing more is credited.
        let mut detached = running_snap(5_000, &[], &[(7, 1_100), (8, 0)]);
        detached.oncpu.clear();
        let d5 = drain.apply(&detached);
        assert_eq!(cpu_of(&d5, 8), 0);
    }
}
