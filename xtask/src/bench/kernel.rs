//! Kernel cost per event (bpf_stats) and the daemon's drain time with full maps.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{MapData, MapInfo, PerCpuHashMap, PerCpuValues};
use sentinel_common::{ContainerStats, IfaceKey, IfaceStats};

use super::{
    Ctx,
    contenders::{self, FLOORS},
    loadavg, median, min_max,
    workers::WORKLOADS,
};

/// Sentinel's programs in the order the daemon loads them (its HOOKS list), with the floor
/// program on the same hook. The kernel cuts program names at 15 characters, which makes
/// e.g. the three `snt_sched_process_*` alike; the load order tells them apart.
const SENTINEL: &[(&str, Option<&str>)] = &[
    ("snt_sched_switch", Some("snt_floor_sw")),
    ("snt_sched_wakeup", Some("snt_floor_wk")),
    ("snt_sched_wakeup_new", Some("snt_floor_wkn")),
    ("snt_sched_process_fork", Some("snt_floor_fork")),
    ("snt_sched_process_exec", Some("snt_floor_exec")),
    ("snt_sched_process_exit", Some("snt_floor_exit")),
    ("snt_oom_mark_victim", None),
    ("snt_net_dev_xmit", Some("snt_floor_xmit")),
    ("snt_netif_receive_skb", Some("snt_floor_recv")),
    ("snt_tcp_retransmit_skb", None),
    ("snt_inet_sock_set_state", None),
    ("snt_kfree_skb", Some("snt_floor_kfree")),
    ("snt_tcp_send_reset", None),
    ("snt_tcp_receive_reset", None),
];

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
fn run_stats() -> HashMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            (
                p.id(),
                (
                    p.name_as_str().unwrap_or("?").to_string(),
                    p.run_time().as_nanos() as u64,
                    p.run_count(),
                ),
            )
        })
        .collect()
}

pub fn per_event(ctx: &mut Ctx) -> Result<()> {
    // Run-time statistics only while this descriptor is open (5.8+), so they cannot stay on.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow!("cannot enable BPF run-time statistics: {e}"))?;
    let sentinel = contenders::start_sentinel(ctx, "1s", &[], "kernel")?;
    let floor_running = contenders::load_floor(ctx, |_, _| true)?;
    let pid = sentinel.pid().unwrap_or(0);
    let mut names: HashMap<u32, &str> = HashMap::new();
    let all = run_stats();
    let mut expected = SENTINEL.iter();
    for id in held_ids(pid, "prog_id:") {
        let Some((kname, _, _)) = all.get(&id) else {
            continue;
        };
        for (full, _) in expected.by_ref() {
            if full.starts_with(kname.as_str()) {
                names.insert(id, full);
                break;
            }
        }
    }
    let la0 = loadavg();
    let before = run_stats();
    for w in WORKLOADS {
        w.run(ctx)?;
    }
    let after = run_stats();
    let la1 = loadavg();
    drop(stats);
    sentinel.stop()?;
    let per_run = |id: u32| -> Option<(u64, f64)> {
        let (_, t1, c1) = after.get(&id)?;
        let (_, t0, c0) = before.get(&id)?;
        let n = c1 - c0;
        (n > 0).then(|| (n, (t1 - t0) as f64 / n as f64))
    };
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
        "## Kernel cost per event\n\n`kernel.bpf_stats_enabled` on (BPF_ENABLE_STATS descriptor), sentinel and the floor programs attached at the same time, one run of each workload. ns/run = run_time_ns / run_cnt over the workloads (stats overhead included in both). Load average: {la0} before, {la1} after.\n\n| hook | sentinel program | runs | sentinel ns/run | floor (tp_btf) ns/run | ratio |\n|---|---|---:|---:|---:|---:|"
    )?;
    let mut by_name: Vec<(&str, u32)> = names.iter().map(|(id, n)| (*n, *id)).collect();
    by_name.sort_by_key(|(n, _)| SENTINEL.iter().position(|(s, _)| s == n));
    for (name, id) in by_name {
        let floor = SENTINEL
            .iter()
            .find(|(s, _)| *s == name)
            .and_then(|(_, f)| *f);
        let hook = name.trim_start_matches("snt_");
        match per_run(id) {
            Some((n, ns)) => {
                let f = floor.and_then(floor_id).and_then(per_run);
                let (fs, ratio) = match f {
                    Some((_, f)) => (format!("{f:.1}"), format!("**{:.2}**", ns / f)),
                    None => ("-".into(), "-".into()),
                };
                writeln!(s, "| {hook} | {name} | {n} | {ns:.1} | {fs} | {ratio} |")?;
            }
            None => writeln!(s, "| {hook} | {name} | 0 | - | - | - |")?,
        }
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
                .and_then(per_run)
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
            .and_then(per_run);
        if let Some((n, ns)) = floor_id(f.0).and_then(per_run) {
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

/// Fills the daemon's CONTAINERS and IFACES maps with entries whose values change every
/// injection round, so the daemon keeps them (it only retires entries idle for a whole
/// interval), and reads the daemon's own `collector.drain_us`.
pub fn drain(ctx: &mut Ctx) -> Result<()> {
    let scale = if ctx.smoke { 10 } else { 1 };
    let cases: [(&str, u32, u32); 3] = [
        ("default capacities, maps as the host fills them", 0, 0),
        (
            "default capacities (1024 / 4096), both maps full",
            1024,
            4096,
        ),
        (
            "10 000 containers, 4096 interfaces, both full",
            10_000,
            4096,
        ),
    ];
    let window = if ctx.smoke { 4 } else { 15 };
    let mut s = String::from(
        "## Drain cost\n\n`collector.drain_us` of `sentinel run --interval 1s --output json` (one drain: read every kernel map, sample /proc, compute the deltas), maps filled from outside with entries whose values change between drains. First 3 intervals skipped. Daemon CPU = schedstat run time of all its threads over the window / seconds (drain, output, attribution: everything it does per interval).\n\n| case | CPUs | container entries | interface entries | drains | drain median (us, wall) | min-max (us) | daemon CPU per 1 s interval (us) | load avg |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let cpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?;
    for (label, containers, ifaces) in cases {
        let containers = containers / scale;
        let ifaces = ifaces / scale;
        let ccap = containers.max(sentinel_common::CONTAINER_MAP_CAPACITY);
        let icap = ifaces.max(sentinel_common::IFACE_MAP_CAPACITY);
        let (cs, is) = (ccap.to_string(), icap.to_string());
        let tag = format!("drain-{containers}-{ifaces}");
        let running = contenders::start_sentinel(
            ctx,
            "1s",
            &["--container-capacity", &cs, "--iface-capacity", &is],
            &tag,
        )?;
        let pid = running.pid().unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let injector = if containers + ifaces > 0 {
            let (cmap, imap) = daemon_maps(pid)?;
            let flag = stop.clone();
            Some(std::thread::spawn(move || {
                inject(cmap, imap, containers, ifaces, cpus, &flag)
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
        let out = running.stdout.clone();
        running.stop()?;
        let text = out
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        let mut drains = Vec::new();
        let (mut ce, mut ie) = (0u64, 0u64);
        for line in text.lines().skip(3) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let c = &v["collector"];
            if c["final"].as_bool() == Some(true) || !v["final_totals"].is_null() {
                continue; // the final drain runs after detaching
            }
            if let Some(us) = c["drain_us"].as_u64() {
                drains.push(us as f64);
                ce = ce.max(c["container_entries"].as_u64().unwrap_or(0));
                ie = ie.max(c["iface_entries"].as_u64().unwrap_or(0));
            }
        }
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

type ContainerMap = PerCpuHashMap<MapData, u64, ContainerStats>;
type IfaceMap = PerCpuHashMap<MapData, IfaceKey, IfaceStats>;

fn daemon_maps(pid: u32) -> Result<(ContainerMap, IfaceMap)> {
    let mut containers = None;
    let mut ifaces = None;
    for id in held_ids(pid, "map_id:") {
        let Ok(info) = MapInfo::from_id(id) else {
            continue;
        };
        match info.name_as_str() {
            Some("CONTAINERS") => containers = Some(MapData::from_id(id)?),
            Some("IFACES") => ifaces = Some(MapData::from_id(id)?),
            _ => {}
        }
    }
    let containers = containers.context("the daemon holds no CONTAINERS map")?;
    let ifaces = ifaces.context("the daemon holds no IFACES map")?;
    Ok((
        PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(containers))?,
        PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(ifaces))?,
    ))
}

fn inject(
    mut cmap: ContainerMap,
    mut imap: IfaceMap,
    containers: u32,
    ifaces: u32,
    cpus: usize,
    stop: &AtomicBool,
) -> Result<()> {
    let mut round = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let mut stats: ContainerStats = bytemuck::Zeroable::zeroed();
        stats.cpu_ns = round * 1000;
        stats.switches = round;
        for i in 0..containers {
            let values = PerCpuValues::try_from(vec![stats; cpus])?;
            // Keys no process has: far above any mount namespace inode or cgroup id in use.
            let _ = cmap.insert(0x5e00_0000_0000 + u64::from(i), values, 0);
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
            let values = PerCpuValues::try_from(vec![istats; cpus])?;
            let key = IfaceKey {
                netns: 0x7fff_0000 + i,
                ifindex: 1,
            };
            let _ = imap.insert(key, values, 0);
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
