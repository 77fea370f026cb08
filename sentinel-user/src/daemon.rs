//! `sentinel run`: the drain loop. One `select!` over the interval tick, the run's deadline and
//! the shutdown signals; plain structs (Collector, Drain, HostSampler) do the work.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use anyhow::{Context, Result};
use sentinel_common::counter;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, sleep_until},
};
use tracing::{info, warn};

use crate::{
    analysis::Analysis,
    collect::{
        drain::{Drain, DrainDelta, LatencySummarizer, RawSnapshot},
        host::HostSampler,
        loader::{Collector, LoadOptions},
        netns,
    },
    config::Config,
    containers::{
        Attribution, Runtimes,
        containerd::{self, ContainerdWatcher},
        docker::{self, Watcher},
        layout::Runtime,
        roster::RosterHandle,
    },
    export::{OutputFormat, output::Output},
    model::{CollectorHealth, DetectionSummary, Interval, PUBLIC_COUNTERS, Published},
};

/// Overflow events of the interval per map, from the signal registry: every map that can
/// overflow is listed, so a new one is surfaced without touching the exporters.
fn overflow_by_map(counters: &[u64; counter::COUNT]) -> std::collections::BTreeMap<String, u64> {
    use sentinel_common::registry::{COUNTERS, Kind, OVERFLOW_MAPS};
    OVERFLOW_MAPS
        .iter()
        .map(|&map| {
            let n = COUNTERS
                .iter()
                .filter(|c| c.kind == (Kind::Overflow { map }))
                .map(|c| counters[c.index])
                .sum();
            (map.to_string(), n)
        })
        .collect()
}

/// Period of the healing engine's own work between intervals.
const HEAL_TICK: Duration = Duration::from_millis(250);
/// Retire the entries of gone interfaces every this many intervals.
const IFACE_GC_EVERY: u64 = 10;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub output: OutputFormat,
    pub load: LoadOptions,
    /// Name containers through the Docker Engine API (ids come from cgroup paths regardless).
    pub docker: bool,
    /// The whole validated configuration (detection, healing, metrics, status sections).
    pub config: Config,
    /// Operations surface: `/metrics` address (`None`: off) and the status socket.
    pub exporters: crate::export::serve::ExportOptions,
    /// Drop every capability but CAP_SYS_PTRACE once the programs are attached.
    pub drop_capabilities: bool,
    /// `--strict`: a disabled signal is fatal.
    pub strict: bool,
}

pub fn run(opts: RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_loop(opts))
}

struct Pipeline {
    collector: Collector,
    drain: Drain,
    host: HostSampler,
    summarizer: LatencySummarizer,
    snapshot: RawSnapshot,
    seq: u64,
    last: Instant,
    attribution: Attribution,
    /// The runtime watchers (stopped when the pipeline is dropped).
    _docker: Watcher,
    _podman: Watcher,
    _containerd: ContainerdWatcher,
    last_hist: Vec<u64>,
    analysis: Analysis,
    /// Last read of the programs' recursion misses (cumulative; refreshed now and then).
    recursion_misses: std::collections::BTreeMap<String, u64>,
}

/// Recursion misses are read from 14 fdinfo files: every 10th interval is often enough for a
/// counter that should stay 0, and keeps the drain cheap.
const RECURSION_MISSES_EVERY: u64 = 10;

impl Pipeline {
    fn drain_interval(&mut self, final_interval: bool) -> Result<Interval> {
        let started = Instant::now();
        self.collector.snapshot(&mut self.snapshot)?;
        let system = self.host.sample();
        let delta = self.drain.apply(&self.snapshot);
        for key in &self.snapshot.retired {
            self.attribution.forget(key);
        }
        self.last_hist.clear();
        self.last_hist.extend_from_slice(&delta.hist);
        let drain_us = started.elapsed().as_micros() as u64;
        let measured = started.duration_since(self.last);
        self.last = started;
        let iv = self.build(delta, measured, system, drain_us, final_interval);
        self.seq += 1;
        Ok(iv)
    }

    fn build(
        &mut self,
        delta: DrainDelta,
        measured: Duration,
        system: crate::model::SystemGauges,
        drain_us: u64,
        final_interval: bool,
    ) -> Interval {
        let counters = PUBLIC_COUNTERS
            .iter()
            .map(|&i| {
                let value = (!self.collector.is_disabled(i)).then_some(delta.counters[i]);
                (counter::NAMES[i].to_string(), value)
            })
            .collect();
        let containers = self.attribution.containers(
            &delta.containers,
            &delta.ifaces,
            &delta.netns_tcp,
            measured.as_nanos() as u64,
            &mut self.summarizer,
        );
        // The final interval is drained after the programs are detached: it keeps the last
        // values read.
        if self.seq.is_multiple_of(RECURSION_MISSES_EVERY) && !final_interval {
            self.recursion_misses = self
                .collector
                .recursion_misses()
                .into_iter()
                .map(|(program, n)| (program.to_string(), n))
                .collect();
        }
        let final_totals = final_interval.then(|| {
            (0..counter::COUNT)
                .map(|i| (counter::NAMES[i].to_string(), self.drain.cumulative()[i]))
                .collect()
        });
        Interval {
            ts: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            interval_ms: measured.as_secs_f64() * 1000.0,
            seq: self.seq,
            counters,
            runqueue_latency_us: self.summarizer.summarize(&delta.hist, delta.runq_wait_ns),
            interfaces: delta.ifaces,
            system,
            containers,
            docker: self.attribution.docker_state(),
            runtimes: self.attribution.runtimes.states(),
            anomalies: Vec::new(),
            detection: DetectionSummary::default(),
            healing: None,
            actions: Vec::new(),
            collector: CollectorHealth {
                disabled: self.collector.disabled_programs(),
                overflow: overflow_by_map(&delta.counters),
                iface_overflow_packets: delta.counters[counter::IFACE_OVERFLOW_RX_PACKETS]
                    + delta.counters[counter::IFACE_OVERFLOW_TX_PACKETS],
                runq_start_overflow: delta.counters[counter::RUNQ_START_OVERFLOW],
                iface_entries: self.drain.iface_entries() as u64,
                iface_capacity: u64::from(self.collector.iface_capacity),
                container_overflow: delta.counters[counter::CONTAINER_OVERFLOW],
                container_entries: self.collector.container_entries() as u64,
                container_capacity: u64::from(self.collector.container_capacity),
                reset: delta.reset,
                drain_us,
                runq_source: self.collector.runq_source.as_str().to_string(),
                // Filled in by the run loop, which owns the output.
                output_dropped: 0,
                recursion_misses: self.recursion_misses.clone(),
            },
            final_totals,
        }
    }

    fn published(&self, iv: Interval) -> Published {
        Published {
            interval: iv,
            series: self.analysis.series(),
            runq_hist: self.last_hist.clone(),
        }
    }

    /// Retires the interfaces whose namespace (or, in the host namespace, device) is gone.
    /// Only interfaces idle for a whole interval are candidates; their slots are read a last
    /// time before they are freed (collect/slots.rs), so retiring them loses nothing.
    fn retire_gone_interfaces(&mut self) {
        let own = netns::own_namespace();
        // The /proc scan (a stat per process) only when an idle entry may be in a gone
        // namespace (see `gone_namespaces`).
        let gone_ns = netns::gone_namespaces(
            self.drain
                .idle_ifaces(1)
                .map(|k| k.netns)
                .chain(self.drain.netns_tcp.idle(1).filter(|&n| n != 0)),
            &netns::lasting_namespaces(),
            netns::live_namespaces,
        );
        let host_ifs = netns::own_ifindexes();
        let gone: Vec<_> = self
            .drain
            .idle_ifaces(1)
            .filter(|k| {
                if Some(k.netns) == own {
                    !host_ifs.contains(&k.ifindex)
                } else {
                    gone_ns.contains(&k.netns)
                }
            })
            .collect();
        // Like a container's, the slot is given back over the next drains, after a last read
        // (the collector reports it in `RawSnapshot::ifaces_retired`, then it is forgotten).
        for key in gone {
            if let Err(e) = self.collector.retire_iface(key) {
                warn!("{e:#}");
            }
        }
        let gone_tcp: Vec<u32> = self
            .drain
            .netns_tcp
            .idle(1)
            .filter(|n| *n != 0 && gone_ns.contains(n))
            .collect();
        for netns in gone_tcp {
            match self.collector.remove_netns_tcp(&netns) {
                Ok(()) => self.drain.netns_tcp.forget(&netns),
                Err(e) => warn!("{e:#}"),
            }
        }
        // A gone container's slot is given back over the next drains, after a last read
        // (the collector reports it in `RawSnapshot::retired`, then it is forgotten).
        for key in self.attribution.gone(self.drain.containers.idle(1)) {
            if let Err(e) = self.collector.retire_container(key) {
                warn!("{e:#}");
            }
        }
    }
}

async fn run_loop(opts: RunOptions) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    // SIGHUP's default action would kill the daemon (an operator's `kill -HUP` or a reload by
    // habit). There is no live reload: say so and keep running on the config it started with.
    let mut sighup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    // The collector first: a second instance (its lock), missing privileges or BTF fail with
    // one line before anything else is set up. A taken metrics port or socket fails next;
    // dropping the collector then detaches everything.
    let mut collector = Collector::load(&opts.load)?;
    let disabled = collector.disabled_programs();
    if opts.strict && !disabled.is_empty() {
        // Dropping the collector detaches what did attach.
        anyhow::bail!(
            "--strict: {} program(s) not attached ({}); see the warnings above",
            disabled.len(),
            disabled.join(", ")
        );
    }
    let mut exporters =
        crate::export::serve::Exporters::bind(&opts.exporters, opts.interval).await?;
    // Capabilities are per thread: drop them before any other thread starts (the detector's
    // training thread, the output writer), or those threads would keep them.
    if opts.drop_capabilities {
        // CAP_SYS_PTRACE for /proc/PID/ns/*; CAP_BPF too where the kernel checks it on every
        // map read (Linux 5.10). Then one read proves the maps are still readable.
        let mut keep = vec![crate::privilege::Cap::CAP_SYS_PTRACE];
        if collector.map_reads_need_privilege()? {
            keep.push(crate::privilege::Cap::CAP_BPF);
        }
        match crate::privilege::drop_all_but(&keep) {
            Ok(eff) => info!("capabilities dropped after attach: CapEff {eff:016x}"),
            Err(e) => warn!("{e:#}; keeping the start-up capabilities"),
        }
        collector.probe_read().context(
            "the BPF maps cannot be read after dropping capabilities: run without \
             --drop-capabilities",
        )?;
    }
    let mut kernel_log = collector.take_logger().and_then(|logger| {
        // SAFETY: the logger owns its ring buffer's fd and keeps it open as long as the
        // AsyncFd holds the logger, which deregisters before dropping it.
        match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!("cannot poll kernel-side log messages: {e}");
                None
            }
        }
    });
    // Every container with a process, scanned off the drain (after the capabilities were
    // dropped: the thread inherits what is left). Runtime events make it scan at once.
    let roster = RosterHandle::spawn(
        opts.load.key_mode,
        collector.tasks.as_ref().ok().and_then(|t| {
            t.try_clone()
                .map_err(|e| {
                    warn!("the container roster reads /proc: no task iterator handle: {e}");
                })
                .ok()
        }),
    );
    // One Docker connection for naming and healing (and one state for both).
    let settings = docker::Settings::from_config(&opts.config);
    let mut docker = if opts.docker {
        Watcher::spawn_for(Runtime::Docker, settings.clone(), true, roster.poker())
    } else {
        Watcher::disabled()
    };
    // The optional runtimes, for naming only: absent (no socket) is a state, not an error.
    let podman = Watcher::spawn_for(
        Runtime::Podman,
        docker::Settings {
            host: Some(docker::podman_endpoint()),
            ..settings
        },
        false,
        roster.poker(),
    );
    let containerd = ContainerdWatcher::spawn(containerd::address(), roster.poker());
    let runtimes = Runtimes {
        docker: docker.view.clone(),
        podman: Some(podman.view.clone()),
        containerd: Some(containerd.view.clone()),
    };
    let heal = opts
        .docker
        .then_some((&opts.config.heal, opts.config.daemon.audit_log.as_path()));
    let analysis = Analysis::new(&opts.config.detect, heal, &mut docker)?;
    let loaded_at = Instant::now();
    let mut host = HostSampler::default();
    host.prime();
    let mut p = Pipeline {
        collector,
        drain: Drain::new(),
        host,
        summarizer: LatencySummarizer::default(),
        snapshot: RawSnapshot::default(),
        seq: 0,
        last: loaded_at,
        attribution: Attribution::new(opts.load.key_mode, runtimes, roster),
        _docker: docker,
        _podman: podman,
        _containerd: containerd,
        last_hist: Vec::new(),
        analysis,
        recursion_misses: Default::default(),
    };
    let start = tokio::time::Instant::from_std(loaded_at);
    let mut ticker = tokio::time::interval_at(start + opts.interval, opts.interval);
    // After a stall (e.g. SIGSTOP) the next interval simply covers the whole gap.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = opts.duration.map(|d| start + d);
    // Healing reacts to Docker events and moves breakers on time between intervals too.
    let mut heal_tick = tokio::time::interval(HEAL_TICK);
    heal_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let healing = p.analysis.healing();
    let mut out = Output::stdout(opts.output)?;
    let (publish, _) = watch::channel::<Option<Arc<Published>>>(None);
    // Exporters (metrics endpoint, status socket) subscribe here: `publish.subscribe()`.
    exporters.start(publish.subscribe());
    info!(interval = ?opts.interval, "sentinel running");
    // systemd (Type=notify): ready once the programs are attached and the exporters bound; the
    // watchdog is pinged from this loop, so a stuck drain stops the pings.
    let mut service = crate::service::Notifier::from_env();
    service.ready(&format!(
        "running: interval {:?}, {} program(s) not attached",
        opts.interval,
        disabled.len()
    ));
    let mut watchdog = service
        .ping_every()
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now(), every));

    let reason = loop {
        let stop = tokio::select! {
            _ = ticker.tick() => None,
            _ = sigterm.recv() => Some("SIGTERM"),
            _ = sigint.recv() => Some("SIGINT"),
            _ = sighup.recv() => {
                warn!(
                    "SIGHUP: sentinel has no live reload and keeps running with the config it started with; \
                     check a new config with `sentinel config check` and restart the service to apply it"
                );
                continue;
            }
            _ = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() => Some("duration elapsed"),
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                service.watchdog();
                continue;
            }
            _ = heal_tick.tick(), if healing => {
                p.analysis.tick().await;
                continue;
            }
            ready = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                if let Ok(mut guard) = ready {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                continue;
            }
        };
        if let Some(reason) = stop {
            break reason;
        }
        let mut iv = p.drain_interval(false)?;
        p.analysis.on_interval(&mut iv).await;
        iv.collector.output_dropped = out.dropped();
        // Published before it is written out (whoever reads a line finds its interval in
        // `status`), and moved, not cloned: at 1000 containers a copy cost more than the drain.
        let published = Arc::new(p.published(iv));
        publish.send_replace(Some(published.clone()));
        // Lets the exporters take this interval before the next drain can replace it (the
        // ticker may be due already after a slow drain, and then `select!` would not yield).
        tokio::task::yield_now().await;
        if !out.offer(&published.interval)? {
            break "output closed";
        }
        if p.seq.is_multiple_of(IFACE_GC_EVERY) {
            p.retire_gone_interfaces();
        }
    };
    info!("stopping ({reason}): detaching programs");
    service.stopping(reason);
    exporters.stop();
    p.analysis.shutdown().await;
    p.collector.detach();
    // Let program runs that started before the detach finish before the final read.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut iv = p.drain_interval(true)?;
    iv.collector.output_dropped = out.dropped();
    out.finish(&iv, FINAL_OUTPUT_WAIT)
}

/// How long the final interval may wait for a slow stdout reader at exit.
const FINAL_OUTPUT_WAIT: Duration = Duration::from_secs(2);
