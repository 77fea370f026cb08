//! Kernel cost per event (bpf_stats), the daemon's drain time with full maps, and the daemon's
//! cost with many live containers.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    fs,
    os::fd::AsFd,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{
    Array, HashMap as BpfHashMap, MapData, MapInfo, PerCpuHashMap, PerCpuValues, Queue,
};
use sentinel::collect::bpf_sys::MappedArray;
use sentinel_common::{CONTAINER_FIELDS, IfaceKey, IfaceStats, dirty_words};

use super::{
    Ctx,
    contenders::{self, FLOORS},
    loadavg, median, min_max,
    workers::{WORKLOADS, Workload},
};

/// Sentinel's programs in the order the daemon loads them, with the floor program on the same
/// hook and, where a hook's signal needs one lookup (the interface on the network hooks, the
/// task's container on exec and exit), the floor plus that lookup:
/// the signal registry's hook list. The kernel cuts program names at 15 characters, which
/// makes e.g. the three `snt_sched_process_*` alike; the load order tells them apart.
use sentinel_common::registry::HOOKS as SENTINEL;

/// BPF object ids (programs or maps) a process holds, from its fdinfo.
fn held_ids(pid: u32, field: &str) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        if let Ok(text) = fs::read_to_string(entry.path()) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix(field)
                    && let Ok(id) = v.trim().parse()
                {
                    ids.insert(id);
                }
            }
        }
    }
    ids
}

/// run_time_ns and run_cnt of every loaded program, by id.
fn run_stats() -> HashMap<u32, (u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), (p.run_time().as_nanos() as u64, p.run_count())))
        .collect()
}

/// (runs, total ns) of each program between two readings.
type Runs = HashMap<u32, (u64, u64)>;

fn diff(before: &HashMap<u32, (u64, u64)>, after: &HashMap<u32, (u64, u64)>) -> Runs {
    after
        .iter()
        .filter_map(|(id, (t1, c1))| {
            let (t0, c0) = before.get(id)?;
            Some((*id, (c1 - c0, t1 - t0)))
        })
        .collect()
}

fn per_run(runs: &Runs, id: u32) -> Option<(u64, f64)> {
    let (n, ns) = runs.get(&id)?;
    (*n > 0).then(|| (*n, *ns as f64 / *n as f64))
}

/// Sentinel's program ids (held by the daemon), by name.
fn sentinel_programs(pid: u32) -> HashMap<u32, &'static str> {
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
        .collect();
    let mut out = HashMap::new();
    let mut expected = SENTINEL.iter();
    for id in held_ids(pid, "prog_id:") {
        let Some(kname) = names.get(&id) else {
            continue;
        };
        for hook in expected.by_ref() {
            if hook.program.starts_with(kname.as_str()) {
                out.insert(id, hook.program);
                break;
            }
        }
    }
    out
}

/// ns/run of every sentinel program next to the floor on its hook, with the daemon using the
/// run-queue source `source`; and all programs summed per ping-pong round trip.
/// `floors_first`: attach the floor programs before sentinel's, so on each hook they run
/// first (see the caller).
pub fn per_event(ctx: &mut Ctx, source: &str, floors_first: bool) -> Result<()> {
    // Run-time statistics only while this descriptor is open (5.8+), so they cannot stay on.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow!("cannot enable BPF run-time statistics: {e}"))?;
    let early_floors = if floors_first {
        Some(contenders::load_floor(ctx, |_, _| true)?)
    } else {
        None
    };
    let sentinel = contenders::start_sentinel(
        ctx,
        "1s",
        &["--runq-source", source],
        &format!("kernel-{source}"),
    )?;
    let floor_running = match early_floors {
        Some(f) => f,
        None => contenders::load_floor(ctx, |_, _| true)?,
    };
    let order = if floors_first {
        "floor programs attached first, then sentinel's (on each hook the floors run first)"
    } else {
        "sentinel's programs attached first, then the floors (on each hook sentinel's run first)"
    };
    let names = sentinel_programs(sentinel.pid().unwrap_or(0));
    let la0 = loadavg();
    let mut per_workload: Vec<(Workload, Runs)> = Vec::new();
    let mut total: Runs = HashMap::new();
    for w in WORKLOADS {
        let before = run_stats();
        w.run(ctx)?;
        let runs = diff(&before, &run_stats());
        for (id, (n, ns)) in &runs {
            let t = total.entry(*id).or_default();
            t.0 += n;
            t.1 += ns;
        }
        per_workload.push((w, runs));
    }
    let la1 = loadavg();
    drop(stats);
    sentinel.stop()?;
    let floor_id = |name: &str| {
        floor_running
            .programs
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.3)
    };

    let mut s = String::new();
    writeln!(
        s,
        "## Kernel cost per event, run-queue source `{source}`, {order}\n\n`kernel.bpf_stats_enabled` on (BPF_ENABLE_STATS descriptor), sentinel (`--runq-source {source}`) and the floor programs attached at the same time ({order}), one run of each workload. ns/run = run_time_ns / run_cnt over the workloads (stats overhead included in both). The floor is one per-CPU array add on the same hook (tp_btf); where a hook's signal needs one lookup (the interface on the network hooks; on exec and exit the task's container, resolved from the task because a runtime's init joins a container and execs without switching out), also the floor plus that lookup. Load average: {la0} before, {la1} after.\n\n| hook | sentinel program | runs | sentinel ns/run | floor ns/run | ratio | floor + lookup ns/run | ratio to it |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )?;
    let mut by_name: Vec<(&str, u32)> = names.iter().map(|(id, n)| (*n, *id)).collect();
    by_name.sort_by_key(|(n, _)| SENTINEL.iter().position(|h| h.program == *n));
    for (name, id) in by_name {
        let (floor, lookup) = SENTINEL
            .iter()
            .find(|h| h.program == name)
            .map_or((None, None), |h| (h.floor, h.floor_lookup));
        let hook = name.trim_start_matches("snt_");
        let Some((n, ns)) = per_run(&total, id) else {
            writeln!(s, "| {hook} | {name} | 0 | - | - | - | - | - |")?;
            continue;
        };
        let cell = |reference: Option<&str>| match reference
            .and_then(floor_id)
            .and_then(|fid| per_run(&total, fid))
        {
            Some((_, f)) => (format!("{f:.1}"), format!("**{:.2}**", ns / f)),
            None => ("-".into(), "-".into()),
        };
        let (f, fr) = cell(floor);
        let (l, lr) = cell(lookup);
        writeln!(
            s,
            "| {hook} | {name} | {n} | {ns:.1} | {f} | {fr} | {l} | {lr} |"
        )?;
    }

    // Everything the programs cost per ping-pong round trip (two switches, two wakeups).
    if let Some((w, runs)) = per_workload.iter().find(|(w, _)| *w == Workload::PingPong) {
        let trips = w.size(ctx.smoke) as f64;
        let sum = |ids: &mut dyn Iterator<Item = u32>| -> f64 {
            ids.filter_map(|id| runs.get(&id))
                .map(|(_, ns)| *ns as f64)
                .sum::<f64>()
                / trips
        };
        let ours = sum(&mut names.keys().copied());
        let floors = sum(&mut SENTINEL
            .iter()
            .filter(|h| names.values().any(|n| *n == h.program))
            .filter_map(|h| h.floor.and_then(floor_id)));
        writeln!(
            s,
            "\nAll programs per ping-pong round trip ({trips:.0} round trips): sentinel **{ours:.0} ns**, the floor programs on the same hooks {floors:.0} ns: **{:.2}x**.",
            ours / floors
        )?;
    }

    writeln!(
        s,
        "\n### Floor by attach kind\n\n| hook | tp_btf ns/run | raw_tp ns/run | classic tracepoint ns/run |\n|---|---:|---:|---:|"
    )?;
    for tp in ["sched_switch", "sched_wakeup"] {
        let cell = |kind: &str| {
            FLOORS
                .iter()
                .find(|f| f.1 == kind && f.3 == tp)
                .and_then(|f| floor_id(f.0))
                .and_then(|id| per_run(&total, id))
                .map_or("-".into(), |(_, ns)| format!("{ns:.1}"))
        };
        writeln!(
            s,
            "| {tp} | {} | {} | {} |",
            cell("tp_btf"),
            cell("raw_tp"),
            cell("tracepoint")
        )?;
    }
    writeln!(
        s,
        "\n### Where the time goes: the floor plus one ingredient\n\n| hook | program | runs | ns/run | minus floor (ns) |\n|---|---|---:|---:|---:|"
    )?;
    for f in FLOORS.iter().filter(|f| f.1.starts_with("tp_btf +")) {
        let base = FLOORS
            .iter()
            .find(|b| b.1 == "tp_btf" && b.3 == f.3)
            .and_then(|b| floor_id(b.0))
            .and_then(|id| per_run(&total, id));
        if let Some((n, ns)) = floor_id(f.0).and_then(|id| per_run(&total, id)) {
            let extra = base.map_or("-".into(), |(_, b)| format!("{:.1}", ns - b));
            writeln!(
                s,
                "| {} | {} ({}) | {n} | {ns:.1} | {extra} |",
                f.3, f.1, f.0
            )?;
        }
    }
    writeln!(s)?;
    drop(floor_running);
    ctx.section(&s);
    Ok(())
}

/// Fills the daemon's container and interface maps from outside with entries whose values
/// change between drains, and reads the daemon's own `collector.drain_us` and CPU time.
pub fn drain(ctx: &mut Ctx) -> Result<()> {
    let scale = if ctx.smoke { 10 } else { 1 };
    let cases: [(&str, u32, u32, usize); 4] = [
        ("default capacities, maps as the host fills them", 0, 0, 100),
        (
            "default capacities (1024 / 4096), both full, every entry changing",
            1024,
            4096,
            100,
        ),
        (
            "10 000 containers, 4096 interfaces, every entry changing",
            10_000,
            4096,
            100,
        ),
        (
            "10 000 containers, 4096 interfaces, 10% of the container entries changing",
            10_000,
            4096,
            10,
        ),
    ];
    let window = if ctx.smoke { 4 } else { 15 };
    let mut s = String::from(
        "## Drain cost\n\n`collector.drain_us` of `sentinel run --interval 1s --output json` (one drain: read the per-CPU records, the interface and TCP maps in batches, the container entries marked dirty; sample /proc; compute the deltas), maps filled from outside with entries whose values change between drains (every interface; the given share of the (CPU, container) entries). First 3 intervals skipped. Daemon CPU = schedstat run time of all its threads over the window / seconds (drain, output, attribution: everything it does per interval).\n\n| case | CPUs | container entries | interface entries | drains | drain median (us, wall) | min-max (us) | daemon CPU per 1 s interval (us) | load avg |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let cpus = sentinel::collect::loader::possible_cpus()?;
    for (label, containers, ifaces, percent) in cases {
        let containers = containers / scale;
        let ifaces = ifaces / scale;
        let ccap = containers.max(sentinel_common::CONTAINER_MAP_CAPACITY);
        let icap = ifaces.max(sentinel_common::IFACE_MAP_CAPACITY);
        let (cs, is) = (ccap.to_string(), icap.to_string());
        let tag = format!("drain-{containers}-{ifaces}-{percent}");
        let running = contenders::start_sentinel(
            ctx,
            "1s",
            &["--container-capacity", &cs, "--iface-capacity", &is],
            &tag,
        )?;
        let pid = running.pid().unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let injector = if containers + ifaces > 0 {
            let maps = DaemonMaps::open(pid, cpus, ccap)?;
            let flag = stop.clone();
            Some(std::thread::spawn(move || {
                maps.inject(containers, ifaces, percent, &flag)
            }))
        } else {
            None
        };
        let la = loadavg();
        // Daemon CPU time over the window: the drain's wall time is inflated when other jobs
        // hold the CPUs, its CPU time is not.
        std::thread::sleep(Duration::from_secs(3));
        let cpu0 = contenders::cpu_time(pid)?.0;
        std::thread::sleep(Duration::from_secs(window));
        let cpu_per_interval =
            contenders::cpu_time(pid)?.0.saturating_sub(cpu0) as f64 / window as f64 / 1e3;
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = injector {
            h.join().map_err(|_| anyhow!("injector panicked"))??;
        }
        let (drains, ce, ie) = drain_figures(&running);
        running.stop()?;
        let (lo, hi) = min_max(&drains);
        let line = format!(
            "| {label} | {cpus} | {ce} | {ie} | {} | **{:.0}** | {lo:.0}-{hi:.0} | {cpu_per_interval:.0} | {la} |\n",
            drains.len(),
            median(&drains)
        );
        print!("{line}");
        s.push_str(&line);
    }
    s.push('\n');
    ctx.section(&s);
    Ok(())
}

/// `collector.drain_us` of every non-final interval after the first 3, and the largest
/// container and interface entry counts seen.
fn drain_figures(running: &contenders::Running) -> (Vec<f64>, u64, u64) {
    let text = running
        .stdout
        .as_ref()
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut drains = Vec::new();
    let (mut ce, mut ie) = (0u64, 0u64);
    for line in text.lines().skip(3) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if !v["final_totals"].is_null() {
            continue; // the final drain runs after detaching
        }
        let c = &v["collector"];
        if let Some(us) = c["drain_us"].as_u64() {
            drains.push(us as f64);
            ce = ce.max(c["container_entries"].as_u64().unwrap_or(0));
            ie = ie.max(c["iface_entries"].as_u64().unwrap_or(0));
        }
    }
    (drains, ce, ie)
}

/// The daemon's maps, opened by id from its file descriptors, to fill them from outside.
struct DaemonMaps {
    slots: BpfHashMap<MapData, u64, u32>,
    free: Queue<MapData, u32>,
    keys: Array<MapData, u64>,
    stats: MappedArray,
    dirty: MappedArray,
    ifaces: PerCpuHashMap<MapData, IfaceKey, IfaceStats>,
    cpus: usize,
    capacity: u32,
}

impl DaemonMaps {
    fn open(pid: u32, cpus: usize, capacity: u32) -> Result<Self> {
        let mut found: HashMap<String, MapData> = HashMap::new();
        // The daemon closes the descriptors of the arrays it has mapped into memory; its
        // programs still name them.
        let progs = held_ids(pid, "prog_id:");
        let mut ids = held_ids(pid, "map_id:");
        for prog in aya::programs::loaded_programs().flatten() {
            if progs.contains(&prog.id())
                && let Ok(Some(maps)) = prog.map_ids()
            {
                ids.extend(maps);
            }
        }
        for id in ids {
            let Ok(info) = MapInfo::from_id(id) else {
                continue;
            };
            if let Some(name) = info.name_as_str() {
                found.insert(name.to_string(), MapData::from_id(id)?);
            }
        }
        let mut take = |name: &str| {
            found
                .remove(name)
                .with_context(|| format!("the daemon holds no {name} map"))
        };
        let layout = sentinel::collect::slots::ContainerArrays::layout(cpus, capacity);
        let stats = take("CONTAINER_STATS")?;
        let dirty = take("CONTAINER_DIRTY")?;
        let stats = MappedArray::map(stats.fd().as_fd(), layout.stats_bytes, true)?;
        let dirty = MappedArray::map(dirty.fd().as_fd(), layout.dirty_bytes, true)?;
        Ok(Self {
            slots: BpfHashMap::try_from(aya::maps::Map::HashMap(take("CONTAINER_SLOTS")?))?,
            free: Queue::try_from(aya::maps::Map::Queue(take("CONTAINER_FREE")?))?,
            keys: Array::try_from(aya::maps::Map::Array(take("CONTAINER_KEYS")?))?,
            stats,
            dirty,
            ifaces: PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(take("IFACES")?))?,
            cpus,
            capacity,
        })
    }

    /// Takes `containers` slots the way the kernel does (a free slot, its key, the key's
    /// entry), then every 0.5 s bumps `percent`% of the (CPU, container) entries and marks
    /// them dirty, and every interface.
    fn inject(
        mut self,
        containers: u32,
        ifaces: u32,
        percent: usize,
        stop: &AtomicBool,
    ) -> Result<()> {
        let mut taken = Vec::new();
        for i in 0..containers {
            // Keys no process has: far above any mount namespace inode or cgroup id in use.
            let key = 0x5e00_0000_0000 + u64::from(i);
            // The host's own containers hold a few slots already: "full" takes what is left
            // (the report shows the entries the daemon actually saw).
            let Ok(slot) = self.free.pop(0) else {
                break;
            };
            self.keys.set(slot, key, 0)?;
            self.slots.insert(key, slot, 0)?;
            taken.push(slot);
        }
        let words = dirty_words(self.capacity) as usize;
        let stride = 100 / percent.max(1);
        let mut round = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for (n, (cpu, slot)) in (0..self.cpus)
                .flat_map(|c| taken.iter().map(move |s| (c, *s as usize)))
                .enumerate()
            {
                if n % stride != 0 {
                    continue;
                }
                let entry = (cpu * self.capacity as usize + slot) * CONTAINER_FIELDS;
                self.stats.store_word(entry, round * 1000);
                self.stats.store_word(entry + 1, round);
                let w = cpu * words + slot / 64;
                self.dirty
                    .store_word(w, self.dirty.word(w) | 1 << (slot % 64));
            }
            let mut name = [0u8; sentinel_common::IFNAME_LEN];
            name[..9].copy_from_slice(b"snt-bench");
            let istats = IfaceStats {
                rx_packets: round,
                rx_bytes: round * 64,
                tx_packets: round,
                tx_bytes: round * 64,
                name,
            };
            for i in 0..ifaces {
                let values = PerCpuValues::try_from(vec![istats; self.cpus])?;
                let key = IfaceKey {
                    netns: 0x7fff_0000 + i,
                    ifindex: 1,
                };
                let _ = self.ifaces.insert(key, values, 0);
            }
            round += 1;
            for _ in 0..5 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

/// The daemon's CPU per interval with `count` live containers: real processes, each in its own
/// mount namespace (a container key on this cgroup v1 host), each waking about 3 times a
/// second, named through /proc as the daemon names any container without Docker.
pub fn live_containers(ctx: &mut Ctx) -> Result<()> {
    let count: u32 = if ctx.smoke { 50 } else { 1000 };
    let window = if ctx.smoke { 5 } else { 20 };
    let mut sleepers = Sleepers::start(ctx, count)?;
    // The sleepers' own set-up (1000 unshares) must not be in the daemon's window.
    std::thread::sleep(Duration::from_secs(3));
    let running = contenders::start_sentinel(ctx, "1s", &[], "live-containers")?;
    let pid = running.pid().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let la = loadavg();
    let cpu0 = contenders::cpu_time(pid)?.0;
    std::thread::sleep(Duration::from_secs(window));
    let cpu = contenders::cpu_time(pid)?.0.saturating_sub(cpu0) as f64 / window as f64 / 1e3;
    let text = running
        .stdout
        .as_ref()
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    let (drains, entries, _) = drain_figures(&running);
    running.stop()?;
    sleepers.stop();
    let listed = text
        .lines()
        .rev()
        .nth(1)
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["containers"].as_array().map(Vec::len))
        .unwrap_or(0);
    let mut s = String::new();
    writeln!(
        s,
        "## {count} live containers\n\n{count} processes, each in its own mount namespace (`unshare(CLONE_NEWNS)`: a container key on a cgroup v1 host), each waking every 300 ms (+-10%); `sentinel run --interval 1s --output json --no-docker` started after them, measured over {window} s after a 5 s warm-up.\n\n| containers | container entries | containers in the last interval | drain median (us) | daemon CPU per 1 s interval (us) | load avg |\n|---:|---:|---:|---:|---:|---:|\n| {count} | {entries} | {listed} | {:.0} | **{cpu:.0}** | {la} |\n",
        median(&drains)
    )?;
    ctx.section(&s);
    Ok(())
}

/// The `sleepers` worker: one parent that forked the sleepers and waits for them.
struct Sleepers {
    child: Child,
}

impl Sleepers {
    fn start(ctx: &Ctx, count: u32) -> Result<Self> {
        let child = Command::new(&ctx.exe)
            .args(["bench", "sleepers", &count.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the sleepers")?;
        Ok(Self { child })
    }

    fn stop(&mut self) {
        // The worker's children die with it (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// bpftrace's runqlat, limited to the storm's tasks (their command name): wakeup (or
/// preemption) to switch-in, summed and counted, printed at exit.
const RUNQLAT_SCRIPT: &str = r#"
tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new /args->comm == "snt-spin"/ {
  @qt[args->pid] = nsecs;
}
tracepoint:sched:sched_switch {
  if (args->prev_state == 0 && args->prev_comm == "snt-spin") { @qt[args->prev_pid] = nsecs; }
  if (args->next_comm == "snt-spin") {
    $t = @qt[args->next_pid];
    if ($t) { @sum = sum(nsecs - $t); @n = count(); delete(@qt[args->next_pid]); }
  }
}
interval:ms:200 { printf("ready\n"); }
END { clear(@qt); print(@sum); print(@n); clear(@sum); clear(@n); }
"#;

/// One window of a storm: what the kernel's run_delay, sentinel and bpftrace each saw.
struct RunqWindow {
    kernel_ns: u64,
    kernel_waits: u64,
    sentinel_ns: f64,
    sentinel_waits: u64,
    bpftrace: Option<(u64, u64)>,
}

fn schedstat(pid: u32) -> (u64, u64) {
    let s = fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    let f: Vec<u64> = s
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    (
        f.get(1).copied().unwrap_or(0),
        f.get(2).copied().unwrap_or(0),
    )
}

fn signal(pids: &[u32], sig: &str) {
    for p in pids {
        let _ = Command::new("kill").args([sig, &p.to_string()]).status();
    }
}

fn wait_state(pids: &[u32], stopped: bool) {
    for _ in 0..500 {
        let all = pids.iter().all(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('T') == stopped)
            })
        });
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `spinners` busy loops named `snt-spin` in their own mount namespace (pinned to `cpus`),
/// stopped, then run for `secs` between two stops while sentinel (and bpftrace, if installed)
/// watch; the kernel's run_delay growth of the same tasks is the reference.
fn runq_window(
    ctx: &Ctx,
    source: &str,
    cpus: &str,
    spinners: u32,
    secs: u64,
) -> Result<RunqWindow> {
    let dir = ctx.dir.join("runq");
    fs::create_dir_all(&dir)?;
    let spin = dir.join("snt-spin");
    let _ = fs::remove_file(&spin);
    std::os::unix::fs::symlink("/bin/sh", &spin)?;
    let run = contenders::start_sentinel(
        ctx,
        "200ms",
        &["--runq-source", source],
        &format!("runq-{source}-{cpus}"),
    )?;
    let script = format!(
        "for i in $(seq {spinners}); do {} -c 'while :; do :; done' & done; wait",
        spin.display()
    );
    let mut storm = Command::new("taskset")
        .args(["-c", cpus, "unshare", "--mount", "sh", "-c", &script])
        .spawn()
        .context("starting the storm")?;
    let parent = storm.id();
    let children = || -> Vec<u32> {
        fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    for _ in 0..500 {
        if children().len() >= spinners as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut tasks = children();
    tasks.push(parent);
    let key = fs::metadata(format!("/proc/{parent}/ns/mnt"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
    signal(&tasks, "-STOP");
    wait_state(&tasks, true);
    let before: Vec<(u64, u64)> = tasks.iter().map(|&p| schedstat(p)).collect();
    let mut bpftrace = match super::which("bpftrace") {
        Some(bin) => {
            let script = dir.join("runqlat.bt");
            fs::write(&script, RUNQLAT_SCRIPT)?;
            let out = dir.join(format!("bpftrace-{source}-{cpus}.out"));
            let child = Command::new(bin)
                .arg(&script)
                .stdout(fs::File::create(&out)?)
                .stderr(Stdio::null())
                .spawn()?;
            for _ in 0..600 {
                if fs::read_to_string(&out).is_ok_and(|t| t.contains("ready")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Some((child, out))
        }
        None => None,
    };
    // Two whole intervals with the storm stopped: the window starts after the last of them.
    std::thread::sleep(Duration::from_millis(500));
    let start = std::time::SystemTime::now();
    signal(&tasks, "-CONT");
    std::thread::sleep(Duration::from_secs(secs));
    signal(&tasks, "-STOP");
    wait_state(&tasks, true);
    let after: Vec<(u64, u64)> = tasks.iter().map(|&p| schedstat(p)).collect();
    let bpftrace = bpftrace.as_mut().map(|(child, out)| {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let text = fs::read_to_string(out).unwrap_or_default();
        // `print(@sum)` writes "@sum: N".
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (field("@sum:"), field("@n:"))
    });
    std::thread::sleep(Duration::from_millis(600));
    let out = run.stdout.clone();
    run.stop()?;
    signal(&tasks, "-KILL");
    let _ = storm.wait();
    let window_start = start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        - 0.3;
    let (mut sentinel_ns, mut sentinel_waits) = (0.0, 0u64);
    for line in out
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default()
        .lines()
    {
        let Ok(iv) = serde_json::from_str::<sentinel::model::Interval>(line) else {
            continue;
        };
        let ends =
            time::OffsetDateTime::parse(&iv.ts, &time::format_description::well_known::Rfc3339)
                .map_or(0.0, |t| t.unix_timestamp_nanos() as f64 / 1e9);
        if ends < window_start {
            continue;
        }
        for c in iv.containers.iter().filter(|c| c.key == key) {
            sentinel_ns += c.runqueue_latency_us.sum * 1e3;
            sentinel_waits += c.runqueue_latency_us.count;
        }
    }
    Ok(RunqWindow {
        kernel_ns: after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum(),
        kernel_waits: after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum(),
        sentinel_ns,
        sentinel_waits,
        bpftrace,
    })
}

/// The run-queue sums against the kernel's per-task run_delay and bpftrace's runqlat, both
/// sources, one CPU (no migration) and all CPUs (the load balancer moves waiting tasks).
pub fn runq_agreement(ctx: &mut Ctx) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let last = (cpus - 1).to_string();
    let all = format!("0-{}", cpus - 1);
    let secs = if ctx.smoke { 1 } else { 5 };
    let la = loadavg();
    let mut s = format!(
        "## Run-queue waits against the kernel's run_delay and bpftrace\n\nA storm of busy loops (`snt-spin`) and their parent in their own mount namespace, stopped, then run for {secs} s and stopped again; over that window: the growth of the tasks' `run_delay` and timeslice count (`/proc/PID/schedstat`, the kernel's own), sentinel's exact per-container wait sum and count, and bpftrace's runqlat on the same tasks (wakeup or preemption to switch-in). Load average {la}.\n\n| source | CPUs | spinners | kernel waits | kernel run_delay (ms) | sentinel waits | sentinel sum (ms) | apart | bpftrace waits | bpftrace sum (ms) | apart |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for source in ["sched_info", "hash"] {
        for (set, spinners) in [(last.as_str(), 3u32), (all.as_str(), 2 * cpus as u32 + 1)] {
            let w = runq_window(ctx, source, set, spinners, secs)?;
            let apart = |ns: f64| (ns - w.kernel_ns as f64) / w.kernel_ns as f64 * 100.0;
            let (bw, bs, ba) = match w.bpftrace {
                Some((sum, n)) => (
                    n.to_string(),
                    format!("{:.1}", sum as f64 / 1e6),
                    format!("{:+.2}%", apart(sum as f64)),
                ),
                None => ("-".into(), "-".into(), "bpftrace not installed".into()),
            };
            let line = format!(
                "| {source} | {set} | {spinners} | {} | {:.1} | {} | {:.1} | {:+.3}% | {bw} | {bs} | {ba} |\n",
                w.kernel_waits,
                w.kernel_ns as f64 / 1e6,
                w.sentinel_waits,
                w.sentinel_ns / 1e6,
                apart(w.sentinel_ns)
            );
            print!("{line}");
            s.push_str(&line);
        }
    }
    s.push('\n');
    ctx.section(&s);
    Ok(())
}
