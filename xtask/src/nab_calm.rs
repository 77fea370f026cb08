//! `cargo xtask nab --calm`: anomaly-free synthetic series of kinds the shared NAB files lack
//! (counts, heavy tails, a mean-reverting random walk, hourly prices), to count the false alarms
//! a detector raises on series it was never tuned on, at the threshold the NAB files chose. The
//! shared files hold CPU, network and temperature gauges; a host also has request counts at a
//! few per interval, latencies with heavy tails and queue lengths that wander. Nothing here is
//! an anomaly, so every alarm after the probation is a false one. Generated from a fixed seed
//! with our own samplers, so the series (and the counts) are the same on every machine.

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

pub const KINDS: [(&str, Generator); 10] = [
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

/// Series `index` of kind `kind` (its position in [`KINDS`]): its own seed, so that adding a
/// kind changes no other series.
pub fn series(kind: usize, index: usize, rows: usize) -> Vec<f64> {
    let mut rng = Rng::new(0xca1f_5eed ^ ((kind as u64) << 32) ^ index as u64);
    (KINDS[kind].1)(&mut rng, rows)
}

/// Writes every series as `calm/<kind>_<index>.csv` (NAB's `timestamp,value`, a 5-minute
/// interval) under `dir`; returns their paths relative to `dir`.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>> {
    let cat = dir.join("calm");
    std::fs::create_dir_all(&cat).with_context(|| format!("{}", cat.display()))?;
    let mut files = Vec::new();
    for (k, (name, _)) in KINDS.iter().enumerate() {
        for i in 0..PER_KIND {
            let mut text = String::from("timestamp,value\n");
            for (t, v) in series(k, i, ROWS).iter().enumerate() {
                let minutes = 5 * t;
                text.push_str(&format!(
                    "2020-01-{:02} {:02}:{:02}:00,{v:.6}\n",
                    1 + minutes / 1440,
                    minutes / 60 % 24,
                    minutes % 60
                ));
            }
            let rel = PathBuf::from("calm").join(format!("{name}_{i}.csv"));
            std::fs::write(dir.join(&rel), text).with_context(|| format!("{}", rel.display()))?;
            files.push(rel);
        }
    }
    Ok(files)
}

/// Rows at or above `threshold` after the probation, per 1000 scored rows, from a replay's
/// output (`timestamp,value,anomaly_score`).
pub fn alarms_per_1000(replay_csv: &str, threshold: f64) -> Result<f64> {
    let mut scored = 0usize;
    let mut alarms = 0usize;
    for (i, line) in replay_csv.lines().skip(1).enumerate() {
        let score: f64 = line
            .rsplit(',')
            .next()
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
        for k in 0..KINDS.len() {
            let a = series(k, 0, 2000);
            assert_eq!(a, series(k, 0, 2000), "{}", KINDS[k].0);
            assert_ne!(a, series(k, 1, 2000), "{}", KINDS[k].0);
            assert!(a.iter().all(|v| v.is_finite()), "{}", KINDS[k].0);
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
    }

    #[test]
    fn write_names_every_kind_and_keeps_the_nab_format() {
        let dir = std::env::temp_dir().join(format!("sentinel-calm-{}", std::process::id()));
        let files = write(&dir).unwrap();
        assert_eq!(files.len(), KINDS.len() * PER_KIND);
        let text = std::fs::read_to_string(dir.join(&files[0])).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ROWS + 1);
        assert_eq!(lines[0], "timestamp,value");
        assert!(lines[1].starts_with("2020-01-01 00:00:00,"), "{}", lines[1]);
        assert!(
            lines[ROWS].starts_with("2020-01-28 18:35:00,"),
            "{}",
            lines[ROWS]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
