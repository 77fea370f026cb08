//! `cargo xtask nab --calm`: anomaly-free synthetic series of kinds the shared NAB files lack
//! (counts, heavy tails, a mean-reverting random walk, hourly prices), to count the false alarms
//! a detector raises on series it was never tuned on, at the threshold the NAB files chose. The
//! shared files hold CPU, network and temperature gauges; a host also has request counts at a
//! few per interval, latencies with heavy tails and queue lengths that wander. Nothing here is
//! an anomaly, so every alarm after the probation is a false one. Beside them, series of the
//! same kinds with one textbook anomaly each (a shift, a burst of volatility, a stuck value, a
//! drift), labelled as NAB labels: scored with the thresholds chosen on the NAB files, they say
//! how that one threshold carries to kinds of series it never saw. Generated from a fixed seed
//! with our own samplers, so the series (and the figures) are the same on every machine.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Rows per series: a 5-minute metric over four weeks.
pub const ROWS: usize = 8000;
/// Series per kind (different seeds): one series can be lucky.
pub const PER_KIND: usize = 3;
/// Rows a day at the 5-minute interval (the daily kinds' period).
const DAY: f64 = 288.0;
/// The scorer's probation on these files (NAB's: 15% of a file, at most 750 rows): the same rows
/// go unscored here, so the rate compares with the FP rows of the NAB files.
pub const PROBATION: usize = 750;

/// splitmix64: tiny, well mixed, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1): never 0 or 1, so that logarithms and powers stay finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller; one of the pair is enough at this volume).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
    }

    /// Student's t with `dof` (an integer) degrees of freedom: z / sqrt(chi2 / dof).
    pub fn student_t(&mut self, dof: u32) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..dof).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / f64::from(dof)).sqrt()
    }

    /// Poisson with mean `lambda`: Knuth's product of uniforms, in pieces of at most 30 so that
    /// e^-lambda never underflows (a sum of Poissons is Poisson with the summed mean).
    pub fn poisson(&mut self, lambda: f64) -> f64 {
        let mut left = lambda.max(0.0);
        let mut k = 0u64;
        while left > 0.0 {
            let part = left.min(30.0);
            left -= part;
            let limit = (-part).exp();
            let mut p = self.uniform();
            while p > limit {
                k += 1;
                p *= self.uniform();
            }
        }
        k as f64
    }

    /// Lomax (Pareto II) with shape `a` and scale 1: heavy tailed, mean 1 / (a - 1).
    pub fn lomax(&mut self, a: f64) -> f64 {
        self.uniform().powf(-1.0 / a) - 1.0
    }
}

/// The kinds: name and generator of `n` values.
pub type Generator = fn(&mut Rng, usize) -> Vec<f64>;

pub const KINDS: [(&str, Generator); 11] = [
    ("gauss", |r, n| {
        (0..n).map(|_| 50.0 + 2.0 * r.normal()).collect()
    }),
    ("student3", |r, n| {
        (0..n).map(|_| 50.0 + 2.0 * r.student_t(3)).collect()
    }),
    ("student2", |r, n| {
        (0..n).map(|_| 50.0 + 2.0 * r.student_t(2)).collect()
    }),
    ("lognormal", |r, n| {
        (0..n).map(|_| 10.0 * (0.5 * r.normal()).exp()).collect()
    }),
    ("poisson_low", |r, n| {
        (0..n).map(|_| r.poisson(0.5)).collect()
    }),
    ("poisson_mid", |r, n| {
        (0..n).map(|_| r.poisson(5.0)).collect()
    }),
    ("daily_poisson", |r, n| {
        (0..n).map(|t| r.poisson(daily_rate(t))).collect()
    }),
    ("daily_bursty", daily_bursty),
    ("daily_job", daily_job),
    ("mean_reverting_walk", |r, n| {
        // AR(1) at 0.998: wanders for hundreds of rows, returns over thousands.
        let mut x = 0.0;
        (0..n)
            .map(|_| {
                x = 0.998 * x + 0.3 * r.normal();
                60.0 + x
            })
            .collect()
    }),
    ("hourly_price", |r, n| {
        (0..n)
            .map(|t| 1.5 * (0.3 * r.normal() + 0.3 * (2.0 * PI * t as f64 / 24.0).sin()).exp())
            .collect()
    }),
];

/// A daily cycle of counts between 8 and 88 per interval.
fn daily_rate(t: usize) -> f64 {
    40.0 * (1.2 + (2.0 * PI * t as f64 / DAY).sin())
}

/// Daily counts with news-like bursts: 40 bursts per 8000 rows, each a heavy-tailed jump
/// (Lomax, shape 1.5) decaying over five rows. Bursts this common are the series' normal.
fn daily_bursty(r: &mut Rng, n: usize) -> Vec<f64> {
    let mut extra = vec![0.0; n];
    for _ in 0..n / 200 {
        let start = (r.uniform() * n as f64) as usize;
        let height = 30.0 * r.lomax(1.5);
        for (k, e) in extra.iter_mut().skip(start).take(5).enumerate() {
            *e += height * (-(k as f64) / 2.0).exp();
        }
    }
    (0..n)
        .map(|t| r.poisson(daily_rate(t) + extra[t]))
        .collect()
}

/// Rows by which a daily job's start wanders either way (30 minutes at the 5-minute
/// interval: a timer's randomised delay, a queue ahead of it).
const JOB_JITTER: usize = 6;

/// A daily gauge (a smooth cycle with noise) and a nightly job that lifts it by ten noise
/// spreads for half an hour, starting at 02:00 plus or minus [`JOB_JITTER`] rows each night.
/// The job is the series' normal; one period back it started up to twice the jitter apart.
fn daily_job(r: &mut Rng, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|t| 30.0 + 8.0 * (2.0 * PI * t as f64 / DAY).sin() + 2.0 * r.normal())
        .collect();
    let day = DAY as usize;
    for night in 0..n.div_ceil(day) {
        let shift = (r.uniform() * (2 * JOB_JITTER + 1) as f64) as usize;
        let start = night * day + 24 + shift - JOB_JITTER;
        v.iter_mut().skip(start).take(6).for_each(|x| *x += 20.0);
    }
    v
}

/// Series `index` of kind `kind` (its position in [`KINDS`]): its own seed, so that adding a
/// kind changes no other series.
pub fn series(kind: usize, index: usize, rows: usize) -> Vec<f64> {
    let mut rng = Rng::new(0xca1f_5eed ^ ((kind as u64) << 32) ^ index as u64);
    (KINDS[kind].1)(&mut rng, rows)
}

/// Where an injected anomaly starts: long after the probation and every channel's learning.
pub const LABEL_AT: usize = 5000;

/// An anomaly written into a series from row `at` on, sized by the series' own robust spread
/// (`sigma`, the interquartile range / 1.349 of the rows before it) around its median.
pub type Injector = fn(values: &mut [f64], at: usize, median: f64, sigma: f64);

/// Textbook anomalies that are anomalies in any kind of series: a lasting shift of the level, a
/// burst of volatility, a stuck value (a dead exporter) and a slow drift to a new level.
pub const ANOMALIES: [(&str, Injector); 4] = [
    ("shift", |v, at, _, sigma| {
        v[at..].iter_mut().for_each(|x| *x += 4.0 * sigma);
    }),
    ("burst", |v, at, median, _| {
        let end = (at + 200).min(v.len());
        v[at..end]
            .iter_mut()
            .for_each(|x| *x = median + 4.0 * (*x - median));
    }),
    ("stuck", |v, at, _, _| {
        let held = v[at];
        let end = (at + 400).min(v.len());
        v[at..end].iter_mut().for_each(|x| *x = held);
    }),
    ("drift", |v, at, _, sigma| {
        for (k, x) in v[at..].iter_mut().enumerate() {
            *x += 6.0 * sigma * (k as f64 / 500.0).min(1.0);
        }
    }),
];

/// Median and interquartile range / 1.349 (the normal's sigma) of `values`; a spread of 0
/// (a series mostly one value) becomes the mean absolute deviation, so that every injection
/// moves the series.
pub fn robust_spread(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
    let median = q(0.5);
    let sigma = (q(0.75) - q(0.25)) / 1.349;
    if sigma > 0.0 {
        return (median, sigma);
    }
    let mad = v.iter().map(|x| (x - median).abs()).sum::<f64>() / v.len() as f64;
    (median, mad.max(1e-9))
}

/// A series of kind `kind` (a seed of its own, not one of the calm ones) with anomaly `anomaly`
/// from row [`LABEL_AT`].
pub fn injected(kind: usize, anomaly: usize, rows: usize) -> Vec<f64> {
    let mut v = series(kind, PER_KIND + anomaly, rows);
    let (median, sigma) = robust_spread(&v[..LABEL_AT]);
    (ANOMALIES[anomaly].1)(&mut v, LABEL_AT, median, sigma);
    v
}

/// NAB's timestamp of row `t` at the 5-minute interval from 2020-01-01.
fn timestamp(t: usize) -> String {
    let minutes = 5 * t;
    format!(
        "2020-01-{:02} {:02}:{:02}:00",
        1 + minutes / 1440,
        minutes / 60 % 24,
        minutes % 60
    )
}

fn write_csv(dir: &Path, rel: &Path, values: &[f64]) -> Result<()> {
    let mut text = String::from("timestamp,value\n");
    for (t, v) in values.iter().enumerate() {
        text.push_str(&format!("{},{v:.6}\n", timestamp(t)));
    }
    std::fs::write(dir.join(rel), text).with_context(|| format!("{}", rel.display()))
}

/// Writes the calm series as `calm/<kind>_<index>.csv` and the injected ones as
/// `injected/<kind>_<anomaly>.csv` (NAB's `timestamp,value`, a 5-minute interval) under `dir`,
/// with NAB's `combined_windows.json`: one window per injected series, as NAB's labeller lays it
/// out (10% of the rows, centred on the label), none in the calm ones. Returns the calm files
/// and the injected files (kind by kind, each kind's anomalies in [`ANOMALIES`]' order),
/// relative to `dir`.
pub fn write(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    for cat in ["calm", "injected"] {
        std::fs::create_dir_all(dir.join(cat))
            .with_context(|| format!("{}", dir.join(cat).display()))?;
    }
    let mut windows = serde_json::Map::new();
    let mut calm = Vec::new();
    let mut labelled = Vec::new();
    for (k, (name, _)) in KINDS.iter().enumerate() {
        for i in 0..PER_KIND {
            let rel = PathBuf::from("calm").join(format!("{name}_{i}.csv"));
            write_csv(dir, &rel, &series(k, i, ROWS))?;
            windows.insert(rel.to_string_lossy().into_owned(), serde_json::json!([]));
            calm.push(rel);
        }
        for (a, (anomaly, _)) in ANOMALIES.iter().enumerate() {
            let rel = PathBuf::from("injected").join(format!("{name}_{anomaly}.csv"));
            write_csv(dir, &rel, &injected(k, a, ROWS))?;
            let half = ROWS / 10 / 2;
            let window = [
                format!("{}.000000", timestamp(LABEL_AT - half)),
                format!("{}.000000", timestamp(LABEL_AT + half - 1)),
            ];
            windows.insert(
                rel.to_string_lossy().into_owned(),
                serde_json::json!([window]),
            );
            labelled.push(rel);
        }
    }
    std::fs::write(
        dir.join("combined_windows.json"),
        serde_json::to_vec_pretty(&windows)?,
    )?;
    Ok((calm, labelled))
}

/// Rows at or above `threshold` after the probation, per 1000 scored rows, from a replay's
/// output (`timestamp,value,anomaly_score`, then the channels with `--channels`).
pub fn alarms_per_1000(replay_csv: &str, threshold: f64) -> Result<f64> {
    let mut scored = 0usize;
    let mut alarms = 0usize;
    for (i, line) in replay_csv.lines().skip(1).enumerate() {
        let score: f64 = line
            .split(',')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("row {}: no anomaly score in {line:?}", i + 1))?;
        if i >= PROBATION {
            scored += 1;
            alarms += usize::from(score >= threshold);
        }
    }
    anyhow::ensure!(scored > 0, "no row after the {PROBATION}-row probation");
    Ok(1000.0 * alarms as f64 / scored as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_sd(xs: &[f64]) -> (f64, f64) {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        (m, v.sqrt())
    }

    #[test]
    fn series_are_deterministic_distinct_and_finite() {
        for (k, (name, _)) in KINDS.iter().enumerate() {
            let a = series(k, 0, 2000);
            assert_eq!(a, series(k, 0, 2000), "{name}");
            assert_ne!(a, series(k, 1, 2000), "{name}");
            assert!(a.iter().all(|v| v.is_finite()), "{name}");
        }
    }

    #[test]
    fn samplers_have_their_distributions_moments() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let (m, sd) = mean_sd(&(0..n).map(|_| r.normal()).collect::<Vec<_>>());
        assert!(m.abs() < 0.01 && (sd - 1.0).abs() < 0.01, "normal {m} {sd}");
        for lambda in [0.5, 5.0, 88.0] {
            let (m, sd) = mean_sd(&(0..n).map(|_| r.poisson(lambda)).collect::<Vec<_>>());
            assert!(
                (m / lambda - 1.0).abs() < 0.02,
                "poisson {lambda}: mean {m}"
            );
            assert!(
                (sd / lambda.sqrt() - 1.0).abs() < 0.02,
                "poisson {lambda}: sd {sd}"
            );
        }
        // t with 3 degrees of freedom: variance 3; Lomax 1.5: median 2^(2/3) - 1.
        let (_, sd) = mean_sd(&(0..n).map(|_| r.student_t(3)).collect::<Vec<_>>());
        assert!((sd - 3f64.sqrt()).abs() < 0.15, "t3 sd {sd}");
        let mut l: Vec<f64> = (0..n).map(|_| r.lomax(1.5)).collect();
        l.sort_by(f64::total_cmp);
        let median = l[n / 2];
        assert!(
            (median - (2f64.powf(2.0 / 3.0) - 1.0)).abs() < 0.01,
            "lomax median {median}"
        );
    }

    #[test]
    fn alarms_are_counted_after_the_probation_only() {
        let mut csv = String::from("timestamp,value,anomaly_score\n");
        for i in 0..PROBATION + 2000 {
            // One alarm in the probation (not counted), three after it, one just under.
            let s = match i {
                10 => 0.9,
                800 | 900 | 2000 => 0.5,
                1000 => 0.37,
                _ => 0.0,
            };
            csv.push_str(&format!("t{i},1,{s}\n"));
        }
        assert_eq!(alarms_per_1000(&csv, 0.38).unwrap(), 1.5);
        assert_eq!(alarms_per_1000(&csv, 0.37).unwrap(), 2.0);
        assert!(alarms_per_1000("timestamp,value,anomaly_score\nt,1,x\n", 0.3).is_err());
        assert!(alarms_per_1000("timestamp,value,anomaly_score\nt,1,0.1\n", 0.3).is_err());
        // With the channel columns after it, the score is still the third column.
        let wide: String = csv.lines().map(|l| format!("{l},0.95,0.01\n")).collect();
        assert_eq!(alarms_per_1000(&wide, 0.38).unwrap(), 1.5);
    }

    #[test]
    fn write_names_every_kind_and_labels_each_injection_as_nab_does() {
        let dir = std::env::temp_dir().join(format!("sentinel-calm-{}", std::process::id()));
        let (calm, labelled) = write(&dir).unwrap();
        assert_eq!(calm.len(), KINDS.len() * PER_KIND);
        assert_eq!(labelled.len(), KINDS.len() * ANOMALIES.len());
        let text = std::fs::read_to_string(dir.join(&calm[0])).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ROWS + 1);
        assert_eq!(lines[0], "timestamp,value");
        assert!(lines[1].starts_with("2020-01-01 00:00:00,"), "{}", lines[1]);
        assert!(
            lines[ROWS].starts_with("2020-01-28 18:35:00,"),
            "{}",
            lines[ROWS]
        );
        let w: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("combined_windows.json")).unwrap())
                .unwrap();
        assert_eq!(w.as_object().unwrap().len(), calm.len() + labelled.len());
        assert_eq!(w["calm/gauss_0.csv"], serde_json::json!([]));
        // 800 rows (10% of the file) centred on row 5000: rows 4600 to 5399 (lines 4601, 5400).
        let first = "2020-01-16 23:20:00";
        let last = "2020-01-19 17:55:00";
        assert_eq!(
            w["injected/gauss_shift.csv"],
            serde_json::json!([[format!("{first}.000000"), format!("{last}.000000")]])
        );
        let text = std::fs::read_to_string(dir.join(&labelled[0])).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[4601].starts_with(first), "{}", lines[4601]);
        assert!(lines[5400].starts_with(last), "{}", lines[5400]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_injection_changes_its_series_from_the_label_on_and_not_before() {
        for (k, (kind, _)) in KINDS.iter().enumerate() {
            for (a, (anomaly, _)) in ANOMALIES.iter().enumerate() {
                let clean = series(k, PER_KIND + a, ROWS);
                let v = injected(k, a, ROWS);
                assert_eq!(v[..LABEL_AT], clean[..LABEL_AT], "{kind} {anomaly}");
                let (_, sigma) = robust_spread(&clean[..LABEL_AT]);
                assert!(sigma > 0.0, "{kind}");
                let after = LABEL_AT..LABEL_AT + 200;
                if *anomaly == "stuck" {
                    // It stops moving where the clean series goes on.
                    assert!(after.clone().all(|t| v[t] == v[LABEL_AT]), "{kind}");
                    assert!(after.clone().any(|t| clean[t] != v[t]), "{kind}");
                } else {
                    // Over the next 200 rows it moves from where it would have been by at least
                    // a spread on average.
                    let moved = after.map(|t| (v[t] - clean[t]).abs()).sum::<f64>() / 200.0;
                    assert!(moved >= sigma, "{kind} {anomaly}: {moved} < {sigma}");
                }
            }
        }
    }
}
