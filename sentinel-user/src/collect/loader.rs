//! Loads the embedded eBPF object, hands it the BTF offsets, attaches every program on its own
//! (a hook that fails disables its signal with one warning, the rest keeps running) and keeps
//! the maps so they can still be read after the programs are detached.

use std::{os::fd::AsFd, path::PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, Queue},
    programs::{BtfTracePoint, Iter},
};
use sentinel_common::{
    CONTAINER_FIELDS, ContainerKey, CpuRecord, IDLE_KEY, IFACE_FIELDS, IfaceKey, NO_SLOT, NetnsTcp,
    counter, dirty_words, global, runq_source,
};
use tracing::{info, warn};

use super::{
    bpf_sys::{BatchReader, MappedArray, delete},
    drain::RawSnapshot,
    offsets::Offsets,
    slots::{ContainerArrays, IfaceArrays},
    tasks::TaskIterator,
};

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded 8-byte aligned, so the
/// `sentinel` binary is the only file to deploy.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sentinel.bpf.o"));

/// False when this binary was built without `cargo xtask build-ebpf` (for `sentinel check`).
pub fn ebpf_object_embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// Every kernel hook, in the order they are attached (the signal registry in sentinel-common).
pub use sentinel_common::registry::{HOOKS, Hook};

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

/// Where the run-queue wait of a task comes from; see sentinel-ebpf's sched.rs.
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
#[serde(rename_all = "snake_case")]
pub enum RunqSource {
    /// `sched_info` where the kernel keeps it, `hash` otherwise.
    #[default]
    Auto,
    /// The kernel's own enqueue stamp against its run queue's clock: no map operation.
    #[value(name = "sched_info")]
    SchedInfo,
    /// A wakeup timestamp in a hash map shared by all CPUs (any kernel).
    Hash,
}

impl RunqSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RunqSource::Auto => "auto",
            RunqSource::SchedInfo => "sched_info",
            RunqSource::Hash => "hash",
        }
    }

    /// The source to use on this kernel: `auto` picks `sched_info` when the kernel has it; a
    /// forced `sched_info` it lacks is an error naming what is missing.
    pub fn resolve(self, offsets: &Offsets) -> Result<RunqSource> {
        match (self, sched_info_missing(offsets)) {
            (RunqSource::Auto | RunqSource::SchedInfo, None) => Ok(RunqSource::SchedInfo),
            (RunqSource::Auto, Some(_)) | (RunqSource::Hash, _) => Ok(RunqSource::Hash),
            (RunqSource::SchedInfo, Some(why)) => {
                bail!("run-queue source sched_info is not available on this kernel: {why}")
            }
        }
    }

    fn as_global(self) -> u32 {
        match self {
            RunqSource::Hash => runq_source::HASH,
            _ => runq_source::SCHED_INFO,
        }
    }
}

/// Why the `sched_info` source cannot be used here, or `None` when it can: the kernel must
/// have the members in BTF and keep the stamps (CONFIG_SCHED_INFO; before 5.14 also
/// CONFIG_SCHEDSTATS or delay accounting), which `/proc/self/schedstat` shows: this process has
/// run, so a kernel that keeps them reports a non-zero number of timeslices.
pub fn sched_info_missing(offsets: &Offsets) -> Option<String> {
    if let Err(e) = &offsets.sched_info {
        return Some(e.clone());
    }
    match std::fs::read_to_string("/proc/self/schedstat") {
        Err(e) => Some(format!(
            "/proc/self/schedstat: {e} (kernel without CONFIG_SCHED_INFO)"
        )),
        Ok(text) => {
            let slices = text
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok());
            match slices {
                Some(n) if n > 0 => None,
                _ => Some(
                    "the kernel does not keep run-queue stamps (/proc/self/schedstat reads 0: \
                     before Linux 5.14 that needs CONFIG_SCHEDSTATS or delay accounting)"
                        .to_string(),
                ),
            }
        }
    }
}

/// True when /sys/fs/cgroup itself is a cgroup2 mount (no v1 controllers in use).
pub fn cgroup2_only() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The container roster's task iterator program.
pub const TASK_ITERATOR: &str = "snt_iter_task";

/// Prefix of every program sentinel loads (kernel program names are cut at 15 characters).
pub const PROGRAM_PREFIX: &str = "snt_";

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    pub iface_capacity: u32,
    pub container_capacity: u32,
    pub key_mode: KeyMode,
    pub runq_source: RunqSource,
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
            runq_source: RunqSource::Auto,
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
    /// CLOCK_MONOTONIC just before the programs were detached (0 while attached): the final
    /// drain credits the slices still running up to then (see `snapshot`).
    detached_at_ns: u64,
    records: PerCpuArray<MapData, CpuRecord>,
    ifaces: TableMaps<IfaceArrays>,
    netns_tcp: MapData,
    netns_reader: BatchReader,
    containers: TableMaps<ContainerArrays>,
    /// Possible CPUs (the per-CPU maps have a value for each).
    ncpu: usize,
    pub container_capacity: u32,
    pub key_mode: KeyMode,
    /// The run-queue source in use (never `Auto`).
    pub runq_source: RunqSource,
    pub disabled: Vec<DisabledHook>,
    pub iface_capacity: u32,
    pub offsets: Offsets,
    /// The container roster's task iterator, or why there is none (the roster then reads
    /// /proc).
    pub tasks: Result<TaskIterator, String>,
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
        let runq_source = opts.runq_source.resolve(&offsets)?;
        info!(source = runq_source.as_str(), "run-queue latency");
        let ncpu = possible_cpus()?;
        let capacity = opts.container_capacity.max(1);

        // Far past the end of struct sock: the verifier refuses the load through the BTF pointer.
        let sock_net = if opts.simulate_verifier_reject {
            0x00ff_fff0
        } else {
            offsets.sock_net
        };
        let iface_capacity = opts.iface_capacity.max(1);
        let mut loader = ebpf_loader(&offsets, key_mode, runq_source, sock_net);
        size_maps(&mut loader, ncpu, capacity, iface_capacity)?;
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            permission_hint(anyhow!(e).context("cannot create sentinel's BPF maps"))
        })?;
        init_maps(&mut ebpf, ncpu, capacity, iface_capacity)?;

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!("kernel-side log messages unavailable: {e}");
                None
            }
        };
        let mut disabled = Vec::new();
        let mut attached = 0;
        for hook in &HOOKS {
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
                    let names: Vec<&str> = hook.counters().map(|i| counter::NAMES[i]).collect();
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

        let tasks = load_task_iterator(&mut ebpf, &btf).map_err(|e| format!("{e:#}"));
        if let Err(e) = &tasks {
            info!("no task iterator, the container roster reads /proc: {e}");
        }

        let records = PerCpuArray::try_from(take(&mut ebpf, "REC")?)?;
        let netns_tcp = map_data(take(&mut ebpf, "NETNS_TCP")?)?;
        let containers = TableMaps::take(&mut ebpf, "CONTAINER", |map| {
            let layout = ContainerArrays::layout(ncpu, capacity);
            Ok(ContainerArrays::new(
                ncpu,
                capacity,
                map("KEYS", layout.keys_bytes, false)?,
                map("STATS", layout.stats_bytes, false)?,
                map("DIRTY", layout.dirty_bytes, true)?,
            ))
        })?;
        let ifaces = TableMaps::take(&mut ebpf, "IFACE", |map| {
            let (layout, names_bytes) = IfaceArrays::layout(ncpu, iface_capacity);
            Ok(IfaceArrays::new(
                ncpu,
                iface_capacity,
                [
                    map("KEYS", layout.keys_bytes, true)?,
                    map("STATS", layout.stats_bytes, false)?,
                    map("DIRTY", layout.dirty_bytes, true)?,
                    map("NAMES", names_bytes, false)?,
                ],
            ))
        })?;
        start_a_slice_on_every_cpu(ncpu);
        Ok(Self {
            ebpf: Some(ebpf),
            detached_at_ns: 0,
            records,
            ifaces,
            netns_tcp,
            netns_reader: BatchReader::new(
                4,
                per_cpu_stride::<NetnsTcp>(ncpu),
                sentinel_common::NETNS_TCP_CAPACITY as usize,
            ),
            containers,
            ncpu,
            container_capacity: capacity,
            key_mode,
            runq_source,
            disabled,
            iface_capacity,
            offsets,
            tasks,
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
        // The roster's own handle on the iterator keeps it until the roster stops.
        self.tasks = Err("detached".into());
        if self.ebpf.is_some() {
            // Read before: a slice that ends between this and the detach is still recorded.
            self.detached_at_ns = monotonic_ns();
            self.ebpf = None;
            info!("eBPF programs detached");
        }
    }

    pub fn is_disabled(&self, counter_index: usize) -> bool {
        self.disabled.iter().any(|d| {
            HOOKS
                .iter()
                .any(|h| h.program == d.program && h.counters().any(|i| i == counter_index))
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

    /// Reads what changed since the last drain: every CPU's record (one system call), the TCP
    /// map (batched reads), and the interface and container entries whose dirty bit is set
    /// (from memory, no system call). An increment racing with a read lands in this read or
    /// the next one, never in both and never in neither.
    pub fn snapshot(&mut self, out: &mut RawSnapshot) -> Result<()> {
        // The records first, with the clock read before them, so a slice seen as running was
        // still running at `now_ns` and the container read that follows holds every slice that
        // had ended (see `RunningSlices`). Once detached, the records hold what was running at
        // the detach, so the clock is the one read just before it.
        out.now_ns = if self.ebpf.is_some() {
            monotonic_ns()
        } else {
            self.detached_at_ns
        };
        out.cpus.clear();
        out.cpus.extend(
            self.records
                .get(&0, 0)
                .context("reading the per-CPU records (REC)")?
                .iter()
                .copied(),
        );
        let ncpu = self.ncpu;
        self.ifaces.read(out)?;
        out.netns_tcp.clear(ncpu);
        let tcp = &mut out.netns_tcp;
        self.netns_reader
            .read(self.netns_tcp.fd().as_fd(), |key, values| {
                let key: u32 = bytemuck::pod_read_unaligned(key);
                tcp.push(
                    key,
                    per_cpu_values::<NetnsTcp>(values, ncpu).map(|s| [s.retransmits, s.resets]),
                );
            })
            .context("reading NETNS_TCP")?;
        self.containers.read(out)
    }

    /// Whether map reads through the descriptors this process holds need CAP_BPF on this
    /// kernel. Linux 5.10 checks it on every bpf() command when unprivileged BPF is disabled
    /// (Debian's default); later kernels check it where objects are created. A child process
    /// drops every capability and reads a map through the descriptor it inherited: the answer
    /// comes from the running kernel, not from a version number. Call it while the process has
    /// one thread (fork).
    pub fn map_reads_need_privilege(&self) -> Result<bool> {
        super::bpf_sys::reads_need_privilege(self.netns_tcp.fd().as_fd())
            .context("probing whether map reads need CAP_BPF")
    }

    /// One read of every map, after the capabilities were dropped: a failure is the daemon's
    /// one error line, not an interval of zeros.
    pub fn probe_read(&mut self) -> Result<()> {
        self.records
            .get(&0, 0)
            .context("reading the per-CPU records (REC)")?;
        let ncpu = self.ncpu;
        self.netns_reader
            .read(self.netns_tcp.fd().as_fd(), |_, v| {
                let _ = per_cpu_values::<NetnsTcp>(v, ncpu).count();
            })
            .context("reading NETNS_TCP")
    }

    /// Starts giving back the slot of a container that is gone and idle (see `slots.rs`); its
    /// last counts are still drained before the slot is free.
    pub fn retire_container(&mut self, key: ContainerKey) -> Result<()> {
        self.containers.retire(key)
    }

    /// Containers holding a slot.
    pub fn container_entries(&self) -> usize {
        self.containers.arrays.in_use()
    }

    /// Starts giving back the slot of an interface whose namespace or device is gone and
    /// that is idle; its last counts are still drained before the slot is free.
    pub fn retire_iface(&mut self, key: IfaceKey) -> Result<()> {
        self.ifaces.retire(key.packed())
    }

    pub fn remove_netns_tcp(&mut self, key: &u32) -> Result<()> {
        delete(self.netns_tcp.fd().as_fd(), bytemuck::bytes_of(key))
            .context("removing a gone namespace from NETNS_TCP")
    }
}

/// A key-to-slot table's maps, user side (containers or interfaces): the key-to-slot hash and
/// the free queue (system calls, only when a key is retired), and the memory-mapped arrays a
/// drain reads.
struct TableMaps<A> {
    name: &'static str,
    slots: BpfHashMap<MapData, u64, u32>,
    free: Queue<MapData, u32>,
    arrays: A,
}

/// What `TableMaps` needs of its arrays.
trait Arrays {
    /// Fills the snapshot's part; returns the slots freed.
    fn read(&mut self, out: &mut RawSnapshot) -> Vec<u32>;
    fn begin_retire(&mut self, key: u64) -> bool;
}

impl Arrays for ContainerArrays {
    fn read(&mut self, out: &mut RawSnapshot) -> Vec<u32> {
        ContainerArrays::read(self, out)
    }
    fn begin_retire(&mut self, key: u64) -> bool {
        ContainerArrays::begin_retire(self, key)
    }
}

impl Arrays for IfaceArrays {
    fn read(&mut self, out: &mut RawSnapshot) -> Vec<u32> {
        IfaceArrays::read(self, out)
    }
    fn begin_retire(&mut self, key: u64) -> bool {
        IfaceArrays::begin_retire(self, IfaceKey::unpack(key))
    }
}

type MapArray<'a> = dyn FnMut(&str, usize, bool) -> Result<MappedArray> + 'a;

impl<A: Arrays> TableMaps<A> {
    /// Takes `{prefix}_SLOTS` and `{prefix}_FREE`; `arrays` maps the arrays by suffix.
    fn take(
        ebpf: &mut Ebpf,
        prefix: &'static str,
        arrays: impl FnOnce(&mut MapArray<'_>) -> Result<A>,
    ) -> Result<Self> {
        let slots = BpfHashMap::try_from(take(ebpf, &format!("{prefix}_SLOTS"))?)?;
        let free = Queue::try_from(take(ebpf, &format!("{prefix}_FREE"))?)?;
        let mut map = |suffix: &str, bytes: usize, writable: bool| -> Result<MappedArray> {
            let name = format!("{prefix}_{suffix}");
            let data = map_data(take(ebpf, &name)?)?;
            MappedArray::map(data.fd().as_fd(), bytes, writable)
                .with_context(|| format!("cannot map {name} into memory (Linux 5.5+)"))
        };
        Ok(Self {
            name: prefix,
            slots,
            free,
            arrays: arrays(&mut map)?,
        })
    }

    fn read(&mut self, out: &mut RawSnapshot) -> Result<()> {
        for slot in self.arrays.read(out) {
            self.free
                .push(slot, 0)
                .with_context(|| format!("giving a slot back to {}_FREE", self.name))?;
        }
        Ok(())
    }

    fn retire(&mut self, key: u64) -> Result<()> {
        if self.arrays.begin_retire(key) {
            match self.slots.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing a gone key from {}_SLOTS", self.name));
                }
            }
        }
        Ok(())
    }
}

/// An `EbpfLoader` with every load-time global set: the struct offsets of this kernel, the
/// container key mode and the run-queue source. The bench loads its floor programs with it
/// too, so they read the same fields as the daemon's.
pub fn ebpf_loader(
    offsets: &Offsets,
    key_mode: KeyMode,
    runq_source: RunqSource,
    sock_net: u32,
) -> EbpfLoader<'static> {
    let si = offsets.sched_info.clone().unwrap_or_default();
    let globals: [(&str, u32); 26] = [
        (global::TASK_PID, offsets.task_pid),
        (global::TASK_STATE, offsets.task_state),
        (global::SKB_LEN, offsets.skb_len),
        (global::SKB_DEV, offsets.skb_dev),
        (global::DEV_IFINDEX, offsets.dev_ifindex),
        (global::DEV_NAME, offsets.dev_name),
        (global::DEV_ND_NET, offsets.dev_nd_net),
        (global::NET_NS_INUM, offsets.net_ns_inum),
        (global::HAS_NETNS, u32::from(offsets.has_netns)),
        (global::TASK_TGID, offsets.task_tgid),
        (global::TASK_EXIT_CODE, offsets.task_exit_code),
        (global::TASK_CGROUPS, offsets.task_cgroups),
        (global::CSS_SET_DFL_CGRP, offsets.css_set_dfl_cgrp),
        (global::CGROUP_KN, offsets.cgroup_kn),
        (global::KERNFS_NODE_ID, offsets.kernfs_node_id),
        (global::TASK_NSPROXY, offsets.task_nsproxy),
        (global::NSPROXY_MNT_NS, offsets.nsproxy_mnt_ns),
        (global::MNT_NS_INUM, offsets.mnt_ns_inum),
        (global::SOCK_NET, sock_net),
        (global::KEY_MODE, key_mode.as_global()),
        (global::TASK_LAST_QUEUED, si.task_last_queued),
        (global::TASK_CFS_RQ, si.task_cfs_rq),
        (global::CFS_RQ_RQ, si.cfs_rq_rq),
        (global::RQ_CLOCK, si.rq_clock),
        (global::RQ_CLOCK_TASK, si.rq_clock_task),
        (global::RUNQ_SOURCE, runq_source.as_global()),
    ];
    // The loader borrows each value for as long as it lives: one small leak per load.
    let globals: &'static [(&str, u32); 26] = Box::leak(Box::new(globals));
    let mut loader = EbpfLoader::new();
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    loader
}

/// Sizes the key-to-slot tables' maps for `ncpu` CPUs (the daemon and the bench's floor
/// programs alike, so the floor's entries are where the daemon's are).
pub fn size_maps(
    loader: &mut EbpfLoader<'_>,
    ncpu: usize,
    capacity: u32,
    iface_capacity: u32,
) -> Result<()> {
    loader
        .map_max_entries("CONTAINER_SLOTS", capacity)
        .map_max_entries("CONTAINER_FREE", capacity)
        .map_max_entries("CONTAINER_KEYS", capacity)
        .map_max_entries(
            "CONTAINER_STATS",
            stats_entries::<CONTAINER_FIELDS>("container", ncpu, capacity)?,
        )
        .map_max_entries("CONTAINER_DIRTY", ncpu as u32 * dirty_words(capacity))
        .map_max_entries("IFACE_SLOTS", iface_capacity)
        .map_max_entries("IFACE_FREE", iface_capacity)
        .map_max_entries("IFACE_KEYS", iface_capacity)
        .map_max_entries("IFACE_NAMES", iface_capacity)
        .map_max_entries(
            "IFACE_STATS",
            stats_entries::<IFACE_FIELDS>("interface", ncpu, iface_capacity)?,
        )
        .map_max_entries(
            "IFACE_DIRTY",
            ncpu as u32 * IfaceArrays::SETS * dirty_words(iface_capacity),
        );
    Ok(())
}

/// Sets up the maps before any program attaches: each CPU's record knows its region of the
/// container and interface arrays, and every slot is free.
pub fn init_maps(ebpf: &mut Ebpf, ncpu: usize, capacity: u32, iface_capacity: u32) -> Result<()> {
    let mut records: PerCpuArray<&mut MapData, CpuRecord> = PerCpuArray::try_from(
        ebpf.map_mut("REC")
            .ok_or_else(|| anyhow!("map REC missing from the eBPF object"))?,
    )?;
    let words = dirty_words(capacity);
    let iface_words = dirty_words(iface_capacity);
    let values: Vec<CpuRecord> = (0..ncpu)
        .map(|cpu| {
            let mut r: CpuRecord = bytemuck::Zeroable::zeroed();
            r.cur_slot = NO_SLOT;
            r.last_slot = NO_SLOT;
            r.last_key = IDLE_KEY;
            r.slot_base = cpu as u32 * capacity;
            r.dirty_base = cpu as u32 * words;
            r.iface_last_key = 0;
            r.iface_last_slot = NO_SLOT;
            r.iface_slot_base = cpu as u32 * iface_capacity;
            r.iface_rx_dirty_base = (cpu as u32 * IfaceArrays::SETS) * iface_words;
            r.iface_tx_dirty_base = r.iface_rx_dirty_base + iface_words;
            r
        })
        .collect();
    records
        .set(0, PerCpuValues::try_from(values)?, 0)
        .context("initialising the per-CPU records")?;
    for (name, capacity) in [("CONTAINER_FREE", capacity), ("IFACE_FREE", iface_capacity)] {
        let mut free: Queue<&mut MapData, u32> = Queue::try_from(
            ebpf.map_mut(name)
                .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?,
        )?;
        for slot in 0..capacity {
            free.push(slot, 0)
                .with_context(|| format!("filling the slot queue {name}"))?;
        }
    }
    Ok(())
}

fn stats_entries<const N: usize>(what: &str, ncpu: usize, capacity: u32) -> Result<u32> {
    u32::try_from(ncpu as u64 * u64::from(capacity))
        .ok()
        .filter(|n| u64::from(*n) * (N as u64 * 8) < 1 << 36)
        .ok_or_else(|| {
            anyhow!("{what} capacity {capacity} x {ncpu} CPUs is too large for the kernel map")
        })
}

/// Possible CPUs: every per-CPU map has a value for each.
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow!("cannot read {path}: {e}"))
}

/// Bytes per key in a batched read of a per-CPU map: each CPU's value rounded up to 8 bytes.
fn per_cpu_stride<V>(ncpu: usize) -> usize {
    std::mem::size_of::<V>().div_ceil(8) * 8 * ncpu
}

fn per_cpu_values<V: bytemuck::Pod>(bytes: &[u8], ncpu: usize) -> impl Iterator<Item = V> + '_ {
    let stride = std::mem::size_of::<V>().div_ceil(8) * 8;
    (0..ncpu).map(move |cpu| {
        bytemuck::pod_read_unaligned(&bytes[cpu * stride..cpu * stride + std::mem::size_of::<V>()])
    })
}

fn map_data(map: aya::maps::Map) -> Result<MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d) | Map::PerCpuHashMap(d) => Ok(d),
        other => Err(anyhow!("unexpected map type {other:?}")),
    }
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

/// Loads `snt_iter_task` and links it (Linux 5.8+, with the kernel's `bpf_iter_task` in BTF).
fn load_task_iterator(ebpf: &mut Ebpf, btf: &Btf) -> Result<TaskIterator> {
    let program: &mut Iter = ebpf
        .program_mut(TASK_ITERATOR)
        .ok_or_else(|| anyhow!("program {TASK_ITERATOR} missing from the eBPF object"))?
        .try_into()?;
    program
        .load("task", btf)
        .with_context(|| format!("loading {TASK_ITERATOR}"))?;
    let prog = program.fd()?;
    TaskIterator::link(prog.as_fd()).with_context(|| format!("linking {TASK_ITERATOR}"))
}

/// Runs a thread on every CPU, once the programs are attached, so that each CPU switches
/// tasks: a slice that began before the attach has no recorded start, and without a
/// switch on its CPU (a task spinning alone there) its time would be credited to no interval
/// until it ended, then dropped as a slice of unknown length. After the switch the spinner's
/// next slice has a start and is credited at every drain (`RunningSlices`). A CPU that cannot
/// be reached (offline, outside this process's cpuset) is left alone: its first switch
/// starts its slices as before.
fn start_a_slice_on_every_cpu(ncpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    // All at once: a CPU held by a real-time task lets the visitor in only when the kernel's
    // RT throttling does, and one such CPU should not delay the others.
    let visits: Vec<_> = (0..ncpu.min(CpuSet::count()))
        .filter_map(|cpu| {
            std::thread::Builder::new()
                .name("sentinel-cpu".into())
                .spawn(move || {
                    let mut set = CpuSet::new();
                    // Migrating this thread to `cpu` switches that CPU to it, and back when it
                    // exits.
                    set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok()
                })
                .ok()
        })
        .collect();
    for visit in visits {
        let _ = visit.join();
    }
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
