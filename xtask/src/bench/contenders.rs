//! What a host runs instead of nothing: sentinel, bpftrace doing sentinel's job, node_exporter
//! scraped every second, and the floor programs. Each starts, reports ready, and stops.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, Program, RawTracePoint, TracePoint},
};

use super::Ctx;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sentinel,
    Bpftrace,
    NodeExporter,
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sentinel => "sentinel (1 s interval)",
            Kind::Bpftrace => "bpftrace doing sentinel's job",
            Kind::NodeExporter => "node_exporter scraped every 1 s",
            Kind::Floor => "floor programs (tp_btf, same hooks)",
        }
    }
}

/// The floor programs: (program, attach kind, category, tracepoint).
pub const FLOORS: &[(&str, &str, &str, &str)] = &[
    ("snt_floor_sw", "tp_btf", "sched", "sched_switch"),
    ("snt_floor_wk", "tp_btf", "sched", "sched_wakeup"),
    ("snt_floor_wkn", "tp_btf", "sched", "sched_wakeup_new"),
    ("snt_floor_fork", "tp_btf", "sched", "sched_process_fork"),
    ("snt_floor_exec", "tp_btf", "sched", "sched_process_exec"),
    ("snt_floor_exit", "tp_btf", "sched", "sched_process_exit"),
    ("snt_floor_xmit", "tp_btf", "net", "net_dev_xmit"),
    ("snt_floor_recv", "tp_btf", "net", "netif_receive_skb"),
    ("snt_floor_kfree", "tp_btf", "skb", "kfree_skb"),
    ("snt_floor_rsw", "raw_tp", "sched", "sched_switch"),
    ("snt_floor_rwk", "raw_tp", "sched", "sched_wakeup"),
    ("snt_floor_csw", "tracepoint", "sched", "sched_switch"),
    ("snt_floor_cwk", "tracepoint", "sched", "sched_wakeup"),
    // Cost decomposition (see sentinel-ebpf/src/floor.rs); never part of the floor contender.
    ("snt_floor_wkts", "tp_btf + clock", "sched", "sched_wakeup"),
    (
        "snt_floor_wkhash",
        "tp_btf + clock + hash insert",
        "sched",
        "sched_wakeup",
    ),
    (
        "snt_floor_swhash",
        "tp_btf + clock + hash lookup/delete",
        "sched",
        "sched_switch",
    ),
    (
        "snt_floor_swrq",
        "tp_btf + last_queued and run-queue clock",
        "sched",
        "sched_switch",
    ),
    (
        "snt_floor_swkey",
        "tp_btf + container key + slot lookup",
        "sched",
        "sched_switch",
    ),
    (
        "snt_floor_swslot",
        "tp_btf + record + slot entry + dirty mark",
        "sched",
        "sched_switch",
    ),
    (
        "snt_floor_execkey",
        "tp_btf + the task's container key",
        "sched",
        "sched_process_exec",
    ),
    (
        "snt_floor_exitkey",
        "tp_btf + the task's container key",
        "sched",
        "sched_process_exit",
    ),
    (
        "snt_floor_xmitif",
        "tp_btf + interface cache + slot",
        "net",
        "net_dev_xmit",
    ),
    (
        "snt_floor_recvif",
        "tp_btf + interface cache + slot",
        "net",
        "netif_receive_skb",
    ),
];

pub struct Running {
    pub kind: Kind,
    child: Option<Child>,
    scraper: Option<(Arc<AtomicBool>, JoinHandle<u64>)>,
    floor: Option<Floor>,
    pub stdout: Option<PathBuf>,
}

pub struct Floor {
    _ebpf: Ebpf,
    /// (program, kind, tracepoint, kernel program id)
    pub programs: Vec<(&'static str, &'static str, &'static str, u32)>,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the contender; SIGINT first so it exits the way an operator would stop it.
    pub fn stop(mut self) -> Result<()> {
        if let Some((stop, handle)) = self.scraper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.floor = None;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.scraper {
            stop.store(true, Ordering::Relaxed);
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn start(ctx: &Ctx, kind: Kind) -> Result<Running> {
    match kind {
        Kind::Sentinel => start_sentinel(ctx, "1s", &[], "slowdown"),
        Kind::Bpftrace => start_bpftrace(ctx),
        Kind::NodeExporter => start_node_exporter(),
        Kind::Floor => Ok(Running {
            kind,
            child: None,
            scraper: None,
            floor: Some(load_floor(ctx, |_, kind| kind == "tp_btf")?),
            stdout: None,
        }),
    }
}

/// Starts `sentinel run` with JSON output to a file; ready once its programs are attached.
pub fn start_sentinel(ctx: &Ctx, interval: &str, extra: &[&str], tag: &str) -> Result<Running> {
    start_sentinel_with_output(ctx, interval, "json", extra, tag)
}

/// [`start_sentinel`] with another stdout format (`text`, the shipped default, or `none`).
pub fn start_sentinel_with_output(
    ctx: &Ctx,
    interval: &str,
    output: &str,
    extra: &[&str],
    tag: &str,
) -> Result<Running> {
    let out = ctx.dir.join(format!("sentinel-{tag}.{output}"));
    let log = ctx.dir.join(format!("sentinel-{tag}.log"));
    let child = Command::new(&ctx.sentinel)
        .args([
            "run",
            "--interval",
            interval,
            "--output",
            output,
            "--no-docker",
        ])
        .args(extra)
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&log)?)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", ctx.sentinel.display()))?;
    let mut running = Running {
        kind: Kind::Sentinel,
        child: Some(child),
        scraper: None,
        floor: None,
        stdout: Some(out),
    };
    wait_for(
        &mut running,
        &log,
        "eBPF programs attached",
        Duration::from_secs(60),
    )?;
    Ok(running)
}

/// bpftrace counting the same tracepoints into per-CPU maps (count() and sum() are per-CPU in
/// bpftrace) with the same run-queue latency histogram, printed every second like a daemon
/// would export it. Debian 12's bpftrace 0.17 has no tp_btf probes: classic tracepoints.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sched:sched_switch {
  @switch = count();
  if (args->prev_state == 0) { @start[args->prev_pid] = nsecs; }
  $t = @start[args->next_pid];
  if ($t) { @runq_us = hist((nsecs - $t) / 1000); delete(@start[args->next_pid]); }
}
tracepoint:sched:sched_wakeup { @wakeup = count(); @start[args->pid] = nsecs; }
tracepoint:sched:sched_wakeup_new { @wakeup_new = count(); @start[args->pid] = nsecs; }
tracepoint:sched:sched_process_fork { @fork = count(); }
tracepoint:sched:sched_process_exec { @exec = count(); }
tracepoint:sched:sched_process_exit { @exit = count(); delete(@start[args->pid]); }
tracepoint:net:net_dev_xmit { @tx = count(); @tx_bytes = sum(args->len); }
tracepoint:net:netif_receive_skb { @rx = count(); @rx_bytes = sum(args->len); }
tracepoint:skb:kfree_skb { @drops = count(); }
tracepoint:tcp:tcp_retransmit_skb { @retransmits = count(); }
tracepoint:sock:inet_sock_set_state { @tcp_state[args->newstate] = count(); }
interval:s:1 {
  print(@switch); print(@wakeup); print(@wakeup_new); print(@fork); print(@exec); print(@exit);
  print(@tx); print(@tx_bytes); print(@rx); print(@rx_bytes); print(@drops);
  print(@retransmits); print(@tcp_state); print(@runq_us); clear(@runq_us);
}
END { clear(@start); }
"#;

fn start_bpftrace(ctx: &Ctx) -> Result<Running> {
    let bpftrace = super::which("bpftrace")
        .ok_or_else(|| anyhow!("bpftrace not found (apt-get install bpftrace)"))?;
    let script = ctx.dir.join("sentinel-job.bt");
    fs::write(&script, BPFTRACE_SCRIPT)?;
    let out = ctx.dir.join("bpftrace.out");
    let err = ctx.dir.join("bpftrace.err");
    let child = Command::new(bpftrace)
        .arg(&script)
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?)
        .stdin(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    let mut running = Running {
        kind: Kind::Bpftrace,
        child: Some(child),
        scraper: None,
        floor: None,
        stdout: Some(out.clone()),
    };
    // "Attaching N probes..." comes before the attach; the first print comes after it.
    wait_for(&mut running, &out, "@switch", Duration::from_secs(120))
        .map_err(|e| e.context(format!("bpftrace stderr: {}", super::tail(&err, 5))))?;
    Ok(running)
}

const NODE_EXPORTER_ADDR: &str = "127.0.0.1:19111";

fn start_node_exporter() -> Result<Running> {
    let exporter = super::which("prometheus-node-exporter")
        .or_else(|| super::which("node_exporter"))
        .ok_or_else(|| {
            anyhow!("node_exporter not found (apt-get install prometheus-node-exporter)")
        })?;
    let child = Command::new(exporter)
        .arg(format!("--web.listen-address={NODE_EXPORTER_ADDR}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .context("starting node_exporter")?;
    let mut running = Running {
        kind: Kind::NodeExporter,
        child: Some(child),
        scraper: None,
        floor: None,
        stdout: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape().is_err() {
        if Instant::now() > deadline {
            bail!("node_exporter did not answer on {NODE_EXPORTER_ADDR}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut scrapes = 0;
        let mut next = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                if scrape().is_ok() {
                    scrapes += 1;
                }
                next += Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        scrapes
    });
    running.scraper = Some((stop, handle));
    Ok(running)
}

/// One Prometheus scrape of the whole /metrics page, as a server would do.
fn scrape() -> Result<usize> {
    let mut stream = TcpStream::connect(NODE_EXPORTER_ADDR)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.0 200") && !body.starts_with(b"HTTP/1.1 200") {
        bail!("scrape failed");
    }
    Ok(body.len())
}

fn wait_for(running: &mut Running, file: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if fs::read_to_string(file).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        if let Some(child) = &mut running.child
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "{} exited before it was ready ({status}): {}",
                running.kind.name(),
                super::tail(file, 5)
            );
        }
        if Instant::now() > deadline {
            bail!("{} not ready after {timeout:?}", running.kind.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loads and attaches the floor programs selected by `pick(program, kind)` from the eBPF
/// object (the daemon never attaches them), with the daemon's load-time globals, so the
/// decomposition programs read the same kernel fields. Their own maps get what makes their
/// lookups hit, as the daemon's do on a running host: this host's container key (the
/// interface floors take their slot on their first packet).
pub fn load_floor(ctx: &Ctx, pick: impl Fn(&str, &str) -> bool) -> Result<Floor> {
    use sentinel::collect::{loader, offsets::Offsets};
    let offsets = Offsets::from_file(std::path::Path::new(
        sentinel::collect::offsets::VMLINUX_BTF,
    ))?;
    let key_mode = loader::KeyMode::Auto.resolve();
    let source = loader::RunqSource::Auto.resolve(&offsets)?;
    let ncpu = loader::possible_cpus()?;
    let mut bpf_loader = loader::ebpf_loader(&offsets, key_mode, source, offsets.sock_net);
    loader::size_maps(
        &mut bpf_loader,
        ncpu,
        sentinel_common::CONTAINER_MAP_CAPACITY,
        sentinel_common::IFACE_MAP_CAPACITY,
    )?;
    let mut ebpf = bpf_loader
        .load_file(&ctx.ebpf_object)
        .with_context(|| format!("loading {}", ctx.ebpf_object.display()))?;
    loader::init_maps(
        &mut ebpf,
        ncpu,
        sentinel_common::CONTAINER_MAP_CAPACITY,
        sentinel_common::IFACE_MAP_CAPACITY,
    )?;
    prime_floor_maps(&mut ebpf, key_mode)?;
    let btf = Btf::from_sys_fs().context("kernel BTF")?;
    let mut programs = Vec::new();
    for &(name, kind, category, tracepoint) in FLOORS {
        if !pick(name, kind) {
            continue;
        }
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("{name} missing from the eBPF object: rebuild it"))?;
        match program {
            Program::BtfTracePoint(p) => attach_btf(p, tracepoint, &btf),
            Program::RawTracePoint(p) => attach_raw(p, tracepoint),
            Program::TracePoint(p) => attach_classic(p, category, tracepoint),
            _ => Err(anyhow!("{name}: unexpected program type")),
        }
        .with_context(|| format!("attaching {name} ({kind} {tracepoint})"))?;
        let id = program.info()?.id();
        programs.push((name, kind, tracepoint, id));
    }
    Ok(Floor {
        _ebpf: ebpf,
        programs,
    })
}

fn prime_floor_maps(ebpf: &mut Ebpf, key_mode: sentinel::collect::loader::KeyMode) -> Result<()> {
    use aya::maps::HashMap as BpfHashMap;
    // The interface floor takes its slot from the free queue on its first packet, as the
    // daemon does, and finds it in the CPU's cache from then on.
    let mut slots: BpfHashMap<_, u64, u32> = BpfHashMap::try_from(
        ebpf.map_mut("CONTAINER_SLOTS")
            .context("CONTAINER_SLOTS missing")?,
    )?;
    if let Some(key) = sentinel::containers::procfs::key_of_pid(key_mode, std::process::id()) {
        slots.insert(key, 0, 0)?;
    }
    Ok(())
}

fn attach_btf(p: &mut BtfTracePoint, tracepoint: &str, btf: &Btf) -> Result<()> {
    p.load(tracepoint, btf)?;
    p.attach()?;
    Ok(())
}

fn attach_raw(p: &mut RawTracePoint, tracepoint: &str) -> Result<()> {
    p.load()?;
    p.attach(tracepoint)?;
    Ok(())
}

fn attach_classic(p: &mut TracePoint, category: &str, tracepoint: &str) -> Result<()> {
    p.load()?;
    p.attach(category, tracepoint)?;
    Ok(())
}

/// CPU time (ns, all threads, from schedstat) and clock ticks (utime + stime) of a process.
pub fn cpu_time(pid: u32) -> Result<(u64, u64)> {
    let mut ns = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(s) = fs::read_to_string(path) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces: utime and stime are 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((ns, ticks))
}

/// VmRSS and VmHWM in kB.
pub fn memory_kb(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
