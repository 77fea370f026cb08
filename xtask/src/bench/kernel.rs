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
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapInfo, Queue};
use sentinel::collect::bpf_sys::MappedArray;
use sentinel_common::{CONTAINER_FIELDS, IFACE_FIELDS, IfaceKey, dirty_words};

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
        "## Drain cost\n\n`collector.drain_us` of `sentinel run --interval 1s --output json` (one drain: read the per-CPU records and the TCP map, the container and interface entries marked dirty; sample /proc; compute the deltas), maps filled from outside with entries whose values change between drains (every interface; the given share of the (CPU, container) entries). First 3 intervals skipped. Daemon CPU = schedstat run time of all its threads over the window / seconds (drain, output, attribution: everything it does per interval).\n\n| case | CPUs | container entries | interface entries | drains | drain median (us, wall) | min-max (us) | daemon CPU per 1 s interval (us) | load avg |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
            let maps = DaemonMaps::open(pid, cpus, ccap, icap)?;
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

/// One of the daemon's key-to-slot tables (containers or interfaces), opened from outside.
struct Table {
    slots: BpfHashMap<MapData, u64, u32>,
    free: Queue<MapData, u32>,
    keys: Array<MapData, u64>,
    stats: MappedArray,
    dirty: MappedArray,
    /// u64 counters per entry, dirty bitmaps per CPU, entries per CPU.
    fields: usize,
    sets: usize,
    capacity: u32,
}

impl Table {
    fn open(
        found: &mut HashMap<String, MapData>,
        prefix: &str,
        fields: usize,
        sets: u32,
        cpus: usize,
        capacity: u32,
    ) -> Result<Self> {
        let mut take = |suffix: &str| {
            let name = format!("{prefix}_{suffix}");
            found
                .remove(&name)
                .with_context(|| format!("the daemon holds no {name} map"))
        };
        let words = dirty_words(capacity) as usize;
        let stats = MappedArray::map(
            take("STATS")?.fd().as_fd(),
            cpus * capacity as usize * fields * 8,
            true,
        )?;
        let dirty = MappedArray::map(
            take("DIRTY")?.fd().as_fd(),
            cpus * sets as usize * words * 8,
            true,
        )?;
        Ok(Self {
            slots: BpfHashMap::try_from(aya::maps::Map::HashMap(take("SLOTS")?))?,
            free: Queue::try_from(aya::maps::Map::Queue(take("FREE")?))?,
            keys: Array::try_from(aya::maps::Map::Array(take("KEYS")?))?,
            stats,
            dirty,
            fields,
            sets: sets as usize,
            capacity,
        })
    }

    /// Takes up to `count` slots the way the kernel does (a free slot, its key, the key's
    /// entry), for keys `base + i`. The host's own keys hold a few slots already: "full"
    /// takes what is left (the report shows the entries the daemon actually saw).
    fn take(&mut self, count: u32, base: u64) -> Result<Vec<u32>> {
        let mut taken = Vec::new();
        for i in 0..count {
            let key = base + u64::from(i);
            let Ok(slot) = self.free.pop(0) else {
                break;
            };
            self.keys.set(slot, key, 0)?;
            self.slots.insert(key, slot, 0)?;
            taken.push(slot);
        }
        Ok(taken)
    }

    /// Bumps every `stride`-th (CPU, slot) entry of `taken` and marks it dirty.
    fn bump(&self, cpus: usize, taken: &[u32], stride: usize, round: u64) {
        let words = dirty_words(self.capacity) as usize;
        for (n, (cpu, slot)) in (0..cpus)
            .flat_map(|c| taken.iter().map(move |s| (c, *s as usize)))
            .enumerate()
        {
            if n % stride != 0 {
                continue;
            }
            let entry = (cpu * self.capacity as usize + slot) * self.fields;
            self.stats.store_word(entry, round * 1000);
            self.stats.store_word(entry + 1, round);
            let w = cpu * self.sets * words + slot / 64;
            self.dirty
                .store_word(w, self.dirty.word(w) | 1 << (slot % 64));
        }
    }
}

/// The daemon's maps, opened by id from its file descriptors, to fill them from outside.
struct DaemonMaps {
    containers: Table,
    ifaces: Table,
    cpus: usize,
}

impl DaemonMaps {
    fn open(pid: u32, cpus: usize, capacity: u32, iface_capacity: u32) -> Result<Self> {
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
        Ok(Self {
            containers: Table::open(&mut found, "CONTAINER", CONTAINER_FIELDS, 1, cpus, capacity)?,
            ifaces: Table::open(
                &mut found,
                "IFACE",
                IFACE_FIELDS,
                sentinel::collect::slots::IfaceArrays::SETS,
                cpus,
                iface_capacity,
            )?,
            cpus,
        })
    }

    /// Takes `containers` container slots and `ifaces` interface slots, then every 0.5 s
    /// bumps `percent`% of the (CPU, container) entries and every (CPU, interface) entry,
    /// and marks them dirty.
    fn inject(
        mut self,
        containers: u32,
        ifaces: u32,
        percent: usize,
        stop: &AtomicBool,
    ) -> Result<()> {
        // Keys no process or device has: far above any mount namespace inode or cgroup id in
        // use, and namespaces 0x7fff_0000.. with ifindex 1.
        let taken = self.containers.take(containers, 0x5e00_0000_0000)?;
        let itaken = self.ifaces.take(
            ifaces,
            IfaceKey {
                netns: 0x7fff_0000,
                ifindex: 1,
            }
            .packed(),
        )?;
        let stride = 100 / percent.max(1);
        let mut round = 1u64;
        while !stop.load(Ordering::Relaxed) {
            self.containers.bump(self.cpus, &taken, stride, round);
            self.ifaces.bump(self.cpus, &itaken, 1, round);
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
    // Long enough for many roster scans and for what 20 s windows caught unevenly when the
    // roster read /proc (a scan every ~9 s, every fifth one ~3x dearer): they differed by 2 ms.
    let window = if ctx.smoke { 5 } else { 60 };
    // Measured once the detectors' statistical warm-up (150 intervals by default) is over:
    // before it, a series skips its scoring, and the figure would be the warm-up's.
    let settle = if ctx.smoke { 5 } else { 160 };
    let mut sleepers = Sleepers::start(ctx, count)?;
    // The sleepers' own set-up (1000 unshares) must not be in the daemon's window.
    std::thread::sleep(Duration::from_secs(3));
    let mut s = String::new();
    writeln!(
        s,
        "## {count} live containers\n\n{count} processes, each in its own mount namespace (`unshare(CLONE_NEWNS)`: a container key on a cgroup v1 host), each waking every 300 ms (+-10%); `sentinel run --interval 1s --output FORMAT --no-docker` started after them, measured over {window} s after {settle} s (past the detectors' warm-up of 150 intervals; the learned detector is still collecting its first window): once with JSON lines on stdout (every container's record every second, written to a file), once with the shipped default (`output = \"text\"`, one line per interval). Detection series: those the engine tracks (`detect.max_series`, default 4096) and the observations per interval that found the table full.\n\n| stdout | containers | container entries | containers in the last interval | distinct names | detection series (ready / fallback) | overflow per interval | drain median (us) | daemon CPU per 1 s interval (us) | load avg |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for output in ["json", "text"] {
        let running = contenders::start_sentinel_with_output(
            ctx,
            "1s",
            output,
            &[],
            &format!("live-containers-{output}"),
        )?;
        let pid = running.pid().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(settle));
        let la = loadavg();
        let cpu0 = contenders::cpu_time(pid)?.0;
        std::thread::sleep(Duration::from_secs(window));
        let cpu = contenders::cpu_time(pid)?.0.saturating_sub(cpu0) as f64 / window as f64 / 1e3;
        let row = if output == "json" {
            let text = running
                .stdout
                .as_ref()
                .and_then(|p| fs::read_to_string(p).ok())
                .unwrap_or_default();
            let (drains, entries, _) = drain_figures(&running);
            let last: Vec<serde_json::Value> = text
                .lines()
                .rev()
                .skip(1)
                .take(2)
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let containers = last
                .first()
                .and_then(|v| v["containers"].as_array())
                .cloned()
                .unwrap_or_default();
            let names: std::collections::HashSet<&str> = containers
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            let detection = |v: &serde_json::Value, k: &str| v["detection"][k].as_u64();
            let (ready, fallback) = last.first().map_or((0, 0), |v| {
                (
                    detection(v, "ready").unwrap_or(0),
                    detection(v, "fallback").unwrap_or(0),
                )
            });
            // series_overflow counts since the start: the last two intervals' difference.
            let overflow = match (last.first(), last.get(1)) {
                (Some(a), Some(b)) => detection(a, "series_overflow")
                    .zip(detection(b, "series_overflow"))
                    .map_or("-".to_string(), |(a, b)| a.saturating_sub(b).to_string()),
                _ => "-".to_string(),
            };
            format!(
                "| {output} | {count} | {entries} | {} | {} | {ready} / {fallback} | {overflow} | {:.0} | **{cpu:.0}** | {la} |",
                containers.len(),
                names.len(),
                median(&drains)
            )
        } else {
            format!("| {output} | {count} | - | - | - | - | - | - | **{cpu:.0}** | {la} |")
        };
        running.stop()?;
        writeln!(s, "{row}")?;
    }
    sleepers.stop();
    writeln!(s)?;
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

/// exec and exit against the floor plus the task's container key, each attached first on the
/// hook, over `rounds` alternating rounds. Programs on one hook run in attach order and the
/// first one takes the cache misses on the exiting or exec'ing task's namespaces, which the
/// ones after it find warm; and a fork+exec storm of a few thousand events gives a per-run
/// average that moves by tens of ns between runs. So each round runs the storm twice, once
/// with sentinel's programs attached first and once with the floors first (alternating which
/// goes first), and the figure is the median over rounds of each program in its first-attached
/// configuration, with the paired per-round ratios beside it.
pub fn process_events(ctx: &mut Ctx, rounds: usize) -> Result<()> {
    // The registry's exec and exit hooks: (tracepoint, sentinel's program, floor + key).
    let hooks: Vec<(&str, &str, &str)> = ["sched_process_exec", "sched_process_exit"]
        .iter()
        .map(|tp| {
            SENTINEL
                .iter()
                .find(|h| h.tracepoint == *tp)
                .and_then(|h| Some((h.tracepoint, h.program, h.floor_lookup?)))
                .ok_or_else(|| anyhow!("the hook registry has no {tp} with a floor + key"))
        })
        .collect::<Result<_>>()?;
    let pick = |name: &str, _: &str| {
        SENTINEL
            .iter()
            .filter(|h| hooks.iter().any(|k| k.1 == h.program))
            .any(|h| h.floor == Some(name) || h.floor_lookup == Some(name))
    };
    // (sentinel first: sentinel's ns/run, floor+key first: floor+key's ns/run) per hook and round.
    let mut firsts: Vec<[(f64, f64); 2]> = Vec::new();
    let mut seconds: Vec<[(f64, f64); 2]> = Vec::new();
    let mut events = [0u64; 2];
    let la0 = loadavg();
    for round in 0..rounds {
        let mut measured = [[(0.0, 0.0); 2]; 2];
        let orders = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for floors_first in orders {
            let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|e| anyhow!("cannot enable BPF run-time statistics: {e}"))?;
            let early = if floors_first {
                Some(contenders::load_floor(ctx, pick)?)
            } else {
                None
            };
            let sentinel = contenders::start_sentinel(ctx, "1s", &[], "process-events")?;
            let floor = match early {
                Some(f) => f,
                None => contenders::load_floor(ctx, pick)?,
            };
            let names = sentinel_programs(sentinel.pid().unwrap_or(0));
            let before = run_stats();
            Workload::ForkExec.run(ctx)?;
            Workload::ForkExec.run(ctx)?;
            let runs = diff(&before, &run_stats());
            drop(stats);
            sentinel.stop()?;
            for (i, (_, program, keyed)) in hooks.iter().enumerate() {
                let ours = names
                    .iter()
                    .find(|(_, n)| *n == program)
                    .and_then(|(id, _)| per_run(&runs, *id))
                    .ok_or_else(|| anyhow!("{program} did not run"))?;
                let reference = floor
                    .programs
                    .iter()
                    .find(|p| p.0 == *keyed)
                    .and_then(|p| per_run(&runs, p.3))
                    .ok_or_else(|| anyhow!("{keyed} did not run"))?;
                events[i] += ours.0;
                measured[usize::from(floors_first)][i] = (ours.1, reference.1);
            }
            drop(floor);
        }
        // measured[0]: sentinel first; measured[1]: floors first.
        firsts.push([
            (measured[0][0].0, measured[1][0].1),
            (measured[0][1].0, measured[1][1].1),
        ]);
        seconds.push([
            (measured[1][0].0, measured[0][0].1),
            (measured[1][1].0, measured[0][1].1),
        ]);
    }
    let la1 = loadavg();
    let mut s = String::new();
    writeln!(
        s,
        "## exec and exit against the floor plus the task's container key, each attached first\n\n{rounds} rounds; in each, the fork/exec storm ({} fork+exec, twice) runs once with sentinel's programs attached first on the hooks and once with the floors first (the order of the two alternates by round). The first program on a hook takes the cache misses on the task's namespaces: the fair comparison is each program attached first. Median over rounds of that ns/run, the median and range of the per-round ratios; beside it, each program attached second. Load average: {la0} before, {la1} after.\n\n| hook | events | sentinel first ns/run | floor + key first ns/run | ratio of the medians | per-round ratios, median (min-max) | sentinel second | floor + key second |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        Workload::ForkExec.size(ctx.smoke)
    )?;
    for (i, (hook, _, _)) in hooks.iter().enumerate() {
        let ours: Vec<f64> = firsts.iter().map(|r| r[i].0).collect();
        let keyed: Vec<f64> = firsts.iter().map(|r| r[i].1).collect();
        let ratios: Vec<f64> = firsts.iter().map(|r| r[i].0 / r[i].1).collect();
        let (lo, hi) = min_max(&ratios);
        let ours_second: Vec<f64> = seconds.iter().map(|r| r[i].0).collect();
        let keyed_second: Vec<f64> = seconds.iter().map(|r| r[i].1).collect();
        writeln!(
            s,
            "| {hook} | {} | {:.1} | {:.1} | **{:.2}** | {:.2} ({lo:.2}-{hi:.2}) | {:.1} | {:.1} |",
            events[i],
            median(&ours),
            median(&keyed),
            median(&ours) / median(&keyed),
            median(&ratios),
            median(&ours_second),
            median(&keyed_second),
        )?;
    }
    writeln!(s)?;
    ctx.section(&s);
    Ok(())
}
