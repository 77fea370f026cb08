//! Container attribution: the key of a task's container, resolved in the kernel from the task.
//!
//! cgroup v2 hosts: `task->cgroups->dfl_cgrp->kn->id`, the cgroup id (the inode of the cgroup's
//! directory), which names systemd services too. cgroup v1 hosts (Docker with cgroupfs v1):
//! the v2 hierarchy does not follow containers there, so the key is the task's mount namespace
//! inode (`task->nsproxy->mnt_ns->ns.inum`): every container has its own. The loader picks the
//! mode from the host's cgroup layout. A key of 0 means "could not be resolved" (e.g. a task
//! past exit_task_namespaces).

use aya_ebpf::bindings::BPF_NOEXIST;
use sentinel_common::{ContainerKey, ContainerStats, KEY_MODE_CGROUP, counter};

use crate::maps::{
    CGROUP_KN_OFF, CONTAINERS, CSS_SET_DFL_CGRP_OFF, KEY_MODE, KN_ID_OFF, MNT_NS_INUM_OFF,
    NSPROXY_MNT_NS_OFF, TASK_CGROUPS_OFF, TASK_NSPROXY_OFF, ZERO_CONTAINER, count, field, global,
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

/// The container's entry on this CPU, created on first use; `None` (counted as overflow) when
/// the map is full.
#[inline(always)]
pub fn container_entry(key: ContainerKey) -> Option<*mut ContainerStats> {
    if let Some(stats) = CONTAINERS.get_ptr_mut(&key) {
        return Some(stats);
    }
    if let Some(zero) = ZERO_CONTAINER.get(0) {
        let _ = CONTAINERS.insert(&key, zero, BPF_NOEXIST as u64);
    }
    let stats = CONTAINERS.get_ptr_mut(&key);
    if stats.is_none() {
        count(counter::CONTAINER_OVERFLOW, 1);
    }
    stats
}
