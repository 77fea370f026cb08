//! Benchmark-only programs: the physical floor of a hook, one per-CPU array increment and
//! nothing else, so `cargo xtask bench` can put each of sentinel's programs next to the
//! cheapest program the kernel can run on the same tracepoint and attach kind. The daemon never
//! attaches them (they are not in its hook list); only the bench loads them.

use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::maps::atomic_add;

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
