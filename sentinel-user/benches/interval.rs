//! The daemon's user-space work per interval at 1000 containers, without the kernel: naming
//! and attribution (`Attribution::containers`), detection (`Analysis::on_interval`, default
//! detector and trainer thread, no healing), the published status list and the Prometheus
//! state (`Metrics::observe`). An interval has 1000 keys, each with a little CPU time and a
//! few run-queue waits on one of two CPUs (the live bench's sleepers: every one in its own
//! mount namespace, all in one cgroup, so their names are `<cgroup>#<key>`).
//!
//! Measured as the CPU time of the whole process (the trainer thread's too), like the live
//! goal, in the steady state: every detector trained and its rings full. The containers start
//! one after another over one training cycle, as on a host, so that the periodic work (the
//! seasonal period search every 256 values, retraining every 1024) is spread over the
//! intervals instead of falling on the same ones; an iteration is 256 intervals.
//!
//! The live figure (`cargo xtask bench sleepers 1000` beside `sentinel run`) also pays the
//! drain, the roster's scans and the output, and moves by ~1.3 ms from run to run.

use std::{collections::HashMap, hint::black_box, sync::Arc, time::Duration};

use criterion::{
    Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::{Measurement, ValueFormatter, WallTime},
};
use sentinel::{
    analysis::Analysis,
    collect::{
        drain::{ContainerActivity, LatencySummarizer},
        loader::KeyMode,
    },
    containers::{Attribution, Runtimes, docker::Watcher, procfs::Identity, roster::RosterHandle},
    detect::DetectConfig,
    export::prometheus::{Metrics, MetricsConfig},
    model::{Interval, Published},
};
use sentinel_common::{CONTAINER_HIST_BUCKETS, ContainerStats};

const CONTAINERS: u64 = 1000;
/// A learned series retrains every `train_window` x `downsample` values (256 x 4): the
/// containers' starts are spread over this many intervals.
const CYCLE: u64 = 1024;
/// Intervals run before measuring: the last container started, then a whole cycle and past
/// every warm-up.
const WARM_UP: u64 = 2 * CYCLE + 200;
/// Intervals per measured iteration.
const PER_ITERATION: u64 = 256;
/// Distinct intervals of activity, replayed in turn.
const PATTERNS: u64 = 64;
/// Keys start here (mount namespace inodes are in this range on the development host).
const FIRST_KEY: u64 = 4_026_532_000;

/// When container `k` starts.
fn start(k: u64) -> u64 {
    k * CYCLE / CONTAINERS
}

/// Deterministic noise in [0, 1).
fn unit(i: u64) -> f64 {
    let mut h = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((h ^ (h >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// One interval's kernel deltas of every container: each woke 2-6 times, ran 20-80 us and
/// waited a few us, now and then ~64 us.
fn activity(pattern: u64) -> Vec<ContainerActivity> {
    (0..CONTAINERS)
        .map(|k| {
            let r = unit(pattern * CONTAINERS + k);
            let wakeups = 2 + (r * 5.0) as u64;
            let cpu_ns = 20_000 + (r * 60_000.0) as u64;
            // log2 buckets of microseconds.
            let mut runq_hist = [0u64; CONTAINER_HIST_BUCKETS];
            runq_hist[2] = wakeups - 1;
            runq_hist[if r > 0.9 { 7 } else { 3 }] += 1;
            let wait_ns = (wakeups - 1) * 4_000 + if r > 0.9 { 90_000 } else { 9_000 };
            ContainerActivity {
                key: FIRST_KEY + k,
                stats: ContainerStats {
                    cpu_ns,
                    switches: 2 * wakeups,
                    runq_wait_ns: wait_ns,
                    runq_hist,
                    ..ContainerStats::default()
                },
                per_cpu: smallvec::smallvec![((k % 2) as u32, cpu_ns, wait_ns)],
            }
        })
        .collect()
}

struct Daemon {
    attribution: Attribution,
    summarizer: LatencySummarizer,
    analysis: Analysis,
    runtime: tokio::runtime::Runtime,
    metrics: Metrics,
    seq: u64,
}

impl Daemon {
    fn new() -> Self {
        Self {
            attribution: Attribution::new(
                KeyMode::Mntns,
                Runtimes::docker_only(Watcher::disabled().view.clone()),
                RosterHandle::fixed(),
            ),
            summarizer: LatencySummarizer::default(),
            analysis: Analysis::new(&DetectConfig::default(), None, &mut Watcher::disabled())
                .expect("detection without healing"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime"),
            metrics: Metrics::new(MetricsConfig::default()),
            seq: 0,
        }
    }

    /// The roster's scan finds the containers started so far (the attribution names a new
    /// key from it).
    fn scan(&self, started: u64) {
        let cgroup: Arc<str> = Arc::from("/user.slice/user-0.slice/session-1.scope");
        let live = (0..started).map(|k| {
            let identity = Identity {
                owner: None,
                cgroup: cgroup.clone(),
                netns: None,
            };
            (FIRST_KEY + k, identity)
        });
        self.attribution
            .roster()
            .publish(live.collect::<HashMap<_, _>>());
    }

    /// One interval, as the daemon's loop runs it; returns what it published.
    fn interval(&mut self, deltas: &[ContainerActivity]) -> Published {
        let containers =
            self.attribution
                .containers(deltas, &[], &[], 1_000_000_000, &mut self.summarizer);
        let mut iv = Interval {
            ts: format!("t{}", self.seq),
            seq: self.seq,
            containers,
            ..Interval::default()
        };
        self.seq += 1;
        // Without healing nothing in it waits.
        self.runtime.block_on(self.analysis.on_interval(&mut iv));
        let published = Published {
            interval: iv,
            series: self.analysis.series(),
            runq_hist: Vec::new(),
        };
        self.metrics.observe(&published);
        published
    }
}

/// CPU time of the whole process, every thread: the trainer's work counts as the daemon's.
struct ProcessCpu;

fn process_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("the process CPU clock");
    Duration::from(t)
}

impl Measurement for ProcessCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        process_cpu()
    }
    fn end(&self, started: Duration) -> Duration {
        process_cpu().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

/// `INTERVAL_BLOCKS=N`: before criterion's samples, N blocks of 256 intervals, each block's
/// process CPU and main-thread wall time per interval on a line, and their means. Criterion's
/// ten samples move with the host (this VM's memory-bound work varies by +-15% from one
/// block to the next); a mean over 20 blocks, binaries run in turn, separates two builds.
fn print_blocks(daemon: &mut Daemon, patterns: &[Vec<ContainerActivity>], blocks: u64) {
    let (mut cpu_sum, mut wall_sum) = (0.0, 0.0);
    for block in 0..blocks {
        let (cpu, wall) = (process_cpu(), std::time::Instant::now());
        for round in 0..PER_ITERATION {
            daemon.interval(&patterns[(round % PATTERNS) as usize]);
        }
        let per = |d: Duration| d.as_secs_f64() * 1e3 / PER_ITERATION as f64;
        let (cpu, wall) = (per(process_cpu().saturating_sub(cpu)), per(wall.elapsed()));
        println!("block {block}: cpu {cpu:.2} ms, wall {wall:.2} ms per interval");
        cpu_sum += cpu;
        wall_sum += wall;
    }
    let n = blocks.max(1) as f64;
    println!(
        "mean of {blocks} blocks: cpu {:.2} ms, wall {:.2} ms per interval",
        cpu_sum / n,
        wall_sum / n
    );
}

fn bench(c: &mut Criterion<ProcessCpu>) {
    let patterns: Vec<Vec<ContainerActivity>> = (0..PATTERNS).map(activity).collect();
    let mut daemon = Daemon::new();
    let mut started = 0;
    for round in 0..WARM_UP {
        let now = (0..CONTAINERS).take_while(|&k| start(k) <= round).count() as u64;
        if now > started {
            started = now;
            daemon.scan(started);
        }
        let deltas = &patterns[(round % PATTERNS) as usize][..started as usize];
        daemon.interval(deltas);
    }
    if let Some(blocks) = std::env::var("INTERVAL_BLOCKS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        print_blocks(&mut daemon, &patterns, blocks);
    }
    let first = daemon.interval(&patterns[0]);
    assert_eq!(
        first.interval.containers.len(),
        CONTAINERS as usize,
        "every key is a container record"
    );
    assert!(
        first.series.len() >= 2 * CONTAINERS as usize,
        "cpu and runq_latency are tracked for every container: {} series",
        first.series.len()
    );
    // The steady state: the containers' `cpu` and `runq_latency` series scored by their
    // forests (a series without one is in `fallback`: here the all-zero `oom_kills` and
    // `abnormal_exits`, whose constant windows cannot train one).
    let detection = &first.interval.detection;
    assert!(
        detection.ready * 100 >= 99 * 2 * CONTAINERS,
        "the forests trained: {detection:?}"
    );
    let mut g = c.benchmark_group("interval");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(PER_ITERATION))
        .measurement_time(Duration::from_secs(30));
    let mut round = 0;
    g.bench_function("1000_containers_x256", |b| {
        b.iter(|| {
            for _ in 0..PER_ITERATION {
                round += 1;
                black_box(daemon.interval(&patterns[(round % PATTERNS) as usize]));
            }
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ProcessCpu);
    targets = bench
}
criterion_main!(benches);
