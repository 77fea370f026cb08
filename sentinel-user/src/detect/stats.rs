//! Robust statistical detector: exponentially weighted baselines with mean-absolute-deviation
//! scales (fast and slow), and three O(1) channels:
//! * spike: one-step residual against the fast baseline, in units of the residual scale;
//! * level shift: fast baseline against the slow one, in units of the level spread;
//! * new extreme: a value beyond the (slowly decaying) range seen so far.
//!
//! The first two are calibrated per series by [`Likelihood`]; the detector keeps a few floats
//! of state and never allocates.

use super::calib::{CalibParams, Likelihood, tail_score};
use super::config::DetectConfig;

/// Values beyond this magnitude are clamped so that differences stay finite.
pub const VALUE_LIMIT: f64 = 1e100;

/// Engine-wide parameters of the statistical detector.
#[derive(Clone, Copy, Debug)]
pub struct StatParams {
    pub a_fast: f64,
    pub a_slow: f64,
    /// Decay of the running range towards the slow baseline, per row.
    pub a_range: f64,
    pub scale_floor: f64,
    pub calib: CalibParams,
}

impl StatParams {
    pub fn new(c: &DetectConfig) -> Self {
        Self {
            a_fast: 2.0 / (f64::from(c.fast_window) + 1.0),
            a_slow: 2.0 / (f64::from(c.slow_window) + 1.0),
            a_range: 1.0 / f64::from(c.long_window),
            scale_floor: c.scale_floor,
            calib: CalibParams {
                a_short: 2.0 / (f64::from(c.short_window) + 1.0),
                a_long: 1.0 / f64::from(c.long_window),
                spread_floor: c.spread_floor,
                learn: c.warmup,
            },
        }
    }
}

/// Output of one statistical update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatOut {
    /// Calibrated score in [0, 1].
    pub score: f64,
    /// The value the detector expected (slow baseline before this row).
    pub baseline: f64,
}

/// Per-series state of the statistical detector.
#[derive(Clone, Debug, Default)]
pub struct StatDetector {
    n: u64,
    fast: f64,
    slow: f64,
    /// EW mean absolute one-step residual against `fast`.
    noise: f64,
    /// EW mean absolute deviation from `slow`.
    spread: f64,
    lo: f64,
    hi: f64,
    cal_spike: Likelihood,
    cal_shift: Likelihood,
}

impl StatDetector {
    pub fn seen(&self) -> u64 {
        self.n
    }

    /// The current slow baseline (what a "normal" value looks like).
    pub fn baseline(&self) -> f64 {
        self.slow
    }

    /// Feeds one finite value (callers filter non-finite ones).
    pub fn update(&mut self, p: &StatParams, x: f64) -> StatOut {
        let x = x.clamp(-VALUE_LIMIT, VALUE_LIMIT);
        if self.n == 0 {
            self.fast = x;
            self.slow = x;
            self.lo = x;
            self.hi = x;
        }
        let baseline = self.slow;
        // Floor the scales relative to the level so that a flat series does not divide by ~0.
        let floor = p.scale_floor * (self.slow.abs() + self.spread) + 1e-12;
        let resid = (x - self.fast).abs();
        let spike_z = resid / (self.noise + floor);
        let a_fast = p.a_fast;
        let fast = self.fast + a_fast * (x - self.fast);
        let shift_z = (fast - self.slow).abs() / (self.spread + floor);
        let width = self.hi - self.lo + floor;
        let beyond = if x > self.hi {
            (x - self.hi) / width
        } else if x < self.lo {
            (self.lo - x) / width
        } else {
            0.0
        };

        // Early on, plain averages (1/n) so that the first rows do not dominate for long.
        let a_slow = (1.0 / (self.n as f64 + 1.0)).max(p.a_slow);
        self.noise += a_slow * (resid - self.noise);
        self.spread += a_slow * ((x - self.slow).abs() - self.spread);
        self.slow += a_slow * (x - self.slow);
        self.fast = fast;
        self.hi = x.max(self.hi - p.a_range * (self.hi - self.slow));
        self.lo = x.min(self.lo + p.a_range * (self.slow - self.lo));
        self.n += 1;

        // ln(1 + z) tames the heavy tails so that calibrated scores keep resolution.
        let s_spike = self.cal_spike.update(&p.calib, spike_z.ln_1p());
        let s_shift = self.cal_shift.update(&p.calib, shift_z.ln_1p());
        // A clear new extreme is strong evidence by itself (HTM's range rule), graded by how
        // far beyond the range it lies.
        let s_range = if beyond > 0.05 && self.n > u64::from(p.calib.learn) {
            tail_score(3.0 + 10.0 * beyond.min(1.0))
        } else {
            0.0
        };
        StatOut {
            score: s_spike.max(s_shift).max(s_range),
            baseline,
        }
    }
}
