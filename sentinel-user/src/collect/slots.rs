//! Container slots, user side: which container owns each slot of the kernel's per-CPU
//! container arrays, and how the slot of a gone container is given back without losing a count.
//!
//! The kernel takes a free slot on a container's first event and records its key (see
//! sentinel-ebpf's container.rs). Userspace gives a slot back in three steps:
//! 1. `begin_retire`: the container is gone and idle, and no CPU's record caches the slot; the
//!    caller deletes the key from `CONTAINER_SLOTS`, so no new event can find the slot.
//! 2. `due`, `RETIRE_DRAINS` drains later and again cached nowhere: an event that found the
//!    slot just before the delete has long finished, so nothing can add to it any more. The
//!    caller reads the slot on every CPU one last time (its counts still go to the old key).
//! 3. `finish`: the slot is free; the caller pushes it back on the kernel's free queue. The
//!    drain's previous values stay as they are, so the next owner's deltas start from there.
//!
//! A container whose key comes back meanwhile (a recycled mount namespace inode) simply gets a
//! new slot; both count for the key until the old one is free.

use std::collections::{HashMap, HashSet};

use sentinel_common::{CONTAINER_FIELDS, ContainerKey, NO_SLOT, dirty_words};

use super::{
    bpf_sys::MappedArray,
    drain::{RawSnapshot, SlotRead},
};

/// Drains between removing a key from `CONTAINER_SLOTS` and freeing its slot.
pub const RETIRE_DRAINS: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Active(ContainerKey),
    Retiring { key: ContainerKey, since: u64 },
}

#[derive(Debug)]
pub struct SlotTable {
    states: Vec<State>,
    slots_of: HashMap<ContainerKey, Vec<u32>>,
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
    pub fn owner(&self, slot: u32) -> Option<ContainerKey> {
        match self.states.get(slot as usize)? {
            State::Free => None,
            State::Active(key) | State::Retiring { key, .. } => Some(*key),
        }
    }

    /// The kernel took `slot` for `key` (read from `CONTAINER_KEYS`).
    pub fn learn(&mut self, slot: u32, key: ContainerKey) {
        if let Some(state @ State::Free) = self.states.get_mut(slot as usize) {
            *state = State::Active(key);
            self.slots_of.entry(key).or_default().push(slot);
        }
    }

    /// Slots in use (taken and not yet freed).
    pub fn in_use(&self) -> usize {
        self.slots_of.values().map(Vec::len).sum()
    }

    /// Starts retiring every slot of `key`, unless one of them is cached by a CPU (`cached`):
    /// then nothing changes and the caller tries again later. Returns whether the caller must
    /// now delete `key` from `CONTAINER_SLOTS`.
    pub fn begin_retire(&mut self, key: ContainerKey, cached: impl Fn(u32) -> bool) -> bool {
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
    pub fn finish(&mut self, slot: u32) -> Option<ContainerKey> {
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

/// Sizes of the three memory-mapped container arrays.
pub struct Layout {
    pub keys_bytes: usize,
    pub stats_bytes: usize,
    pub dirty_bytes: usize,
}

/// The memory-mapped container arrays and the slot table: what a drain reads, and which
/// slots it frees. No system call; the caller hands freed slots back to the kernel's queue.
pub struct ContainerArrays {
    keys: MappedArray,
    stats: MappedArray,
    dirty: MappedArray,
    table: SlotTable,
    capacity: u32,
    words: u32,
    ncpu: usize,
    /// Slots cached by some CPU's record at the last read: never retired or freed.
    cached: HashSet<u32>,
}

impl ContainerArrays {
    pub fn layout(ncpu: usize, capacity: u32) -> Layout {
        Layout {
            keys_bytes: capacity as usize * 8,
            stats_bytes: ncpu * capacity as usize * CONTAINER_FIELDS * 8,
            dirty_bytes: ncpu * dirty_words(capacity) as usize * 8,
        }
    }

    pub fn new(
        ncpu: usize,
        capacity: u32,
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
            ncpu,
            cached: HashSet::new(),
        }
    }

    pub fn in_use(&self) -> usize {
        self.table.in_use()
    }

    /// The keys, entries and dirty bitmap, for benchmarks and tests that play the kernel.
    #[doc(hidden)]
    pub fn memory(&self) -> [&MappedArray; 3] {
        [&self.keys, &self.stats, &self.dirty]
    }

    fn read_slot(&self, cpu: usize, slot: u32, key: ContainerKey) -> SlotRead {
        let mut values = [0u64; CONTAINER_FIELDS];
        let entry = cpu * self.capacity as usize + slot as usize;
        self.stats.read_words(entry * CONTAINER_FIELDS, &mut values);
        SlotRead {
            cpu: cpu as u32,
            slot,
            key,
            values,
        }
    }

    /// Fills the snapshot's container part from the entries marked dirty (the CPU records
    /// must already be in `out.cpus`), reads due slots one last time and returns them: the
    /// caller pushes them back on the kernel's free queue.
    pub fn read(&mut self, out: &mut RawSnapshot) -> Vec<u32> {
        self.table.tick();
        self.cached.clear();
        for c in &out.cpus {
            self.cached.extend([c.cur_slot, c.last_slot]);
        }
        self.cached.remove(&NO_SLOT);
        out.containers.clear();
        out.retired.clear();
        out.container_capacity = self.capacity;
        for cpu in 0..self.ncpu {
            for w in 0..self.words {
                let mut bits = self.dirty.take_word(cpu * self.words as usize + w as usize);
                while bits != 0 {
                    let slot = w * 64 + bits.trailing_zeros();
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
                            key
                        }
                    };
                    out.containers.push(self.read_slot(cpu, slot, key));
                }
            }
        }
        // Slots nothing can add to any more: one last read on every CPU, then free them.
        let cached = &self.cached;
        let due = self.table.due(|s| cached.contains(&s));
        for &slot in &due {
            if let Some(key) = self.table.owner(slot) {
                for cpu in 0..self.ncpu {
                    out.containers.push(self.read_slot(cpu, slot, key));
                }
            }
            if let Some(gone) = self.table.finish(slot) {
                out.retired.push(gone);
            }
        }
        out.running.clear();
        out.running
            .extend(out.cpus.iter().map(|c| self.table.owner(c.cur_slot)));
        due
    }

    /// See `SlotTable::begin_retire`; slots cached at the last read count as in use.
    pub fn begin_retire(&mut self, key: ContainerKey) -> bool {
        let cached = &self.cached;
        self.table.begin_retire(key, |s| cached.contains(&s))
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
        let at = (cpu * a.capacity as usize + slot as usize) * CONTAINER_FIELDS;
        stats.store_word(at, stats.word(at) + value);
        let w = cpu * a.words as usize + slot as usize / 64;
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
}
