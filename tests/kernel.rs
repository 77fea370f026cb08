//! Privileged tests of the kernel and process rows of the fault matrix (FAULT-MATRIX.md 2.3)
//! on the host kernel. The same kernel-dependent checks repeat on Debian's 6.1 and 6.12
//! kernels under QEMU through `cargo xtask vmtest` (layer V).
//!
//! Rows covered elsewhere, not repeated here:
//! - K1 missing tracepoint: tests/collector.rs `missing_tracepoint_disables_one_signal_only`
//!   (K2, a program the verifier rejects, is here).
//! - K8 interface map full: tests/collector.rs `full_interface_map_counts_overflow_and_keeps_totals_exact`.
//! - K10 counter wrap and reset: unit tests in sentinel-user/src/collect/drain.rs
//!   (`wrap_past_u64_max_is_exact`, `a_decrease_is_a_reset_not_a_huge_delta`,
//!   `no_delta_ever_exceeds_2_pow_63`, `deltas_telescope_to_the_final_cumulative_count`).
//! - K11 same-CPU concurrency: tests/collector.rs `exact_udp_packet_count_in_a_network_namespace`.
//! - K13 SIGTERM: tests/collector.rs `sigterm_detaches_every_program`.
//! - P1 no privileges: tests/collector.rs `bad_flags_and_missing_privileges_give_one_clear_line`.
//! - K6, K7 and P3 on other kernels: `cargo xtask vmtest`.
//!
//! Mount-namespace tests run sentinel under `unshare -m --propagation private`, so unmounting
//! tracefs or hiding BTF never touches the host's mounts.

mod support;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use sentinel::collect::loader::loaded_sentinel_programs;
use support::{
    require, require_root,
    sentinel::{BIN, SentinelRun, sum_counter},
};

const FIRST: Duration = Duration::from_secs(30);

/// A private runtime directory, so these tests' instance locks (row K15) do not meet any other
/// sentinel running on the machine.
fn runtime_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Unmounts every tracefs (and the debugfs that would auto-mount one) in this namespace.
const UNMOUNT_TRACEFS: &str = "for i in 1 2; do for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do umount -l $m 2>/dev/null; done; done; \
     test ! -d /sys/kernel/tracing/events || { echo 'tracefs still mounted' >&2; exit 97; }";

/// Runs `setup` then `sentinel run` with `args` in a private mount namespace, to completion.
fn in_private_mounts(setup: &str, args: &[&str], runtime: &std::path::Path) -> Output {
    let script = format!("{setup}\nexec \"$0\" run --no-docker --output json \"$@\"");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, BIN])
        .args(args)
        .env("SENTINEL_LOG", "info")
        .env("SENTINEL_RUNTIME_DIR", runtime)
        .output()
        .expect("run unshare (util-linux)");
    assert_ne!(
        out.status.code(),
        Some(97),
        "set-up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn intervals_of(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .count()
}

fn have_unshare() -> bool {
    require(
        "unshare (util-linux)",
        Command::new("unshare").arg("--version").output().is_ok(),
        "mount-namespace tests need unshare",
    )
}

/// K3: tracefs not mounted (a fresh boot). With root, sentinel mounts it and says so once.
#[test]
fn k3_unmounted_tracefs_is_mounted_with_one_info_line() {
    if !require_root("k3_unmounted_tracefs_is_mounted_with_one_info_line") || !have_unshare() {
        return;
    }
    let rt = runtime_dir();
    let out = in_private_mounts(
        UNMOUNT_TRACEFS,
        &[
            "--duration",
            "2s",
            "--interval",
            "500ms",
            "--simulate-missing-hook",
            "tcp_retransmit_skb",
        ],
        rt.path(),
    );
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(intervals_of(&out) >= 2, "intervals printed: {stderr}");
    let mounted: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("mounted tracefs"))
        .collect();
    assert_eq!(mounted.len(), 1, "one info line: {stderr}");
    assert!(
        mounted[0].contains("INFO") && mounted[0].contains("/sys/kernel/tracing"),
        "{}",
        mounted[0]
    );
    // The mounted tracefs is used: the simulated missing hook is diagnosed from its events/.
    assert!(
        stderr.contains("does not exist in this kernel"),
        "diagnosis through the freshly mounted tracefs: {stderr}"
    );
}

/// K3, second half: unmounted and no CAP_SYS_ADMIN. Deliberate difference from the row's
/// "non-zero exit": sentinel attaches BTF tracepoints, which need no tracefs, so it keeps
/// running; tracefs only sharpens the diagnosis of a missing hook. The row's other criterion
/// holds: one line that names `mount -t tracefs` and the capability.
#[test]
fn k3_unmounted_tracefs_without_cap_sys_admin_warns_once_and_runs() {
    if !require_root("k3_unmounted_tracefs_without_cap_sys_admin_warns_once_and_runs")
        || !have_unshare()
    {
        return;
    }
    let rt = runtime_dir();
    let setup = format!(
        "{UNMOUNT_TRACEFS}\nexec setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin \"$0\" run --no-docker --output json \"$@\""
    );
    let out = in_private_mounts(
        &setup,
        &["--duration", "2s", "--interval", "500ms"],
        rt.path(),
    );
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(intervals_of(&out) >= 2, "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("mount -t tracefs"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("CAP_SYS_ADMIN"), "{}", lines[0]);
}

/// K4: an empty directory at /sys/kernel/tracing is "not mounted" (no events/): sentinel
/// mounts tracefs over it instead of failing on a missing `id` file.
#[test]
fn k4_empty_tracefs_directory_is_not_mistaken_for_tracefs() {
    if !require_root("k4_empty_tracefs_directory_is_not_mistaken_for_tracefs") || !have_unshare() {
        return;
    }
    let rt = runtime_dir();
    let setup =
        format!("{UNMOUNT_TRACEFS}\nmount -t tmpfs snt-vm-empty /sys/kernel/tracing || exit 97");
    let out = in_private_mounts(
        &setup,
        &[
            "--duration",
            "2s",
            "--interval",
            "500ms",
            "--simulate-missing-hook",
            "tcp_retransmit_skb",
        ],
        rt.path(),
    );
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(intervals_of(&out) >= 2, "{stderr}");
    assert!(!stderr.contains("No such file"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("mounted tracefs"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("does not exist in this kernel"), "{stderr}");
}

/// K4: tracefs mounted only under debugfs (the legacy path) is found and used as is.
#[test]
fn k4_debugfs_only_tracefs_is_used() {
    if !require_root("k4_debugfs_only_tracefs_is_used") || !have_unshare() {
        return;
    }
    let rt = runtime_dir();
    let setup = format!(
        "{UNMOUNT_TRACEFS}\nmount -t debugfs none /sys/kernel/debug || exit 97\n\
         [ -d /sys/kernel/debug/tracing/events ] || mount -t tracefs nodev /sys/kernel/debug/tracing || exit 97\n\
         [ -d /sys/kernel/debug/tracing/events ] && [ ! -d /sys/kernel/tracing/events ] || exit 97"
    );
    let out = in_private_mounts(
        &setup,
        &[
            "--duration",
            "2s",
            "--interval",
            "500ms",
            "--simulate-missing-hook",
            "tcp_retransmit_skb",
        ],
        rt.path(),
    );
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(intervals_of(&out) >= 2, "{stderr}");
    assert!(
        !stderr.contains("mounted tracefs"),
        "the debugfs path was mounted already: {stderr}"
    );
    assert!(
        stderr.contains("does not exist in this kernel"),
        "diagnosis through /sys/kernel/debug/tracing: {stderr}"
    );
}

/// K5: BTF missing or unparsable. The row asks for a fallback to tracefs `format` offsets;
/// that fallback is NOT implemented: sentinel's programs are BTF tracepoints, which cannot load
/// without kernel BTF at all. What is checked is the current behaviour: non-zero exit and one
/// clear line naming the BTF path and what the kernel needs.
#[test]
fn k5_missing_or_truncated_btf_is_one_clear_error_line() {
    if !require_root("k5_missing_or_truncated_btf_is_one_clear_error_line") || !have_unshare() {
        return;
    }
    let rt = runtime_dir();
    let truncated = rt.path().join("vmlinux.truncated");
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("read BTF");
    std::fs::write(&truncated, &btf[..btf.len().min(4096)]).unwrap();
    for (case, setup) in [
        (
            "hidden",
            "mount -t tmpfs snt-vm-nobtf /sys/kernel/btf || exit 97".to_string(),
        ),
        (
            "truncated",
            format!(
                "mount --bind {} /sys/kernel/btf/vmlinux || exit 97",
                truncated.display()
            ),
        ),
    ] {
        let out = in_private_mounts(&setup, &["--duration", "2s"], rt.path());
        let stderr = stderr_of(&out);
        eprintln!("K5 {case}: exit {:?}: {}", out.status.code(), stderr.trim());
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{case}: one line: {stderr}"
        );
        assert!(
            stderr.starts_with("error:") && stderr.contains("/sys/kernel/btf/vmlinux"),
            "{case}: names the path: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        assert_eq!(intervals_of(&out), 0);
    }
}

/// Context switches on one CPU: pipe ping-pong between two threads.
fn busy(round_trips: u32) {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let mut byte = [0u8];
        for _ in 0..round_trips {
            b.read_exact(&mut byte).unwrap();
            b.write_all(&byte).unwrap();
        }
    });
    let mut byte = [1u8];
    for _ in 0..round_trips {
        a.write_all(&byte).unwrap();
        a.read_exact(&mut byte).unwrap();
    }
    peer.join().unwrap();
}

/// Ids of the BPF programs the process holds (program and link fds name them in fdinfo).
fn program_ids_of(pid: i32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("prog_id:"))
                        .and_then(|v| v.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` are still loaded, waiting up to `within` for the kernel to free them.
fn still_loaded(ids: &[u32], within: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<_> = loaded_sentinel_programs()
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// K14: SIGKILL during a busy run leaves no program behind (fd-based links, nothing pinned),
/// and an immediate restart starts from fresh maps: its first interval holds no counts of the
/// killed run. Programs are identified through the killed process's own fds, so other
/// sentinels running on the machine do not disturb the check.
#[test]
fn k14_sigkill_leaves_nothing_and_restart_starts_from_a_baseline() {
    if !require_root("k14_sigkill_leaves_nothing_and_restart_starts_from_a_baseline") {
        return;
    }
    let rt = runtime_dir();
    let env = [("SENTINEL_RUNTIME_DIR", rt.path().to_str().unwrap())];
    let mut run = SentinelRun::start_with_env(&["--interval", "200ms"], &env);
    run.next_interval(FIRST);
    let ids = program_ids_of(run.pid());
    assert!(ids.len() >= 14, "programs held while running: {ids:?}");
    busy(300_000);
    // Take every interval printed during the burst (queued ones arrive at once), then one
    // fresh one, so the total covers the whole burst.
    loop {
        let asked = Instant::now();
        run.next_interval(FIRST);
        if asked.elapsed() > Duration::from_millis(50) {
            break;
        }
    }
    let killed_total = sum_counter(&run.intervals, "sched_switch");
    nix::sys::signal::kill(Pid::from_raw(run.pid()), Signal::SIGKILL).unwrap();
    let done = run.stop(); // reaps the killed child
    assert!(!done.status.success());
    let left = still_loaded(&ids, Duration::from_secs(2));
    assert_eq!(left, vec![], "programs left after SIGKILL");

    let mut again = SentinelRun::start_with_env(&["--interval", "200ms"], &env);
    let first = again.next_interval(FIRST);
    let finished = again.stop();
    assert!(finished.status.success(), "restart: {}", finished.stderr);
    let bpf = first.counters["sched_switch"].expect("sched_switch attached");
    eprintln!(
        "killed run: {} programs, sched_switch {killed_total} before SIGKILL, 0 programs left; \
         restart's first interval: sched_switch {bpf} (/proc/stat ctxt {}), reset {}",
        ids.len(),
        first.system.context_switches,
        first.collector.reset
    );
    assert!(!first.collector.reset, "fresh maps are not a reset");
    assert!(
        killed_total >= 300_000,
        "the busy run made its switches: {killed_total}"
    );
    // Fresh maps: the first interval counts only its own ~200 ms, nowhere near the killed
    // run's total, which a map that survived the kill would have carried over.
    assert!(
        bpf < killed_total / 2,
        "first interval after restart {bpf} vs killed run's {killed_total}: counts carried over"
    );
}

/// K15: a second instance refuses with one line naming the running PID; the first keeps
/// running unaffected.
#[test]
fn k15_second_instance_refuses_naming_the_running_pid() {
    if !require_root("k15_second_instance_refuses_naming_the_running_pid") {
        return;
    }
    let rt = runtime_dir();
    let env = [("SENTINEL_RUNTIME_DIR", rt.path().to_str().unwrap())];
    let mut first = SentinelRun::start_with_env(&["--interval", "200ms"], &env);
    first.next_interval(FIRST);
    let first_pid = first.pid();
    let started = Instant::now();
    let second = Command::new(BIN)
        .args(["run", "--no-docker", "--duration", "3s", "--output", "json"])
        .env("SENTINEL_RUNTIME_DIR", rt.path())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&second.stderr);
    eprintln!(
        "second instance: exit {:?} after {took:?}: {}",
        second.status.code(),
        stderr.trim()
    );
    first.next_interval(FIRST);
    let done = first.stop();
    assert!(done.status.success(), "first unaffected: {}", done.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(second.stdout.is_empty(), "the second printed no interval");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("already running") && stderr.contains(&format!("PID {first_pid}")),
        "{stderr}"
    );
}

/// K17: SIGSTOP for 5 s. The next interval covers the whole gap with its true duration and
/// nothing is lost: the deltas still sum to the final cumulative counts.
#[test]
fn k17_stopped_for_5s_next_interval_covers_the_gap() {
    if !require_root("k17_stopped_for_5s_next_interval_covers_the_gap") {
        return;
    }
    let rt = runtime_dir();
    let env = [("SENTINEL_RUNTIME_DIR", rt.path().to_str().unwrap())];
    let mut run = SentinelRun::start_with_env(&["--interval", "200ms"], &env);
    run.next_interval(FIRST);
    run.next_interval(FIRST);
    let pid = Pid::from_raw(run.pid());
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    busy(20_000);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed()));
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    let gap = stopped.elapsed();
    run.next_interval(FIRST);
    run.next_interval(FIRST);
    let done = run.stop();
    assert!(done.status.success(), "{}", done.stderr);
    let ivs = &done.intervals;
    for (i, iv) in ivs.iter().enumerate() {
        assert_eq!(iv.seq, i as u64, "no interval missing or repeated");
        assert!(iv.interval_ms > 0.0, "interval {i}: {} ms", iv.interval_ms);
        assert!(!iv.collector.reset);
    }
    let longest = ivs.iter().map(|iv| iv.interval_ms).fold(0.0, f64::max);
    eprintln!(
        "stopped {gap:?}; longest interval {longest:.1} ms over {} intervals",
        ivs.len()
    );
    let gap_ms = gap.as_secs_f64() * 1000.0;
    assert!(
        longest >= gap_ms - 250.0 && longest <= gap_ms + 1_000.0,
        "the interval after SIGCONT covers the {gap_ms:.0} ms gap: {longest:.1} ms"
    );
    let last = ivs.last().unwrap();
    let totals = last.final_totals.as_ref().expect("final totals");
    for (name, total) in totals {
        if let Some(Some(_)) = last.counters.get(name) {
            assert_eq!(
                sum_counter(ivs, name),
                *total,
                "{name}: sum of deltas vs final"
            );
        }
    }
    assert!(
        totals["sched_switch"] >= 40_000,
        "the ping-pong while stopped was counted"
    );
}

/// P3 (and the host column of the portability matrix): the `selftest` checks, including
/// dropping every capability after attach and draining with CapEff 0.
#[test]
fn p3_selftest_passes_on_the_host_kernel_with_capabilities_dropped() {
    if !require_root("p3_selftest_passes_on_the_host_kernel_with_capabilities_dropped") {
        return;
    }
    let rt = runtime_dir();
    let out = Command::new(BIN)
        .args(["selftest", "--drop-caps", "--label", "host"])
        .env("SENTINEL_LOG", "warn")
        .env("SENTINEL_RUNTIME_DIR", rt.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("VMTEST "))
        .collect();
    let failed: Vec<&&str> = lines.iter().filter(|l| l.contains(" FAIL ")).collect();
    assert!(
        failed.is_empty(),
        "failed checks: {failed:#?}\n{}",
        stderr_of(&out)
    );
    assert!(out.status.success());
    let caps = lines
        .iter()
        .find(|l| l.contains(" caps_dropped "))
        .expect("caps_dropped line");
    assert!(caps.contains("CapEff=0000000000000000"), "{caps}");
    assert!(lines.iter().any(|l| l.contains(" summary PASS ")));
}

/// K2: programs the verifier rejects (a deliberately invalid variant: the hidden
/// `--simulate-verifier-reject` hands the TCP programs an offset far past `struct sock`). Same
/// outcome as K1: those signals are null with one warning each, naming the program and ending
/// with the verifier's reason, bounded in length; everything else runs; exit 0.
#[test]
fn k2_verifier_rejection_disables_those_signals_with_the_verifier_reason() {
    if !require_root("k2_verifier_rejection_disables_those_signals_with_the_verifier_reason") {
        return;
    }
    let mut run = SentinelRun::start(&["--interval", "200ms", "--simulate-verifier-reject"]);
    run.next_interval(Duration::from_secs(60));
    run.next_interval(Duration::from_secs(60));
    let done = run.stop();
    assert!(
        done.status.success(),
        "a rejected program is not fatal: {}",
        done.stderr
    );
    let rejected = [
        "snt_tcp_retransmit_skb",
        "snt_tcp_send_reset",
        "snt_tcp_receive_reset",
    ];
    for iv in &done.intervals {
        assert_eq!(
            iv.collector.disabled,
            rejected.to_vec(),
            "disabled programs"
        );
        assert_eq!(iv.counters["tcp_retransmits"], None, "null, not 0");
        assert_eq!(iv.counters["tcp_resets"], None, "null, not 0");
        assert!(iv.counters["sched_switch"].is_some());
    }
    assert!(sum_counter(&done.intervals, "sched_switch") > 0);
    for program in rejected {
        let lines: Vec<&str> = done
            .stderr
            .lines()
            .filter(|l| l.contains("not attached") && l.contains(program))
            .collect();
        assert_eq!(lines.len(), 1, "one warning for {program}: {}", done.stderr);
        let line = lines[0];
        assert!(line.contains("WARN"), "{line}");
        assert!(
            line.contains("access beyond struct sock"),
            "the verifier's reason: {line}"
        );
        assert!(line.len() <= 4096, "bounded: {} bytes", line.len());
        println!(
            "K2: {program}: {} bytes, ends {:?}",
            line.len(),
            &line[line.len() - 160..]
        );
    }
}

/// K12: the kernel's per-program `recursion_misses` (runs skipped because another BPF program
/// was running on that CPU) are exported for every attached program, never hidden. Provoking
/// real misses needs a second program nested on the same hooks; the row allows reporting only.
#[test]
fn k12_recursion_misses_are_reported_for_every_attached_program() {
    if !require_root("k12_recursion_misses_are_reported_for_every_attached_program") {
        return;
    }
    let mut run = SentinelRun::start(&["--interval", "100ms"]);
    for _ in 0..12 {
        run.next_interval(FIRST);
    }
    let done = run.stop();
    assert!(done.status.success(), "{}", done.stderr);
    let last = &done.intervals.last().unwrap().collector;
    let attached = loaded_sentinel_programs_count(&done);
    println!("K12: recursion_misses {:?}", last.recursion_misses);
    assert!(
        last.recursion_misses.len() >= attached && attached >= 12,
        "every attached program reports its misses: {} of {attached}",
        last.recursion_misses.len()
    );
    for program in last.recursion_misses.keys() {
        assert!(program.starts_with("snt_"), "{program}");
    }
}

/// Programs attached in a run: the hooks minus the disabled ones.
fn loaded_sentinel_programs_count(done: &support::sentinel::Finished) -> usize {
    sentinel::collect::loader::HOOKS.len() - done.intervals[0].collector.disabled.len()
}

/// P2: the least-privilege set. Root's capabilities bounded to CAP_BPF and CAP_PERFMON only
/// (tracefs already mounted by the host): every program attaches, all signals count, and the
/// Docker socket (reached as uid 0 without any capability) answers, so healing can work.
#[test]
fn p2_cap_bpf_and_cap_perfmon_alone_run_fully() {
    if !require_root("p2_cap_bpf_and_cap_perfmon_alone_run_fully")
        || !support::docker::ensure()
        || !require(
            "setpriv",
            Command::new("setpriv").arg("--version").output().is_ok(),
            "setpriv not found (Debian package util-linux)",
        )
    {
        return;
    }
    let runtime = runtime_dir();
    let socket = runtime.path().join("sentinel.sock");
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-all,+bpf,+perfmon",
            "--inh-caps",
            "-all,+bpf,+perfmon",
            BIN,
            "run",
            "--output",
            "json",
            "--interval",
            "300ms",
            "--duration",
            "3s",
            "--no-metrics",
            "--status-socket",
        ])
        .arg(&socket)
        .env("SENTINEL_LOG", "info")
        .env("SENTINEL_RUNTIME_DIR", runtime.path())
        .output()
        .expect("run setpriv");
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let intervals: Vec<sentinel::model::Interval> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("interval JSON"))
        .collect();
    assert!(
        intervals.len() >= 5,
        "{} intervals; {stderr}",
        intervals.len()
    );
    let last = intervals.last().unwrap();
    assert!(
        last.collector.disabled.is_empty(),
        "{:?}",
        last.collector.disabled
    );
    assert!(
        last.counters.values().all(Option::is_some),
        "{:?}",
        last.counters
    );
    assert_eq!(last.docker, "up", "{stderr}");
    println!(
        "P2: {} intervals with the bounding set bpf+perfmon only, 0 disabled, docker {}, \
         sched_switch {}",
        intervals.len(),
        last.docker,
        intervals
            .iter()
            .filter_map(|iv| iv.counters["sched_switch"])
            .sum::<u64>(),
    );
}
