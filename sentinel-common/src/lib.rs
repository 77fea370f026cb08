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
    pub const COUNT: usize = 21;

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
    ];
}

/// Value of the single-slot per-CPU `COUNTERS` array. One slot for all counters so that a drain
/// reads every counter of every CPU in one system call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Counters {
    pub values: [u64; counter::COUNT],
}

/// Key of the per-CPU `IFACES` hash: one entry per (network namespace, interface).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct IfaceKey {
    /// Inode number of the network namespace (as in `readlink /proc/PID/ns/net`).
    pub netns: u32,
    pub ifindex: u32,
}

/// Value of the per-CPU `IFACES` hash. `name` is copied from the device once, when the entry is
/// created on a CPU (the slow path), so userspace can name interfaces of any namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct IfaceStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub name: [u8; IFNAME_LEN],
}

pub const IFNAME_LEN: usize = 16;

/// Default capacity of the per-(netns, interface) hash; `sentinel run --iface-capacity` overrides.
pub const IFACE_MAP_CAPACITY: u32 = 4096;
/// Capacity of the wakeup-timestamp hash (one entry per task waiting on a run queue).
pub const RUNQ_START_CAPACITY: u32 = 32768;

/// Run-queue latency histogram: log2 buckets of nanoseconds, each split in 4 linear
/// sub-buckets (25% resolution). Bucket `i < 4` holds the value `i`; for `i >= 8` the
/// bucket is `msb * 4 + next_two_bits`. Indices 4..8 are never used.
pub const HIST_SUB_BITS: u32 = 2;
pub const HIST_BUCKETS: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LatencyHist {
    pub buckets: [u64; HIST_BUCKETS],
}

/// Histogram bucket of a latency in nanoseconds. Branch-free floor(log2) so the kernel side
/// and this crate's tests use the very same arithmetic.
#[inline(always)]
pub fn hist_bucket(v: u64) -> usize {
    if v < 4 {
        return v as usize;
    }
    let msb = log2_floor(v);
    let sub = (v >> (msb - HIST_SUB_BITS)) & 3;
    (msb * 4 + sub as u32) as usize
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
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for IfaceStats {}
    unsafe impl aya::Pod for LatencyHist {}
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
    fn names_cover_every_counter() {
        assert_eq!(counter::NAMES.len(), counter::COUNT);
        assert_eq!(counter::NAMES[counter::SKB_DROPS], "skb_drops");
        assert_eq!(
            counter::NAMES[counter::RUNQ_START_OVERFLOW],
            "runq_start_overflow"
        );
    }
}
