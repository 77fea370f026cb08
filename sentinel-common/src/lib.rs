//! Types that cross the kernel/user boundary: map keys, map values, the histogram layout
//! and the names of the load-time globals. No logic beyond pure index arithmetic that both
//! sides must agree on, and nothing that needs `std`.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Indices into [`Counters::values`]. The kernel side only ever adds to these slots; userspace
/// turns the cumulative per-CPU values into per-interval deltas.
pub mod counter {
    pub const SCHED_SWITCH: usize = 0;
    pub const SCHED_WAKEUP: usize = 1;
    pub const SCHED_WAKEUP_NEW: usize = 2;
    pub const PROCESS_FORK: usize = 3;
    pub const PROCESS_EXEC: usize = 4;
    pub const PROCESS_EXIT: usize = 5;
    pub const OOM_KILLS: usize = 6;
    pub const NET_TX_PACKETS: usize = 7;
    pub const NET_TX_BYTES: usize = 8;
    pub const NET_RX_PACKETS: usize = 9;
    pub const NET_RX_BYTES: usize = 10;
    pub const TCP_RETRANSMITS: usize = 11;
    pub const TCP_CONN_OPENED: usize = 12;
    pub const TCP_CONN_CLOSED: usize = 13;
    pub const TCP_CONN_FAILED: usize = 14;
    pub const SKB_DROPS: usize = 15;
    /// Network events that found the per-interface map full: they are in the global
    /// counters but in no interface entry, so `global = sum(interfaces) + overflow` exactly.
    pub const IFACE_OVERFLOW_TX_PACKETS: usize = 16;
    pub const IFACE_OVERFLOW_TX_BYTES: usize = 17;
    pub const IFACE_OVERFLOW_RX_PACKETS: usize = 18;
    pub const IFACE_OVERFLOW_RX_BYTES: usize = 19;
    /// Wakeups whose timestamp could not be stored because the run-queue start map was full:
    /// their latency is missing from the histogram (never guessed).
    pub const RUNQ_START_OVERFLOW: usize = 20;
    /// TCP resets sent or received (tcp_send_reset, tcp_receive_reset).
    pub const TCP_RESETS: usize = 21;
    /// Events that found the per-container map full (still in the global counters).
    pub const CONTAINER_OVERFLOW: usize = 22;
    /// TCP events that found the per-netns TCP map full.
    pub const NETNS_TCP_OVERFLOW: usize = 23;
    pub const COUNT: usize = 24;

    /// Names in index order; the first 16 are the public JSON counter names.
    pub const NAMES: [&str; COUNT] = [
        "sched_switch",
        "sched_wakeup",
        "sched_wakeup_new",
        "process_fork",
        "process_exec",
        "process_exit",
        "oom_kills",
        "net_tx_packets",
        "net_tx_bytes",
        "net_rx_packets",
        "net_rx_bytes",
        "tcp_retransmits",
        "tcp_conn_opened",
        "tcp_conn_closed",
        "tcp_conn_failed",
        "skb_drops",
        "iface_overflow_tx_packets",
        "iface_overflow_tx_bytes",
        "iface_overflow_rx_packets",
        "iface_overflow_rx_bytes",
        "runq_start_overflow",
        "tcp_resets",
        "container_overflow",
        "netns_tcp_overflow",
    ];
}

/// The signal registry: every kernel hook and every global counter, with what the rest of the
/// project derives from them (the loader's hook list, the public JSON counters, the overflow
/// counters surfaced per map, the bench's floor programs). Adding a global counter is an index in
/// `counter`, a row in `COUNTERS` and the add in its program; adding a hook is a row in `HOOKS`
/// and its program.
pub mod registry {
    use super::counter::*;

    /// How a global counter reaches users.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        /// In the interval's `counters` and `/metrics` (`null` when its hook is detached).
        Public,
        /// Events that found a bounded map full: counted, never lost silently; surfaced per map.
        Overflow { map: &'static str },
        /// A byte count that goes with an overflow counter (kept for exact totals).
        OverflowBytes,
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Counter {
        pub index: usize,
        pub kind: Kind,
        /// The program that counts it (`None`: derived in userspace from other counters).
        pub program: Option<&'static str>,
    }

    const fn c(index: usize, kind: Kind, program: Option<&'static str>) -> Counter {
        Counter {
            index,
            kind,
            program,
        }
    }

    const P: Kind = Kind::Public;

    /// Every counter of `counter::NAMES`, in index order.
    pub const COUNTERS: [Counter; COUNT] = [
        c(SCHED_SWITCH, P, Some("snt_sched_switch")),
        c(SCHED_WAKEUP, P, Some("snt_sched_wakeup")),
        c(SCHED_WAKEUP_NEW, P, Some("snt_sched_wakeup_new")),
        c(PROCESS_FORK, P, Some("snt_sched_process_fork")),
        c(PROCESS_EXEC, P, Some("snt_sched_process_exec")),
        c(PROCESS_EXIT, P, Some("snt_sched_process_exit")),
        c(OOM_KILLS, P, Some("snt_oom_mark_victim")),
        // The host-wide packet and byte counts are the interfaces' sums plus overflow.
        c(NET_TX_PACKETS, P, Some("snt_net_dev_xmit")),
        c(NET_TX_BYTES, P, Some("snt_net_dev_xmit")),
        c(NET_RX_PACKETS, P, Some("snt_netif_receive_skb")),
        c(NET_RX_BYTES, P, Some("snt_netif_receive_skb")),
        c(TCP_RETRANSMITS, P, Some("snt_tcp_retransmit_skb")),
        c(TCP_CONN_OPENED, P, Some("snt_inet_sock_set_state")),
        c(TCP_CONN_CLOSED, P, Some("snt_inet_sock_set_state")),
        c(TCP_CONN_FAILED, P, Some("snt_inet_sock_set_state")),
        c(SKB_DROPS, P, Some("snt_kfree_skb")),
        c(
            IFACE_OVERFLOW_TX_PACKETS,
            Kind::Overflow { map: "ifaces" },
            Some("snt_net_dev_xmit"),
        ),
        c(
            IFACE_OVERFLOW_TX_BYTES,
            Kind::OverflowBytes,
            Some("snt_net_dev_xmit"),
        ),
        c(
            IFACE_OVERFLOW_RX_PACKETS,
            Kind::Overflow { map: "ifaces" },
            Some("snt_netif_receive_skb"),
        ),
        c(
            IFACE_OVERFLOW_RX_BYTES,
            Kind::OverflowBytes,
            Some("snt_netif_receive_skb"),
        ),
        c(
            RUNQ_START_OVERFLOW,
            Kind::Overflow { map: "runq_start" },
            Some("snt_sched_switch"),
        ),
        c(TCP_RESETS, P, Some("snt_tcp_send_reset")),
        c(
            CONTAINER_OVERFLOW,
            Kind::Overflow { map: "containers" },
            None,
        ),
        c(
            NETNS_TCP_OVERFLOW,
            Kind::Overflow { map: "netns_tcp" },
            None,
        ),
    ];

    const fn count_public() -> usize {
        let (mut i, mut n) = (0, 0);
        while i < COUNT {
            if matches!(COUNTERS[i].kind, Kind::Public) {
                n += 1;
            }
            i += 1;
        }
        n
    }

    /// How many counters are public.
    pub const PUBLIC_COUNT: usize = count_public();

    /// The public counters in index order (the JSON `counters` object).
    pub const PUBLIC: [usize; PUBLIC_COUNT] = {
        let mut out = [0; PUBLIC_COUNT];
        let (mut i, mut n) = (0, 0);
        while i < COUNT {
            if matches!(COUNTERS[i].kind, Kind::Public) {
                out[n] = i;
                n += 1;
            }
            i += 1;
        }
        out
    };

    /// The maps whose overflow is counted, each once, in registry order.
    pub const OVERFLOW_MAPS: [&str; 4] = ["ifaces", "runq_start", "containers", "netns_tcp"];

    /// One kernel hook: its program and tracepoint, and the bench's floor programs on it.
    #[derive(Clone, Copy, Debug)]
    pub struct Hook {
        /// Program (function) name in the object; also its name in `bpftool prog`.
        pub program: &'static str,
        /// Tracepoint category and name, as under tracefs `events/`.
        pub category: &'static str,
        pub tracepoint: &'static str,
        /// The bench's floor program on the same hook (one per-CPU add), if any.
        pub floor: Option<&'static str>,
        /// The floor plus the one lookup the hook's signal needs, if it needs one (the interface's
        /// entry on the network hooks, the task's container on exec and exit).
        pub floor_lookup: Option<&'static str>,
        /// Counters that are meaningless (reported as null) when this hook is not attached,
        /// beyond those whose `program` it is (a second program counting the same thing).
        pub also: &'static [usize],
    }

    const fn h(
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        floor: Option<&'static str>,
    ) -> Hook {
        Hook {
            program,
            category,
            tracepoint,
            floor,
            floor_lookup: None,
            also: &[],
        }
    }

    /// Every hook, in the order the daemon attaches them.
    pub const HOOKS: [Hook; 14] = [
        h(
            "snt_sched_switch",
            "sched",
            "sched_switch",
            Some("snt_floor_sw"),
        ),
        h(
            "snt_sched_wakeup",
            "sched",
            "sched_wakeup",
            Some("snt_floor_wk"),
        ),
        h(
            "snt_sched_wakeup_new",
            "sched",
            "sched_wakeup_new",
            Some("snt_floor_wkn"),
        ),
        h(
            "snt_sched_process_fork",
            "sched",
            "sched_process_fork",
            Some("snt_floor_fork"),
        ),
        Hook {
            floor_lookup: Some("snt_floor_execkey"),
            ..h(
                "snt_sched_process_exec",
                "sched",
                "sched_process_exec",
                Some("snt_floor_exec"),
            )
        },
        Hook {
            floor_lookup: Some("snt_floor_exitkey"),
            ..h(
                "snt_sched_process_exit",
                "sched",
                "sched_process_exit",
                Some("snt_floor_exit"),
            )
        },
        h("snt_oom_mark_victim", "oom", "mark_victim", None),
        Hook {
            floor_lookup: Some("snt_floor_xmitif"),
            ..h(
                "snt_net_dev_xmit",
                "net",
                "net_dev_xmit",
                Some("snt_floor_xmit"),
            )
        },
        Hook {
            floor_lookup: Some("snt_floor_recvif"),
            ..h(
                "snt_netif_receive_skb",
                "net",
                "netif_receive_skb",
                Some("snt_floor_recv"),
            )
        },
        h("snt_tcp_retransmit_skb", "tcp", "tcp_retransmit_skb", None),
        h(
            "snt_inet_sock_set_state",
            "sock",
            "inet_sock_set_state",
            None,
        ),
        h("snt_kfree_skb", "skb", "kfree_skb", Some("snt_floor_kfree")),
        h("snt_tcp_send_reset", "tcp", "tcp_send_reset", None),
        Hook {
            also: &[TCP_RESETS],
            ..h("snt_tcp_receive_reset", "tcp", "tcp_receive_reset", None)
        },
    ];

    impl Hook {
        /// The counters this hook feeds: meaningless when it is detached.
        pub fn counters(&self) -> impl Iterator<Item = usize> + '_ {
            COUNTERS
                .iter()
                .filter(move |c| c.program == Some(self.program))
                .map(|c| c.index)
                .chain(self.also.iter().copied())
        }
    }
}

/// The per-CPU record (`REC`, a one-slot per-CPU array): every global counter, the run-queue
/// histogram and its exact sum, and the state of the slice running on the CPU. One lookup per
/// event finds all of it. Every word has exactly one writing program (see sentinel-ebpf's
/// maps.rs for why that makes plain adds safe).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CpuRecord {
    pub counters: [u64; counter::COUNT],
    pub runq_hist: [u64; HIST_BUCKETS],
    /// Sum of every wait in `runq_hist`, in ns: exact, not estimated from the buckets.
    pub runq_wait_ns: u64,
    /// Start of the slice running on this CPU, in the CPU-time clock (0: none yet): the run
    /// queue's `clock_task` with the `sched_info` source, `bpf_ktime_get_ns` with `hash`.
    pub since: u64,
    /// Container slot of the running task; `NO_SLOT` for the idle task.
    pub cur_slot: u32,
    /// `cpu * container capacity`: this CPU's first entry in `CONTAINER_STATS` (set by the
    /// loader before the programs attach).
    pub slot_base: u32,
    /// Last non-idle container seen on this CPU and its slot: the next event of the same
    /// container (a fork, the next switch) needs no key-to-slot lookup.
    pub last_key: ContainerKey,
    pub last_slot: u32,
    /// `cpu * DIRTY words per CPU`: this CPU's first word in `CONTAINER_DIRTY`.
    pub dirty_base: u32,
    /// `bpf_ktime_get_ns() - clock` on this CPU (wrapping; 0 when the clock is ktime itself),
    /// refreshed about once a second by sched_switch: userspace turns CLOCK_MONOTONIC into
    /// this CPU's clock with it, to credit the slice still running at a drain.
    pub ktime_minus_clock: u64,
    /// When `ktime_minus_clock` was last refreshed, in the clock (kernel bookkeeping).
    pub calib_clock: u64,
    /// Last interface seen on this CPU (`IfaceKey::packed`) and its slot: the next packet of
    /// the same interface needs no key-to-slot lookup (trusted only while `IFACE_KEYS` still
    /// names the key there, see sentinel-ebpf's net.rs). Never `NO_SLOT` once set: a packet
    /// that found the table full is not cached, so it tries again.
    pub iface_last_key: u64,
    pub iface_last_slot: u32,
    /// `cpu * interface capacity`: this CPU's first entry in `IFACE_STATS`.
    pub iface_slot_base: u32,
    /// This CPU's first word of each of its two bitmaps in `IFACE_DIRTY`: one per direction,
    /// so each word has one writing program (netif_receive_skb or net_dev_xmit; the kernel
    /// has no atomic OR before 5.12).
    pub iface_rx_dirty_base: u32,
    pub iface_tx_dirty_base: u32,
}

/// `CpuRecord::cur_slot` / `last_slot` when there is no container slot (idle task, none yet,
/// or the container table was full).
pub const NO_SLOT: u32 = u32::MAX;

/// One process in the roster's task iterator (`snt_iter_task`): a thread-group leader's TGID
/// (in the initial PID namespace) and its container key (0: could not be resolved, e.g. a
/// process past `exit_task_namespaces`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TaskEntry {
    pub key: ContainerKey,
    pub tgid: u32,
    pub _pad: u32,
}

/// An interface: one slot per (network namespace, interface), like a container's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct IfaceKey {
    /// Inode number of the network namespace (as in `readlink /proc/PID/ns/net`).
    pub netns: u32,
    pub ifindex: u32,
}

impl IfaceKey {
    /// The key as stored in `IFACE_SLOTS` and `IFACE_KEYS`: one u64, so interfaces and
    /// containers share the slot machinery. Never 0 for a real device (ifindex starts at 1),
    /// which makes 0 the "no interface yet" value of a CPU's cache.
    #[inline(always)]
    pub const fn packed(self) -> u64 {
        ((self.netns as u64) << 32) | self.ifindex as u64
    }

    pub const fn unpack(v: u64) -> Self {
        Self {
            netns: (v >> 32) as u32,
            ifindex: v as u32,
        }
    }
}

/// One interface's counters on one CPU: entry `iface_slot_base + slot` of `IFACE_STATS`. The
/// rx fields are written only by netif_receive_skb, the tx fields only by net_dev_xmit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct IfaceStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Number of u64 fields of `IfaceStats`.
pub const IFACE_FIELDS: usize = 4;

pub const IFNAME_LEN: usize = 16;

/// Default capacity of the interface slot table; `sentinel run --iface-capacity` overrides.
pub const IFACE_MAP_CAPACITY: u32 = 4096;
/// Capacity of the wakeup-timestamp hash (one entry per task waiting on a run queue), used only
/// by the `hash` run-queue source.
pub const RUNQ_START_CAPACITY: u32 = 32768;

/// Where the run-queue wait of a task switching in comes from (global `RUNQ_SOURCE`).
pub mod runq_source {
    /// The kernel's own `task_struct.sched_info.last_queued` (set at enqueue, in the run
    /// queue's clock), against that run queue's clock: no map operation on the hot path.
    pub const SCHED_INFO: u32 = 0;
    /// A wakeup timestamp (`bpf_ktime_get_ns`) in a hash shared by all CPUs, written by the
    /// wakeup programs and taken by sched_switch: works on any kernel, costs two hash
    /// operations per wait.
    pub const HASH: u32 = 1;
}

/// Run-queue latency histogram: log2 buckets of nanoseconds, each split in 4 linear
/// sub-buckets (25% resolution). Bucket `i < 4` holds the value `i`; for `i >= 8` the
/// bucket is `msb * 4 + next_two_bits`. Indices 4..8 are never used.
pub const HIST_SUB_BITS: u32 = 2;
pub const HIST_BUCKETS: usize = 256;

/// Histogram bucket of a latency in nanoseconds. Branch-free floor(log2) so the kernel side
/// and this crate's tests use the very same arithmetic.
#[inline(always)]
pub fn hist_bucket(v: u64) -> usize {
    hist_bucket_of_log2(v, log2_floor(v))
}

/// `[low, high)` nanosecond range of a bucket, for userspace.
pub fn hist_bucket_range(idx: usize) -> (u64, u64) {
    if idx < 4 {
        return (idx as u64, idx as u64 + 1);
    }
    let msb = (idx / 4) as u32;
    let sub = (idx % 4) as u64;
    let step = 1u64 << (msb - HIST_SUB_BITS);
    let low = (4 + sub) * step;
    (low, low.saturating_add(step))
}

#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r: u32 = ((v > 0xFFFF_FFFF) as u32) << 5;
    v >>= r;
    let mut shift = ((v > 0xFFFF) as u32) << 4;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xFF) as u32) << 3;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xF) as u32) << 2;
    v >>= shift;
    r |= shift;
    shift = ((v > 0x3) as u32) << 1;
    v >>= shift;
    r |= shift;
    r | (v >> 1) as u32
}

/// Key of a container: a cgroup v2 id (`KEY_MODE_CGROUP`) or a mount namespace
/// inode (`KEY_MODE_MNTNS`), chosen by the loader from the host's cgroup layout.
pub type ContainerKey = u64;
pub const KEY_MODE_CGROUP: u32 = 0;
pub const KEY_MODE_MNTNS: u32 = 1;
/// Key recorded for the idle task, whose CPU time belongs to no one.
pub const IDLE_KEY: ContainerKey = u64::MAX;

pub const CONTAINER_MAP_CAPACITY: u32 = 1024;
pub const NETNS_TCP_CAPACITY: u32 = 1024;
/// Per-container run-queue histogram: plain log2 buckets of nanoseconds (2x resolution, a
/// quarter of the global histogram's size per entry); the last bucket holds everything above.
pub const CONTAINER_HIST_BUCKETS: usize = 32;

/// One container's counters on one CPU: entry `slot_base + slot` of `CONTAINER_STATS`.
/// Field order is the drain's order. Userspace carries it whole, as deltas, in its container
/// record: with the `serde` feature its scalars are that record's JSON fields (names as
/// renamed here), the run-queue fields are summarized there instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct ContainerStats {
    pub cpu_ns: u64,
    #[cfg_attr(feature = "serde", serde(rename = "ctx_switches"))]
    pub switches: u64,
    /// New processes (threads are not counted here).
    pub forks: u64,
    pub execs: u64,
    /// Processes that exited, and those with a non-zero exit code or killed by a signal.
    pub exits: u64,
    pub abnormal_exits: u64,
    pub oom_kills: u64,
    /// Sum of the waits in `runq_hist`, in ns (exact).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub runq_wait_ns: u64,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub runq_hist: [u64; CONTAINER_HIST_BUCKETS],
}

/// Number of u64 fields of `ContainerStats` before `runq_hist`.
pub const CONTAINER_SCALARS: usize = 8;
/// Number of u64 fields of `ContainerStats`.
pub const CONTAINER_FIELDS: usize = CONTAINER_SCALARS + CONTAINER_HIST_BUCKETS;
/// Bits per word of the `CONTAINER_DIRTY` bitmap.
pub const DIRTY_BITS: u32 = 64;

/// Words of the dirty bitmap per CPU for a container capacity.
pub const fn dirty_words(capacity: u32) -> u32 {
    capacity.div_ceil(DIRTY_BITS)
}

/// Value of the per-CPU `NETNS_TCP` hash, keyed by network namespace inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct NetnsTcp {
    pub retransmits: u64,
    pub resets: u64,
}

#[inline(always)]
pub fn container_hist_bucket(ns: u64) -> usize {
    container_bucket_of_log2(log2_floor(ns | 1))
}

/// The per-container bucket from `log2_floor(ns | 1)`, so a program that needs both buckets
/// computes the logarithm once.
#[inline(always)]
pub fn container_bucket_of_log2(msb: u32) -> usize {
    let b = msb as usize;
    if b < CONTAINER_HIST_BUCKETS {
        b
    } else {
        CONTAINER_HIST_BUCKETS - 1
    }
}

/// The global histogram's bucket from `v` and `log2_floor(v)` (see `hist_bucket`);
/// `log2_floor(v | 1)` gives the same bucket, so one logarithm serves both histograms.
#[inline(always)]
pub fn hist_bucket_of_log2(v: u64, msb: u32) -> usize {
    if v < 4 {
        return v as usize;
    }
    let sub = (v >> (msb - HIST_SUB_BITS)) & 3;
    (msb * 4 + sub as u32) as usize
}

/// Names of the read-only globals the loader sets before loading (struct member offsets
/// resolved from the running kernel's BTF). Each is a `u32` in the object's `.rodata`.
pub mod global {
    pub const TASK_PID: &str = "TASK_PID_OFF";
    pub const TASK_STATE: &str = "TASK_STATE_OFF";
    pub const SKB_LEN: &str = "SKB_LEN_OFF";
    pub const SKB_DEV: &str = "SKB_DEV_OFF";
    pub const DEV_IFINDEX: &str = "DEV_IFINDEX_OFF";
    pub const DEV_NAME: &str = "DEV_NAME_OFF";
    pub const DEV_ND_NET: &str = "DEV_ND_NET_OFF";
    pub const NET_NS_INUM: &str = "NET_NS_INUM_OFF";
    /// 1 when the kernel has network namespaces (`net_device.nd_net` exists); 0 means all
    /// interfaces are reported in namespace 0.
    pub const HAS_NETNS: &str = "HAS_NETNS";
    pub const TASK_TGID: &str = "TASK_TGID_OFF";
    pub const TASK_EXIT_CODE: &str = "TASK_EXIT_CODE_OFF";
    pub const KEY_MODE: &str = "KEY_MODE";
    pub const TASK_CGROUPS: &str = "TASK_CGROUPS_OFF";
    pub const CSS_SET_DFL_CGRP: &str = "CSS_SET_DFL_CGRP_OFF";
    pub const CGROUP_KN: &str = "CGROUP_KN_OFF";
    pub const KERNFS_NODE_ID: &str = "KN_ID_OFF";
    pub const TASK_NSPROXY: &str = "TASK_NSPROXY_OFF";
    pub const NSPROXY_MNT_NS: &str = "NSPROXY_MNT_NS_OFF";
    pub const MNT_NS_INUM: &str = "MNT_NS_INUM_OFF";
    /// `sock.__sk_common.skc_net.net`.
    pub const SOCK_NET: &str = "SOCK_NET_OFF";
    /// `task_struct.sched_info.last_queued`.
    pub const TASK_LAST_QUEUED: &str = "TASK_LAST_QUEUED_OFF";
    /// `task_struct.se.cfs_rq`, `cfs_rq.rq`, `rq.clock`: the run queue's clock of a task's CPU.
    pub const TASK_CFS_RQ: &str = "TASK_CFS_RQ_OFF";
    pub const CFS_RQ_RQ: &str = "CFS_RQ_RQ_OFF";
    pub const RQ_CLOCK: &str = "RQ_CLOCK_OFF";
    /// `rq.clock_task`: the run queue's clock less steal (and IRQ) time, the clock the kernel
    /// charges a task's CPU time in (`se.sum_exec_runtime`, cgroup `cpu.stat`).
    pub const RQ_CLOCK_TASK: &str = "RQ_CLOCK_TASK_OFF";
    /// One of `runq_source::*`.
    pub const RUNQ_SOURCE: &str = "RUNQ_SOURCE";
}

/// TCP states as in include/net/tcp_states.h (stable ABI, exported to userspace).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
}

#[cfg(feature = "user")]
mod user_pod {
    use super::*;
    // SAFETY: each type is `#[repr(C)]` and derives `bytemuck::Pod`, which refuses padding
    // and non-plain fields: any byte pattern the kernel writes is a valid value.
    unsafe impl aya::Pod for CpuRecord {}
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for IfaceStats {}
    unsafe impl aya::Pod for ContainerStats {}
    unsafe impl aya::Pod for NetnsTcp {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for shift in 0..64 {
            for delta in [0u64, 1, 3] {
                let v = (1u64 << shift).saturating_add(delta);
                assert_eq!(log2_floor(v), 63 - v.leading_zeros(), "v={v}");
            }
        }
        assert_eq!(log2_floor(u64::MAX), 63);
    }

    #[test]
    fn every_value_lands_in_the_range_of_its_bucket() {
        let mut v = 0u64;
        while v < (1 << 40) {
            let idx = hist_bucket(v);
            assert!(idx < HIST_BUCKETS);
            let (low, high) = hist_bucket_range(idx);
            assert!(low <= v && v < high, "v={v} idx={idx} range=[{low},{high})");
            v = v * 5 / 4 + 1;
        }
        let idx = hist_bucket(u64::MAX);
        assert_eq!(idx, HIST_BUCKETS - 1);
    }

    #[test]
    fn container_buckets_are_log2_and_capped() {
        assert_eq!(container_hist_bucket(0), 0);
        assert_eq!(container_hist_bucket(1), 0);
        assert_eq!(container_hist_bucket(1024), 10);
        assert_eq!(container_hist_bucket(2047), 10);
        assert_eq!(container_hist_bucket(u64::MAX), CONTAINER_HIST_BUCKETS - 1);
        assert_eq!(
            core::mem::size_of::<ContainerStats>(),
            8 * (CONTAINER_SCALARS + CONTAINER_HIST_BUCKETS)
        );
        for v in [0u64, 1, 2, 3, 4, 5, 1000, 1 << 20, u64::MAX] {
            let msb = log2_floor(v | 1);
            assert_eq!(container_bucket_of_log2(msb), container_hist_bucket(v));
        }
        assert_eq!(dirty_words(1), 1);
        assert_eq!(dirty_words(64), 1);
        assert_eq!(dirty_words(65), 2);
    }

    #[test]
    fn the_registry_covers_every_counter_and_hook_once() {
        for (i, c) in registry::COUNTERS.iter().enumerate() {
            assert_eq!(c.index, i, "COUNTERS is in index order");
            if let Some(p) = c.program {
                assert!(
                    registry::HOOKS.iter().any(|h| h.program == p),
                    "{p} is a hook"
                );
            }
            if let registry::Kind::Overflow { map } = c.kind {
                assert!(registry::OVERFLOW_MAPS.contains(&map));
            }
        }
        for map in registry::OVERFLOW_MAPS {
            assert!(
                registry::COUNTERS
                    .iter()
                    .any(|c| c.kind == (registry::Kind::Overflow { map })),
                "{map} has an overflow counter"
            );
        }
        assert_eq!(registry::PUBLIC.len(), 17);
        assert!(
            registry::PUBLIC
                .iter()
                .all(|&i| registry::COUNTERS[i].kind == registry::Kind::Public)
        );
        let resets: usize = registry::HOOKS
            .iter()
            .filter(|h| h.counters().any(|i| i == counter::TCP_RESETS))
            .count();
        assert_eq!(resets, 2, "either reset hook missing nulls tcp_resets");
    }

    #[test]
    fn names_cover_every_counter() {
        assert_eq!(counter::NAMES.len(), counter::COUNT);
        assert_eq!(counter::NAMES[counter::SKB_DROPS], "skb_drops");
        assert_eq!(
            counter::NAMES[counter::RUNQ_START_OVERFLOW],
            "runq_start_overflow"
        );
    }
}
