//! Key-to-slot tables, user side (containers and interfaces alike): which key owns each slot of
//! the kernel's per-CPU arrays, and how the slot of a gone key is given back without losing a
//! count.
//!
//! The kernel takes a free slot on a key's first event and records its key (see sentinel-ebpf's
//! slots.rs). Userspace gives a slot back in three steps:
//! 1. `begin_retire`: the key is gone and idle, and no CPU's record caches the slot; the
//!    caller deletes the key from the table's hash, so no new event can find the slot.
//! 2. `due`, `RETIRE_DRAINS` drains later and again cached nowhere: an event that found the
//!    slot just before the delete has long finished, so nothing can add to it any more. The
//!    caller reads the slot on every CPU one last time (its counts still go to the old key).
//! 3. `finish`: the slot is free; the caller pushes it back on the kernel's free queue. The
//!    drain's previous values stay as they are, so the next owner's deltas start from there.
//!
//! A key that comes back meanwhile (a recycled mount or network namespace inode) simply gets a
//! new slot; both count for the key until the old one is free. Never freeing a cached slot is
//! what keeps a CPU's stale cache entry (key -> slot) from counting into a slot that another
//! key took since.

use std::collections::{HashMap, HashSet};

use sentinel_common::{
    CONTAINER_FIELDS, ContainerKey, IFACE_FIELDS, IFNAME_LEN, IfaceKey, NO_SLOT, dirty_words,
};

use super::{
    bpf_sys::MappedArray,
    drain::{RawSnapshot, SlotRead},
};

/// Drains between removing a key from `CONTAINER_SLOTS` and freeing its slot.
pub const RETIRE_DRAINS: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Active(u64),
    Retiring { key: u64, since: u64 },
}

#[derive(Debug)]
pub struct SlotTable {
    states: Vec<State>,
    slots_of: HashMap<u64, Vec<u32>>,
    /// Drains so far.
    seq: u64,
}

impl SlotTable {
    pub fn new(capacity: u32) -> Self {
        Self {
            states: vec![State::Free; capacity as usize],
            slots_of: HashMap::new(),
            seq: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.states.len() as u32
    }

    /// Advances to the next drain.
    pub fn tick(&mut self) {
        self.seq += 1;
    }

    /// The key a slot's counts belong to; `None` for a slot userspace has not seen taken.
    pub fn owner(&self, slot: u32) -> Option<u64> {
        match self.states.get(slot as usize)? {
            State::Free => None,
            State::Active(key) | State::Retiring { key, .. } => Some(*key),
        }
    }

    /// The kernel took `slot` for `key` (read from `CONTAINER_KEYS`).
    pub fn learn(&mut self, slot: u32, key: u64) {
        if let Some(state @ State::Free) = self.states.get_mut(slot as usize) {
            *state = State::Active(key);
            self.slots_of.entry(key).or_default().push(slot);
        }
    }

    /// Slots of `key` (active or retiring).
    pub fn slots_of(&self, key: u64) -> &[u32] {
        self.slots_of.get(&key).map_or(&[], Vec::as_slice)
    }

    /// Slots in use (taken and not yet freed).
    pub fn in_use(&self) -> usize {
        self.slots_of.values().map(Vec::len).sum()
    }

    /// Starts retiring every slot of `key`, unless one of them is cached by a CPU (`cached`):
    /// then nothing changes and the caller tries again later. Returns whether the caller must
    /// now delete `key` from `CONTAINER_SLOTS`.
    pub fn begin_retire(&mut self, key: u64, cached: impl Fn(u32) -> bool) -> bool {
        let Some(slots) = self.slots_of.get(&key) else {
            return false;
        };
        let active: Vec<u32> = slots
            .iter()
            .copied()
            .filter(|&s| self.states[s as usize] == State::Active(key))
            .collect();
        if active.is_empty() || active.iter().any(|&s| cached(s)) {
            return false;
        }
        for s in active {
            self.states[s as usize] = State::Retiring {
                key,
                since: self.seq,
            };
        }
        true
    }

    /// Retiring slots nothing can add to any more: read them a last time, then `finish`.
    pub fn due(&self, cached: impl Fn(u32) -> bool) -> Vec<u32> {
        self.states
            .iter()
            .enumerate()
            .filter_map(|(slot, state)| match state {
                State::Retiring { since, .. }
                    if self.seq >= since + RETIRE_DRAINS && !cached(slot as u32) =>
                {
                    Some(slot as u32)
                }
                _ => None,
            })
            .collect()
    }

    /// Frees a due slot. Returns its key if that was the key's last slot (the container is
    /// then forgotten everywhere).
    pub fn finish(&mut self, slot: u32) -> Option<u64> {
        let State::Retiring { key, .. } = *self.states.get(slot as usize)? else {
            return None;
        };
        self.states[slot as usize] = State::Free;
        let slots = self.slots_of.get_mut(&key)?;
        slots.retain(|&s| s != slot);
        if slots.is_empty() {
            self.slots_of.remove(&key);
            Some(key)
        } else {
            None
        }
    }
}

/// Sizes of the three memory-mapped arrays of a table.
pub struct Layout {
    pub keys_bytes: usize,
    pub stats_bytes: usize,
    pub dirty_bytes: usize,
}

/// The memory-mapped arrays of one key-to-slot table (containers or interfaces: `N` counters
/// per entry) and its slot table: what a drain reads, and which slots it frees. No system
/// call; the caller hands freed slots back to the kernel's queue.
pub struct SlotArrays<const N: usize> {
    keys: MappedArray,
    stats: MappedArray,
    dirty: MappedArray,
    table: SlotTable,
    capacity: u32,
    words: u32,
    /// Dirty bitmaps per CPU (interfaces keep one per direction, each with one writer).
    sets: u32,
    ncpu: usize,
    /// Slots cached by some CPU's record at the last read: never retired or freed.
    cached: HashSet<u32>,
}

/// What one read of a table found.
#[derive(Debug, Default)]
pub struct TableRead<const N: usize> {
    /// Entries marked dirty, and the last read of every entry of the freed slots.
    pub reads: Vec<SlotRead<N>>,
    /// Slots taken by the kernel since the last read.
    pub learned: Vec<u32>,
    /// Keys whose last slot was freed: forget them.
    pub retired: Vec<u64>,
    /// Slots freed: the caller pushes them back on the kernel's free queue.
    pub freed: Vec<u32>,
}

impl<const N: usize> SlotArrays<N> {
    pub fn layout(ncpu: usize, capacity: u32, sets: u32) -> Layout {
        Layout {
            keys_bytes: capacity as usize * 8,
            stats_bytes: ncpu * capacity as usize * N * 8,
            dirty_bytes: ncpu * (sets * dirty_words(capacity)) as usize * 8,
        }
    }

    pub fn new(
        ncpu: usize,
        capacity: u32,
        sets: u32,
        keys: MappedArray,
        stats: MappedArray,
        dirty: MappedArray,
    ) -> Self {
        Self {
            keys,
            stats,
            dirty,
            table: SlotTable::new(capacity),
            capacity,
            words: dirty_words(capacity),
            sets,
            ncpu,
            cached: HashSet::new(),
        }
    }

    pub fn in_use(&self) -> usize {
        self.table.in_use()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn owner(&self, slot: u32) -> Option<u64> {
        self.table.owner(slot)
    }

    /// The keys, entries and dirty bitmap, for benchmarks and tests that play the kernel.
    #[doc(hidden)]
    pub fn memory(&self) -> [&MappedArray; 3] {
        [&self.keys, &self.stats, &self.dirty]
    }

    /// Index of the dirty word holding `slot` in bitmap `set` of `cpu` (for tests and
    /// benchmarks that play the kernel).
    #[doc(hidden)]
    pub fn dirty_word(&self, cpu: usize, set: u32, slot: u32) -> usize {
        (cpu * self.sets as usize + set as usize) * self.words as usize + slot as usize / 64
    }

    fn read_slot(&self, cpu: usize, slot: u32, key: u64) -> SlotRead<N> {
        let mut values = [0u64; N];
        let entry = cpu * self.capacity as usize + slot as usize;
        self.stats.read_words(entry * N, &mut values);
        SlotRead {
            cpu: cpu as u32,
            slot,
            key,
            values,
        }
    }

    /// Reads the entries marked dirty, reads due slots one last time and frees them.
    /// `cached`: the slots the CPU records (read just before) hold in their caches.
    pub fn read(&mut self, cached: impl IntoIterator<Item = u32>, out: &mut TableRead<N>) {
        self.table.tick();
        self.cached.clear();
        self.cached.extend(cached);
        self.cached.remove(&NO_SLOT);
        out.reads.clear();
        out.learned.clear();
        out.retired.clear();
        let words = self.words as usize;
        for cpu in 0..self.ncpu {
            let first = cpu * self.sets as usize * words;
            for w in 0..words {
                let mut bits = 0;
                for set in 0..self.sets as usize {
                    bits |= self.dirty.take_word(first + set * words + w);
                }
                while bits != 0 {
                    let slot = (w as u32) * 64 + bits.trailing_zeros();
                    bits &= bits - 1;
                    if slot >= self.capacity {
                        continue;
                    }
                    let key = match self.table.owner(slot) {
                        Some(key) => key,
                        None => {
                            // Taken by the kernel since the last read: the key was stored
                            // before the slot could be found.
                            let key = self.keys.word(slot as usize);
                            self.table.learn(slot, key);
                            out.learned.push(slot);
                            key
                        }
                    };
                    out.reads.push(self.read_slot(cpu, slot, key));
                }
            }
        }
        // Slots nothing can add to any more: one last read on every CPU, then free them.
        let cached = &self.cached;
        out.freed = self.table.due(|s| cached.contains(&s));
        for &slot in &out.freed {
            if let Some(key) = self.table.owner(slot) {
                for cpu in 0..self.ncpu {
                    out.reads.push(self.read_slot(cpu, slot, key));
                }
            }
            if let Some(gone) = self.table.finish(slot) {
                out.retired.push(gone);
            }
        }
    }

    /// See `SlotTable::begin_retire`; slots cached at the last read count as in use.
    pub fn begin_retire(&mut self, key: u64) -> bool {
        let cached = &self.cached;
        self.table.begin_retire(key, |s| cached.contains(&s))
    }

    pub fn slots_of(&self, key: u64) -> &[u32] {
        self.table.slots_of(key)
    }
}

/// The container table: fills a snapshot's container part.
pub struct ContainerArrays {
    arrays: SlotArrays<CONTAINER_FIELDS>,
    read: TableRead<CONTAINER_FIELDS>,
}

impl ContainerArrays {
    pub fn layout(ncpu: usize, capacity: u32) -> Layout {
        SlotArrays::<CONTAINER_FIELDS>::layout(ncpu, capacity, 1)
    }

    pub fn new(
        ncpu: usize,
        capacity: u32,
        keys: MappedArray,
        stats: MappedArray,
        dirty: MappedArray,
    ) -> Self {
        Self {
            arrays: SlotArrays::new(ncpu, capacity, 1, keys, stats, dirty),
            read: TableRead::default(),
        }
    }

    pub fn in_use(&self) -> usize {
        self.arrays.in_use()
    }

    #[doc(hidden)]
    pub fn memory(&self) -> [&MappedArray; 3] {
        self.arrays.memory()
    }

    /// Fills the snapshot's container part from the entries marked dirty (the CPU records
    /// must already be in `out.cpus`), reads due slots one last time and returns them: the
    /// caller pushes them back on the kernel's free queue.
    pub fn read(&mut self, out: &mut RawSnapshot) -> Vec<u32> {
        let cached = out.cpus.iter().flat_map(|c| [c.cur_slot, c.last_slot]);
        self.arrays.read(cached, &mut self.read);
        std::mem::swap(&mut out.containers, &mut self.read.reads);
        std::mem::swap(&mut out.retired, &mut self.read.retired);
        out.container_capacity = self.arrays.capacity();
        out.running.clear();
        out.running
            .extend(out.cpus.iter().map(|c| self.arrays.owner(c.cur_slot)));
        std::mem::take(&mut self.read.freed)
    }

    pub fn begin_retire(&mut self, key: ContainerKey) -> bool {
        self.arrays.begin_retire(key)
    }
}

/// The interface table: fills a snapshot's interface part, with the name of each interface
/// read once, when its slot is learned.
pub struct IfaceArrays {
    arrays: SlotArrays<IFACE_FIELDS>,
    names: MappedArray,
    read: TableRead<IFACE_FIELDS>,
}

impl IfaceArrays {
    /// Dirty bitmaps per CPU: rx and tx.
    pub const SETS: u32 = 2;

    /// The three arrays' sizes and the names array's.
    pub fn layout(ncpu: usize, capacity: u32) -> (Layout, usize) {
        (
            SlotArrays::<IFACE_FIELDS>::layout(ncpu, capacity, Self::SETS),
            capacity as usize * IFNAME_LEN,
        )
    }

    pub fn new(ncpu: usize, capacity: u32, [keys, stats, dirty, names]: [MappedArray; 4]) -> Self {
        Self {
            arrays: SlotArrays::new(ncpu, capacity, Self::SETS, keys, stats, dirty),
            names,
            read: TableRead::default(),
        }
    }

    pub fn in_use(&self) -> usize {
        self.arrays.in_use()
    }

    #[doc(hidden)]
    pub fn arrays(&self) -> &SlotArrays<IFACE_FIELDS> {
        &self.arrays
    }

    #[doc(hidden)]
    pub fn names(&self) -> &MappedArray {
        &self.names
    }

    /// Fills the snapshot's interface part; returns the freed slots, for the kernel's free
    /// queue. The CPUs' caches do not hold slots back: the kernel checks a cached slot's key
    /// (see `begin_retire`).
    pub fn read(&mut self, out: &mut RawSnapshot) -> Vec<u32> {
        self.arrays.read(std::iter::empty(), &mut self.read);
        out.iface_names.clear();
        for &slot in &self.read.learned {
            let mut words = [0u64; IFNAME_LEN / 8];
            self.names
                .read_words(slot as usize * IFNAME_LEN / 8, &mut words);
            let key = self.arrays.owner(slot).unwrap_or_default();
            out.iface_names
                .push((IfaceKey::unpack(key), bytemuck::cast(words)));
        }
        std::mem::swap(&mut out.ifaces, &mut self.read.reads);
        out.ifaces_retired.clear();
        out.ifaces_retired
            .extend(self.read.retired.iter().map(|&k| IfaceKey::unpack(k)));
        out.iface_capacity = self.arrays.capacity();
        std::mem::take(&mut self.read.freed)
    }

    /// Starts retiring `key`'s slots, and overwrites their key with 0 (no device has ifindex
    /// 0): from then on a CPU whose cache still holds the slot looks the key up again instead
    /// of counting into it. Returns whether the caller must now delete the key from
    /// `IFACE_SLOTS`.
    pub fn begin_retire(&mut self, key: IfaceKey) -> bool {
        if !self.arrays.begin_retire(key.packed()) {
            return false;
        }
        let [keys, _, _] = self.arrays.memory();
        for &slot in self.arrays.slots_of(key.packed()) {
            if self.arrays.owner(slot) == Some(key.packed()) {
                keys.store_word(slot as usize, 0);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_freed_only_after_the_grace_drains_and_when_no_cpu_caches_it() {
        let mut t = SlotTable::new(4);
        t.learn(2, 77);
        assert_eq!(t.owner(2), Some(77));
        assert_eq!(t.in_use(), 1);
        // Cached by a CPU: not even started.
        assert!(!t.begin_retire(77, |s| s == 2));
        assert!(t.begin_retire(77, |_| false));
        // Counts that still arrive belong to the old key until the slot is free.
        assert_eq!(t.owner(2), Some(77));
        assert!(t.due(|_| false).is_empty(), "grace drains not over");
        t.tick();
        assert!(t.due(|_| false).is_empty());
        t.tick();
        assert!(
            t.due(|s| s == 2).is_empty(),
            "cached again by a racing event"
        );
        assert_eq!(t.due(|_| false), vec![2]);
        assert_eq!(t.finish(2), Some(77));
        assert_eq!(t.owner(2), None);
        assert_eq!(t.in_use(), 0);
        // Taken again by another container.
        t.learn(2, 99);
        assert_eq!(t.owner(2), Some(99));
    }

    #[test]
    fn a_key_that_comes_back_keeps_counting_in_its_new_slot() {
        let mut t = SlotTable::new(4);
        t.learn(0, 5);
        assert!(t.begin_retire(5, |_| false));
        // The key is recycled before the old slot is free: the kernel gives it a new slot.
        t.learn(1, 5);
        assert_eq!((t.owner(0), t.owner(1)), (Some(5), Some(5)));
        t.tick();
        t.tick();
        assert_eq!(t.due(|_| false), vec![0]);
        assert_eq!(t.finish(0), None, "the key still has slot 1");
        assert_eq!(t.owner(1), Some(5));
        // Retiring again only touches the active slot.
        assert!(t.begin_retire(5, |_| false));
        assert!(!t.begin_retire(5, |_| false), "already retiring");
    }

    #[test]
    fn learning_a_taken_slot_again_changes_nothing() {
        let mut t = SlotTable::new(2);
        t.learn(1, 3);
        t.learn(1, 4);
        assert_eq!(t.owner(1), Some(3));
        assert_eq!(t.owner(9), None);
        assert_eq!(t.finish(1), None, "not retiring");
    }

    fn arrays(ncpu: usize, capacity: u32) -> ContainerArrays {
        let layout = ContainerArrays::layout(ncpu, capacity);
        let map = |bytes| MappedArray::anonymous(bytes).unwrap();
        ContainerArrays::new(
            ncpu,
            capacity,
            map(layout.keys_bytes),
            map(layout.stats_bytes),
            map(layout.dirty_bytes),
        )
    }

    /// Plays the kernel: `slot` taken by `key` (or already), `value` added on `cpu`.
    fn kernel_add(a: &ContainerArrays, cpu: usize, slot: u32, key: ContainerKey, value: u64) {
        let [keys, stats, dirty] = a.memory();
        keys.store_word(slot as usize, key);
        let at = (cpu * a.arrays.capacity() as usize + slot as usize) * CONTAINER_FIELDS;
        stats.store_word(at, stats.word(at) + value);
        let w = a.arrays.dirty_word(cpu, 0, slot);
        dirty.store_word(w, dirty.word(w) | 1 << (slot % 64));
    }

    fn cpus(n: usize, cached: &[u32]) -> Vec<sentinel_common::CpuRecord> {
        (0..n)
            .map(|i| {
                let mut c: sentinel_common::CpuRecord = bytemuck::Zeroable::zeroed();
                c.cur_slot = cached.get(i).copied().unwrap_or(NO_SLOT);
                c.last_slot = NO_SLOT;
                c
            })
            .collect()
    }

    #[test]
    fn only_dirty_entries_are_read_and_a_retired_slot_is_read_once_more_then_freed() {
        let mut a = arrays(2, 130);
        let mut snap = RawSnapshot {
            cpus: cpus(2, &[]),
            ..Default::default()
        };
        kernel_add(&a, 0, 3, 42, 10);
        kernel_add(&a, 1, 129, 43, 5);
        assert!(a.read(&mut snap).is_empty());
        let mut seen: Vec<(u32, u32, u64, u64)> = snap
            .containers
            .iter()
            .map(|r| (r.cpu, r.slot, r.key, r.values[0]))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![(0, 3, 42, 10), (1, 129, 43, 5)]);
        assert_eq!(a.in_use(), 2);
        // Nothing changed: nothing read.
        a.read(&mut snap);
        assert!(snap.containers.is_empty());
        // Retiring 42 while CPU 1 runs it: refused until it stops.
        snap.cpus = cpus(2, &[NO_SLOT, 3]);
        a.read(&mut snap);
        assert_eq!(snap.running, vec![None, Some(42)]);
        assert!(!a.begin_retire(42));
        snap.cpus = cpus(2, &[]);
        a.read(&mut snap);
        assert!(a.begin_retire(42));
        // A late event (it found the slot just before the key was removed) still counts.
        kernel_add(&a, 1, 3, 42, 7);
        a.read(&mut snap);
        assert_eq!(snap.containers.len(), 1);
        assert_eq!(snap.containers[0].values[0], 7);
        let freed = a.read(&mut snap);
        assert_eq!(freed, vec![3]);
        assert_eq!(snap.retired, vec![42]);
        // The last read covers every CPU, whatever the dirty bits said.
        assert_eq!(snap.containers.len(), 2);
        assert!(snap.containers.iter().all(|r| r.slot == 3 && r.key == 42));
        // Taken again by the kernel for another container.
        kernel_add(&a, 0, 3, 44, 1);
        a.read(&mut snap);
        assert_eq!(snap.containers[0].key, 44);
        assert_eq!(a.in_use(), 2);
    }

    fn ifaces(ncpu: usize, capacity: u32) -> IfaceArrays {
        let (layout, names) = IfaceArrays::layout(ncpu, capacity);
        let map = |bytes| MappedArray::anonymous(bytes).unwrap();
        IfaceArrays::new(
            ncpu,
            capacity,
            [
                map(layout.keys_bytes),
                map(layout.stats_bytes),
                map(layout.dirty_bytes),
                map(names),
            ],
        )
    }

    /// Plays net.rs: `key` takes `slot` (key and name first), then one packet of `len` bytes
    /// in direction `rx` on `cpu`, marked in that direction's bitmap.
    fn packet(a: &IfaceArrays, cpu: usize, slot: u32, key: IfaceKey, rx: bool, len: u64) {
        let [keys, stats, dirty] = a.arrays().memory();
        if keys.word(slot as usize) != key.packed() {
            keys.store_word(slot as usize, key.packed());
            let name: [u64; 2] = bytemuck::cast(*b"veth-test\0\0\0\0\0\0\0");
            a.names().store_word(slot as usize * 2, name[0]);
            a.names().store_word(slot as usize * 2 + 1, name[1]);
        }
        let at = (cpu * a.arrays().capacity() as usize + slot as usize) * IFACE_FIELDS;
        let f = if rx { 0 } else { 2 };
        stats.store_word(at + f, stats.word(at + f) + 1);
        stats.store_word(at + f + 1, stats.word(at + f + 1) + len);
        let w = a.arrays().dirty_word(cpu, u32::from(!rx), slot);
        dirty.store_word(w, dirty.word(w) | 1 << (slot % 64));
    }

    fn iface_cpus(cached: &[u32]) -> Vec<sentinel_common::CpuRecord> {
        let mut c = cpus(cached.len(), &[]);
        for (r, &slot) in c.iter_mut().zip(cached) {
            r.iface_last_slot = slot;
        }
        c
    }

    /// A CPU's cache (key -> slot) outlives the interface (a quiet CPU may keep it for ever):
    /// it neither holds the slot back nor counts into it once retiring began, because the
    /// slot's key is overwritten with 0 and the kernel trusts a cached slot only while the key
    /// matches. A packet that found the slot just before still counts for the old interface;
    /// the slot's next owner counts from zero. Both directions' bitmaps are read; the name is
    /// read once, when the slot is learned.
    #[test]
    fn a_retiring_interface_slot_is_unnamed_for_the_caches_and_every_packet_counts_for_its_owner() {
        let old = IfaceKey {
            netns: 9,
            ifindex: 4,
        };
        let new = IfaceKey {
            netns: 10,
            ifindex: 4,
        };
        let mut a = ifaces(2, 8);
        let mut drain = super::super::drain::Drain::new();
        let mut snap = RawSnapshot {
            cpus: iface_cpus(&[5, 5]),
            ..Default::default()
        };
        packet(&a, 0, 5, old, true, 100);
        packet(&a, 1, 5, old, false, 40);
        a.read(&mut snap);
        assert_eq!(snap.iface_names.len(), 1);
        assert_eq!(snap.iface_names[0].0, old);
        let d = drain.apply(&snap);
        assert_eq!(d.ifaces.len(), 1);
        let i = &d.ifaces[0];
        assert_eq!(
            (&*i.name, i.rx_packets, i.rx_bytes, i.tx_packets, i.tx_bytes),
            ("veth-test", 1, 100, 1, 40)
        );
        // Gone: retiring starts although both CPUs still cache the slot, and the slot no
        // longer names the key, so a later cache hit misses.
        assert_eq!(a.arrays().memory()[0].word(5), old.packed());
        assert!(a.begin_retire(old));
        assert_eq!(
            a.arrays().memory()[0].word(5),
            0,
            "cached hits on slot 5 stop here"
        );
        assert!(!a.begin_retire(old), "already retiring");
        // A packet that found the slot just before (in flight during the removal).
        let [_, stats, dirty] = a.arrays().memory();
        let at = (8 + 5) * IFACE_FIELDS;
        stats.store_word(at, stats.word(at) + 1);
        stats.store_word(at + 1, stats.word(at + 1) + 7);
        let w = a.arrays().dirty_word(1, 0, 5);
        dirty.store_word(w, dirty.word(w) | 1 << 5);
        let mut late_rx_bytes = 0;
        let mut freed = Vec::new();
        for _ in 0..RETIRE_DRAINS + 1 {
            freed = a.read(&mut snap);
            for i in drain.apply(&snap).ifaces {
                assert_eq!((i.netns, i.ifindex), (old.netns, old.ifindex));
                late_rx_bytes += i.rx_bytes;
            }
            if !freed.is_empty() {
                break;
            }
        }
        assert_eq!(
            late_rx_bytes, 7,
            "the late packet counted for the old interface"
        );
        assert_eq!(freed, vec![5], "freed although the CPUs still cache it");
        assert_eq!(snap.ifaces_retired, vec![old]);
        assert_eq!(drain.iface_entries(), 0);
        // The slot is taken by another interface: it counts from zero for it.
        packet(&a, 1, 5, new, true, 60);
        a.read(&mut snap);
        assert_eq!(snap.iface_names[0].0, new);
        let d = drain.apply(&snap);
        assert_eq!(d.ifaces.len(), 1);
        assert_eq!(
            (
                d.ifaces[0].netns,
                d.ifaces[0].rx_packets,
                d.ifaces[0].rx_bytes
            ),
            (10, 1, 60)
        );
        assert_eq!(a.in_use(), 1);
    }
}
