//! Benchmark-only programs: the physical floor of a hook, one per-CPU array increment and
//! nothing else, so `cargo xtask bench` can put each of sentinel's programs next to the
//! cheapest program the kernel can run on the same tracepoint and attach kind. The daemon never
//! attaches them (they are not in its hook list); only the bench loads them.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use sentinel_common::{IfaceKey, counter};

use crate::{
    container::{container_key, mark_dirty, stats},
    maps::{
        CFS_RQ_RQ_OFF, CONTAINER_SLOTS, IFACES, RQ_CLOCK_OFF, TASK_CFS_RQ_OFF,
        TASK_LAST_QUEUED_OFF, add, field, global, record,
    },
};

#[map]
static SNT_FLOOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump() -> i32 {
    if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
        // The same plain add sentinel's programs use, so the comparison is like for like.
        add(slot, 1);
    }
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_sw(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_floor_wk(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn snt_floor_wkn(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn snt_floor_fork(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn snt_floor_exec(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn snt_floor_exit(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn snt_floor_xmit(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn snt_floor_recv(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn snt_floor_kfree(_ctx: BtfTracePointContext) -> i32 {
    bump()
}

// The other attach kinds, on the hottest hooks, to compare kinds on this kernel.

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn snt_floor_rsw(_ctx: RawTracePointContext) -> i32 {
    bump()
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn snt_floor_rwk(_ctx: RawTracePointContext) -> i32 {
    bump()
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn snt_floor_csw(_ctx: TracePointContext) -> u32 {
    bump() as u32
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn snt_floor_cwk(_ctx: TracePointContext) -> u32 {
    bump() as u32
}

// Cost decomposition: the floor plus one ingredient of sentinel's programs each, so the bench
// can say where the time goes. They run on the same hooks with the daemon's load-time offsets.

/// Small: the daemon creates every map of the object, this one included, and never uses it.
/// A hash operation costs the same whatever the capacity (one bucket walk).
#[map]
static SNT_FLOOR_START: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Floor + the clock read (`bpf_ktime_get_ns`).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_floor_wkts(_ctx: BtfTracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
        add(slot, now & 1);
    }
    0
}

/// Floor + clock + a timestamp stored in a shared hash (the `hash` source's wakeup).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_floor_wkhash(_ctx: BtfTracePointContext) -> i32 {
    bump();
    let pid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = SNT_FLOOR_START.insert(&pid, &now, 0);
    0
}

/// Floor + clock + lookup and delete in the shared hash (the `hash` source's switch).
#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_swhash(_ctx: BtfTracePointContext) -> i32 {
    bump();
    let pid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(start) = unsafe { SNT_FLOOR_START.get(&pid) } {
        if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
            add(slot, now.saturating_sub(*start) & 1);
        }
        let _ = SNT_FLOOR_START.remove(&pid);
    }
    0
}

/// Floor + the `sched_info` source's wait: the next task's `last_queued` against its run
/// queue's clock (four dependent loads, no map).
#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_swrq(ctx: BtfTracePointContext) -> i32 {
    let next: *const u8 = ctx.arg(2);
    let waited = unsafe {
        let cfs_rq: *const u8 = field(next, global(&TASK_CFS_RQ_OFF));
        let rq: *const u8 = if cfs_rq.is_null() {
            core::ptr::null()
        } else {
            field(cfs_rq, global(&CFS_RQ_RQ_OFF))
        };
        if rq.is_null() {
            0
        } else {
            let now: u64 = field(rq, global(&RQ_CLOCK_OFF));
            now.saturating_sub(field(next, global(&TASK_LAST_QUEUED_OFF)))
        }
    };
    if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
        add(slot, waited);
    }
    0
}

/// Floor + the next task's container key and its slot (the key resolution and the
/// `CONTAINER_SLOTS` lookup that a switch between two containers pays).
#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_swkey(ctx: BtfTracePointContext) -> i32 {
    let next: *const u8 = ctx.arg(2);
    let key = container_key(next);
    let slot = unsafe { CONTAINER_SLOTS.get(&key) }.copied().unwrap_or(0);
    if let Some(s) = SNT_FLOOR.get_ptr_mut(0) {
        add(s, u64::from(slot));
    }
    0
}

/// Floor + the task's container key (`task->nsproxy->mnt_ns->ns.inum`, or the cgroup id's
/// four loads): the one lookup exec and exit cannot spare, since a runtime's init joins a
/// container and execs (or a process unshares and exits) without switching out in between, so
/// the slot cached at switch-in may name the container it left. Their reference cost.
#[inline(always)]
fn task_key(ctx: &BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let key = container_key(task);
    if let Some(s) = SNT_FLOOR.get_ptr_mut(0) {
        add(s, key & 1);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn snt_floor_execkey(ctx: BtfTracePointContext) -> i32 {
    task_key(&ctx)
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn snt_floor_exitkey(ctx: BtfTracePointContext) -> i32 {
    task_key(&ctx)
}

/// Floor + the per-CPU record and one container entry by slot: the adds of a slice ending
/// and the dirty mark (what a switch within one container pays for attribution).
#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_swslot(_ctx: BtfTracePointContext) -> i32 {
    let Some(rec) = record() else {
        return 0;
    };
    unsafe { add(&raw mut (*rec).counters[counter::SCHED_SWITCH], 1) };
    if let Some(cs) = stats(rec, 0) {
        unsafe {
            add(&raw mut (*cs).cpu_ns, 1);
            add(&raw mut (*cs).switches, 1);
        }
        mark_dirty(rec, 0);
    }
    0
}

/// Floor + a (netns, ifindex) entry lookup and two adds: the one keyed lookup the network
/// programs need, their reference cost. The key is fixed, so the entry is the bench's own.
#[inline(always)]
fn iface_lookup(rx: bool) -> i32 {
    let key = IfaceKey {
        netns: 0,
        ifindex: 1,
    };
    match IFACES.get_ptr_mut(&key) {
        Some(stats) => unsafe {
            if rx {
                add(&raw mut (*stats).rx_packets, 1);
                add(&raw mut (*stats).rx_bytes, 64);
            } else {
                add(&raw mut (*stats).tx_packets, 1);
                add(&raw mut (*stats).tx_bytes, 64);
            }
        },
        None => {
            bump();
        }
    }
    0
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn snt_floor_xmitif(_ctx: BtfTracePointContext) -> i32 {
    iface_lookup(false)
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn snt_floor_recvif(_ctx: BtfTracePointContext) -> i32 {
    iface_lookup(true)
}
