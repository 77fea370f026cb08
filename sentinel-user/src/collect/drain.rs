//! Turns cumulative per-CPU kernel values into exact per-interval deltas.
//!
//! Why no event is lost or counted twice: the kernel maps are never reset. Each drain reads the
//! cumulative value of every (key, CPU) slot it needs and subtracts the value read by the
//! previous drain, which it keeps (flat, one array per map, not a map of vectors). The deltas
//! therefore telescope: over any run their sum is the last value read minus the first
//! baseline, and the baseline is zero because sentinel creates its maps empty. An increment
//! racing with a read shows up in exactly one of two consecutive reads. A value that goes
//! backwards is a reset (a map re-created under us), not a 2^64 spike: the delta is then the
//! new absolute value and the interval is flagged.
//!
//! What a drain costs: the per-CPU records (one read), the interface and TCP maps (a few
//! batched reads, whatever their size), and only the container entries whose dirty bit is set,
//! i.e. those that changed. Removing a key is the one place a count could vanish: interface
//! and TCP keys are removed only after being drained and idle for a whole interval, and a
//! container's slot is read one last time before it is freed (see `slots.rs`).

use std::sync::Arc;

use hdrhistogram::Histogram;
use sentinel_common::{
    CONTAINER_FIELDS, ContainerKey, ContainerStats, CpuRecord, HIST_BUCKETS, IFACE_FIELDS,
    IFNAME_LEN, IfaceKey, NO_SLOT, counter, hist_bucket_range,
};

use crate::model::{IfaceDelta, LatencySummary};

/// The drain's maps are keyed by kernel integers (container keys, interface keys, network
/// namespaces) and looked up thousands of times per drain: foldhash (seeded per map, like
/// hashbrown's default) costs a fraction of SipHash there.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One (CPU, slot) entry of a key-to-slot table (containers by default, interfaces with
/// `IFACE_FIELDS`) as read from the kernel.
#[derive(Clone, Copy, Debug)]
pub struct SlotRead<const N: usize = CONTAINER_FIELDS> {
    pub cpu: u32,
    pub slot: u32,
    /// The container key, or the interface's `IfaceKey::packed`.
    pub key: u64,
    pub values: [u64; N],
}

/// Every entry of a keyed per-CPU map: `values[i * ncpu + cpu]` belongs to `keys[i]`.
#[derive(Clone, Debug)]
pub struct KeyedRead<K, const N: usize> {
    pub ncpu: usize,
    pub keys: Vec<K>,
    pub values: Vec<[u64; N]>,
}

impl<K, const N: usize> Default for KeyedRead<K, N> {
    fn default() -> Self {
        Self {
            ncpu: 0,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K, const N: usize> KeyedRead<K, N> {
    pub fn clear(&mut self, ncpu: usize) {
        self.ncpu = ncpu;
        self.keys.clear();
        self.values.clear();
    }

    pub fn push(&mut self, key: K, per_cpu: impl IntoIterator<Item = [u64; N]>) {
        self.keys.push(key);
        let before = self.values.len();
        self.values.extend(per_cpu);
        // Every key has exactly `ncpu` values (a short read is padded with zeros).
        self.values.resize(before + self.ncpu, [0; N]);
    }

    fn per_cpu(&self, i: usize) -> &[[u64; N]] {
        &self.values[i * self.ncpu..(i + 1) * self.ncpu]
    }
}

/// Everything one drain reads from the kernel.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    /// Each possible CPU's record: counters, run-queue histogram, the slice running there.
    pub cpus: Vec<CpuRecord>,
    /// CLOCK_MONOTONIC just before `cpus` was read; 0 once the programs are detached (no
    /// slice runs on then).
    pub now_ns: u64,
    /// Interface entries that changed since the last drain (and the last read of freed slots).
    pub ifaces: Vec<SlotRead<IFACE_FIELDS>>,
    /// Device name of each interface whose slot was learned in this read.
    pub iface_names: Vec<(IfaceKey, [u8; IFNAME_LEN])>,
    /// Capacity of the interface slot table (entries per CPU).
    pub iface_capacity: u32,
    /// Interfaces whose last slot was freed in this drain: forget them.
    pub ifaces_retired: Vec<IfaceKey>,
    pub netns_tcp: KeyedRead<u32, 2>,
    /// Container entries that changed since the last drain (and the last read of freed slots).
    pub containers: Vec<SlotRead>,
    /// Capacity of the container slot table (entries per CPU).
    pub container_capacity: u32,
    /// Containers whose last slot was freed in this drain: forget them.
    pub retired: Vec<ContainerKey>,
    /// Per CPU, the container of the slice running there (`None`: the idle task or none).
    pub running: Vec<Option<ContainerKey>>,
}

/// One container's deltas over the interval (the kernel's own typed record, each field a
/// delta), and how its CPU time and waits split over CPUs.
#[derive(Clone, Debug)]
pub struct ContainerActivity {
    pub key: ContainerKey,
    pub stats: ContainerStats,
    /// `(cpu, on-CPU ns, run-queue wait ns)` for each CPU where either is non-zero.
    pub per_cpu: PerCpuSplit,
}

/// A container's per-CPU split; inline up to two CPUs (no allocation per container per
/// drain on small hosts).
pub type PerCpuSplit = smallvec::SmallVec<[(u32, u64, u64); 2]>;

/// Deltas of one interval.
#[derive(Clone, Debug)]
pub struct DrainDelta {
    pub counters: [u64; counter::COUNT],
    pub hist: [u64; HIST_BUCKETS],
    /// Sum of the waits in `hist`, ns (exact).
    pub runq_wait_ns: u64,
    /// Interfaces with any activity in the interval, sorted by key.
    pub ifaces: Vec<IfaceDelta>,
    /// Containers (keys) with any activity in the interval, sorted by key.
    pub containers: Vec<ContainerActivity>,
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
/// Bounded by the kernel map: a key lives here only while it is in the kernel map. Previous
/// values are kept flat (`prev[index * ncpu + cpu]`), reused through a free list.
pub struct KeyedDrain<K, const N: usize> {
    index: HashMap<K, usize>,
    ncpu: usize,
    prev: Vec<[u64; N]>,
    /// Per index: consecutive drains without any change, and the drain that last saw it.
    idle_drains: Vec<u32>,
    seen: Vec<u64>,
    keys: Vec<Option<K>>,
    free: Vec<usize>,
    generation: u64,
}

impl<K, const N: usize> Default for KeyedDrain<K, N> {
    fn default() -> Self {
        Self {
            index: HashMap::default(),
            ncpu: 0,
            prev: Vec::new(),
            idle_drains: Vec::new(),
            seen: Vec::new(),
            keys: Vec::new(),
            free: Vec::new(),
            generation: 0,
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash + Ord, const N: usize> KeyedDrain<K, N> {
    /// Deltas of the keys with any change, sorted by key.
    pub fn apply(&mut self, read: &KeyedRead<K, N>, reset: &mut bool) -> Vec<(K, [u64; N])> {
        if read.ncpu != self.ncpu && !read.keys.is_empty() {
            // The CPU count is fixed for a run; a change means a new map: start over.
            *self = Self {
                ncpu: read.ncpu,
                ..Self::default()
            };
        }
        self.generation += 1;
        let mut out = Vec::new();
        for (i, key) in read.keys.iter().enumerate() {
            let idx = self.index_of(*key);
            self.seen[idx] = self.generation;
            let mut sums = [0u64; N];
            let prev = &mut self.prev[idx * self.ncpu..(idx + 1) * self.ncpu];
            for (before, cur) in prev.iter_mut().zip(read.per_cpu(i)) {
                for j in 0..N {
                    sums[j] = sums[j].wrapping_add(counter_delta(before[j], cur[j], reset));
                }
                *before = *cur;
            }
            if sums == [0; N] {
                self.idle_drains[idx] = self.idle_drains[idx].saturating_add(1);
            } else {
                self.idle_drains[idx] = 0;
                out.push((*key, sums));
            }
        }
        // A key no longer in the kernel map has no previous value any more.
        if self.index.len() > read.keys.len() {
            let gone: Vec<K> = self
                .index
                .iter()
                .filter(|(_, idx)| self.seen[**idx] != self.generation)
                .map(|(k, _)| *k)
                .collect();
            for key in gone {
                self.forget(&key);
            }
        }
        out.sort_by_key(|(k, _)| *k);
        out
    }

    fn index_of(&mut self, key: K) -> usize {
        if let Some(&idx) = self.index.get(&key) {
            return idx;
        }
        let idx = match self.free.pop() {
            Some(idx) => {
                self.prev[idx * self.ncpu..(idx + 1) * self.ncpu].fill([0; N]);
                idx
            }
            None => {
                self.prev.resize(self.prev.len() + self.ncpu, [0; N]);
                self.idle_drains.push(0);
                self.seen.push(0);
                self.keys.push(None);
                self.keys.len() - 1
            }
        };
        self.idle_drains[idx] = 0;
        self.keys[idx] = Some(key);
        self.index.insert(key, idx);
        idx
    }

    /// Keys idle for at least `drains` drains: only these may be removed from the kernel map,
    /// because a removal can race with an increment only on an entry still in use.
    pub fn idle(&self, drains: u32) -> impl Iterator<Item = K> + '_ {
        self.index
            .iter()
            .filter(move |(_, idx)| self.idle_drains[**idx] >= drains)
            .map(|(k, _)| *k)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn forget(&mut self, key: &K) {
        if let Some(idx) = self.index.remove(key) {
            self.keys[idx] = None;
            self.free.push(idx);
        }
    }
}

impl ContainerActivity {
    pub fn zero(key: ContainerKey) -> Self {
        Self {
            key,
            stats: bytemuck::Zeroable::zeroed(),
            per_cpu: PerCpuSplit::new(),
        }
    }
}

/// Previous values of a key-to-slot table's entries (`prev[cpu * capacity + slot]`, grown as
/// CPUs appear), kept across owners: a freed slot's next owner counts from where the last
/// read of the old one left it, so each owner's deltas are exactly its own counts.
#[derive(Default)]
pub struct SlotDeltas<const N: usize> {
    capacity: usize,
    prev: Vec<[u64; N]>,
}

impl<const N: usize> SlotDeltas<N> {
    /// Starts over when the capacity changed (a new map); returns whether it did.
    fn set_capacity(&mut self, capacity: u32) -> bool {
        let changed = capacity as usize != self.capacity;
        if changed {
            self.capacity = capacity as usize;
            self.prev.clear();
        }
        changed
    }

    /// Delta of one entry since its last read (`None` for a slot past the capacity).
    fn delta(&mut self, r: &SlotRead<N>, reset: &mut bool) -> Option<[u64; N]> {
        let (cpu, slot) = (r.cpu as usize, r.slot as usize);
        if slot >= self.capacity {
            return None;
        }
        let at = cpu * self.capacity + slot;
        if at >= self.prev.len() {
            self.prev.resize((cpu + 1) * self.capacity, [0; N]);
        }
        let before = &mut self.prev[at];
        // The common case first, branch-free (it vectorizes): every counter went forward.
        let mut d = [0u64; N];
        let mut any_top_bit = 0u64;
        for j in 0..N {
            d[j] = r.values[j].wrapping_sub(before[j]);
            any_top_bit |= d[j];
        }
        if any_top_bit > i64::MAX as u64 {
            for j in 0..N {
                d[j] = counter_delta(before[j], r.values[j], reset);
            }
        }
        *before = r.values;
        Some(d)
    }
}

/// Per key of a slot table: the drain that last saw it change, so a drain costs what changed,
/// not every key known.
pub struct IdleKeys<K> {
    /// Drains ended so far.
    drain: u64,
    changed_at: HashMap<K, u64>,
}

impl<K> Default for IdleKeys<K> {
    fn default() -> Self {
        Self {
            drain: 0,
            changed_at: HashMap::default(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> IdleKeys<K> {
    /// Ends a drain: every known key is a drain older, the `changed` ones are fresh.
    fn tick(&mut self, changed: impl IntoIterator<Item = K>) {
        self.drain += 1;
        for key in changed {
            self.changed_at.insert(key, self.drain);
        }
    }

    /// Makes `key` known (unchanged in the drain being built) unless it already is.
    fn know(&mut self, key: K) {
        // As if it had changed in the drain before: one drain idle once this one ends.
        self.changed_at.entry(key).or_insert(self.drain);
    }

    /// Keys seen before and unchanged for at least `drains` drains.
    pub fn idle(&self, drains: u32) -> impl Iterator<Item = K> + '_ {
        self.changed_at
            .iter()
            .filter(move |(_, at)| self.drain - **at >= u64::from(drains))
            .map(|(k, _)| *k)
    }

    pub fn len(&self) -> usize {
        self.changed_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changed_at.is_empty()
    }

    fn forget(&mut self, key: &K) {
        self.changed_at.remove(key);
    }
}

/// Per-(CPU, slot) deltas of the container arrays, summed per container key.
#[derive(Default)]
pub struct ContainerDrain {
    prev: SlotDeltas<CONTAINER_FIELDS>,
    keys: IdleKeys<ContainerKey>,
    /// Per slot: its record's index in the drain being built (reused from drain to drain).
    slot_entry: Vec<u32>,
    /// The drain being built's keys, sums and per-CPU splits, by record: kept from drain to
    /// drain: lists grown anew every drain were 2% of the main thread at 1000 live containers.
    keys_built: Vec<ContainerKey>,
    sums_built: Vec<[u64; CONTAINER_FIELDS]>,
    splits_built: Vec<PerCpuSplit>,
}

impl ContainerDrain {
    fn apply(
        &mut self,
        capacity: u32,
        reads: &[SlotRead],
        reset: &mut bool,
    ) -> Vec<ContainerActivity> {
        if self.prev.set_capacity(capacity) {
            self.keys = IdleKeys::default();
        }
        let capacity = capacity as usize;
        // Entries are gathered per slot (an index, no hashing of 320-byte records), then
        // merged per key: a key holds more than one slot only while one is being retired.
        // Keys, sums and per-CPU splits apart, so sorting moves each 320-byte sum once.
        let (keys, sums, splits) = (
            &mut self.keys_built,
            &mut self.sums_built,
            &mut self.splits_built,
        );
        keys.clear();
        sums.clear();
        splits.clear();
        self.slot_entry.clear();
        self.slot_entry.resize(capacity, u32::MAX);
        for r in reads {
            let Some(d) = self.prev.delta(r, reset) else {
                continue;
            };
            if d == [0; CONTAINER_FIELDS] {
                continue;
            }
            let index = &mut self.slot_entry[r.slot as usize];
            // A slot read on two CPUs with another key in between cannot happen (a slot has
            // one key until it is freed), but a stale index must never add to another key.
            if *index == u32::MAX || keys[*index as usize] != r.key {
                *index = keys.len() as u32;
                keys.push(r.key);
                sums.push([0; CONTAINER_FIELDS]);
                splits.push(PerCpuSplit::new());
            }
            let i = *index as usize;
            for (sum, add) in sums[i].iter_mut().zip(d) {
                *sum = sum.wrapping_add(add);
            }
            let d: ContainerStats = bytemuck::cast(d);
            let (cpu_ns, wait_ns) = (d.cpu_ns, d.runq_wait_ns);
            if cpu_ns != 0 || wait_ns != 0 {
                add_per_cpu(&mut splits[i], r.cpu, cpu_ns, wait_ns);
            }
        }
        let mut order: Vec<(ContainerKey, u32)> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (*key, i as u32))
            .collect();
        order.sort_unstable();
        let mut sorted: Vec<ContainerActivity> = Vec::with_capacity(order.len());
        for (key, i) in order {
            let next = ContainerActivity {
                key,
                stats: bytemuck::cast(sums[i as usize]),
                per_cpu: std::mem::take(&mut splits[i as usize]),
            };
            match sorted.last_mut() {
                Some(last) if last.key == key => merge_activity(last, next),
                _ => sorted.push(next),
            }
        }
        self.keys.tick(sorted.iter().map(|c| c.key));
        sorted
    }

    /// Containers unchanged for at least `drains` drains.
    pub fn idle(&self, drains: u32) -> impl Iterator<Item = ContainerKey> + '_ {
        self.keys.idle(drains)
    }

    fn forget(&mut self, key: &ContainerKey) {
        self.keys.forget(key);
    }
}

/// Adds the deltas of another slot of the same key.
fn merge_activity(into: &mut ContainerActivity, other: ContainerActivity) {
    let sums: &mut [u64; CONTAINER_FIELDS] = bytemuck::cast_mut(&mut into.stats);
    let adds: [u64; CONTAINER_FIELDS] = bytemuck::cast(other.stats);
    for (sum, add) in sums.iter_mut().zip(adds) {
        *sum = sum.wrapping_add(add);
    }
    for (cpu, cpu_ns, wait_ns) in other.per_cpu {
        add_per_cpu(&mut into.per_cpu, cpu, cpu_ns, wait_ns);
    }
}

fn add_per_cpu(per_cpu: &mut PerCpuSplit, cpu: u32, cpu_ns: u64, wait_ns: u64) {
    match per_cpu.iter_mut().find(|(c, _, _)| *c == cpu) {
        Some(e) => {
            e.1 += cpu_ns;
            e.2 += wait_ns;
        }
        None => per_cpu.push((cpu, cpu_ns, wait_ns)),
    }
}

/// Per-(CPU, slot) deltas of the interface arrays, summed per interface, and each
/// interface's name (read once, when its slot is learned).
#[derive(Default)]
pub struct IfaceDrain {
    prev: SlotDeltas<IFACE_FIELDS>,
    /// Every interface holding a slot.
    pub idle: IdleKeys<IfaceKey>,
    names: HashMap<IfaceKey, Arc<str>>,
    /// Per slot: the (packed) key it was last read with, 0 for none, and that key's name: a
    /// key is made known to `idle` and named when its slot is first read with it, not at
    /// every read.
    slot_key: Vec<u64>,
    slot_name: Vec<Arc<str>>,
    /// Per slot: its sum's index in the drain being built (reused from drain to drain).
    slot_entry: Vec<u32>,
}

impl IfaceDrain {
    fn apply(&mut self, snap: &RawSnapshot, reset: &mut bool) -> Vec<IfaceDelta> {
        if self.prev.set_capacity(snap.iface_capacity) {
            self.idle = IdleKeys::default();
            self.slot_key.clear();
            self.slot_name.clear();
        }
        for (key, name) in &snap.iface_names {
            if name[0] != 0 {
                self.names
                    .entry(*key)
                    .or_insert_with(|| ifname(name).into());
            }
        }
        let capacity = snap.iface_capacity as usize;
        self.slot_key.resize(capacity, 0);
        self.slot_name.resize(capacity, Arc::from(""));
        self.slot_entry.clear();
        self.slot_entry.resize(capacity, u32::MAX);
        // Summed per slot first (an index, no hashing): a key has one slot but several CPUs.
        let mut sums: Vec<(u64, u32, [u64; IFACE_FIELDS])> = Vec::new();
        for r in &snap.ifaces {
            let Some(d) = self.prev.delta(r, reset) else {
                continue; // past the capacity
            };
            let slot = r.slot as usize;
            if self.slot_key[slot] != r.key {
                // Known from its first read on, even one with nothing in it (a slot is marked
                // dirty when taken), so an idle interface can be retired.
                self.slot_key[slot] = r.key;
                let key = IfaceKey::unpack(r.key);
                self.idle.know(key);
                self.slot_name[slot] = self.names.get(&key).cloned().unwrap_or_default();
            }
            if d == [0; IFACE_FIELDS] {
                continue;
            }
            let index = &mut self.slot_entry[slot];
            if *index == u32::MAX || sums[*index as usize].0 != r.key {
                *index = sums.len() as u32;
                sums.push((r.key, r.slot, [0; IFACE_FIELDS]));
            }
            for (t, v) in sums[*index as usize].2.iter_mut().zip(d) {
                *t = t.wrapping_add(v);
            }
        }
        // The packed key sorts as `IfaceKey` does (netns, then ifindex); sorted through a
        // 16-byte index, so each sum moves once. Two slots of one key (while an old one is
        // retired) are merged here.
        let mut order: Vec<(u64, u32)> = sums
            .iter()
            .enumerate()
            .map(|(i, (key, _, _))| (*key, i as u32))
            .collect();
        order.sort_unstable();
        let mut out: Vec<IfaceDelta> = Vec::with_capacity(order.len());
        let mut last_key = None;
        for (key, i) in order {
            let (_, slot, d) = &sums[i as usize];
            if last_key == Some(key)
                && let Some(total) = out.last_mut()
            {
                total.rx_packets = total.rx_packets.wrapping_add(d[0]);
                total.rx_bytes = total.rx_bytes.wrapping_add(d[1]);
                total.tx_packets = total.tx_packets.wrapping_add(d[2]);
                total.tx_bytes = total.tx_bytes.wrapping_add(d[3]);
                continue;
            }
            last_key = Some(key);
            let unpacked = IfaceKey::unpack(key);
            out.push(IfaceDelta {
                netns: unpacked.netns,
                ifindex: unpacked.ifindex,
                name: self.slot_name[*slot as usize].clone(),
                rx_packets: d[0],
                rx_bytes: d[1],
                tx_packets: d[2],
                tx_bytes: d[3],
            });
        }
        self.idle.tick(out.iter().map(|d| IfaceKey {
            netns: d.netns,
            ifindex: d.ifindex,
        }));
        for key in &snap.ifaces_retired {
            self.idle.forget(key);
            self.names.remove(key);
        }
        if !snap.ifaces_retired.is_empty() {
            // A retired key may come back on the slot it had: it must be made known again.
            self.slot_key.fill(0);
        }
        out
    }
}

/// Previous reads, one per (key, CPU).
#[derive(Default)]
pub struct Drain {
    prev_cpus: Vec<CpuRecord>,
    pub ifaces: IfaceDrain,
    pub containers: ContainerDrain,
    pub netns_tcp: KeyedDrain<u32, 2>,
    running: RunningSlices,
    /// Totals since load: the kernel's own sums for the counters it keeps, the sum of every
    /// delta for those userspace derives (see `derive_network_counters`).
    cumulative: [u64; counter::COUNT],
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, snap: &RawSnapshot) -> DrainDelta {
        let mut reset = false;
        let mut counters = [0u64; counter::COUNT];
        let mut hist = [0u64; HIST_BUCKETS];
        let mut runq_wait_ns = 0u64;
        let zero: CpuRecord = bytemuck::Zeroable::zeroed();
        for (cpu, cur) in snap.cpus.iter().enumerate() {
            let prev = self.prev_cpus.get(cpu).unwrap_or(&zero);
            for (i, sum) in counters.iter_mut().enumerate() {
                *sum =
                    sum.wrapping_add(counter_delta(prev.counters[i], cur.counters[i], &mut reset));
            }
            for (b, slot) in hist.iter_mut().enumerate() {
                *slot += counter_delta(prev.runq_hist[b], cur.runq_hist[b], &mut reset);
            }
            runq_wait_ns += counter_delta(prev.runq_wait_ns, cur.runq_wait_ns, &mut reset);
        }
        self.prev_cpus.clone_from(&snap.cpus);

        let ifaces = self.ifaces.apply(snap, &mut reset);
        derive_network_counters(&mut counters, &ifaces);
        for (i, total) in self.cumulative.iter_mut().enumerate() {
            *total = if is_derived(i) {
                total.wrapping_add(counters[i])
            } else {
                snap.cpus
                    .iter()
                    .fold(0u64, |sum, c| sum.wrapping_add(c.counters[i]))
            };
        }

        let mut containers =
            self.containers
                .apply(snap.container_capacity, &snap.containers, &mut reset);
        self.running.credit(snap, &mut containers);
        for key in &snap.retired {
            self.forget_container(key);
        }
        let netns_tcp = self.netns_tcp.apply(&snap.netns_tcp, &mut reset);
        DrainDelta {
            counters,
            hist,
            runq_wait_ns,
            ifaces,
            containers,
            netns_tcp,
            reset,
        }
    }

    /// Totals since load (see `cumulative`).
    pub fn cumulative(&self) -> &[u64; counter::COUNT] {
        &self.cumulative
    }

    pub fn idle_ifaces(&self, drains: u32) -> impl Iterator<Item = IfaceKey> + '_ {
        self.ifaces.idle.idle(drains)
    }

    /// Interfaces holding a slot.
    pub fn iface_entries(&self) -> usize {
        self.ifaces.idle.len()
    }

    pub fn forget_container(&mut self, key: &ContainerKey) {
        self.containers.forget(key);
        self.running.forget(key);
    }
}

/// The host-wide packet and byte counters are not counted by the kernel (it would cost every
/// packet a second add): they are the sum over interfaces plus what found the interface map
/// full, which is every packet exactly once.
fn derive_network_counters(counters: &mut [u64; counter::COUNT], ifaces: &[IfaceDelta]) {
    use counter::*;
    let sum = |f: fn(&IfaceDelta) -> u64| ifaces.iter().map(f).sum::<u64>();
    counters[NET_RX_PACKETS] = sum(|i| i.rx_packets) + counters[IFACE_OVERFLOW_RX_PACKETS];
    counters[NET_RX_BYTES] = sum(|i| i.rx_bytes) + counters[IFACE_OVERFLOW_RX_BYTES];
    counters[NET_TX_PACKETS] = sum(|i| i.tx_packets) + counters[IFACE_OVERFLOW_TX_PACKETS];
    counters[NET_TX_BYTES] = sum(|i| i.tx_bytes) + counters[IFACE_OVERFLOW_TX_BYTES];
}

fn is_derived(index: usize) -> bool {
    use counter::*;
    matches!(
        index,
        NET_RX_PACKETS | NET_RX_BYTES | NET_TX_PACKETS | NET_TX_BYTES
    )
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
///
/// The slice start is in the CPU's CPU-time clock (the run queue's `clock_task`, which stolen
/// time does not advance, with the `sched_info` source); the record's `ktime_minus_clock`
/// turns CLOCK_MONOTONIC into that clock. An offset that drifted a little (time stolen since
/// it was refreshed) only moves time between two intervals: the debt still cancels it.
#[derive(Default)]
struct RunningSlices {
    per_cpu: Vec<Option<Slice>>,
    debt: HashMap<ContainerKey, u64>,
}

#[derive(Clone, Copy)]
struct Slice {
    since: u64,
    key: ContainerKey,
    credited: u64,
}

impl RunningSlices {
    fn credit(&mut self, snap: &RawSnapshot, containers: &mut Vec<ContainerActivity>) {
        if snap.cpus.is_empty() || snap.now_ns == 0 {
            // No records or no clock: nothing to credit; the debt is still paid.
            self.pay_debt(containers);
            return;
        }
        self.per_cpu.resize(snap.cpus.len(), None);
        for (cpu, (slot, cur)) in self.per_cpu.iter_mut().zip(&snap.cpus).enumerate() {
            if let Some(prev) = *slot
                && prev.since != cur.since
            {
                // Ended since the last drain: the kernel counted all of it.
                *self.debt.entry(prev.key).or_default() += prev.credited;
                *slot = None;
            }
            let now = snap.now_ns.wrapping_sub(cur.ktime_minus_clock);
            let key = snap.running.get(cpu).copied().flatten();
            let Some(key) = key.filter(|_| cur.cur_slot != NO_SLOT) else {
                continue; // the idle task
            };
            if cur.since == 0 || cur.since > now {
                // No slice yet, or one that began after the clock was read.
                continue;
            }
            let s = slot.get_or_insert(Slice {
                since: cur.since,
                key,
                credited: 0,
            });
            let running = now - cur.since;
            let add = running.saturating_sub(s.credited);
            s.credited = s.credited.max(running);
            if add > 0 {
                add_cpu_ns(containers, s.key, cpu as u32, add);
            }
        }
        self.pay_debt(containers);
    }

    fn pay_debt(&mut self, containers: &mut [ContainerActivity]) {
        if self.debt.is_empty() {
            return;
        }
        for c in containers.iter_mut() {
            if let Some(owed) = self.debt.get_mut(&c.key) {
                let paid = (*owed).min(c.stats.cpu_ns);
                c.stats.cpu_ns -= paid;
                *owed -= paid;
                // The per-CPU split pays from the largest share first; it stays a split of
                // the container's total.
                let mut left = paid;
                c.per_cpu.sort_by_key(|e| std::cmp::Reverse(e.1));
                for e in &mut c.per_cpu {
                    let take = left.min(e.1);
                    e.1 -= take;
                    left -= take;
                }
                c.per_cpu.retain(|e| e.1 != 0 || e.2 != 0);
                c.per_cpu.sort_by_key(|e| e.0);
            }
        }
        self.debt.retain(|_, owed| *owed > 0);
    }

    /// Forgets the debt of a container whose slots were all freed.
    fn forget(&mut self, key: &ContainerKey) {
        self.debt.remove(key);
    }
}

fn add_cpu_ns(containers: &mut Vec<ContainerActivity>, key: ContainerKey, cpu: u32, ns: u64) {
    let i = match containers.binary_search_by(|c| c.key.cmp(&key)) {
        Ok(i) => i,
        Err(i) => {
            containers.insert(i, ContainerActivity::zero(key));
            i
        }
    };
    containers[i].stats.cpu_ns += ns;
    add_per_cpu(&mut containers[i].per_cpu, cpu, ns, 0);
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
    /// `sum_ns` is the kernel's exact sum of the waits, for the mean.
    pub fn summarize(&mut self, buckets: &[u64; HIST_BUCKETS], sum_ns: u64) -> LatencySummary {
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
        self.finish(count, sum_ns)
    }
}

impl LatencySummarizer {
    /// Summarises a per-container histogram (plain log2 buckets, 2x resolution), each value
    /// at its bucket's midpoint as for the global one, straight from the 32 buckets: with a
    /// thousand containers an hdrhistogram reset and walk per container was most of the
    /// daemon's time per interval.
    pub fn summarize_log2(&mut self, buckets: &[u64], sum_ns: u64) -> LatencySummary {
        let count = buckets.iter().fold(0u64, |s, n| s.saturating_add(*n));
        let Some(top) = buckets.iter().rposition(|&n| n > 0) else {
            return LatencySummary::default();
        };
        let mid = |b: usize| {
            let low = 1u64 << b;
            low + low / 2
        };
        let at = |q: f64| {
            // The rank hdrhistogram uses: the value below which a share q of the count lies.
            let rank = ((q * count as f64) + 0.5).max(1.0) as u64;
            let mut seen = 0u64;
            for (b, &n) in buckets.iter().enumerate() {
                seen = seen.saturating_add(n);
                if seen >= rank {
                    return mid(b);
                }
            }
            mid(top)
        };
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            p50: us(at(0.50)),
            p99: us(at(0.99)),
            max: us(mid(top)),
            mean: sum_ns as f64 / count as f64 / 1000.0,
            sum: sum_ns as f64 / 1000.0,
            count,
        }
    }

    fn finish(&self, count: u64, sum_ns: u64) -> LatencySummary {
        if count == 0 {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            p50: us(self.hist.value_at_quantile(0.50)),
            p99: us(self.hist.value_at_quantile(0.99)),
            max: us(self.hist.max()),
            mean: sum_ns as f64 / count as f64 / 1000.0,
            sum: sum_ns as f64 / 1000.0,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_common::{CONTAINER_HIST_BUCKETS, hist_bucket};

    fn cpu(values: &[(usize, u64)]) -> CpuRecord {
        let mut c: CpuRecord = bytemuck::Zeroable::zeroed();
        c.cur_slot = NO_SLOT;
        for &(i, v) in values {
            c.counters[i] = v;
        }
        c
    }

    fn snap(cpus: Vec<CpuRecord>) -> RawSnapshot {
        RawSnapshot {
            cpus,
            container_capacity: 8,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_telescope_to_the_final_cumulative_count() {
        let mut drain = Drain::new();
        let mut total = 0u64;
        let mut per_cpu = [0u64; 3];
        for step in 1..=200u64 {
            for (i, c) in per_cpu.iter_mut().enumerate() {
                *c += step * (i as u64 + 1) % 7;
            }
            let s = snap(
                per_cpu
                    .iter()
                    .map(|&v| cpu(&[(counter::SCHED_SWITCH, v)]))
                    .collect(),
            );
            let d = drain.apply(&s);
            assert!(!d.reset);
            total += d.counters[counter::SCHED_SWITCH];
        }
        assert_eq!(total, per_cpu.iter().sum::<u64>());
        assert_eq!(drain.cumulative()[counter::SCHED_SWITCH], total);
    }

    #[test]
    fn wrap_past_u64_max_is_exact() {
        let mut reset = false;
        assert_eq!(counter_delta(u64::MAX - 2, 5, &mut reset), 8);
        assert!(!reset);
        let mut drain = Drain::new();
        drain.apply(&snap(vec![cpu(&[(0, u64::MAX - 10)])]));
        let d = drain.apply(&snap(vec![cpu(&[(0, 4)])]));
        assert_eq!(d.counters[0], 15);
        assert!(!d.reset);
    }

    #[test]
    fn a_decrease_is_a_reset_not_a_huge_delta() {
        let mut drain = Drain::new();
        drain.apply(&snap(vec![cpu(&[(0, 1_000_000)])]));
        let d = drain.apply(&snap(vec![cpu(&[(0, 40)])]));
        assert!(d.reset);
        assert_eq!(d.counters[0], 40);
        let d = drain.apply(&snap(vec![cpu(&[(0, 45)])]));
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
            let d = drain.apply(&snap(vec![cpu(&[(0, v)])]));
            assert!(
                d.counters[0] <= 1 << 63,
                "value {v} gave delta {}",
                d.counters[0]
            );
        }
    }

    /// `(cpu, slot, key, values)` entries of the interface arrays, as read.
    fn iface_reads(entries: &[(u32, u32, IfaceKey, [u64; 4])]) -> Vec<SlotRead<IFACE_FIELDS>> {
        entries
            .iter()
            .map(|&(cpu, slot, key, values)| SlotRead {
                cpu,
                slot,
                key: key.packed(),
                values,
            })
            .collect()
    }

    #[test]
    fn interfaces_sum_cpus_are_named_once_and_retired_ones_are_forgotten() {
        let key = IfaceKey {
            netns: 7,
            ifindex: 1,
        };
        let mut drain = Drain::new();
        let mut s = snap(vec![]);
        s.iface_capacity = 4;
        s.ifaces = iface_reads(&[(0, 2, key, [3, 300, 0, 0]), (1, 2, key, [4, 400, 0, 0])]);
        s.iface_names = vec![(key, *b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0")];
        let d = drain.apply(&s);
        assert_eq!(d.ifaces.len(), 1);
        assert_eq!((d.ifaces[0].rx_packets, d.ifaces[0].rx_bytes), (7, 700));
        assert_eq!(&*d.ifaces[0].name, "lo");
        // The name is read once; later drains still carry it.
        s.iface_names.clear();
        s.ifaces = iface_reads(&[(1, 2, key, [5, 450, 1, 60])]);
        let d = drain.apply(&s);
        assert_eq!(
            (
                d.ifaces[0].rx_packets,
                d.ifaces[0].tx_bytes,
                &*d.ifaces[0].name
            ),
            (1, 60, "lo")
        );
        s.ifaces.clear();
        let d = drain.apply(&s);
        assert!(d.ifaces.is_empty(), "idle interfaces are not reported");
        assert_eq!(drain.idle_ifaces(1).collect::<Vec<_>>(), vec![key]);
        assert_eq!(drain.iface_entries(), 1);
        s.ifaces_retired = vec![key];
        drain.apply(&s);
        assert_eq!(drain.iface_entries(), 0);
        // The same interface back on the slot it had: known (and retirable) again, named.
        s.ifaces_retired.clear();
        s.iface_names = vec![(key, *b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0")];
        s.ifaces = iface_reads(&[(0, 2, key, [3, 300, 0, 0])]);
        let d = drain.apply(&s);
        assert!(d.ifaces.is_empty());
        assert_eq!(drain.iface_entries(), 1);
        assert_eq!(drain.idle_ifaces(1).collect::<Vec<_>>(), vec![key]);
        s.iface_names.clear();
        s.ifaces = iface_reads(&[(0, 2, key, [5, 320, 0, 0])]);
        let d = drain.apply(&s);
        assert_eq!((d.ifaces[0].rx_packets, &*d.ifaces[0].name), (2, "lo"));
        assert_eq!(drain.idle_ifaces(1).count(), 0);
    }

    /// Exactness under slot reuse, as for containers: whatever the order of reads,
    /// retirements and reuse, each interface's deltas add up to what the kernel counted for
    /// it, and the host totals to every packet (interfaces plus overflow).
    #[test]
    fn interface_deltas_telescope_across_slot_reuse() {
        let mut drain = Drain::new();
        let mut kernel = [[[0u64; 4]; 4]; 2];
        let mut owner: [IfaceKey; 4] = std::array::from_fn(|i| IfaceKey {
            netns: 1,
            ifindex: i as u32 + 1,
        });
        let mut counted: HashMap<IfaceKey, [u64; 4]> = HashMap::default();
        let mut reported: HashMap<IfaceKey, [u64; 4]> = HashMap::default();
        let (mut overflow, mut all_packets, mut host_packets) = (0u64, 0u64, 0u64);
        let mut rng = crate::detect::learned::Rng(0x9e37_79b9_7f4a_7c15u64);
        let mut next = || rng.next_u64();
        for step in 0..500u64 {
            let mut dirty = Vec::new();
            for _ in 0..(next() % 6) {
                let (c, sl, f) = (
                    (next() % 2) as usize,
                    (next() % 4) as usize,
                    (next() % 2) as usize * 2,
                );
                let len = next() % 1500;
                kernel[c][sl][f] += 1;
                kernel[c][sl][f + 1] += len;
                let e = counted.entry(owner[sl]).or_default();
                e[f] += 1;
                e[f + 1] += len;
                all_packets += 1;
                dirty.push((c, sl));
            }
            overflow += next() % 3;
            let retire = (step % 50 == 49).then(|| (next() % 4) as usize);
            if let Some(sl) = retire {
                dirty.extend([(0, sl), (1, sl)]);
            }
            dirty.sort_unstable();
            dirty.dedup();
            let mut s = snap(vec![cpu(&[(counter::IFACE_OVERFLOW_TX_PACKETS, overflow)])]);
            s.iface_capacity = 4;
            s.ifaces = dirty
                .iter()
                .map(|&(c, sl)| SlotRead {
                    cpu: c as u32,
                    slot: sl as u32,
                    key: owner[sl].packed(),
                    values: kernel[c][sl],
                })
                .collect();
            if let Some(sl) = retire {
                s.ifaces_retired = vec![owner[sl]];
            }
            let d = drain.apply(&s);
            for i in &d.ifaces {
                let e = reported
                    .entry(IfaceKey {
                        netns: i.netns,
                        ifindex: i.ifindex,
                    })
                    .or_default();
                for (sum, v) in
                    e.iter_mut()
                        .zip([i.rx_packets, i.rx_bytes, i.tx_packets, i.tx_bytes])
                {
                    *sum += v;
                }
            }
            host_packets +=
                d.counters[counter::NET_RX_PACKETS] + d.counters[counter::NET_TX_PACKETS];
            if let Some(sl) = retire {
                owner[sl] = IfaceKey {
                    netns: 2 + step as u32,
                    ifindex: 1,
                };
            }
        }
        assert_eq!(reported, counted);
        assert_eq!(host_packets, all_packets + overflow);
        assert_eq!(
            drain.cumulative()[counter::NET_RX_PACKETS]
                + drain.cumulative()[counter::NET_TX_PACKETS],
            host_packets
        );
    }

    #[test]
    fn keyed_drain_sums_cpus_reports_only_changed_keys_and_reuses_forgotten_rows() {
        let mut kd: KeyedDrain<u64, 2> = KeyedDrain::default();
        let mut reset = false;
        let read = |e: &[(u64, [[u64; 2]; 2])]| {
            let mut r = KeyedRead::default();
            r.clear(2);
            for (k, v) in e {
                r.push(*k, v.iter().copied());
            }
            r
        };
        let d = kd.apply(
            &read(&[(1, [[1, 2], [3, 4]]), (2, [[0, 0], [0, 0]])]),
            &mut reset,
        );
        assert_eq!(d, vec![(1, [4, 6])]);
        let d = kd.apply(
            &read(&[(1, [[1, 2], [5, 4]]), (2, [[0, 0], [0, 9]])]),
            &mut reset,
        );
        assert_eq!(d, vec![(1, [2, 0]), (2, [0, 9])]);
        assert!(!reset);
        let d = kd.apply(&read(&[(1, [[1, 2], [5, 4]])]), &mut reset);
        assert!(d.is_empty());
        assert_eq!(kd.len(), 1, "key 2 left the kernel map, so it is forgotten");
        assert_eq!(kd.idle(1).collect::<Vec<_>>(), vec![1]);
        // A new key takes key 2's row: it starts from zero, not from key 2's last values.
        let d = kd.apply(
            &read(&[(1, [[1, 2], [5, 4]]), (3, [[0, 1], [0, 0]])]),
            &mut reset,
        );
        assert_eq!(d, vec![(3, [0, 1])]);
        assert!(!reset);
    }

    #[test]
    fn network_totals_are_the_interfaces_plus_overflow_and_telescope() {
        let key = IfaceKey {
            netns: 1,
            ifindex: 1,
        };
        let mut drain = Drain::new();
        let mut sum = 0;
        for step in 1..=5u64 {
            let mut s = snap(vec![cpu(&[(counter::IFACE_OVERFLOW_TX_PACKETS, step)])]);
            s.iface_capacity = 1;
            s.ifaces = iface_reads(&[(0, 0, key, [0, 0, 10 * step, 100 * step])]);
            let d = drain.apply(&s);
            assert_eq!(d.counters[counter::NET_TX_PACKETS], 11);
            assert_eq!(d.counters[counter::NET_TX_BYTES], 100);
            sum += d.counters[counter::NET_TX_PACKETS];
        }
        assert_eq!(drain.cumulative()[counter::NET_TX_PACKETS], sum);
        assert_eq!(sum, 55);
    }

    #[test]
    fn container_summary_reads_its_log2_buckets() {
        let mut buckets = [0u64; CONTAINER_HIST_BUCKETS];
        buckets[10] = 98; // 1024..2048 ns
        buckets[20] = 2; // about 1 ms
        let s = LatencySummarizer::default().summarize_log2(&buckets, 3_000_000);
        assert_eq!(s.count, 100);
        assert!((s.p50 - 1.536).abs() < 1e-9, "p50 {}", s.p50);
        assert!((s.p99 - 1572.864).abs() < 1e-9, "p99 {}", s.p99);
        assert!((s.max - 1572.864).abs() < 1e-9);
        assert!((s.mean - 30.0).abs() < 1e-9);
        let one = {
            let mut b = [0u64; CONTAINER_HIST_BUCKETS];
            b[3] = 1;
            LatencySummarizer::default().summarize_log2(&b, 11)
        };
        assert_eq!(
            (one.p50, one.p99, one.max, one.count),
            (0.012, 0.012, 0.012, 1)
        );
        assert_eq!(
            LatencySummarizer::default()
                .summarize_log2(&[0; CONTAINER_HIST_BUCKETS], 0)
                .count,
            0
        );
    }

    #[test]
    fn latency_summary_matches_recorded_buckets_and_the_exact_mean() {
        let mut buckets = [0u64; HIST_BUCKETS];
        buckets[hist_bucket(10_000)] += 98; // 10 us
        buckets[hist_bucket(2_000_000)] += 2; // 2 ms
        let sum = 98 * 10_000 + 2 * 2_000_000;
        let s = LatencySummarizer::default().summarize(&buckets, sum);
        assert_eq!(s.count, 100);
        assert!((8.0..=12.5).contains(&s.p50), "p50 {}", s.p50);
        assert!((1600.0..=2500.0).contains(&s.p99), "p99 {}", s.p99);
        assert!(s.max >= s.p99);
        assert!((s.mean - 49.8).abs() < 1e-9, "mean {}", s.mean);
        assert!((s.sum - 4980.0).abs() < 1e-9);
        assert_eq!(
            LatencySummarizer::default()
                .summarize(&[0; HIST_BUCKETS], 0)
                .count,
            0
        );
    }

    /// Field positions of `ContainerStats`, for building raw kernel reads.
    const CPU_NS: usize = 0;
    const FORKS: usize = 2;
    const EXECS: usize = 3;
    const RUNQ_WAIT_NS: usize = 7;

    fn slot(cpu: u32, slot: u32, key: ContainerKey, f: &[(usize, u64)]) -> SlotRead {
        let mut values = [0u64; CONTAINER_FIELDS];
        for &(i, v) in f {
            values[i] = v;
        }
        SlotRead {
            cpu,
            slot,
            key,
            values,
        }
    }

    fn activity(d: &DrainDelta, key: ContainerKey) -> Option<&ContainerActivity> {
        d.containers.iter().find(|c| c.key == key)
    }

    #[test]
    fn container_deltas_sum_cpus_and_slots_per_key_with_the_per_cpu_split() {
        let mut drain = Drain::new();
        let mut s = snap(vec![]);
        s.containers = vec![
            slot(0, 1, 7, &[(CPU_NS, 100), (RUNQ_WAIT_NS, 5)]),
            slot(1, 1, 7, &[(CPU_NS, 50), (FORKS, 2)]),
            // A second slot of the same key (a recycled key before the old slot was freed).
            slot(1, 3, 7, &[(CPU_NS, 1)]),
            slot(0, 2, 9, &[(EXECS, 4)]),
        ];
        let d = drain.apply(&s);
        let c = activity(&d, 7).unwrap();
        assert_eq!(c.stats.cpu_ns, 151);
        assert_eq!(c.stats.forks, 2);
        assert_eq!(c.per_cpu.as_slice(), [(0, 100, 5), (1, 51, 0)]);
        assert_eq!(activity(&d, 9).unwrap().stats.execs, 4);
        assert!(activity(&d, 9).unwrap().per_cpu.is_empty());
        // Only what changed is read the next time; an unchanged read adds nothing.
        s.containers = vec![slot(0, 1, 7, &[(CPU_NS, 130), (RUNQ_WAIT_NS, 5)])];
        let d = drain.apply(&s);
        assert_eq!(activity(&d, 7).unwrap().stats.cpu_ns, 30);
        assert!(activity(&d, 9).is_none());
        assert_eq!(drain.containers.idle(1).collect::<Vec<_>>(), vec![9]);
    }

    /// Exactness under slot reuse: whatever the order of reads, retirements and reuse, the
    /// deltas of each key add up to what the kernel counted for it.
    #[test]
    fn container_deltas_telescope_across_slot_reuse() {
        let mut drain = Drain::new();
        // Kernel state: cumulative value of (cpu, slot) and the owner of each slot.
        let mut kernel = [[0u64; 4]; 2];
        let mut counted: HashMap<ContainerKey, u64> = HashMap::default();
        let mut reported: HashMap<ContainerKey, u64> = HashMap::default();
        let mut owner = [10u64, 11, 12, 13];
        let mut rng = crate::detect::learned::Rng(0x2545_f491_4f6c_dd1du64);
        let mut next = || rng.next_u64();
        for step in 0..500 {
            let mut dirty = Vec::new();
            for _ in 0..(next() % 6) {
                let (c, s) = ((next() % 2) as usize, (next() % 4) as usize);
                let n = next() % 1000;
                kernel[c][s] += n;
                *counted.entry(owner[s]).or_default() += n;
                dirty.push((c, s));
            }
            // Every 50 drains a slot is retired: read on every CPU, then reused by a new key.
            let retire = (step % 50 == 49).then(|| (next() % 4) as usize);
            if let Some(s) = retire {
                dirty.extend([(0, s), (1, s)]);
            }
            dirty.sort_unstable();
            dirty.dedup();
            let mut snap = snap(vec![]);
            snap.containers = dirty
                .iter()
                .map(|&(c, s)| slot(c as u32, s as u32, owner[s], &[(0, kernel[c][s])]))
                .collect();
            let d = drain.apply(&snap);
            for c in &d.containers {
                *reported.entry(c.key).or_default() += c.stats.cpu_ns;
            }
            if let Some(s) = retire {
                owner[s] = 100 + step as u64;
            }
        }
        assert_eq!(reported, counted);
    }

    fn running(
        now: u64,
        oncpu: &[(u64, Option<ContainerKey>)],
        cpu_ns: &[(u64, u64)],
    ) -> RawSnapshot {
        RawSnapshot {
            cpus: oncpu
                .iter()
                .map(|&(since, key)| {
                    let mut c = cpu(&[]);
                    c.since = since;
                    c.cur_slot = if key.is_some() { 1 } else { NO_SLOT };
                    c
                })
                .collect(),
            running: oncpu.iter().map(|(_, k)| *k).collect(),
            now_ns: now,
            container_capacity: 16,
            containers: cpu_ns
                .iter()
                .map(|&(key, ns)| slot(0, key as u32, key, &[(CPU_NS, ns)]))
                .collect(),
            ..Default::default()
        }
    }

    fn cpu_of(delta: &DrainDelta, key: u64) -> u64 {
        activity(delta, key).map_or(0, |c| c.stats.cpu_ns)
    }

    #[test]
    fn a_running_slice_is_credited_as_it_runs_and_counted_once_when_it_ends() {
        let mut drain = Drain::new();
        // Container 7 got the CPU at t=100 and is still on it at t=300 and t=500.
        let d1 = drain.apply(&running(300, &[(100, Some(7))], &[]));
        let d2 = drain.apply(&running(500, &[(100, Some(7))], &[]));
        assert_eq!((cpu_of(&d1, 7), cpu_of(&d2, 7)), (200, 200));
        assert_eq!(activity(&d1, 7).unwrap().per_cpu.as_slice(), [(0, 200, 0)]);
        // It left at t=600 (the kernel added the whole slice, 500 ns); container 9 runs since.
        let d3 = drain.apply(&running(700, &[(600, Some(9))], &[(7, 500)]));
        assert_eq!(cpu_of(&d3, 7), 100, "only the part not credited before");
        assert_eq!(activity(&d3, 7).unwrap().per_cpu.as_slice(), [(0, 100, 0)]);
        assert_eq!(cpu_of(&d3, 9), 100);
        let total_7: u64 = [&d1, &d2, &d3].iter().map(|d| cpu_of(d, 7)).sum();
        assert_eq!(total_7, 500, "the slice, exactly once");
    }

    #[test]
    fn the_final_drain_credits_up_to_the_detach_and_no_slice_twice() {
        let mut drain = Drain::new();
        // Container 7 runs on CPU 0 since t=100, container 8 on CPU 1 since t=200.
        let d1 = drain.apply(&running(1_000, &[(100, Some(7)), (200, Some(8))], &[]));
        assert_eq!((cpu_of(&d1, 7), cpu_of(&d1, 8)), (900, 800));
        // Detached at t=1_500 (the loader's clock read just before): 7 had left CPU 0 at
        // t=1_200 (the kernel added its whole slice, 1_100); 8 still ran and is never added.
        let detached = running(1_500, &[(1_200, None), (200, Some(8))], &[(7, 1_100)]);
        let d2 = drain.apply(&detached);
        assert_eq!(
            cpu_of(&d2, 7),
            200,
            "the end of the slice, not the whole of it again"
        );
        assert_eq!(cpu_of(&d2, 8), 500, "up to the detach");
        // Another final drain (a retry) adds nothing more.
        let d3 = drain.apply(&running(1_500, &[(1_200, None), (200, Some(8))], &[]));
        assert_eq!((cpu_of(&d3, 7), cpu_of(&d3, 8)), (0, 0));
    }

    #[test]
    fn the_running_slice_is_read_in_the_cpus_clock() {
        let mut drain = Drain::new();
        // The CPU's clock runs 1_000 behind CLOCK_MONOTONIC: at monotonic 1_300 it reads 300.
        let mut s = running(1_300, &[(100, Some(7))], &[]);
        s.cpus[0].ktime_minus_clock = 1_000;
        assert_eq!(cpu_of(&drain.apply(&s), 7), 200);
    }

    #[test]
    fn debt_is_paid_from_later_deltas_and_idle_is_never_credited() {
        let mut drain = Drain::new();
        let d1 = drain.apply(&running(1_000, &[(0, Some(7)), (400, None)], &[]));
        assert!(d1.containers.is_empty(), "no slice yet and the idle task");
        let d2 = drain.apply(&running(2_000, &[(1_500, Some(7)), (400, None)], &[]));
        assert_eq!(cpu_of(&d2, 7), 500);
        // The slice ended after the record read but before the previous drain's container
        // read would have seen it: the kernel delta shows up one drain late, in pieces.
        let d3 = drain.apply(&running(3_000, &[(2_600, Some(8))], &[(7, 300)]));
        assert_eq!(cpu_of(&d3, 7), 0, "300 of the 500 owed paid");
        let d4 = drain.apply(&running(4_000, &[(2_600, Some(8))], &[(7, 1_100)]));
        assert_eq!(
            cpu_of(&d4, 7),
            600,
            "the remaining 200 owed paid, then counted"
        );
        // Detached: nothing more is credited.
        let mut detached = running(0, &[], &[(7, 1_100), (8, 0)]);
        detached.cpus.clear();
        let d5 = drain.apply(&detached);
        assert_eq!(cpu_of(&d5, 8), 0);
    }
}
