//! Container attribution: the key of a task's container, resolved in the kernel from the task,
//! and the container's slot in the per-CPU counter arrays.
//!
//! cgroup v2 hosts: `task->cgroups->dfl_cgrp->kn->id`, the cgroup id (the inode of the cgroup's
//! directory), which names systemd services too. cgroup v1 hosts (Docker with cgroupfs v1):
//! the v2 hierarchy does not follow containers there, so the key is the task's mount namespace
//! inode (`task->nsproxy->mnt_ns->ns.inum`): every container has its own. The loader picks the
//! mode from the host's cgroup layout. A key of 0 means "could not be resolved" (e.g. a task
//! past exit_task_namespaces).

use aya_ebpf::maps::{Array, HashMap, Queue};
use sentinel_common::{ContainerKey, ContainerStats, CpuRecord, KEY_MODE_CGROUP, NO_SLOT, counter};

use crate::maps::{
    CGROUP_KN_OFF, CONTAINER_DIRTY, CONTAINER_FREE, CONTAINER_KEYS, CONTAINER_SLOTS,
    CONTAINER_STATS, CSS_SET_DFL_CGRP_OFF, KEY_MODE, KN_ID_OFF, MNT_NS_INUM_OFF,
    NSPROXY_MNT_NS_OFF, TASK_CGROUPS_OFF, TASK_NSPROXY_OFF, count_shared, field, global,
};
use crate::slots;

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

#[inline(always)]
fn lookup_or_take(rec: *const CpuRecord, key: ContainerKey) -> u32 {
    let slot = slots::lookup_or_take::<Containers>(key, unsafe { (*rec).dirty_base }, |_| {});
    if slot == NO_SLOT {
        count_shared(counter::CONTAINER_OVERFLOW, 1);
    }
    slot
}

/// This CPU's counters of `slot` (`None` for `NO_SLOT`).
#[inline(always)]
pub fn stats(rec: *const CpuRecord, slot: u32) -> Option<*mut ContainerStats> {
    slots::stats::<Containers>(unsafe { (*rec).slot_base }, slot)
}

/// Marks this CPU's entry of `slot` as updated, after the update (see `slots::mark_dirty`).
#[inline(always)]
pub fn mark_dirty(rec: *const CpuRecord, slot: u32) {
    slots::mark_dirty::<Containers>(unsafe { (*rec).dirty_base }, slot)
}

pub struct Containers;

impl slots::Table for Containers {
    type Stats = ContainerStats;
    #[inline(always)]
    fn slots() -> &'static HashMap<u64, u32> {
        &CONTAINER_SLOTS
    }
    #[inline(always)]
    fn free() -> &'static Queue<u32> {
        &CONTAINER_FREE
    }
    #[inline(always)]
    fn keys() -> &'static Array<u64> {
        &CONTAINER_KEYS
    }
    #[inline(always)]
    fn stats() -> &'static Array<ContainerStats> {
        &CONTAINER_STATS
    }
    #[inline(always)]
    fn dirty() -> &'static Array<u64> {
        &CONTAINER_DIRTY
    }
}
