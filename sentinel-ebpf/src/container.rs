//! Container attribution: the key of a task's container, resolved in the kernel from the task,
//! and the container's slot in the per-CPU counter arrays.
//!
//! cgroup v2 hosts: `task->cgroups->dfl_cgrp->kn->id`, the cgroup id (the inode of the cgroup's
//! directory), which names systemd services too. cgroup v1 hosts (Docker with cgroupfs v1):
//! the v2 hierarchy does not follow containers there, so the key is the task's mount namespace
//! inode (`task->nsproxy->mnt_ns->ns.inum`): every container has its own. The loader picks the
//! mode from the host's cgroup layout. A key of 0 means "could not be resolved" (e.g. a task
//! past exit_task_namespaces).

use aya_ebpf::bindings::BPF_NOEXIST;
use sentinel_common::{ContainerKey, ContainerStats, CpuRecord, KEY_MODE_CGROUP, NO_SLOT, counter};

use crate::maps::{
    CGROUP_KN_OFF, CONTAINER_DIRTY, CONTAINER_FREE, CONTAINER_KEYS, CONTAINER_SLOTS,
    CONTAINER_STATS, CSS_SET_DFL_CGRP_OFF, KEY_MODE, KN_ID_OFF, MNT_NS_INUM_OFF,
    NSPROXY_MNT_NS_OFF, TASK_CGROUPS_OFF, TASK_NSPROXY_OFF, count_shared, field, global,
};

#[inline(always)]
pub fn container_key(task: *const u8) -> ContainerKey {
    unsafe {
        if global(&KEY_MODE) as u32 == KEY_MODE_CGROUP {
            let cgroups: *const u8 = field(task, global(&TASK_CGROUPS_OFF));
            if cgroups.is_null() {
                return 0;
            }
            let cgrp: *const u8 = field(cgroups, global(&CSS_SET_DFL_CGRP_OFF));
            if cgrp.is_null() {
                return 0;
            }
            let kn: *const u8 = field(cgrp, global(&CGROUP_KN_OFF));
            if kn.is_null() {
                return 0;
            }
            field::<u64>(kn, global(&KN_ID_OFF))
        } else {
            let nsproxy: *const u8 = field(task, global(&TASK_NSPROXY_OFF));
            if nsproxy.is_null() {
                return 0;
            }
            let mnt_ns: *const u8 = field(nsproxy, global(&NSPROXY_MNT_NS_OFF));
            if mnt_ns.is_null() {
                return 0;
            }
            field::<u32>(mnt_ns, global(&MNT_NS_INUM_OFF)) as u64
        }
    }
}

/// The slot of `key`, from this CPU's one-entry cache when the container is the last one seen
/// here (the common case: a fork by the running task, a switch between two tasks of one
/// container), else from `CONTAINER_SLOTS`, taking a free slot on the container's first event.
/// `NO_SLOT` (counted as overflow) when every slot is taken.
#[inline(always)]
pub fn slot_of(rec: *mut CpuRecord, key: ContainerKey) -> u32 {
    unsafe {
        if (*rec).last_key == key {
            return (*rec).last_slot;
        }
        let slot = lookup_or_take(rec, key);
        (*rec).last_key = key;
        (*rec).last_slot = slot;
        slot
    }
}

#[inline(never)]
fn lookup_or_take(rec: *const CpuRecord, key: ContainerKey) -> u32 {
    if let Some(slot) = unsafe { CONTAINER_SLOTS.get(&key) } {
        return *slot;
    }
    let Ok(Some(slot)) = CONTAINER_FREE.pop() else {
        count_shared(counter::CONTAINER_OVERFLOW, 1);
        return NO_SLOT;
    };
    // The key is in place before the slot can be found, so userspace never sees counts in a
    // slot it cannot name.
    if let Some(k) = CONTAINER_KEYS.get_ptr_mut(slot) {
        unsafe { *k = key };
    }
    if CONTAINER_SLOTS
        .insert(&key, &slot, BPF_NOEXIST as u64)
        .is_ok()
    {
        // Userspace learns of a slot from its dirty bits: mark it now, even if this event
        // adds nothing to it, so no slot is ever taken without userspace seeing it.
        mark_dirty(rec, slot);
        return slot;
    }
    // Another CPU gave this container a slot meanwhile: use that one, hand ours back.
    let _ = CONTAINER_FREE.push(slot, 0);
    match unsafe { CONTAINER_SLOTS.get(&key) } {
        Some(slot) => *slot,
        None => {
            count_shared(counter::CONTAINER_OVERFLOW, 1);
            NO_SLOT
        }
    }
}

/// This CPU's counters of `slot` (`None` for `NO_SLOT`).
#[inline(always)]
pub fn stats(rec: *const CpuRecord, slot: u32) -> Option<*mut ContainerStats> {
    if slot == NO_SLOT {
        return None;
    }
    CONTAINER_STATS.get_ptr_mut(unsafe { (*rec).slot_base } + slot)
}

/// Marks this CPU's entry of `slot` as updated, after the update. Userspace swaps the word
/// with 0, then reads the entries: stores stay in order (x86-64), so a bit it took covers every
/// update stored before the bit. The store is unconditional: if userspace takes the word
/// between this load and store, the store sets the bit again and the update is read next time
/// (at worst a few other bits too: a spare read, never a missed one).
#[inline(always)]
pub fn mark_dirty(rec: *const CpuRecord, slot: u32) {
    if let Some(word) = CONTAINER_DIRTY.get_ptr_mut(unsafe { (*rec).dirty_base } + slot / 64) {
        unsafe {
            let w = core::ptr::read_volatile(word);
            core::ptr::write_volatile(word, w | (1u64 << (slot % 64)));
        }
    }
}
