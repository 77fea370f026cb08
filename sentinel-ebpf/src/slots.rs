//! Key-to-slot tables, kernel side, shared by containers and interfaces: a key gets a slot once,
//! from a free queue; its counters live in plain arrays indexed by slot, one region per CPU,
//! which userspace maps into its memory; a dirty bitmap per CPU tells userspace which entries
//! changed. Userspace retires the slot of a gone key (after draining it) and pushes it back on
//! the free queue (sentinel-user's collect/slots.rs).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{Array, HashMap, Queue},
};
use sentinel_common::NO_SLOT;

/// The maps of one table. Accessors, not values: each generic function is monomorphised per
/// table, so every map stays a constant in the program, as the verifier wants.
pub trait Table {
    type Stats: 'static;
    /// Key -> slot. Written by the programs (first event of a key) and userspace (retiring).
    fn slots() -> &'static HashMap<u64, u32>;
    /// Free slots, filled with every slot by the loader before the programs attach.
    fn free() -> &'static Queue<u32>;
    /// Key of each slot, written by the program that takes the slot before anyone can use it.
    fn keys() -> &'static Array<u64>;
    /// Counters of each (CPU, slot): entry `slot_base + slot`.
    fn stats() -> &'static Array<Self::Stats>;
    /// One bit per (CPU, slot), see `mark_dirty`.
    fn dirty() -> &'static Array<u64>;
}

/// The slot of `key` from the table's hash, taking a free slot on the key's first event (then
/// `on_take(slot)` runs before the slot can be found, for what userspace reads once per slot,
/// and the slot is marked dirty at `dirty_base`). `NO_SLOT` when every slot is taken.
#[inline(never)]
pub fn lookup_or_take<T: Table>(key: u64, dirty_base: u32, on_take: impl FnOnce(u32)) -> u32 {
    if let Some(slot) = unsafe { T::slots().get(&key) } {
        return *slot;
    }
    let Ok(Some(slot)) = T::free().pop() else {
        return NO_SLOT;
    };
    // The key is in place before the slot can be found, so userspace never sees counts in a
    // slot it cannot name.
    if let Some(k) = T::keys().get_ptr_mut(slot) {
        unsafe { *k = key };
    }
    on_take(slot);
    if T::slots().insert(&key, &slot, BPF_NOEXIST as u64).is_ok() {
        // Userspace learns of a slot from its dirty bits: mark it now, even if this event
        // adds nothing to it, so no slot is ever taken without userspace seeing it.
        mark_dirty::<T>(dirty_base, slot);
        return slot;
    }
    // Another CPU gave this key a slot meanwhile: use that one, hand ours back.
    let _ = T::free().push(slot, 0);
    match unsafe { T::slots().get(&key) } {
        Some(slot) => *slot,
        None => NO_SLOT,
    }
}

/// This CPU's counters of `slot` (`None` for `NO_SLOT`).
#[inline(always)]
pub fn stats<T: Table>(slot_base: u32, slot: u32) -> Option<*mut T::Stats> {
    if slot == NO_SLOT {
        return None;
    }
    T::stats().get_ptr_mut(slot_base + slot)
}

/// Marks this CPU's entry of `slot` as updated, after the update. Userspace swaps the word
/// with 0, then reads the entries: stores stay in order (x86-64), so a bit it took covers every
/// update stored before the bit. The store is unconditional: if userspace takes the word
/// between this load and store, the store sets the bit again and the update is read next time
/// (at worst a few other bits too: a spare read, never a missed one).
#[inline(always)]
pub fn mark_dirty<T: Table>(dirty_base: u32, slot: u32) {
    if let Some(word) = T::dirty().get_ptr_mut(dirty_base + slot / 64) {
        unsafe {
            let w = core::ptr::read_volatile(word);
            core::ptr::write_volatile(word, w | (1u64 << (slot % 64)));
        }
    }
}
