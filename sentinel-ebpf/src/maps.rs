//! Every map, its capacity and the load-time globals, in one place.
//!
//! Concurrency: every increment is an atomic add (`lock add` once JITed). A per-CPU slot is
//! written by one CPU only, but on that CPU a program running in process context (e.g.
//! `net_dev_xmit` on a socket send) can be interrupted between its load and its store by a
//! softirq running another of our programs (e.g. `netif_receive_skb` on loopback) that adds to
//! the same slot. A plain `+=` would then lose one of the two increments; an atomic add cannot.
//! The cost is a few ns on an uncontended, CPU-local cache line.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use sentinel_common::{
    CONTAINER_MAP_CAPACITY, ContainerKey, ContainerStats, Counters, IFACE_MAP_CAPACITY, IfaceKey,
    IfaceStats, LatencyHist, NETNS_TCP_CAPACITY, NetnsTcp, OnCpu, RUNQ_START_CAPACITY,
};

#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static RUNQ_HIST: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(1, 0);

/// Not an LRU: an LRU would silently evict entries that still hold undrained counts. When full,
/// events go to the `IFACE_OVERFLOW_*` counters instead. Userspace may resize it at load time.
#[map]
pub static IFACES: PerCpuHashMap<IfaceKey, IfaceStats> =
    PerCpuHashMap::with_max_entries(IFACE_MAP_CAPACITY, 0);

/// Wakeup timestamp (ns) of each task waiting on a run queue, keyed by task id. Shared by all
/// CPUs: a task is often woken on one CPU and switched in on another.
#[map]
pub static RUNQ_START: HashMap<u32, u64> = HashMap::with_max_entries(RUNQ_START_CAPACITY, 0);

/// Per-container values (not an LRU, for the same reason as IFACES; full -> CONTAINER_OVERFLOW).
#[map]
pub static CONTAINERS: PerCpuHashMap<ContainerKey, ContainerStats> =
    PerCpuHashMap::with_max_entries(CONTAINER_MAP_CAPACITY, 0);

/// Always-zero value to create CONTAINERS entries from: a 312-byte value would not fit the
/// program's stack next to everything else.
#[map]
pub static ZERO_CONTAINER: PerCpuArray<ContainerStats> = PerCpuArray::with_max_entries(1, 0);

/// The task currently on each CPU: since when, and its container.
#[map]
pub static ONCPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// TCP retransmits and resets per network namespace (joined with containers in userspace).
#[map]
pub static NETNS_TCP: PerCpuHashMap<u32, NetnsTcp> =
    PerCpuHashMap::with_max_entries(NETNS_TCP_CAPACITY, 0);

// Struct member offsets, resolved from the running kernel's BTF by the loader and frozen in
// `.rodata` before the programs load, so the verifier checks every access made with them.
// Read them with `global()`: a plain read would be folded to the initialiser by rustc.
#[unsafe(no_mangle)]
pub static TASK_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_STATE_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static SKB_LEN_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static SKB_DEV_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static DEV_IFINDEX_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static DEV_NAME_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static DEV_ND_NET_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static NET_NS_INUM_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static HAS_NETNS: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_TGID_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_EXIT_CODE_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static KEY_MODE: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_CGROUPS_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static CSS_SET_DFL_CGRP_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static CGROUP_KN_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static KN_ID_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_NSPROXY_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static NSPROXY_MNT_NS_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static MNT_NS_INUM_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static SOCK_NET_OFF: u32 = 0;

#[inline(always)]
pub fn global(value: &'static u32) -> usize {
    // SAFETY: reading an immutable static; volatile so the loader's value is seen.
    unsafe { core::ptr::read_volatile(value) as usize }
}

/// Reads a `T` at `base + off`. On a BTF-typed pointer this is a direct load that the verifier
/// checks against the kernel's type information.
#[inline(always)]
pub unsafe fn field<T: Copy>(base: *const u8, off: usize) -> T {
    unsafe { core::ptr::read_volatile(base.add(off) as *const T) }
}

#[inline(always)]
pub fn atomic_add(slot: *mut u64, value: u64) {
    // SAFETY: `slot` points into a live map value; map values are 8-byte aligned. The result
    // is unused, so LLVM emits the plain BPF atomic add (no BPF_FETCH, works on 5.x kernels).
    // `AtomicU64::fetch_add` is not offered on bpfel (no compare-and-swap), the intrinsic is.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            slot, value,
        );
    }
}

#[inline(always)]
pub fn count(index: usize, value: u64) {
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: index is a constant below `counter::COUNT`.
        atomic_add(unsafe { &raw mut (*counters).values[index] }, value);
    }
}
