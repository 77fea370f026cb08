//! Robust statistical detector: exponentially weighted baselines with mean-absolute-deviation
//! scales (fast and slow), and three O(1) channels:
//! * spike: one-step residual against the fast baseline, in units of the residual scale;
//! * level shift: fast baseline against the slow one, in units of the level spread;
//! * new extreme: a value beyond the (slowly decaying) range seen so far.
//!
//! The first two are calibrated per series by [`Likelihood`]; the detector keeps a few floats
//! of state and never allocates.

use super::calib::{CalibParams, Pot, PotParams, surprise_score, tail_score};
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
    pub range_z: f64,
    pub calib: CalibParams,
    pub pot: PotParams,
    /// Calibration of the novelty channel (counted in blocks, not rows).
    pub calib_novel: CalibParams,
    pub novelty: bool,
    pub block: u32,
    pub levels: f64,
    /// Mask of the rolling context (bits of `context` levels).
    pub ctx_mask: u64,
    pub level_bits: u32,
}

impl StatParams {
    pub fn new(c: &DetectConfig) -> Self {
        Self {
            a_fast: 2.0 / (f64::from(c.fast_window) + 1.0),
            a_slow: 2.0 / (f64::from(c.slow_window) + 1.0),
            a_range: 1.0 / f64::from(c.long_window),
            scale_floor: c.scale_floor,
            range_z: c.range_z,
            calib: CalibParams {
                a_short: 2.0 / (f64::from(c.short_window) + 1.0),
                a_long: 1.0 / f64::from(c.long_window),
                spread_floor: c.spread_floor,
                learn: c.warmup,
            },
            pot: PotParams {
                u: c.pot_threshold,
                a: 1.0 / f64::from(c.long_window),
                rate0: c.prior_rate,
                beta0: 1.0,
                beta_floor: 0.25,
                learn: c.warmup,
            },
            calib_novel: CalibParams {
                a_short: 2.0 / (f64::from(c.short_window) + 1.0),
                a_long: f64::from(c.novelty_block) / f64::from(c.long_window),
                spread_floor: c.spread_floor,
                learn: c.warmup / c.novelty_block,
            },
            novelty: c.novelty,
            block: c.novelty_block,
            levels: f64::from(c.novelty_levels),
            level_bits: 32 - (c.novelty_levels - 1).leading_zeros(),
            ctx_mask: {
                let bits = (32 - (c.novelty_levels - 1).leading_zeros()) * c.novelty_context;
                if bits >= 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                }
            },
        }
    }
}

/// Slots of the context-count table (a power of two).
const NOVELTY_SLOTS: usize = 1024;
/// Blocks between halvings of the counts, so that old contexts fade.
const NOVELTY_DECAY_BLOCKS: u32 = 2048;

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
    cal_spike: Pot,
    cal_shift: Pot,
    novelty: Novelty,
}

/// Short-pattern novelty: the series is cut into blocks, each block is reduced to the value
/// furthest from the slow baseline (keeps spikes), quantised on the running range, and the
/// last few levels form a context whose past occurrences are counted in a fixed hashed table.
/// A context seen rarely or never is novel. Works at any period without knowing it.
#[derive(Clone, Debug, Default)]
struct Novelty {
    counts: Box<[u8]>,
    ctx: u64,
    ext: f64,
    in_block: u32,
    blocks: u32,
    score: f64,
    /// EW rate of novel contexts, and the decayed surprise of recent ones.
    rate: f64,
    surprise: f64,
}

impl Novelty {
    fn update(&mut self, p: &StatParams, x: f64, base: f64, lo: f64, hi: f64) -> f64 {
        if self.counts.is_empty() {
            self.counts = vec![0u8; NOVELTY_SLOTS].into_boxed_slice();
        }
        if self.in_block == 0 || (x - base).abs() > (self.ext - base).abs() {
            self.ext = x;
        }
        self.in_block += 1;
        if self.in_block < p.block {
            return self.score;
        }
        self.in_block = 0;
        let width = hi - lo;
        let q = if width > 0.0 {
            (((self.ext - lo) / width) * p.levels).clamp(0.0, p.levels - 1.0) as u64
        } else {
            0
        };
        self.ctx = ((self.ctx << p.level_bits) | q) & p.ctx_mask;
        let slot = (self.ctx.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize
            % NOVELTY_SLOTS;
        let seen = self.counts[slot];
        self.counts[slot] = seen.saturating_add(1);
        self.blocks += 1;
        if self.blocks.is_multiple_of(NOVELTY_DECAY_BLOCKS) {
            for c in self.counts.iter_mut() {
                *c /= 2;
            }
        }
        // Novelty is a (graded) binary event, so it is calibrated by its own base rate: a new
        // context costs -ln(rate) nats of surprise; surprise decays like the short window.
        let novel = 1.0 / (1.0 + f64::from(seen));
        let c = &p.calib_novel;
        let surprise = novel * -self.rate.max(1e-4).ln();
        self.surprise = self.surprise * (1.0 - c.a_short) + surprise;
        let a = (1.0 / f64::from(self.blocks)).max(c.a_long);
        self.rate += a * (novel - self.rate);
        self.score = if self.blocks > c.learn {
            surprise_score(self.surprise)
        } else {
            0.0
        };
        self.score
    }
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

        let s_novel = if p.novelty {
            self.novelty.update(p, x, self.slow, self.lo, self.hi)
        } else {
            0.0
        };
        // ln(1 + z) tames the heavy tails so that calibrated scores keep resolution.
        let s_spike = surprise_score(self.cal_spike.update(&p.pot, spike_z.ln_1p()));
        let s_shift = surprise_score(self.cal_shift.update(&p.pot, shift_z.ln_1p()));
        // A clear new extreme is strong evidence by itself (HTM's range rule), graded by how
        // far beyond the range it lies.
        let s_range = if beyond > 0.05 && self.n > u64::from(p.calib.learn) {
            tail_score(p.range_z + 10.0 * beyond.min(1.0))
        } else {
            0.0
        };
        StatOut {
            score: s_spike.max(s_shift).max(s_range).max(s_novel),
            baseline,
        }
    }
}
