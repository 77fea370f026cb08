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

use crate::{container::container_entry, maps::atomic_add};

#[map]
static SNT_FLOOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump() -> i32 {
    if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
        // The same atomic add sentinel's programs use, so the comparison is like for like.
        atomic_add(slot, 1);
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

// Cost decomposition: the floor plus one ingredient of sentinel's scheduler programs each, so
// the bench can say where the time goes. The key is the current task (the wakee is not known
// without BTF offsets, which the bench does not resolve); the cost per operation is the same.

/// Small: the daemon creates every map of the object, this one included, and never uses it.
/// A hash operation costs the same whatever the capacity (one bucket walk).
#[map]
static SNT_FLOOR_START: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Floor + the clock read.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_floor_wkts(_ctx: BtfTracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
        atomic_add(slot, now & 1);
    }
    0
}

/// Floor + clock + a timestamp stored in a shared hash (snt_sched_wakeup's work).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_floor_wkhash(_ctx: BtfTracePointContext) -> i32 {
    bump();
    let pid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = SNT_FLOOR_START.insert(&pid, &now, 0);
    0
}

/// Floor + clock + lookup and delete in the shared hash (snt_sched_switch's run-queue part).
#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_swhash(_ctx: BtfTracePointContext) -> i32 {
    bump();
    let pid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(start) = unsafe { SNT_FLOOR_START.get(&pid) } {
        if let Some(slot) = SNT_FLOOR.get_ptr_mut(0) {
            atomic_add(slot, now.saturating_sub(*start) & 1);
        }
        let _ = SNT_FLOOR_START.remove(&pid);
    }
    0
}

/// Floor + one per-container entry lookup and two atomic adds (snt_sched_switch does this
/// once or twice per switch).
#[btf_tracepoint(function = "sched_switch")]
pub fn snt_floor_swpcpu(_ctx: BtfTracePointContext) -> i32 {
    bump();
    if let Some(stats) = container_entry(1) {
        unsafe {
            atomic_add(&raw mut (*stats).cpu_ns, 1);
            atomic_add(&raw mut (*stats).switches, 1);
        }
    }
    0
}
