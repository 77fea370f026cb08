//! Loads the embedded eBPF object, hands it the BTF offsets, attaches every program on its own
//! (a hook that fails disables its signal with one warning, the rest keeps running) and keeps
//! the maps so they can still be read after the programs are detached.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePoint,
};
use sentinel_common::{
    ContainerKey, ContainerStats, Counters, IfaceKey, IfaceStats, LatencyHist, NetnsTcp, OnCpu,
    counter, global,
};
use tracing::{info, warn};

use super::{drain::RawSnapshot, offsets::Offsets};

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded 8-byte aligned, so the
/// `sentinel` binary is the only file to deploy.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sentinel.bpf.o"));

/// False when this binary was built without `cargo xtask build-ebpf` (for `sentinel check`).
pub fn ebpf_object_embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// One kernel hook and the counters it feeds.
#[derive(Debug)]
pub struct Hook {
    /// Program (function) name in the object; also its name in the kernel's program list.
    pub program: &'static str,
    /// Tracepoint category and name, as under tracefs `events/`.
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// Counters that are meaningless (reported as null) when this hook is not attached.
    pub counters: &'static [usize],
}

pub const HOOKS: &[Hook] = &[
    Hook {
        program: "snt_sched_switch",
        category: "sched",
        tracepoint: "sched_switch",
        counters: &[counter::SCHED_SWITCH],
    },
    Hook {
        program: "snt_sched_wakeup",
        category: "sched",
        tracepoint: "sched_wakeup",
        counters: &[counter::SCHED_WAKEUP],
    },
    Hook {
        program: "snt_sched_wakeup_new",
        category: "sched",
        tracepoint: "sched_wakeup_new",
        counters: &[counter::SCHED_WAKEUP_NEW],
    },
    Hook {
        program: "snt_sched_process_fork",
        category: "sched",
        tracepoint: "sched_process_fork",
        counters: &[counter::PROCESS_FORK],
    },
    Hook {
        program: "snt_sched_process_exec",
        category: "sched",
        tracepoint: "sched_process_exec",
        counters: &[counter::PROCESS_EXEC],
    },
    Hook {
        program: "snt_sched_process_exit",
        category: "sched",
        tracepoint: "sched_process_exit",
        counters: &[counter::PROCESS_EXIT],
    },
    Hook {
        program: "snt_oom_mark_victim",
        category: "oom",
        tracepoint: "mark_victim",
        counters: &[counter::OOM_KILLS],
    },
    Hook {
        program: "snt_net_dev_xmit",
        category: "net",
        tracepoint: "net_dev_xmit",
        counters: &[counter::NET_TX_PACKETS, counter::NET_TX_BYTES],
    },
    Hook {
        program: "snt_netif_receive_skb",
        category: "net",
        tracepoint: "netif_receive_skb",
        counters: &[counter::NET_RX_PACKETS, counter::NET_RX_BYTES],
    },
    Hook {
        program: "snt_tcp_retransmit_skb",
        category: "tcp",
        tracepoint: "tcp_retransmit_skb",
        counters: &[counter::TCP_RETRANSMITS],
    },
    Hook {
        program: "snt_inet_sock_set_state",
        category: "sock",
        tracepoint: "inet_sock_set_state",
        counters: &[
            counter::TCP_CONN_OPENED,
            counter::TCP_CONN_CLOSED,
            counter::TCP_CONN_FAILED,
        ],
    },
    Hook {
        program: "snt_kfree_skb",
        category: "skb",
        tracepoint: "kfree_skb",
        counters: &[counter::SKB_DROPS],
    },
    Hook {
        program: "snt_tcp_send_reset",
        category: "tcp",
        tracepoint: "tcp_send_reset",
        counters: &[counter::TCP_RESETS],
    },
    Hook {
        program: "snt_tcp_receive_reset",
        category: "tcp",
        tracepoint: "tcp_receive_reset",
        counters: &[counter::TCP_RESETS],
    },
];

/// How the kernel side keys containers; see sentinel-ebpf/src/container.rs.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// cgroup v2 id on a pure cgroup v2 host, mount namespace inode otherwise.
    #[default]
    Auto,
    Cgroup,
    Mntns,
}

impl KeyMode {
    pub fn resolve(self) -> KeyMode {
        match self {
            KeyMode::Auto if cgroup2_only() => KeyMode::Cgroup,
            KeyMode::Auto => KeyMode::Mntns,
            other => other,
        }
    }

    fn as_global(self) -> u32 {
        match self.resolve() {
            KeyMode::Cgroup => sentinel_common::KEY_MODE_CGROUP,
            _ => sentinel_common::KEY_MODE_MNTNS,
        }
    }

    pub fn describe(self) -> &'static str {
        match self.resolve() {
            KeyMode::Cgroup => "cgroup v2 id",
            _ => "mount namespace inode (cgroup v1 or hybrid host)",
        }
    }
}

/// True when /sys/fs/cgroup itself is a cgroup2 mount (no v1 controllers in use).
pub fn cgroup2_only() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Prefix of every program sentinel loads (kernel program names are cut at 15 characters).
pub const PROGRAM_PREFIX: &str = "snt_";

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    pub iface_capacity: u32,
    pub container_capacity: u32,
    pub key_mode: KeyMode,
    /// Test hook: attach these tracepoints under a name that does not exist, to show that a
    /// missing tracepoint degrades one signal and not the daemon.
    pub simulate_missing: Vec<String>,
    /// Test hook (row K2): hand the TCP programs an out-of-range `struct sock` offset so the
    /// verifier rejects them, to show that a rejected program degrades its signals only.
    pub simulate_verifier_reject: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            btf_path: PathBuf::from(super::offsets::VMLINUX_BTF),
            iface_capacity: sentinel_common::IFACE_MAP_CAPACITY,
            container_capacity: sentinel_common::CONTAINER_MAP_CAPACITY,
            key_mode: KeyMode::Auto,
            simulate_missing: Vec::new(),
            simulate_verifier_reject: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DisabledHook {
    pub program: &'static str,
    pub reason: String,
}

/// The loaded programs and their maps.
pub struct Collector {
    /// Programs and links; `None` once detached. Dropping it detaches and unloads everything
    /// (links are file-descriptor based, nothing is pinned, so even SIGKILL leaves nothing).
    ebpf: Option<Ebpf>,
    counters: PerCpuArray<MapData, Counters>,
    hist: PerCpuArray<MapData, LatencyHist>,
    ifaces: PerCpuHashMap<MapData, IfaceKey, IfaceStats>,
    containers: PerCpuHashMap<MapData, ContainerKey, ContainerStats>,
    netns_tcp: PerCpuHashMap<MapData, u32, NetnsTcp>,
    oncpu: PerCpuArray<MapData, OnCpu>,
    pub container_capacity: u32,
    pub key_mode: KeyMode,
    pub disabled: Vec<DisabledHook>,
    pub iface_capacity: u32,
    pub offsets: Offsets,
    /// Forwards the kernel side's aya-log records to `tracing`. It must outlive program loads:
    /// dropping it closes its map and later loads fail.
    logger: Option<KernelLogger>,
    /// One collector per host (row K15); released when the collector is dropped.
    _instance: super::instance::InstanceLock,
}

pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Collector {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this sentinel binary was built without its eBPF object: run `cargo xtask build-ebpf` \
                 and build sentinel again"
            );
        }
        check_privileges()?;
        let instance = super::instance::acquire()?;
        raise_memlock_limit();
        let offsets = Offsets::from_file(&opts.btf_path)?;
        let btf = Btf::parse_file(&opts.btf_path, aya::Endianness::default())
            .with_context(|| format!("cannot parse kernel BTF at {}", opts.btf_path.display()))?;
        let tracefs = super::tracefs::ensure_mounted();
        let key_mode = opts.key_mode.resolve();
        info!(mode = key_mode.describe(), "container key");

        // Far past the end of struct sock: the verifier refuses the load through the BTF pointer.
        let sock_net = if opts.simulate_verifier_reject {
            0x00ff_fff0
        } else {
            offsets.sock_net
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(global::TASK_PID, &offsets.task_pid, true)
            .override_global(global::TASK_STATE, &offsets.task_state, true)
            .override_global(global::SKB_LEN, &offsets.skb_len, true)
            .override_global(global::SKB_DEV, &offsets.skb_dev, true)
            .override_global(global::DEV_IFINDEX, &offsets.dev_ifindex, true)
            .override_global(global::DEV_NAME, &offsets.dev_name, true)
            .override_global(global::DEV_ND_NET, &offsets.dev_nd_net, true)
            .override_global(global::NET_NS_INUM, &offsets.net_ns_inum, true)
            .override_global(global::HAS_NETNS, &u32::from(offsets.has_netns), true)
            .override_global(global::TASK_TGID, &offsets.task_tgid, true)
            .override_global(global::TASK_EXIT_CODE, &offsets.task_exit_code, true)
            .override_global(global::TASK_CGROUPS, &offsets.task_cgroups, true)
            .override_global(global::CSS_SET_DFL_CGRP, &offsets.css_set_dfl_cgrp, true)
            .override_global(global::CGROUP_KN, &offsets.cgroup_kn, true)
            .override_global(global::KERNFS_NODE_ID, &offsets.kernfs_node_id, true)
            .override_global(global::TASK_NSPROXY, &offsets.task_nsproxy, true)
            .override_global(global::NSPROXY_MNT_NS, &offsets.nsproxy_mnt_ns, true)
            .override_global(global::MNT_NS_INUM, &offsets.mnt_ns_inum, true)
            .override_global(global::SOCK_NET, &sock_net, true)
            .override_global(global::KEY_MODE, &key_mode.as_global(), true)
            .map_max_entries("IFACES", opts.iface_capacity)
            .map_max_entries("CONTAINERS", opts.container_capacity)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                permission_hint(anyhow!(e).context("cannot create sentinel's BPF maps"))
            })?;

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!("kernel-side log messages unavailable: {e}");
                None
            }
        };
        let mut disabled = Vec::new();
        let mut attached = 0;
        for hook in HOOKS {
            let target = if opts
                .simulate_missing
                .iter()
                .any(|name| name == hook.tracepoint)
            {
                format!("{}_simulated_missing", hook.tracepoint)
            } else {
                hook.tracepoint.to_string()
            };
            match attach(&mut ebpf, hook, &target, &btf) {
                Ok(()) => attached += 1,
                Err(e) => {
                    let exists = tracefs.as_deref().map(|root| {
                        root.join("events")
                            .join(hook.category)
                            .join(&target)
                            .exists()
                    });
                    let reason = match exists {
                        Some(false) => format!(
                            "tracepoint {}:{target} does not exist in this kernel",
                            hook.category
                        ),
                        _ => bounded(&format!("{e:#}"), 2048),
                    };
                    let names: Vec<&str> =
                        hook.counters.iter().map(|&i| counter::NAMES[i]).collect();
                    warn!(
                        program = hook.program,
                        "hook {}:{target} not attached, signal disabled ({}): {reason}",
                        hook.category,
                        names.join(", ")
                    );
                    disabled.push(DisabledHook {
                        program: hook.program,
                        reason,
                    });
                }
            }
        }
        if attached == 0 {
            bail!(
                "no hook could be attached: {}",
                disabled
                    .first()
                    .map(|d| d.reason.as_str())
                    .unwrap_or("unknown")
            );
        }
        info!(
            attached,
            disabled = disabled.len(),
            "eBPF programs attached (BTF tracepoints)"
        );

        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let hist = PerCpuArray::try_from(take(&mut ebpf, "RUNQ_HIST")?)?;
        let ifaces = PerCpuHashMap::try_from(take(&mut ebpf, "IFACES")?)?;
        let containers = PerCpuHashMap::try_from(take(&mut ebpf, "CONTAINERS")?)?;
        let netns_tcp = PerCpuHashMap::try_from(take(&mut ebpf, "NETNS_TCP")?)?;
        let oncpu = PerCpuArray::try_from(take(&mut ebpf, "ONCPU")?)?;
        Ok(Self {
            ebpf: Some(ebpf),
            counters,
            hist,
            ifaces,
            containers,
            netns_tcp,
            oncpu,
            container_capacity: opts.container_capacity,
            key_mode,
            disabled,
            iface_capacity: opts.iface_capacity,
            offsets,
            logger,
            _instance: instance,
        })
    }

    /// The kernel-side logger, for the daemon to poll; taken once.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// Detaches and unloads every program. The maps stay readable for the final drain.
    pub fn detach(&mut self) {
        if self.ebpf.take().is_some() {
            info!("eBPF programs detached");
        }
    }

    pub fn is_disabled(&self, counter_index: usize) -> bool {
        self.disabled.iter().any(|d| {
            HOOKS
                .iter()
                .any(|h| h.program == d.program && h.counters.contains(&counter_index))
        })
    }

    pub fn disabled_programs(&self) -> Vec<String> {
        self.disabled
            .iter()
            .map(|d| d.program.to_string())
            .collect()
    }

    /// Cumulative `recursion_misses` of every attached program, from its fdinfo: runs the
    /// kernel skipped because another BPF program was already running on that CPU. Kernels
    /// before 5.12 do not report it: those programs are left out.
    pub fn recursion_misses(&self) -> Vec<(&'static str, u64)> {
        use std::os::fd::{AsFd, AsRawFd};
        let Some(ebpf) = self.ebpf.as_ref() else {
            return Vec::new();
        };
        HOOKS
            .iter()
            .filter_map(|hook| {
                let fd = ebpf.program(hook.program)?.fd().ok()?;
                let info = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    fd.as_fd().as_raw_fd()
                ))
                .ok()?;
                Some((hook.program, parse_recursion_misses(&info)?))
            })
            .collect()
    }

    /// Reads every per-CPU value of every map. Each map is read with single lookups that copy
    /// all CPUs' slots at once; an increment racing with the copy lands in this read or the
    /// next one, never in both and never in neither.
    pub fn snapshot(&self, out: &mut RawSnapshot) -> Result<()> {
        // The running slices are read first, with the clock read before them, so a slice
        // seen as running was still running at `oncpu_now_ns` and the kernel's CONTAINERS
        // read that follows holds every slice that had ended (see `RunningSlices`). Once
        // detached, nothing runs any more: no running slice is read.
        out.oncpu.clear();
        if self.ebpf.is_some() {
            out.oncpu_now_ns = monotonic_ns();
            out.oncpu.extend(
                self.oncpu
                    .get(&0, 0)
                    .context("reading ONCPU")?
                    .iter()
                    .copied(),
            );
        }
        out.counters.clear();
        out.counters.extend(
            self.counters
                .get(&0, 0)
                .context("reading COUNTERS")?
                .iter()
                .copied(),
        );
        out.hist.clear();
        out.hist.extend(
            self.hist
                .get(&0, 0)
                .context("reading RUNQ_HIST")?
                .iter()
                .copied(),
        );
        out.ifaces.clear();
        for item in &self.ifaces {
            match item {
                Ok((key, values)) => out.ifaces.push((key, values.iter().copied().collect())),
                // A key deleted between get_next_key and lookup: nothing to read.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading IFACES"),
            }
        }
        read_keyed(&self.containers, &mut out.containers, "CONTAINERS", |s| {
            bytemuck::cast(*s)
        })?;
        read_keyed(&self.netns_tcp, &mut out.netns_tcp, "NETNS_TCP", |s| {
            [s.retransmits, s.resets]
        })?;
        Ok(())
    }

    /// Removes a gone container's entry (after it was drained and stayed idle).
    pub fn remove_container(&mut self, key: &ContainerKey) -> Result<()> {
        match self.containers.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing a gone container from CONTAINERS"),
        }
    }

    pub fn remove_netns_tcp(&mut self, key: &u32) -> Result<()> {
        match self.netns_tcp.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing a gone namespace from NETNS_TCP"),
        }
    }

    /// Removes an interface entry whose namespace or device is gone (after it was drained).
    pub fn remove_iface(&mut self, key: &IfaceKey) -> Result<()> {
        match self.ifaces.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing a gone interface from IFACES"),
        }
    }
}

fn read_keyed<K: aya::Pod, V: aya::Pod, const N: usize>(
    map: &PerCpuHashMap<MapData, K, V>,
    out: &mut Vec<(K, Vec<[u64; N]>)>,
    name: &str,
    convert: impl Fn(&V) -> [u64; N],
) -> Result<()> {
    out.clear();
    for item in map {
        match item {
            Ok((key, values)) => out.push((key, values.iter().map(&convert).collect())),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        }
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, target: &str, btf: &Btf) -> Result<()> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| anyhow!("program {} missing from the eBPF object", hook.program))?
        .try_into()?;
    program
        .load(target, btf)
        .with_context(|| format!("loading {}", hook.program))?;
    program
        .attach()
        .with_context(|| format!("attaching {}", hook.program))?;
    Ok(())
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
/// Zero (no running slice is credited) in the impossible case that it cannot be read.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        .unwrap_or(0)
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// The `recursion_misses:` line of a BPF program's fdinfo.
fn parse_recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Keeps the end of a long message (a verifier log's reason is in its last lines).
fn bounded(message: &str, max: usize) -> String {
    let one_line = message.replace('\n', " | ");
    if one_line.len() <= max {
        return one_line;
    }
    let mut start = one_line.len() - max;
    while !one_line.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &one_line[start..])
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const CAP_PERFMON: u32 = 38;

/// Fails early, with what to do, when the process cannot load BPF programs at all.
pub fn check_privileges() -> Result<()> {
    let caps = effective_capabilities().unwrap_or(u64::MAX);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "permission denied: sentinel must run as root or with CAP_BPF and CAP_PERFMON \
         (effective capabilities: {caps:#018x})"
    )
}

pub fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn permission_hint(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        e.context("permission denied loading BPF: run as root or with CAP_BPF and CAP_PERFMON; on kernels before 5.11 also raise RLIMIT_MEMLOCK (CAP_SYS_RESOURCE)")
    } else {
        e
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memory cgroup.
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        nix::libc::RLIM_INFINITY,
        nix::libc::RLIM_INFINITY,
    ) {
        tracing::debug!("could not raise RLIMIT_MEMLOCK ({e}); fine on Linux 5.11+");
    }
}

/// Program ids of every sentinel program currently loaded in the kernel.
pub fn loaded_sentinel_programs() -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?.to_string();
            name.starts_with(PROGRAM_PREFIX).then(|| (info.id(), name))
        })
        .collect()
}

pub fn hook_names() -> HashSet<&'static str> {
    HOOKS.iter().map(|h| h.tracepoint).collect()
}

pub fn btf_available(path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_is_read_from_fdinfo_and_absent_on_old_kernels() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1060\nprog_type:\t26\n\
                      prog_jited:\t1\nprog_tag:\t2ed8b0e8e3b4b8a1\nmemlock:\t4096\nprog_id:\t88\n\
                      run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t51\n";
        assert_eq!(parse_recursion_misses(fdinfo), Some(17));
        // Before 5.12 the line does not exist: not reported rather than reported as 0.
        assert_eq!(parse_recursion_misses("prog_id:\t88\nrun_cnt:\t0\n"), None);
        assert_eq!(parse_recursion_misses("recursion_misses:\tx\n"), None);
    }

    #[test]
    fn bounded_keeps_the_end_of_a_verifier_log_on_one_line() {
        let log = format!("{}\naccess beyond struct sock", "x".repeat(5000));
        let b = bounded(&log, 100);
        assert!(
            b.len() <= 103 && b.ends_with("access beyond struct sock"),
            "{b}"
        );
        assert!(!b.contains('\n'));
    }
}
