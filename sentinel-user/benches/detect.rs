//! Points per second per core of each detector (one series, one thread). The learned figure
//! includes its inline retraining, amortised over the rows.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sentinel::detect::{
    DetectConfig, DetectionEngine, DetectorKind, Params, SeriesDetector, Trainer,
};
use sentinel::model::{ContainerDelta, Interval};

const N: usize = 100_000;

fn series() -> Vec<f64> {
    (0..N as u64)
        .map(|i| {
            let h = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % 1000;
            100.0
                + 10.0 * (i as f64 * 0.02).sin()
                + h as f64 / 100.0
                + if i % 5000 == 0 { 80.0 } else { 0.0 }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = series();
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for (name, kind) in [
        ("statistical", DetectorKind::Statistical),
        ("learned", DetectorKind::Learned),
        ("combined", DetectorKind::Combined),
    ] {
        let p = Params::new(&DetectConfig {
            detector: kind,
            ..DetectConfig::default()
        });
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut d = SeriesDetector::new(&p);
                let mut acc = 0.0;
                for &x in &data {
                    acc += d.update(&p, &Trainer::Inline, "bench", black_box(x)).score;
                }
                acc
            });
        });
    }
    g.finish();

    // The daemon's path: one interval of 5 host series and 50 containers x 6 signals (305
    // series), statistical detector (the learned one's training runs off this thread).
    const ROUNDS: u64 = 1000;
    // Attribution shares a container's name from one interval to the next.
    let names: Vec<std::sync::Arc<str>> = (0..50u64).map(|k| format!("c{k}").into()).collect();
    let ivs: Vec<Interval> = (0..ROUNDS)
        .map(|i| {
            let mut iv = Interval {
                ts: format!("t{i}"),
                seq: i,
                ..Interval::default()
            };
            iv.counters
                .insert("sched_switch".into(), Some(1000 + i % 7));
            iv.system.cpu_percent = data[i as usize];
            for k in 0..50u64 {
                let mut c = ContainerDelta {
                    id: format!("{k:064x}"),
                    name: names[k as usize].clone(),
                    cpu_percent: data[(i * 7 + k) as usize % N],
                    tcp_retransmits: (i + k) % 3,
                    ..ContainerDelta::default()
                };
                c.runqueue_latency_us.p99 = data[(i * 13 + k) as usize % N] / 4.0;
                c.runqueue_latency_us.count = 10;
                iv.containers.push(c);
            }
            iv
        })
        .collect();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(ROUNDS * 305));
    g.sample_size(10);
    g.bench_function("observe_interval_305_series", |b| {
        b.iter(|| {
            let mut e = DetectionEngine::with_trainer(
                DetectConfig {
                    detector: DetectorKind::Statistical,
                    ..DetectConfig::default()
                },
                Trainer::Inline,
            );
            let mut n = 0;
            for iv in &ivs {
                n += e.observe_interval(black_box(iv)).len();
            }
            n
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
