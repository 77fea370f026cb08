//! Userspace half of one drain: `Drain::apply` over a synthetic snapshot of N containers and
//! 4096 interfaces on C CPUs, every value changed since the previous drain (the worst case).
//! The kernel half, reading the maps, is measured on the real daemon by `cargo xtask bench`.
//!
//! `cargo bench -p sentinel-user --bench drain`; the time is the thread's CPU time per drain,
//! not wall time, so a busy machine (other jobs preempting the bench) does not inflate it.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sentinel::collect::drain::{CONTAINER_FIELDS, Drain, RawSnapshot};
use sentinel_common::{
    Counters, HIST_BUCKETS, IFNAME_LEN, IfaceKey, IfaceStats, LatencyHist, OnCpu, counter,
};

const IFACES: usize = 4096;

fn snapshot(containers: usize, cpus: usize, round: u64) -> RawSnapshot {
    let mut name = [0u8; IFNAME_LEN];
    name[..4].copy_from_slice(b"veth");
    let iface = IfaceStats {
        rx_packets: round,
        rx_bytes: round * 64,
        tx_packets: round,
        tx_bytes: round * 64,
        name,
    };
    RawSnapshot {
        counters: vec![
            Counters {
                values: [round; counter::COUNT]
            };
            cpus
        ],
        hist: vec![
            LatencyHist {
                buckets: [round; HIST_BUCKETS]
            };
            cpus
        ],
        ifaces: (0..IFACES)
            .map(|i| {
                let key = IfaceKey {
                    netns: 4_026_531_840 + i as u32,
                    ifindex: 2,
                };
                (key, vec![iface; cpus])
            })
            .collect(),
        containers: (0..containers)
            .map(|i| (1000 + i as u64, vec![[round; CONTAINER_FIELDS]; cpus]))
            .collect(),
        netns_tcp: Vec::new(),
        oncpu: vec![
            OnCpu {
                since_ns: round,
                key: 1000
            };
            cpus
        ],
        oncpu_now_ns: round + 1_000_000,
    }
}

fn drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("drain_apply");
    for cpus in [2usize, 16, 128] {
        for containers in [1024usize, 10_000] {
            // Two snapshots whose every value differs, applied alternately (the backwards
            // step is the reset path, which does the same work).
            let snaps = [snapshot(containers, cpus, 1), snapshot(containers, cpus, 2)];
            let id = BenchmarkId::new(format!("{cpus}cpus"), format!("{containers}containers"));
            group.bench_with_input(id, &snaps, |b, snaps| {
                let mut drain = Drain::new();
                drain.apply(&snaps[0]);
                b.iter_custom(|iters| {
                    let start = thread_cpu_time();
                    for i in 0..iters {
                        std::hint::black_box(drain.apply(&snaps[(i as usize + 1) % 2]));
                    }
                    thread_cpu_time().saturating_sub(start)
                });
            });
        }
    }
    group.finish();
}

fn thread_cpu_time() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = drain
}
criterion_main!(benches);
