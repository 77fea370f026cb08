//! Points per second per core of each detector (one series, one thread). The learned figure
//! includes its inline retraining, amortised over the rows.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sentinel::detect::{DetectConfig, DetectorKind, Params, SeriesDetector, Trainer};

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
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
