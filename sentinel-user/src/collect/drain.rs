//! Turns cumulative per-CPU kernel values into exact per-interval deltas.
//!
//! Why no event is lost or counted twice: the kernel maps are never reset. Each drain reads the
//! cumulative value of every (key, CPU) slot and subtracts the value read by the previous
//! drain, which it keeps. The deltas therefore telescope: over any run their sum is the last
//! value read minus the first baseline, and the baseline is zero because sentinel creates its
//! maps empty. An increment racing with a read shows up in exactly one of two consecutive
//! reads. A value that goes backwards is a reset (a map re-created under us), not a 2^64 spike:
//! the delta is then the new absolute value and the interval is flagged.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use sentinel_common::{
    Counters, HIST_BUCKETS, IfaceKey, IfaceStats, LatencyHist, counter, hist_bucket_range,
};

use crate::model::{IfaceDelta, LatencySummary};

/// Everything one drain reads from the kernel, per CPU.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    pub counters: Vec<Counters>,
    pub hist: Vec<LatencyHist>,
    pub ifaces: Vec<(IfaceKey, Vec<IfaceStats>)>,
}

/// Deltas of one interval.
#[derive(Clone, Debug)]
pub struct DrainDelta {
    pub counters: [u64; counter::COUNT],
    pub hist: [u64; HIST_BUCKETS],
    /// Interfaces with any activity in the interval, sorted by key.
    pub ifaces: Vec<IfaceDelta>,
    pub reset: bool,
}

#[derive(Clone, Debug)]
struct IfacePrev {
    per_cpu: Vec<[u64; 4]>,
    name: String,
    /// Consecutive drains without any change: only idle entries may be removed.
    idle_drains: u32,
}

/// Previous reads, one per (key, CPU). Bounded by the kernel maps' capacities: an entry exists
/// here only while its key exists in the kernel map.
#[derive(Default)]
pub struct Drain {
    prev_counters: Vec<Counters>,
    prev_hist: Vec<LatencyHist>,
    prev_ifaces: HashMap<IfaceKey, IfacePrev>,
    /// Sum of the latest cumulative reads over CPUs (the kernel's total since load).
    cumulative: [u64; counter::COUNT],
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

        let mut ifaces = Vec::new();
        let mut seen = 0usize;
        for (key, per_cpu) in &snap.ifaces {
            seen += 1;
            let prev = self.prev_ifaces.entry(*key).or_insert_with(|| IfacePrev {
                per_cpu: Vec::new(),
                name: String::new(),
                idle_drains: 0,
            });
            if prev.name.is_empty()
                && let Some(stats) = per_cpu.iter().find(|s| s.name[0] != 0)
            {
                prev.name = ifname(&stats.name);
            }
            let mut sums = [0u64; 4];
            for (cpu, stats) in per_cpu.iter().enumerate() {
                let cur = [
                    stats.rx_packets,
                    stats.rx_bytes,
                    stats.tx_packets,
                    stats.tx_bytes,
                ];
                let before = prev.per_cpu.get(cpu).copied().unwrap_or([0; 4]);
                for j in 0..4 {
                    sums[j] += counter_delta(before[j], cur[j], &mut reset);
                }
            }
            prev.per_cpu.clear();
            prev.per_cpu.extend(
                per_cpu
                    .iter()
                    .map(|s| [s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes]),
            );
            if sums == [0; 4] {
                prev.idle_drains = prev.idle_drains.saturating_add(1);
            } else {
                prev.idle_drains = 0;
                ifaces.push(IfaceDelta {
                    netns: key.netns,
                    ifindex: key.ifindex,
                    name: prev.name.clone(),
                    rx_packets: sums[0],
                    rx_bytes: sums[1],
                    tx_packets: sums[2],
                    tx_bytes: sums[3],
                });
            }
        }
        // A key no longer in the kernel map has no previous value any more.
        if self.prev_ifaces.len() > seen {
            let live: std::collections::HashSet<IfaceKey> =
                snap.ifaces.iter().map(|(k, _)| *k).collect();
            self.prev_ifaces.retain(|k, _| live.contains(k));
        }
        ifaces.sort_by_key(|d| (d.netns, d.ifindex));
        DrainDelta {
            counters,
            hist,
            ifaces,
            reset,
        }
    }

    /// Sum over CPUs of the latest cumulative counter values.
    pub fn cumulative(&self) -> &[u64; counter::COUNT] {
        &self.cumulative
    }

    /// Interface entries that have been idle for at least `drains` drains: only these may be
    /// removed from the kernel map, because a removal can race with an increment only on an
    /// entry that is still in use.
    pub fn idle_ifaces(&self, drains: u32) -> impl Iterator<Item = IfaceKey> + '_ {
        self.prev_ifaces
            .iter()
            .filter(move |(_, p)| p.idle_drains >= drains)
            .map(|(k, _)| *k)
    }

    pub fn iface_entries(&self) -> usize {
        self.prev_ifaces.len()
    }

    pub fn forget_iface(&mut self, key: &IfaceKey) {
        self.prev_ifaces.remove(key);
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
            hist: Vec::new(),
            ifaces: Vec::new(),
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
            counters: vec![],
            hist: vec![],
            ifaces: vec![(key, vec![stats(3), stats(4)])],
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
}
