//! Every map, its capacity and the load-time globals, in one place.
//!
//! Concurrency: every word of every map has exactly one writing program (the per-CPU record's
//! `SCHED_SWITCH` counter only snt_sched_switch, an interface entry's rx fields only
//! snt_netif_receive_skb, a container's `forks` only snt_sched_process_fork, ...), and a
//! program never runs twice at once on one CPU (the kernel skips a nested run and counts it in
//! the program's `recursion_misses`). A program can still be interrupted by *another* of our
//! programs on the same CPU (a socket send's net_dev_xmit by the softirq's
//! netif_receive_skb), but that one writes other words: a load-add-store of one 8-byte word
//! cannot lose the other's update. So plain adds are safe and used on every hot path; the few
//! words written by two programs (`TCP_RESETS`, the overflow counters, `NetnsTcp::resets`) keep
//! an atomic add. Per-CPU state is only ever written by programs on that CPU, and userspace
//! only reads it (an aligned 8-byte store is seen whole or not at all).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, Queue},
};
use sentinel_common::{
    CONTAINER_MAP_CAPACITY, ContainerKey, ContainerStats, CpuRecord, IFACE_MAP_CAPACITY, IFNAME_LEN,
    IfaceStats, NETNS_TCP_CAPACITY, NetnsTcp, RUNQ_START_CAPACITY,
};

/// Every global counter, the run-queue histogram and the running slice of each CPU.
#[map]
pub static REC: PerCpuArray<CpuRecord> = PerCpuArray::with_max_entries(1, 0);

// Interfaces, in the same design as containers (below): a (netns, ifindex) key
// (`IfaceKey::packed`) gets a slot once; packets count in per-CPU array entries that userspace
// maps into its memory and reads only when marked dirty. Not an LRU: an LRU would silently
// evict slots that still hold undrained counts. When every slot is taken, packets go to the
// `IFACE_OVERFLOW_*` counters instead. The loader sizes every map from the capacity.

/// Interface key -> slot.
#[map]
pub static IFACE_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(IFACE_MAP_CAPACITY, 0);

/// Free interface slots; filled with every slot by the loader before the programs attach.
#[map]
pub static IFACE_FREE: Queue<u32> = Queue::with_max_entries(IFACE_MAP_CAPACITY, 0);

/// Key of each interface slot.
#[map]
pub static IFACE_KEYS: Array<u64> = Array::with_max_entries(IFACE_MAP_CAPACITY, BPF_F_MMAPABLE);

/// Device name of each interface slot, copied once, when the slot is taken, before the key can
/// find it: userspace names interfaces of any namespace without asking the kernel.
#[map]
pub static IFACE_NAMES: Array<[u8; IFNAME_LEN]> =
    Array::with_max_entries(IFACE_MAP_CAPACITY, BPF_F_MMAPABLE);

/// Counters of each (CPU, interface slot): entry `iface_slot_base + slot`.
#[map]
pub static IFACE_STATS: Array<IfaceStats> =
    Array::with_max_entries(IFACE_MAP_CAPACITY, BPF_F_MMAPABLE);

/// Dirty bits of `IFACE_STATS`, as `CONTAINER_DIRTY`'s.
#[map]
pub static IFACE_DIRTY: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `hash` run-queue source only: wakeup timestamp (ns) of each task waiting on a run queue,
/// keyed by task id, shared by all CPUs (a task is often woken on one CPU and switched in on
/// another). Unused, and never touched, with the `sched_info` source.
#[map]
pub static RUNQ_START: HashMap<u32, u64> = HashMap::with_max_entries(RUNQ_START_CAPACITY, 0);

// Containers. A container key (mount namespace inode or cgroup id) gets a slot once, from
// `CONTAINER_FREE`; its counters live in plain arrays indexed by slot, one region per CPU
// (`CpuRecord::slot_base`), which userspace maps into its memory: a drain reads only the slots
// the dirty bitmap marks, with no system call. Userspace retires the slot of a gone container
// (after draining it) and pushes it back on the free queue.

/// Container key -> slot. Written by the programs (first event of a container) and userspace
/// (retiring a slot); read on a container's first event on a CPU after another container's.
#[map]
pub static CONTAINER_SLOTS: HashMap<ContainerKey, u32> =
    HashMap::with_max_entries(CONTAINER_MAP_CAPACITY, 0);

/// Free slots; filled with every slot by the loader before the programs attach.
#[map]
pub static CONTAINER_FREE: Queue<u32> = Queue::with_max_entries(CONTAINER_MAP_CAPACITY, 0);

/// Key of each slot, written by the program that takes the slot before anyone can use it.
#[map]
pub static CONTAINER_KEYS: Array<ContainerKey> =
    Array::with_max_entries(CONTAINER_MAP_CAPACITY, BPF_F_MMAPABLE);

/// Counters of each (CPU, slot): entry `slot_base + slot`. The loader sizes it to
/// possible CPUs x capacity.
#[map]
pub static CONTAINER_STATS: Array<ContainerStats> =
    Array::with_max_entries(CONTAINER_MAP_CAPACITY, BPF_F_MMAPABLE);

/// One bit per (CPU, slot), set after each update of that entry; userspace swaps each word
/// with 0 and reads the entries whose bit was set. The loader sizes it to possible CPUs x
/// `dirty_words(capacity)`.
#[map]
pub static CONTAINER_DIRTY: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

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
#[unsafe(no_mangle)]
pub static TASK_LAST_QUEUED_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_CFS_RQ_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static CFS_RQ_RQ_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static RQ_CLOCK_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static RQ_CLOCK_TASK_OFF: u32 = 0;
#[unsafe(no_mangle)]
pub static RUNQ_SOURCE: u32 = 0;

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

/// For the few words with two writing programs (see the module comment).
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

/// A plain add to a word only one program writes (see the module comment).
#[inline(always)]
pub fn add(slot: *mut u64, value: u64) {
    // SAFETY: `slot` points into a live map value; volatile so the add is not merged away.
    unsafe { core::ptr::write_volatile(slot, core::ptr::read_volatile(slot) + value) }
}

/// This CPU's record.
#[inline(always)]
pub fn record() -> Option<*mut CpuRecord> {
    REC.get_ptr_mut(0)
}

/// Adds to a counter that only the calling program writes.
#[inline(always)]
pub fn count(index: usize, value: u64) {
    if let Some(rec) = record() {
        // SAFETY: index is a constant below `counter::COUNT`.
        add(unsafe { &raw mut (*rec).counters[index] }, value);
    }
}

/// Adds to a counter that two programs write (the overflow and reset counters).
#[inline(always)]
pub fn count_shared(index: usize, value: u64) {
    if let Some(rec) = record() {
        // SAFETY: index is a constant below `counter::COUNT`.
        atomic_add(unsafe { &raw mut (*rec).counters[index] }, value);
    }
}
