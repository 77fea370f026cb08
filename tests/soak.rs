//! Soak rows of the fault matrix: M2 (an event storm) and L6 (container churn). Both run a
//! short variant in CI and a long one through `cargo xtask soak --minutes N`, which sets
//! `SENTINEL_SOAK_MINUTES` (the rows ask for 10 minutes).
//!
//! Needs root and BPF; M2 needs `stress-ng`, L6 a dockerd. Under CI=true a missing one fails.

mod support;

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use support::{
    docker::{self, IMAGE},
    require, require_root,
    sentinel::{Memory, SentinelRun, http_get},
};

const FIRST: Duration = Duration::from_secs(60);

fn soak_minutes(ci_default: f64) -> f64 {
    std::env::var("SENTINEL_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci_default)
}

/// M2: a context-switch and fork storm. Memory is bounded by construction: at the end the
/// heap's live allocations and the resident size within +2 MiB of where they were after the
/// first minute; the bounded kernel maps stay at or under
/// capacity with overflow counted; the output queue's drops are reported (0 here: the test
/// reads stdout).
#[test]
fn m2_event_storm_keeps_memory_flat_and_queues_bounded() {
    if !require_root("m2_event_storm_keeps_memory_flat_and_queues_bounded")
        || !require(
            "stress-ng",
            Command::new("stress-ng").arg("--version").output().is_ok(),
            "stress-ng not installed (Debian package stress-ng)",
        )
    {
        return;
    }
    let minutes = soak_minutes(3.0);
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut run = SentinelRun::start(&["--interval", "200ms", "--no-docker"]);
    run.next_interval(FIRST);
    let started = Instant::now();
    let mut storm = Command::new("stress-ng")
        .args(["--switch", "1", "--fork", "1", "--timeout"])
        .arg(format!("{}s", total.as_secs() + 5))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start stress-ng");
    let mut mem_1min = None;
    let mut samples = Vec::new();
    while started.elapsed() < total {
        let iv = run.next_interval(FIRST);
        let c = &iv.collector;
        assert!(c.iface_entries <= c.iface_capacity, "{c:?}");
        assert!(c.container_entries <= c.container_capacity, "{c:?}");
        if samples.last().is_none_or(|(t, _)| {
            started.elapsed().checked_sub(*t).unwrap() >= Duration::from_secs(10)
        }) {
            samples.push((started.elapsed(), run.memory()));
        }
        if mem_1min.is_none() && started.elapsed() >= Duration::from_secs(60) {
            mem_1min = Some(run.memory());
        }
    }
    let mem_end = run.memory();
    let _ = storm.kill();
    let _ = storm.wait();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let ivs = &finished.intervals;
    let switches: u64 = ivs
        .iter()
        .filter_map(|iv| iv.counters["sched_switch"])
        .sum();
    let forks: u64 = ivs
        .iter()
        .filter_map(|iv| iv.counters["process_fork"])
        .sum();
    let last = &ivs.last().unwrap().collector;
    let mem_1min = mem_1min.expect("ran at least a minute");
    println!(
        "M2: {minutes} min storm, {} intervals, sched_switch {switches}, forks {forks}; memory \
         after 1 min {mem_1min:?}, at the end {mem_end:?}; overflow: ifaces {} packets, \
         runq_start {}, containers {}; output dropped {}",
        ivs.len(),
        last.iface_overflow_packets,
        last.runq_start_overflow,
        last.container_overflow,
        last.output_dropped
    );
    println!("M2 memory samples (s, kB): {samples:?}");
    assert!(
        switches > 1_000_000,
        "the storm did not run: {switches} switches"
    );
    assert!(forks > 1_000, "the storm did not fork: {forks}");
    assert!(
        mem_end.heap_kib <= mem_1min.heap_kib + 2048,
        "the heap grew by more than 2 MiB after the first minute: {mem_1min:?} -> {mem_end:?}"
    );
    assert!(
        mem_end.rss_kib <= mem_1min.rss_kib + 2048,
        "RSS grew by more than 2 MiB after the first minute: {mem_1min:?} -> {mem_end:?}"
    );
    // Every interval's sequence is there: nothing was dropped on the way to this reader.
    assert!(ivs.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

/// L6: container churn. Short-lived containers (a fifth of them opted in to healing) are
/// created and removed with a bounded number alive. Per-container state stays bounded and is
/// dropped for gone containers: after warm-up the heap's live allocations and the resident
/// size grow < 1 MiB per 10 min (pro rata, at least 1 MiB), `/metrics` container series
/// <= top-N + labelled, breakers <= live labelled + 4, and once the churn stops the detector's
/// series fall back to where they started after the TTL.
///
/// CI variant: 3 minutes. The detector's series TTL is set to 60 intervals (30 s) so that
/// dropping them is seen within the run; the default is 300.
#[test]
fn l6_container_churn_keeps_state_bounded() {
    if !require_root("l6_container_churn_keeps_state_bounded") || !docker::ensure() {
        return;
    }
    let minutes = soak_minutes(3.0);
    let total = Duration::from_secs_f64(minutes * 60.0);
    let alive_cap: usize = if minutes >= 10.0 { 200 } else { 30 };
    const TOP_N: usize = 10;
    const TTL_INTERVALS: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sentinel.toml");
    std::fs::write(&config, format!("[detect]\nseries_ttl = {TTL_INTERVALS}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut run = SentinelRun::start(&[
        "--interval",
        "500ms",
        "--config",
        config.to_str().unwrap(),
        "--metrics-top-containers",
        &TOP_N.to_string(),
    ]);
    run.next_interval(FIRST);
    let socket = run.socket();
    // Baseline: the detector's series before any churn container exists.
    for _ in 0..4 {
        run.next_interval(FIRST);
    }

    let prefix = format!("snt-l6-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let labelled_created = Arc::new(AtomicUsize::new(0));
    // Four creators, each keeping its share of `alive_cap` containers alive; every container
    // lives 3-12 s (`--rm`, so it is removed when it exits).
    let creators: Vec<_> = (0..4)
        .map(|w| {
            let (stop, created, prefix) = (stop.clone(), created.clone(), prefix.clone());
            let labelled_created = labelled_created.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let share = alive_cap / 4;
                while !stop.load(Ordering::Relaxed) {
                    let running =
                        docker::docker(&["ps", "-q", "--filter", &format!("name={prefix}-{w}-")]);
                    let count = String::from_utf8_lossy(&running.stdout).lines().count();
                    if count >= share {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    n += 1;
                    let name = format!("{prefix}-{w}-{n}");
                    let life = 3 + (n * 7 + w as u64 * 3) % 10;
                    let label = if n.is_multiple_of(5) {
                        "sentinel.heal=true"
                    } else {
                        "role=churn"
                    };
                    let life = life.to_string();
                    let mut args = vec![
                        "run",
                        "-d",
                        "--rm",
                        "--network",
                        "none",
                        "--name",
                        &name,
                        "--label",
                        label,
                    ];
                    // Opted-in ones turn unhealthy at once, so healing acts on them and keeps
                    // state (breakers, back-off) for containers that then go away.
                    if n.is_multiple_of(5) {
                        args.extend([
                            "--health-cmd",
                            "false",
                            "--health-interval",
                            "1s",
                            "--health-retries",
                            "1",
                        ]);
                    }
                    args.extend([IMAGE, "sleep", &life]);
                    let o = docker::docker(&args);
                    if o.status.success() {
                        created.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(5) {
                            labelled_created.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut memory = Vec::new();
    let mut worst_breakers = (0usize, 0usize);
    let mut worst_metric_containers = 0usize;
    let mut max_series = 0u64;
    while started.elapsed() < total {
        let iv = run.next_interval(FIRST);
        max_series = max_series.max(iv.detection.series);
        if memory.last().is_none_or(|(t, _): &(Duration, Memory)| {
            started.elapsed().checked_sub(*t).unwrap() >= Duration::from_secs(10)
        }) {
            memory.push((started.elapsed(), run.memory()));
            let labelled = String::from_utf8_lossy(
                &docker::docker(&[
                    "ps",
                    "--filter",
                    &format!("name={prefix}"),
                    "--format",
                    "{{.Labels}}",
                ])
                .stdout,
            )
            .lines()
            .filter(|l| l.contains("sentinel.heal=true"))
            .count();
            let breakers = iv.healing.as_ref().map(|h| h.breakers.len()).unwrap_or(0);
            // Containers that died between the two reads may still hold a breaker: the
            // constant covers them.
            assert!(
                breakers <= labelled + 4,
                "breakers {breakers} with {labelled} labelled containers alive"
            );
            worst_breakers.0 = worst_breakers.0.max(breakers);
            worst_breakers.1 = worst_breakers.1.max(labelled);
            if let Some(addr) = status_metrics_addr(&socket) {
                let n = metric_containers(&addr);
                worst_metric_containers = worst_metric_containers.max(n);
                // Breaker series name their container too, and a breaker can outlive its
                // container by a moment; both are bounded by the labelled ones.
                assert!(
                    n <= TOP_N + labelled.max(breakers) + 4,
                    "/metrics carries {n} containers with top-N {TOP_N}, {labelled} labelled, \
                     {breakers} breakers"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in creators {
        c.join().unwrap();
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -aq --filter name={prefix} | xargs -r docker rm -f"
        ))
        .output();
    // The TTL in intervals, plus slack for the last containers to go. Judged by name: other
    // containers on the host (not this test's) may come and go meanwhile.
    let ttl = Duration::from_millis(500 * TTL_INTERVALS + 5000);
    let settle = Instant::now();
    let mut left_after = usize::MAX;
    let mut at_stop = 0;
    while settle.elapsed() < ttl + Duration::from_secs(30) {
        run.next_interval(FIRST);
        let n = churn_series(&socket, &prefix);
        if at_stop == 0 {
            at_stop = n;
        }
        left_after = n;
        if settle.elapsed() > ttl && n == 0 {
            break;
        }
    }
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let created = created.load(Ordering::Relaxed);
    let labelled_created = labelled_created.load(Ordering::Relaxed);
    let warm = memory
        .iter()
        .find(|(t, _)| *t >= Duration::from_secs(60))
        .expect("a sample after the first minute")
        .1;
    let end = memory.last().unwrap().1;
    let allowed = (1024.0 * (minutes / 10.0)).max(1024.0) as u64;
    println!(
        "L6: {minutes} min, {created} containers created ({labelled_created} labelled, <= {alive_cap} alive), max detector \
         series {max_series}; this test's series {at_stop} when the churn stopped, {left_after} after the TTL; \
         breakers max {}, labelled alive max {}; /metrics containers max {worst_metric_containers} \
         (top-N {TOP_N}); memory after warm-up {warm:?} -> {end:?}",
        worst_breakers.0, worst_breakers.1,
    );
    println!("L6 memory samples (s, kB): {memory:?}");
    assert!(created >= 50, "too little churn: {created} containers");
    assert!(
        end.heap_kib <= warm.heap_kib + allowed,
        "heap slope after warm-up: {warm:?} -> {end:?} (allowed +{allowed} kB)"
    );
    assert!(
        end.rss_kib <= warm.rss_kib + allowed,
        "RSS slope after warm-up: {warm:?} -> {end:?} (allowed +{allowed} kB)"
    );
    assert!(at_stop > 0, "the churn containers never had series");
    assert_eq!(
        left_after, 0,
        "series of gone containers not dropped after the TTL"
    );
}

/// The daemon's metrics address from `status --json` (its port is ephemeral).
fn status_metrics_addr(socket: &std::path::Path) -> Option<String> {
    let out = Command::new(support::sentinel::BIN)
        .args(["status", "--json", "--status-socket"])
        .arg(socket)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["metrics_addr"].as_str().map(str::to_string)
}

/// Detector series (from `status --json`) of this test's containers.
fn churn_series(socket: &std::path::Path, prefix: &str) -> usize {
    let Ok(out) = Command::new(support::sentinel::BIN)
        .args(["status", "--json", "--status-socket"])
        .arg(socket)
        .output()
    else {
        return usize::MAX;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let needle = format!("container.{prefix}-");
    v["series"].as_array().map_or(usize::MAX, |a| {
        a.iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(&needle)))
            .count()
    })
}

/// Distinct `container=` label values of the per-container families (the top-N set) in one
/// scrape.
fn metric_containers(addr: &str) -> usize {
    let Ok((_, body)) = http_get(addr, "/metrics", Duration::from_secs(10)) else {
        return 0;
    };
    let mut names: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("sentinel_container_"))
        .filter_map(|l| {
            let rest = &l[l.find("container=\"")? + 11..];
            Some(&rest[..rest.find('"')?])
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}
