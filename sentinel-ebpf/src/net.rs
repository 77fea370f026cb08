//! Network hooks: packets and bytes per direction per (netns, interface), TCP retransmits and
//! connection state changes, dropped packets. The host-wide packet and byte counters are not
//! counted here: userspace derives them as the sum over interfaces plus the overflow counters,
//! which is exact by construction and spares every packet a second add.
//!
//! Raw tracepoint arguments (include/trace/events/{net,tcp,sock,skb}.h, 6.1/6.12/6.18):
//! net_dev_xmit(skb, rc, dev, skb_len); netif_receive_skb(skb); tcp_retransmit_skb(sk, skb, ...);
//! inet_sock_set_state(sk, oldstate, newstate); kfree_skb(skb, location, reason, ...).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    macros::btf_tracepoint,
    maps::{Array, HashMap, Queue},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use sentinel_common::{CpuRecord, IfaceKey, IfaceStats, NO_SLOT, NetnsTcp, counter, tcp_state};

use crate::{
    maps::{
        DEV_IFINDEX_OFF, DEV_NAME_OFF, DEV_ND_NET_OFF, HAS_NETNS, IFACE_DIRTY, IFACE_FREE,
        IFACE_KEYS, IFACE_NAMES, IFACE_SLOTS, IFACE_STATS, NET_NS_INUM_OFF, NETNS_TCP, SKB_DEV_OFF,
        SKB_LEN_OFF, SOCK_NET_OFF, add, atomic_add, count, count_shared, field, global, record,
    },
    slots,
};

/// Adds one packet of `len` bytes to the device's (netns, ifindex) slot, taking a slot on the
/// interface's first packet; when every slot is taken the packet goes to the overflow counters
/// instead, so the sum over interfaces plus overflow is every packet. The rx fields (and rx
/// dirty bits) are written only by netif_receive_skb, the tx ones only by net_dev_xmit: plain
/// adds (see maps.rs).
#[inline(always)]
fn account_iface<C: EbpfContext>(ctx: &C, dev: *const u8, len: u64, rx: bool) {
    let Some(rec) = record() else {
        return;
    };
    let ifindex: u32 = unsafe { field(dev, global(&DEV_IFINDEX_OFF)) };
    let mut netns = 0u32;
    if global(&HAS_NETNS) != 0 {
        let net: *const u8 = unsafe { field(dev, global(&DEV_ND_NET_OFF)) };
        if !net.is_null() {
            netns = unsafe { field(net, global(&NET_NS_INUM_OFF)) };
        }
    }
    let key = IfaceKey { netns, ifindex }.packed();
    let slot = iface_slot(rec, key, rx, |slot| {
        // Once per interface: the device name for userspace.
        if let Some(name) = IFACE_NAMES.get_ptr_mut(slot) {
            unsafe { *name = field(dev, global(&DEV_NAME_OFF)) };
        }
    });
    let dirty_base = unsafe {
        if rx {
            (*rec).iface_rx_dirty_base
        } else {
            (*rec).iface_tx_dirty_base
        }
    };
    let Some(stats) = slots::stats::<Ifaces>(unsafe { (*rec).iface_slot_base }, slot) else {
        overflow(rx, len);
        // Logged at the 1st, 2nd, 4th, 8th ... overflow on this CPU, so a full table is
        // visible in the logs without flooding them.
        let n = overflowed_on_this_cpu();
        if n & n.wrapping_sub(1) == 0 {
            warn!(
                ctx,
                "per-interface map full: netns {} ifindex {} counted as overflow ({} on this CPU)",
                netns,
                ifindex,
                n
            );
        }
        return;
    };
    unsafe {
        if rx {
            add(&raw mut (*stats).rx_packets, 1);
            add(&raw mut (*stats).rx_bytes, len);
        } else {
            add(&raw mut (*stats).tx_packets, 1);
            add(&raw mut (*stats).tx_bytes, len);
        }
    }
    slots::mark_dirty::<Ifaces>(dirty_base, slot);
}

/// The slot of interface `key` (`IfaceKey::packed`), from this CPU's one-entry cache when it is
/// the last interface seen here (a burst of packets on one device), else from `IFACE_SLOTS`,
/// taking a free slot (and running `on_take`) on the interface's first packet. `NO_SLOT` when
/// every slot is taken; that is not cached, so the next packet tries again.
///
/// A cache hit is trusted only while the slot still names the key in `IFACE_KEYS`: userspace
/// overwrites a retiring slot's key with 0 (no device has ifindex 0) when it removes the key
/// from `IFACE_SLOTS`, and frees the slot only drains later (collect/slots.rs), so a stale
/// entry on a CPU that saw no packet since can neither count into the slot after its last
/// read nor into the slot of the interface that takes it next; nor does it keep the slot
/// from being freed (a quiet CPU may keep its cache for ever).
#[inline(always)]
pub fn iface_slot(rec: *mut CpuRecord, key: u64, rx: bool, on_take: impl FnOnce(u32)) -> u32 {
    unsafe {
        if (*rec).iface_last_key == key {
            let slot = (*rec).iface_last_slot;
            if IFACE_KEYS.get(slot).is_some_and(|k| *k == key) {
                return slot;
            }
        }
        let dirty_base = if rx {
            (*rec).iface_rx_dirty_base
        } else {
            (*rec).iface_tx_dirty_base
        };
        let slot = slots::lookup_or_take::<Ifaces>(key, dirty_base, on_take);
        if slot != NO_SLOT {
            (*rec).iface_last_key = key;
            (*rec).iface_last_slot = slot;
        }
        slot
    }
}

pub struct Ifaces;

impl slots::Table for Ifaces {
    type Stats = IfaceStats;
    #[inline(always)]
    fn slots() -> &'static HashMap<u64, u32> {
        &IFACE_SLOTS
    }
    #[inline(always)]
    fn free() -> &'static Queue<u32> {
        &IFACE_FREE
    }
    #[inline(always)]
    fn keys() -> &'static Array<u64> {
        &IFACE_KEYS
    }
    #[inline(always)]
    fn stats() -> &'static Array<IfaceStats> {
        &IFACE_STATS
    }
    #[inline(always)]
    fn dirty() -> &'static Array<u64> {
        &IFACE_DIRTY
    }
}

#[inline(always)]
fn overflow(rx: bool, len: u64) {
    if rx {
        count(counter::IFACE_OVERFLOW_RX_PACKETS, 1);
        count(counter::IFACE_OVERFLOW_RX_BYTES, len);
    } else {
        count(counter::IFACE_OVERFLOW_TX_PACKETS, 1);
        count(counter::IFACE_OVERFLOW_TX_BYTES, len);
    }
}

#[inline(always)]
fn overflowed_on_this_cpu() -> u64 {
    match record() {
        Some(rec) => unsafe {
            (*rec).counters[counter::IFACE_OVERFLOW_RX_PACKETS]
                + (*rec).counters[counter::IFACE_OVERFLOW_TX_PACKETS]
        },
        None => 0,
    }
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn snt_net_dev_xmit(ctx: BtfTracePointContext) -> i32 {
    // Only successful transmissions, as the device's own tx counters do. The skb may already
    // be freed by the driver here: use the tracepoint's own dev and skb_len arguments.
    let rc: i32 = ctx.arg(1);
    if rc != 0 {
        return 0;
    }
    let dev: *const u8 = ctx.arg(2);
    let len: u32 = ctx.arg(3);
    if dev.is_null() {
        overflow(false, len as u64);
    } else {
        account_iface(&ctx, dev, len as u64, false);
    }
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn snt_netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let len: u32 = unsafe { field(skb, global(&SKB_LEN_OFF)) };
    let dev: *const u8 = unsafe { field(skb, global(&SKB_DEV_OFF)) };
    if dev.is_null() {
        overflow(true, len as u64);
    } else {
        account_iface(&ctx, dev, len as u64, true);
    }
    0
}

/// Netns of a socket (0 when there is no socket, e.g. a reset sent for no socket).
#[inline(always)]
fn sock_netns(sk: *const u8) -> u32 {
    if sk.is_null() || global(&HAS_NETNS) == 0 {
        return 0;
    }
    let net: *const u8 = unsafe { field(sk, global(&SOCK_NET_OFF)) };
    if net.is_null() {
        return 0;
    }
    unsafe { field(net, global(&NET_NS_INUM_OFF)) }
}

#[inline(always)]
fn netns_tcp(netns: u32) -> Option<*mut NetnsTcp> {
    if let Some(stats) = NETNS_TCP.get_ptr_mut(&netns) {
        return Some(stats);
    }
    let _ = NETNS_TCP.insert(
        &netns,
        &NetnsTcp {
            retransmits: 0,
            resets: 0,
        },
        BPF_NOEXIST as u64,
    );
    let stats = NETNS_TCP.get_ptr_mut(&netns);
    if stats.is_none() {
        count_shared(counter::NETNS_TCP_OVERFLOW, 1);
    }
    stats
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn snt_tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    count(counter::TCP_RETRANSMITS, 1);
    let sk: *const u8 = ctx.arg(0);
    if let Some(stats) = netns_tcp(sock_netns(sk)) {
        add(unsafe { &raw mut (*stats).retransmits }, 1);
    }
    0
}

#[inline(always)]
fn reset(sk: *const u8) {
    // Two programs count resets (a process-context send can be interrupted by a softirq's
    // receive): atomic adds.
    count_shared(counter::TCP_RESETS, 1);
    if let Some(stats) = netns_tcp(sock_netns(sk)) {
        atomic_add(unsafe { &raw mut (*stats).resets }, 1);
    }
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn snt_tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    reset(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn snt_tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    reset(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn snt_inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if new == tcp_state::ESTABLISHED {
        count(counter::TCP_CONN_OPENED, 1);
    } else if new == tcp_state::CLOSE {
        // Closing before ever being established is a failed (refused, reset, timed-out)
        // connection attempt.
        if old == tcp_state::SYN_SENT || old == tcp_state::SYN_RECV {
            count(counter::TCP_CONN_FAILED, 1);
        } else {
            count(counter::TCP_CONN_CLOSED, 1);
        }
    }
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn snt_kfree_skb(_ctx: BtfTracePointContext) -> i32 {
    count(counter::SKB_DROPS, 1);
    0
}
