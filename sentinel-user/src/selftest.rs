//! `sentinel selftest` (hidden): the kernel-dependent checks of the portability matrix, run by
//! `cargo xtask vmtest` inside QEMU guests booted from other kernels and on the host. Each check
//! prints one machine-readable line `VMTEST <kernel> <check> PASS|FAIL <detail>` on stdout; the
//! exit status is non-zero if any check failed.
//!
//! It loads the same programs as `sentinel run`, makes one synthetic event of each kind in this
//! process and reads the deltas straight from the collector, so a failure names the kernel
//! feature that broke rather than a daemon symptom.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use sentinel::collect::{
    drain::{Drain, DrainDelta, RawSnapshot},
    loader::{Collector, HOOKS, LoadOptions},
    netns, offsets, tasks, tracefs,
};
use sentinel::containers::procfs;
use sentinel::privilege;
use sentinel_common::{ContainerKey, counter};

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// Kernel label on every line (default: the running kernel's release).
    #[arg(long)]
    label: Option<String>,
    /// Fail unless possible CPUs outnumber online CPUs (guests started with maxcpus > smp),
    /// and take a CPU offline and back during the run.
    #[arg(long)]
    cpu_hotplug: bool,
    /// Drop every capability after attach and check that draining still works (row P3).
    #[arg(long)]
    drop_caps: bool,
    /// Provoke the OOM killer with a child that allocates until killed. Guests only: never on
    /// a shared host.
    #[arg(long)]
    oom: bool,
    /// Step the wall clock +1 h and -1 h while a breaker is OPEN and a back-off holds (row
    /// P6). Guests only: never on a shared host.
    #[arg(long)]
    clock_jump: bool,
}

/// Set in the child that `--oom` starts: it allocates until the OOM killer ends it.
const OOM_CHILD: &str = "SENTINEL_SELFTEST_OOM_CHILD";

struct Report {
    kernel: String,
    passed: u32,
    failed: u32,
}

impl Report {
    fn line(&mut self, check: &str, ok: bool, detail: impl AsRef<str>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        // One line per check whatever the detail holds: the console is parsed line by line.
        let detail = detail.as_ref().replace(['\n', '\r'], " | ");
        let verdict = if ok { "PASS" } else { "FAIL" };
        println!("VMTEST {} {check} {verdict} {detail}", self.kernel);
        let _ = std::io::stdout().flush();
    }
}

pub fn run(args: &SelftestArgs) -> Result<bool> {
    if std::env::var_os(OOM_CHILD).is_some() {
        allocate_until_killed();
    }
    let kernel = args.label.clone().unwrap_or_else(|| {
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    });
    let mut r = Report {
        kernel,
        passed: 0,
        failed: 0,
    };
    let result = checks(args, &mut r);
    if let Err(e) = &result {
        r.line("selftest", false, format!("aborted: {e:#}"));
    }
    let ok = r.failed == 0;
    r.line(
        "summary",
        ok,
        format!("passed={} failed={}", r.passed, r.failed),
    );
    Ok(ok)
}

fn checks(args: &SelftestArgs, r: &mut Report) -> Result<()> {
    // First: it needs CAP_SYS_TIME, which `--drop-caps` takes away later.
    if args.clock_jump {
        match clock_jump() {
            Ok((ok, detail)) => r.line("clock_jump", ok, detail),
            Err(e) => r.line("clock_jump", false, format!("{e:#}")),
        }
    }
    let tracefs_before = tracefs::find();

    let btf = Path::new(offsets::VMLINUX_BTF);
    match offsets::Offsets::from_file(btf) {
        Ok(o) => r.line(
            "btf_offsets",
            true,
            format!(
                "task_pid={} task_state={} skb_len={} skb_dev={} dev_ifindex={} dev_nd_net={} sock_net={} task_cgroups={}",
                o.task_pid,
                o.task_state,
                o.skb_len,
                o.skb_dev,
                o.dev_ifindex,
                o.dev_nd_net,
                o.sock_net,
                o.task_cgroups
            ),
        ),
        Err(e) => r.line("btf_offsets", false, format!("{e:#}")),
    }

    let mut collector = Collector::load(&LoadOptions::default()).context("loading")?;

    // K3 on a fresh boot: sentinel mounts tracefs itself when it can.
    let tracefs_after = tracefs::find();
    // Under lockdown=confidentiality tracefs mounts but stays unreadable (row P7): expected.
    let lockdown = lockdown_mode();
    let locked = lockdown.as_deref() == Some("confidentiality");
    r.line(
        "tracefs",
        tracefs_after.is_some() || locked,
        match (&tracefs_before, &tracefs_after) {
            (None, Some(p)) => format!("not mounted at start; sentinel mounted {}", p.display()),
            (Some(p), _) => format!("already mounted at {}", p.display()),
            (None, None) if locked => {
                "unreadable under lockdown=confidentiality (expected; BTF tracepoints need no tracefs)"
                    .into()
            }
            (None, None) => "not mounted and sentinel could not mount it".into(),
        },
    );
    for hook in HOOKS {
        let disabled = collector
            .disabled
            .iter()
            .find(|d| d.program == hook.program);
        r.line(
            &format!("attach:{}", hook.program),
            disabled.is_none(),
            match disabled {
                None => format!("{}:{}", hook.category, hook.tracepoint),
                Some(d) => d.reason.clone(),
            },
        );
    }

    let mut reader = Reader::default();
    reader.step(&mut collector)?; // baseline

    // Possible versus online CPUs: per-CPU values must come one per possible CPU.
    let possible = cpu_count("/sys/devices/system/cpu/possible");
    let online = cpu_count("/sys/devices/system/cpu/online");
    let mut probe = RawSnapshot::default();
    collector.snapshot(&mut probe)?;
    let values = probe.cpus.len();
    let sized_ok = Some(values) == possible;
    let spread_ok = !args.cpu_hotplug || matches!((possible, online), (Some(p), Some(o)) if p > o);
    r.line(
        "cpus_possible_gt_online",
        sized_ok && spread_ok,
        format!(
            "possible={} online={} per_cpu_values={values}{}",
            fmt_opt(possible),
            fmt_opt(online),
            if args.cpu_hotplug {
                ""
            } else {
                " (possible > online not required on this kernel)"
            }
        ),
    );

    reader.step(&mut collector)?;
    ping_pong(2_000);
    let d = reader.step(&mut collector)?;
    let switches = d.counters[counter::SCHED_SWITCH];
    let wakeups = d.counters[counter::SCHED_WAKEUP];
    let waits: u64 = d.hist.iter().sum();
    r.line(
        "sched_switch",
        switches >= 2_000 && wakeups > 0 && waits > 0,
        format!(
            "2000 pipe round trips: sched_switch={switches} sched_wakeup={wakeups} run-queue \
             waits={waits} (source {}, {} us in all)",
            collector.runq_source.as_str(),
            d.runq_wait_ns / 1000
        ),
    );

    const PROCS: u64 = 20;
    let mut spawned = 0;
    for _ in 0..PROCS {
        if Command::new("/bin/true")
            .status()
            .is_ok_and(|s| s.success())
        {
            spawned += 1;
        }
    }
    let d = reader.step(&mut collector)?;
    let (fork, exec, exit) = (
        d.counters[counter::PROCESS_FORK],
        d.counters[counter::PROCESS_EXEC],
        d.counters[counter::PROCESS_EXIT],
    );
    r.line(
        "fork_exec_exit",
        spawned == PROCS && fork >= PROCS && exec >= PROCS && exit >= PROCS,
        format!("{spawned} of {PROCS} /bin/true ran: fork={fork} exec={exec} exit={exit}"),
    );

    // Threads of this process that the iterator must leave out.
    let idle =
        [(); 2].map(|_| std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500))));
    let mode = collector.key_mode;
    let key_of_pid = |pid| procfs::key_of_pid(mode, pid);
    let agreed = match &collector.tasks {
        Ok(t) => agrees_with_proc(t, key_of_pid),
        Err(e) => Err(format!("not loaded: {e}")),
    };
    r.line(
        "task_iterator",
        agreed.is_ok(),
        match agreed {
            Ok(s) | Err(s) => s,
        },
    );
    for t in idle {
        let _ = t.join();
    }

    const DATAGRAMS: u64 = 1_000;
    udp_over_lo(DATAGRAMS)?;
    let d = reader.step(&mut collector)?;
    let own = netns::own_namespace();
    let lo = d
        .ifaces
        .iter()
        .find(|i| Some(i.netns) == own && &*i.name == "lo");
    let (lo_rx, lo_tx) = lo.map_or((0, 0), |i| (i.rx_packets, i.tx_packets));
    let (rx, tx) = (
        d.counters[counter::NET_RX_PACKETS],
        d.counters[counter::NET_TX_PACKETS],
    );
    r.line(
        "packets",
        rx >= DATAGRAMS && tx >= DATAGRAMS && lo_rx >= DATAGRAMS && lo_tx >= DATAGRAMS,
        format!(
            "{DATAGRAMS} UDP datagrams over lo: net_rx_packets={rx} net_tx_packets={tx} lo rx={lo_rx} tx={lo_tx}"
        ),
    );

    const DROPS: u64 = 100;
    udp_to_closed_port(DROPS)?;
    let d = reader.step(&mut collector)?;
    let drops = d.counters[counter::SKB_DROPS];
    r.line(
        "skb_drops",
        drops >= DROPS,
        format!("{DROPS} UDP datagrams to a closed port on lo: skb_drops={drops}"),
    );

    const CONNECTS: u64 = 10;
    let refused = tcp_to_closed_port(CONNECTS)?;
    let d = reader.step(&mut collector)?;
    let (resets, failed) = (
        d.counters[counter::TCP_RESETS],
        d.counters[counter::TCP_CONN_FAILED],
    );
    r.line(
        "tcp_reset_failed",
        refused == CONNECTS && resets >= CONNECTS && failed >= CONNECTS,
        format!(
            "{refused} of {CONNECTS} connects to a closed port refused: tcp_resets={resets} tcp_conn_failed={failed}"
        ),
    );

    tcp_connection()?;
    let d = reader.step(&mut collector)?;
    let (opened, closed) = (
        d.counters[counter::TCP_CONN_OPENED],
        d.counters[counter::TCP_CONN_CLOSED],
    );
    r.line(
        "tcp_open_close",
        opened >= 2 && closed >= 2,
        format!("one loopback connection: tcp_conn_opened={opened} tcp_conn_closed={closed}"),
    );

    if args.oom {
        match oom_kill() {
            Ok(status) => {
                let d = reader.step(&mut collector)?;
                let kills = d.counters[counter::OOM_KILLS];
                r.line(
                    "oom_kill",
                    kills >= 1,
                    format!("child allocating until killed ended with {status}: oom_kills={kills}"),
                );
            }
            Err(e) => r.line("oom_kill", false, format!("{e:#}")),
        }
    }

    if args.cpu_hotplug {
        let before = *reader.drain.cumulative();
        let result = cpu_offline_online(|| reader.step(&mut collector));
        let after = *reader.drain.cumulative();
        let kept = (0..counter::COUNT).all(|i| after[i] >= before[i]);
        match result {
            Ok((reset, switches)) => r.line(
                "cpu_offline",
                !reset && kept && switches > 0,
                format!(
                    "cpu1 offline then online: no reset={} cumulative kept={kept} sched_switch meanwhile={switches}",
                    !reset
                ),
            ),
            Err(e) => r.line("cpu_offline", false, format!("{e:#}")),
        }
    }

    if args.drop_caps {
        // The daemon's own drop (`--drop-capabilities`), minus CAP_SYS_PTRACE (the selftest
        // reads no /proc/PID/ns): nothing, or CAP_BPF where map reads need it (Linux 5.10).
        let need_bpf = collector.map_reads_need_privilege()?;
        let keep: &[privilege::Cap] = if need_bpf {
            &[privilege::Cap::CAP_BPF]
        } else {
            &[]
        };
        let expected = keep.iter().fold(0u64, |m, c| m | c.bitmask());
        let dropped = privilege::drop_all_but(keep);
        let eff = privilege::effective();
        udp_over_lo(DATAGRAMS)?;
        let drained = reader.step(&mut collector);
        let counted = drained
            .as_ref()
            .map(|d| d.counters[counter::NET_TX_PACKETS])
            .unwrap_or(0);
        // The roster reads the task iterator after the daemon's drop.
        let iterated = collector.tasks.as_ref().map_or(Ok(0), |t| {
            let (mut buf, mut seen) = (Vec::new(), Vec::new());
            t.snapshot(&mut buf, &mut seen).map(|()| seen.len())
        });
        r.line(
            "caps_dropped",
            dropped.is_ok() && eff == Some(expected) && counted >= DATAGRAMS && iterated.is_ok(),
            format!(
                "drop (map reads need CAP_BPF: {need_bpf}): {} CapEff={} then {DATAGRAMS} datagrams drained: net_tx_packets={counted}{}; task iterator: {}",
                dropped
                    .as_ref()
                    .map_or_else(|e| format!("{e:#}"), |_| "ok".into()),
                eff.map_or("?".into(), |e| format!("{e:016x}")),
                drained.err().map_or(String::new(), |e| format!(" ({e:#})")),
                match iterated {
                    Ok(n) => format!("{n} processes"),
                    Err(e) => format!("failed: {e}"),
                }
            ),
        );
    }

    collector.detach();
    Ok(())
}

/// Row P6: breaker and back-off run on the monotonic clock, so stepping the wall clock by an
/// hour either way neither ends an OPEN wait early nor stretches it; audit timestamps follow the
/// wall clock. Uses the real clocks (no injected time): that is the point.
fn clock_jump() -> Result<(bool, String)> {
    use nix::time::{ClockId, clock_gettime, clock_settime};
    use sentinel::heal::{
        audit::now_rfc3339,
        backoff::Backoff,
        breaker::{Breaker, BreakerState, Outcome},
        config::{BackoffConfig, BreakerConfig},
    };
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(2);
    let step = |secs: i64| -> Result<()> {
        let now = clock_gettime(ClockId::CLOCK_REALTIME)?;
        let to = nix::sys::time::TimeSpec::new(now.tv_sec() + secs, now.tv_nsec());
        clock_settime(ClockId::CLOCK_REALTIME, to).context("clock_settime(CLOCK_REALTIME)")?;
        Ok(())
    };
    let wall = || {
        clock_gettime(ClockId::CLOCK_REALTIME)
            .map(|t| t.tv_sec())
            .unwrap_or(0)
    };
    let mut breaker = Breaker::new(&BreakerConfig {
        failure_threshold: 1,
        open_secs: WAIT.as_secs_f64(),
        ..BreakerConfig::default()
    });
    let mut backoff = Backoff::new(&BackoffConfig {
        initial_secs: WAIT.as_secs_f64(),
        ..BackoffConfig::default()
    });
    let trial = breaker
        .try_begin(Instant::now())
        .map_err(|s| anyhow::anyhow!("breaker refused in {s:?}"))?;
    let opened = Instant::now();
    breaker.record(opened, trial, Outcome::Failure);
    backoff.record_action(opened);
    let (wall0, ts0) = (wall(), now_rfc3339());
    step(3600)?;
    let (wall_fwd, ts_fwd) = (wall(), now_rfc3339());
    let after_fwd = (
        breaker.tick(Instant::now()),
        backoff.check(Instant::now()).is_err(),
    );
    step(-7200)?;
    let (wall_back, ts_back) = (wall(), now_rfc3339());
    let after_back = (
        breaker.tick(Instant::now()),
        backoff.check(Instant::now()).is_err(),
    );
    step(3600)?;
    // The OPEN wait ends on time, neither an hour early nor an hour late.
    let mut half_open_after = None;
    while opened.elapsed() < WAIT * 3 {
        if breaker.tick(Instant::now()).is_some() {
            half_open_after = Some(opened.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let backoff_over = backoff.check(Instant::now()).is_ok();
    let ok = after_fwd.0.is_none()
        && after_fwd.1
        && after_back.0.is_none()
        && after_back.1
        && breaker.state() == BreakerState::HalfOpen
        && half_open_after.is_some_and(|d| d >= WAIT && d < WAIT + Duration::from_millis(500))
        && backoff_over
        && (wall_fwd - wall0 - 3600).abs() <= 1
        && (wall_back - wall0 + 3600).abs() <= 1
        && ts_fwd > ts0
        && ts_back < ts0;
    Ok((
        ok,
        format!(
            "wall +1h: breaker {:?} backoff holds={}; wall -1h: breaker {:?} backoff holds={}; \
             HALF_OPEN after {half_open_after:?} (wait {WAIT:?}); backoff over={backoff_over}; \
             audit ts {ts0} -> {ts_fwd} -> {ts_back}",
            after_fwd.0.map(|t| t.to),
            after_fwd.1,
            after_back.0.map(|t| t.to),
            after_back.1,
        ),
    ))
}

#[derive(Default)]
struct Reader {
    drain: Drain,
    snap: RawSnapshot,
}

impl Reader {
    fn step(&mut self, collector: &mut Collector) -> Result<DrainDelta> {
        collector.snapshot(&mut self.snap)?;
        Ok(self.drain.apply(&self.snap))
    }
}

/// Runs a child that allocates until the OOM killer picks it; this process is exempted first.
fn oom_kill() -> Result<std::process::ExitStatus> {
    std::fs::write("/proc/self/oom_score_adj", "-1000").context("exempting selftest from OOM")?;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .arg("selftest")
        .env(OOM_CHILD, "1")
        .status()
        .context("starting the OOM child")
}

fn allocate_until_killed() -> ! {
    // The parent's -1000 is inherited: undo it, or nothing is killable and the kernel panics.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page: untouched allocations cost no memory.
        hoard.push(vec![0x5a; 8 << 20]);
        std::hint::black_box(&hoard);
        if hoard.len() > 1 << 14 {
            // 128 GiB without being killed: something is wrong; give up rather than hang.
            std::process::exit(3);
        }
    }
}

/// The active mode in `/sys/kernel/security/lockdown` (`none [integrity] confidentiality`).
fn lockdown_mode() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let start = text.find('[')? + 1;
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_string())
}

fn fmt_opt(v: Option<usize>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// Number of CPUs in a sysfs CPU list such as `0-3` or `0,2-3`.
fn cpu_count(path: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => 1,
        };
    }
    Some(n)
}

/// Takes cpu1 offline, makes switches, drains, brings it back; returns (reset seen, switches).
fn cpu_offline_online(mut step: impl FnMut() -> Result<DrainDelta>) -> Result<(bool, u64)> {
    let online = "/sys/devices/system/cpu/cpu1/online";
    std::fs::write(online, "0").with_context(|| format!("writing 0 to {online}"))?;
    ping_pong(200);
    let offline = step();
    std::fs::write(online, "1").with_context(|| format!("writing 1 to {online}"))?;
    let offline = offline?;
    ping_pong(200);
    let back = step()?;
    Ok((
        offline.reset || back.reset,
        offline.counters[counter::SCHED_SWITCH] + back.counters[counter::SCHED_SWITCH],
    ))
}

/// Pipe ping-pong with a thread: every round trip is at least two context switches when both
/// share a CPU, and at least two wake-ups either way.
fn ping_pong(round_trips: u32) {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let peer = std::thread::spawn(move || {
        let mut byte = [0u8];
        for _ in 0..round_trips {
            if b.read_exact(&mut byte).is_err() || b.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut byte = [1u8];
    for _ in 0..round_trips {
        if a.write_all(&byte).is_err() || a.read_exact(&mut byte).is_err() {
            break;
        }
    }
    let _ = peer.join();
}

fn udp_over_lo(n: u64) -> Result<()> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_nonblocking(true)?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    let mut buf = [0u8; 64];
    for i in 0..n {
        tx.send(&[0x5a; 16])?;
        if i % 32 == 0 {
            while rx.recv(&mut buf).is_ok() {}
        }
    }
    while rx.recv(&mut buf).is_ok() {}
    Ok(())
}

/// A port nobody listens on: bind one, note it, close it.
fn closed_port_udp() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn udp_to_closed_port(n: u64) -> Result<()> {
    let port = closed_port_udp()?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    // Not connected: a connected socket would stop at the ICMP error the first drop returns.
    for _ in 0..n {
        let _ = tx.send_to(&[0u8; 8], ("127.0.0.1", port));
    }
    Ok(())
}

fn tcp_to_closed_port(n: u64) -> Result<u64> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut refused = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            _ => {}
        }
    }
    Ok(refused)
}

fn tcp_connection() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"x")?;
    let mut byte = [0u8];
    server.read_exact(&mut byte)?;
    drop(client);
    drop(server);
    // Let both sides reach CLOSE (FIN exchange over lo is immediate; no TIME_WAIT on the
    // server side's set_state to CLOSE is needed for the count).
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// Compares one snapshot of the task iterator with /proc: every process /proc lists both
/// before and after the snapshot is in it with /proc's key, and no thread other than a leader
/// is. `key_of_pid` gives /proc's key of a PID. Returns a one-line summary, or what
/// disagreed.
fn agrees_with_proc(
    tasks: &tasks::TaskIterator,
    key_of_pid: impl Fn(u32) -> Option<ContainerKey>,
) -> Result<String, String> {
    use std::collections::{HashMap, HashSet};
    let proc_pids = || -> HashSet<u32> { procfs::pids().collect() };
    let before: HashMap<u32, Option<ContainerKey>> = proc_pids()
        .into_iter()
        .map(|p| (p, key_of_pid(p)))
        .collect();
    let (mut buf, mut seen) = (Vec::new(), Vec::new());
    tasks
        .snapshot(&mut buf, &mut seen)
        .map_err(|e| format!("snapshot: {e}"))?;
    let after = proc_pids();
    let snapshot: HashMap<u32, ContainerKey> = seen.iter().copied().collect();
    if snapshot.len() != seen.len() {
        return Err(format!(
            "{} entries for {} PIDs",
            seen.len(),
            snapshot.len()
        ));
    }
    let mut compared = 0;
    for (pid, key) in &before {
        // Gone or changed during the snapshot, or no key to compare (a zombie, say).
        let Some(key) = key else { continue };
        if !after.contains(pid) || key_of_pid(*pid) != Some(*key) {
            continue;
        }
        match snapshot.get(pid) {
            Some(k) if k == key => compared += 1,
            Some(k) => return Err(format!("PID {pid}: key {k}, /proc says {key}")),
            None => return Err(format!("PID {pid} (key {key}) is missing")),
        }
    }
    let me = std::process::id();
    let threads: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|t| *t != me)
        .collect();
    if let Some(t) = threads.iter().find(|t| snapshot.contains_key(t)) {
        return Err(format!("thread {t} of PID {me} is listed as a process"));
    }
    if !snapshot.contains_key(&me) {
        return Err(format!("this process ({me}) is missing"));
    }
    Ok(format!(
        "{} processes, {compared} compared with /proc, same keys; {} other threads of this \
         process left out",
        seen.len(),
        threads.len()
    ))
}
