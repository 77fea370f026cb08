//! Robust statistical detector: exponentially weighted baselines with mean-absolute-deviation
//! scales (fast and slow), and four channels, O(1) per value (amortised):
//! * spike: one-step residual against the fast baseline (or the seasonal prediction, or the
//!   nearest value within a fraction of the period of one period back), in units of the
//!   residual scale;
//! * new extreme: a value beyond the (slowly decaying) range seen so far;
//! * short-pattern novelty: contexts of quantised block extremes, counted in a fixed table;
//! * seasonal residual: against the values one and two detected periods earlier;
//! * stuck value: a run of identical values longer than any the series has shown before.
//!
//! Each is calibrated per series ([`Pot`], or its own base rate for novelty); the state is a
//! few floats plus two buffers fixed at creation. (A level-shift channel, fast against slow
//! baseline, was removed: it changed no NAB score, see DETECTION.md.)

use super::calib::{CalibParams, HALF_SCORE_SURPRISE, Pot, PotParams, surprise_score, tail_score};
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
    /// Rows between snapshots of the range that values are judged against.
    pub range_lag: u32,
    /// How far beyond that range (as a fraction of its width) a value must be to count.
    pub range_margin: f64,
    /// Values past a breakout that scored keep its score until one passes it by
    /// `range_margin` (no setting: off only in the tests that show what it does).
    pub breakout_holds: bool,
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
    /// Seasonal channel (None: disabled).
    pub season: Option<SeasonParams>,
    /// Stuck-value channel.
    pub stuck: bool,
}

/// Parameters of the seasonal channel.
#[derive(Clone, Copy, Debug)]
pub struct SeasonParams {
    /// Rows per block mean of the period search.
    pub block: u32,
    /// Values kept for period detection and prediction.
    pub capacity: u32,
    /// Minimum autocorrelation for a lag to count as the period.
    pub min_acf: f64,
    /// EW weight per row of the residual scale.
    pub a_scale: f64,
    /// EW weight per row of the short mean of the residual.
    pub a_short: f64,
    pub scale_floor: f64,
    /// Fraction of the period searched either side of one period back for the spike residual.
    pub jitter: f64,
    pub pot: PotParams,
}

impl StatParams {
    pub fn new(c: &DetectConfig) -> Self {
        Self {
            a_fast: 2.0 / (f64::from(c.fast_window) + 1.0),
            a_slow: 2.0 / (f64::from(c.slow_window) + 1.0),
            a_range: 1.0 / f64::from(c.long_window),
            scale_floor: c.scale_floor,
            range_z: RANGE_Z,
            range_lag: c.range_lag,
            range_margin: c.range_margin,
            breakout_holds: true,
            calib: CalibParams {
                a_short: 2.0 / (f64::from(c.short_window) + 1.0),
                a_long: 1.0 / f64::from(c.long_window),
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
                a_long: f64::from(NOVELTY_BLOCK) / f64::from(c.long_window),
                learn: c.warmup / NOVELTY_BLOCK,
            },
            novelty: c.novelty,
            block: NOVELTY_BLOCK,
            levels: f64::from(NOVELTY_LEVELS),
            level_bits: NOVELTY_LEVELS.trailing_zeros(),
            season: c.seasonal.then(|| SeasonParams {
                block: SEASON_BLOCK,
                capacity: c.season_buffer,
                min_acf: c.season_min_acf,
                a_scale: 2.0 / (f64::from(c.slow_window) + 1.0),
                a_short: (2.0 / (f64::from(c.short_window) + 1.0)).min(1.0),
                scale_floor: c.scale_floor,
                jitter: c.season_jitter,
                pot: PotParams {
                    u: c.pot_threshold,
                    a: 1.0 / f64::from(c.long_window),
                    rate0: c.prior_rate,
                    // The seasonal residual of a normal period is small and regular, so its
                    // tail is far narrower than a spike's: prior mean excess 0.1 in
                    // ln(1 + z) (NAB: 0.05, 0.1, 0.2, 0.3, 0.5 and 1.0 tried).
                    beta0: 0.1,
                    beta_floor: 0.05,
                    learn: c.warmup,
                },
            }),
            ctx_mask: (1u64 << (NOVELTY_LEVELS.trailing_zeros() * NOVELTY_CONTEXT)) - 1,
            stuck: c.stuck,
        }
    }
}

/// A value just past `range_margin` beyond the range is a 3-sigma event (HTM's range rule);
/// further beyond scores higher. 2.5 and 3.5 scored the same on NAB (see DETECTION.md).
const RANGE_Z: f64 = 3.0;
/// Rows per block of the novelty channel and of the seasonal period search (the block
/// extreme / mean of 4 rows: single-row noise averages out, a 20-minute pattern at 5-minute
/// sampling stays visible).
const NOVELTY_BLOCK: u32 = 4;
const SEASON_BLOCK: u32 = 4;
/// Quantisation levels of the novelty channel (a power of two; CAD OSE's coarse 8 levels) and
/// blocks per context (6 x 3 bits).
const NOVELTY_LEVELS: u32 = 8;
const NOVELTY_CONTEXT: u32 = 6;
/// Slots of the context-count table (a power of two).
const NOVELTY_SLOTS: usize = 1024;
/// Blocks between halvings of the counts, so that old contexts fade.
const NOVELTY_DECAY_BLOCKS: u32 = 2048;

/// Output of one statistical update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatOut {
    /// Calibrated score in [0, 1]: the largest of `channels`.
    pub score: f64,
    /// The part of `score` observed on this row: without the novelty channel's score held
    /// between its block ends, or echoed (not higher) after one.
    pub own: f64,
    /// The value the detector expected (slow baseline before this row).
    pub baseline: f64,
    /// Each channel's calibrated score on this row (`sentinel replay --channels`).
    pub channels: StatChannels,
}

/// The statistical detector's channels, each calibrated to [0, 1]; 0 for a channel that is
/// switched off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatChannels {
    pub spike: f64,
    pub range: f64,
    pub seasonal: f64,
    pub stuck: f64,
    /// Held between the ends of its 4-row blocks.
    pub novelty: f64,
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
    /// Range and residual scale at the last two snapshots (every `range_lag` rows). Values
    /// are judged against the older range, so that a breakout that creeps out a little further
    /// each row (each row only just past the current range) still counts by its full extent;
    /// a spike against the smaller of the current and the older scale, so that the volatility
    /// at the start of an incident does not hide the spikes that follow by inflating it.
    snap_now: Snapshot,
    snap_then: Snapshot,
    cal_spike: Pot,
    novelty: Novelty,
    season: Seasonal,
    stuck: Stuck,
    /// The last breakout that scored, while values stay past the lagged range on its side.
    breakout: Option<Breakout>,
}

/// A value that scored as a new extreme: later values past the lagged range on the same side
/// are the same incident and keep its score, until one passes it by `range_margin`.
#[derive(Clone, Copy, Debug)]
struct Breakout {
    edge: f64,
    score: f64,
    up: bool,
}

/// A value that stops changing: a dead exporter, a frozen sensor or a hung counter repeats its
/// last value bit for bit, which no other channel sees (the value stays inside the range and
/// near the baseline). A run of identical values is judged by how often this series repeated a
/// value before the run began (a run of r repeats at repeat rate q has probability q^r, r ln(1/q)
/// nats), and only once it is longer than any earlier run (HTM's range rule applied to run
/// lengths), so that the zeros of an idle counter or a quantised gauge's plateaus, which the
/// series shows all along, stay quiet. Calibrated like the spike channel.
#[derive(Clone, Debug, Default)]
struct Stuck {
    prev: f64,
    /// Rows equal to the row before, in a row.
    run: u32,
    /// Share of rows equal to the row before: a mean with the prior rate worth `warmup` rows,
    /// then exponentially weighted over `long_window` rows.
    repeat_rate: f64,
    /// `repeat_rate` when the current run began: a run is judged by the series before it.
    run_rate: f64,
    /// Row at which the current run began.
    run_from: u64,
    /// Longest earlier run, decaying over `long_window` rows as the range does.
    longest: f64,
    cal: Pot,
}

impl Stuck {
    /// Feeds value `x`, the series' row `n` (0-based); returns the calibrated score.
    fn update(&mut self, p: &StatParams, n: u64, x: f64) -> f64 {
        if n == 0 {
            self.prev = x;
            self.repeat_rate = p.pot.rate0;
            self.run_rate = self.repeat_rate;
        }
        // Exact equality: a stuck source repeats its value exactly; a live one rarely does.
        let repeat = n > 0 && x == self.prev;
        if repeat {
            self.run = self.run.saturating_add(1);
        } else if n > 0 {
            self.longest = self.longest.max(f64::from(self.run));
            self.run = 0;
            self.run_rate = self.repeat_rate;
            self.run_from = n;
        }
        self.longest *= 1.0 - p.calib.a_long;
        let a = (1.0 / (n as f64 + f64::from(p.calib.learn))).max(p.calib.a_long);
        self.repeat_rate += a * (f64::from(u8::from(repeat)) - self.repeat_rate);
        self.prev = x;
        let run = f64::from(self.run);
        // A series that has repeated since its first rows has no history to judge the run by.
        // In whole rows: an idle stretch as long as the usual ones is no record, however far
        // the longest has decayed since the last of them.
        let judged = self.run_from >= u64::from(p.calib.learn) && run > self.longest.ceil();
        let raw = if judged {
            run * -self.run_rate.max(f64::MIN_POSITIVE).ln()
        } else {
            0.0
        };
        // Capped at score 0.5 (tail 1e-5): a run that goes on lengthens its surprise row by
        // row, and without a ceiling would re-arm the onset shaper again and again.
        surprise_score(
            self.cal
                .update(&p.pot, raw.ln_1p())
                .min(HALF_SCORE_SURPRISE),
        )
    }
}

/// The range and residual scale at one point in time.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    lo: f64,
    hi: f64,
    noise: f64,
}

impl Snapshot {
    /// The state after the first value: the range is that value, no scale yet.
    fn at(x: f64) -> Self {
        Self {
            lo: x,
            hi: x,
            noise: 0.0,
        }
    }
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
    /// The score is new on this row: a block ended and it rose above the one before.
    new: bool,
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
        self.new = false;
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
            for c in &mut self.counts {
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
        let score = if self.blocks > c.learn {
            surprise_score(self.surprise)
        } else {
            0.0
        };
        // A novel level stays in the context for `context` blocks and its surprise decays
        // over the short window: a falling score echoes one observation.
        self.new = score > self.score;
        self.score = score;
        self.score
    }
}

/// Seasonal residual: recent values go into a fixed ring; every quarter ring the period is
/// (re)estimated by autocorrelation (on block means, refined on rows), and each new value is
/// compared with the value one period earlier. A daily or weekly pattern that changes shape
/// without a level or range excursion shows here, and a jump that recurs every period is not
/// a spike. Without a clear period the channel is silent.
#[derive(Clone, Debug, Default)]
pub struct Seasonal {
    ring: Box<[f32]>,
    /// Next write position and values stored (<= capacity).
    head: u32,
    len: u32,
    rows: u64,
    /// Detected period in rows (0: none).
    period: u32,
    /// EW mean absolute seasonal residual, and the short mean of the scaled residual.
    scale: f64,
    short: f64,
    scaled: u32,
    cal: Pot,
}

/// One seasonal update: the calibrated score and the value one period ago, if any.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeasonOut {
    pub score: f64,
    pub pred: Option<f64>,
    /// The distance to the nearest value within the jitter window around one period back
    /// (None: no period yet).
    pub near: Option<f64>,
}

impl Seasonal {
    /// The detected period in rows (0: none yet).
    pub fn period(&self) -> u32 {
        self.period
    }

    /// The ring slots the next update predicts from: one period back, if the ring holds it,
    /// and two periods back, if it holds that too.
    fn references(&self) -> [Option<usize>; 2] {
        let cap = self.ring.len() as u32;
        // `period` is at most half the ring, so `2 * period <= cap`.
        let slot = |periods: u32| {
            (self.period > 0 && self.len >= periods * self.period)
                .then(|| ((self.head + cap - periods * self.period) % cap) as usize)
        };
        [slot(1), slot(2)]
    }

    /// Starts loading the slots the next update reads (one and two periods back).
    #[inline]
    pub fn prefetch(&self) {
        for slot in self.references().into_iter().flatten() {
            super::prefetch::prefetch(&self.ring[slot]);
        }
    }

    /// Feeds one value; `spread` is the series' typical deviation (floors the scale). The
    /// prediction is the mean of the values one and two periods ago.
    pub fn update(&mut self, p: &SeasonParams, x: f64, spread: f64) -> SeasonOut {
        if self.ring.is_empty() {
            self.ring = vec![0f32; p.capacity as usize].into_boxed_slice();
        }
        let mut out = SeasonOut::default();
        // The residual against one period ago is taken before the new value is stored.
        if let [Some(one), two] = self.references() {
            let mut pred = f64::from(self.ring[one]);
            if let Some(two) = two {
                // Two periods back as well: less noise, and one odd period does not make
                // the next one look anomalous at full strength.
                pred = 0.5 * (pred + f64::from(self.ring[two]));
            }
            out.pred = Some(pred);
            out.near = self.nearest_around_one_period_back(p, x);
            let r = (x - pred).abs();
            let floor = p.scale_floor * spread + 1e-12;
            let z = r / (self.scale + floor);
            self.short += p.a_short * (z.ln_1p() - self.short);
            let a = (1.0 / f64::from(self.scaled + 1)).max(p.a_scale);
            self.scale += a * (r - self.scale);
            self.scaled = self.scaled.saturating_add(1);
            out.score = surprise_score(self.cal.update(&p.pot, self.short));
        }
        let cap = self.ring.len() as u32;
        self.ring[self.head as usize] = x as f32;
        self.head = (self.head + 1) % cap;
        self.len = (self.len + 1).min(cap);
        self.rows += 1;
        if self.len >= 16 * p.block && self.rows.is_multiple_of(u64::from(cap / 4).max(1)) {
            self.detect_period(p);
        }
        out
    }

    /// The smallest distance from `x` to a value stored within `jitter` of the period either
    /// side of one period back (rows already seen only). A daily job that starts a few minutes
    /// earlier or later each day is then not a spike at the minute it starts.
    fn nearest_around_one_period_back(&self, p: &SeasonParams, x: f64) -> Option<f64> {
        let w = (f64::from(self.period) * p.jitter) as u32;
        if self.period == 0 || self.len < self.period {
            return None;
        }
        // Rows back: from `period + w` (older) to `period - w` (newer, at least one). The
        // ring holds `len` rows back; `period <= cap / 2` and `w <= period / 4` keep the span
        // inside the ring.
        let (oldest, newest) = ((self.period + w).min(self.len), (self.period - w).max(1));
        let cap = self.ring.len() as u32;
        let start = ((self.head + cap - oldest) % cap) as usize;
        let count = (oldest - newest + 1) as usize;
        let (first, second) = if start + count <= cap as usize {
            (&self.ring[start..start + count], &[][..])
        } else {
            let tail = &self.ring[start..];
            (tail, &self.ring[..count - tail.len()])
        };
        let x = x as f32;
        let nearest = first
            .iter()
            .chain(second)
            .fold(f32::INFINITY, |m, &v| m.min((x - v).abs()));
        Some(f64::from(nearest))
    }

    /// The period: on block means, the lag of the highest autocorrelation peak after the
    /// first trough (small lags of any smooth series correlate highly), if it reaches
    /// `min_acf`, then refined to the best row lag around it. The current period is kept
    /// unless another lag is clearly better, so that the residual scale is not reset by
    /// jitter between neighbouring lags.
    fn detect_period(&mut self, p: &SeasonParams) {
        let old = self.period;
        // Newest first, copied once so that the sums below are straight loops (this runs
        // every quarter ring, not per row).
        // (Two reversed slices, not `at` per row: a division per row was most of the copy.)
        let head = self.head as usize;
        let mut rows: Vec<f64> = Vec::with_capacity(self.ring.len());
        rows.extend(self.ring[..head].iter().rev().map(|&v| f64::from(v)));
        rows.extend(self.ring[head..].iter().rev().map(|&v| f64::from(v)));
        rows.truncate(self.len as usize);
        let m = rows.iter().sum::<f64>() / rows.len() as f64;
        let var = rows.iter().map(|x| (x - m).powi(2)).sum::<f64>() / rows.len() as f64;
        let best = self.best_lag(p, &rows, m, var);
        let keep = old > 0
            && old <= self.len / 2
            && (best.0 == 0 || row_acf(&rows, m, var, old) >= best.1 - 0.05);
        self.period = if keep { old } else { best.0 };
        if self.period != old {
            // Residuals against another lag live on another scale.
            self.scaled = 0;
            self.short = 0.0;
        }
    }

    /// (period in rows, its autocorrelation); (0, 0) when there is none.
    fn best_lag(&self, p: &SeasonParams, rows: &[f64], row_mean: f64, row_var: f64) -> (u32, f64) {
        let b = p.block;
        let nb = (self.len / b) as usize;
        // Block means, oldest first (`rows[i - 1]` is the value `i` rows back).
        let xs: Vec<f64> = (0..nb)
            .map(|k| {
                let start = self.len - (k as u32) * b;
                (0..b).map(|j| rows[(start - j) as usize - 1]).sum::<f64>() / f64::from(b)
            })
            .rev()
            .collect();
        let m = xs.iter().sum::<f64>() / nb as f64;
        let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / nb as f64;
        if var <= 0.0 {
            return (0, 0.0);
        }
        let max_lag = nb / 2;
        let centred: Vec<f64> = xs.iter().map(|x| x - m).collect();
        let mut sums = Vec::with_capacity(max_lag + 1);
        lagged_sums(&centred, 1..(max_lag + 2).min(nb), &mut sums);
        let acf: Vec<f64> = (0..=max_lag + 1)
            .map(|lag| {
                if lag == 0 || lag >= nb {
                    return 1.0;
                }
                sums[lag - 1] / (nb - lag) as f64 / var
            })
            .collect();
        let trough = (1..max_lag)
            .find(|&l| acf[l] <= acf[l + 1])
            .unwrap_or(max_lag);
        let mut best = 0;
        for lag in trough.max(2)..=max_lag {
            let peak = acf[lag] >= acf[lag - 1] && acf[lag] >= acf[lag + 1];
            if peak && acf[lag] >= p.min_acf && (best == 0 || acf[lag] > acf[best]) {
                best = lag;
            }
        }
        if best == 0 {
            return (0, 0.0);
        }
        // Refine to rows around the block lag (all below `rows.len()`: at most half of it).
        let centre = best as u32 * b;
        let (first, last) = (
            centre.saturating_sub(b - 1).max(2),
            (centre + b - 1).min(self.len / 2),
        );
        let mut top = (0, f64::NEG_INFINITY);
        if first > last {
            return top;
        }
        let centred: Vec<f64> = rows.iter().map(|x| x - row_mean).collect();
        sums.clear();
        lagged_sums(&centred, first as usize..last as usize + 1, &mut sums);
        for (lag, c) in (first..=last).zip(&sums) {
            // As `row_acf`, bit for bit.
            let r = if row_var <= 0.0 {
                0.0
            } else {
                c / (rows.len() - lag as usize) as f64 / row_var
            };
            if r > top.1 {
                top = (lag, r);
            }
        }
        top
    }
}

/// For each lag of `lags` (each below `d.len()`), `sum(d[i] * d[i + lag])` over every `i` it
/// has, appended to `out`. Each sum adds its terms in index order from -0.0, as
/// `Iterator::sum` does, so that it is bit for bit the one-lag-at-a-time sum; four lags at a
/// time share each load of `d[i]` and keep four additions in flight, where one sum alone waits
/// on each addition before the next (the period search was 5% of the daemon at 1000
/// containers).
fn lagged_sums(d: &[f64], lags: std::ops::Range<usize>, out: &mut Vec<f64>) {
    let n = d.len();
    let mut lag = lags.start;
    while lag < lags.end {
        if lag + 4 <= lags.end {
            // The terms all four lags have, then the shorter lags' last ones, in order.
            let common = n - lag - 3;
            let x = &d[..common];
            let y = [0, 1, 2, 3].map(|k| &d[lag + k..lag + k + common]);
            let mut c = [-0.0f64; 4];
            for (i, &a) in x.iter().enumerate() {
                c[0] += a * y[0][i];
                c[1] += a * y[1][i];
                c[2] += a * y[2][i];
                c[3] += a * y[3][i];
            }
            for (k, sum) in c.iter_mut().enumerate().take(3) {
                for i in common..n - lag - k {
                    *sum += d[i] * d[i + lag + k];
                }
            }
            out.extend_from_slice(&c);
            lag += 4;
        } else {
            out.push(d[..n - lag].iter().zip(&d[lag..]).map(|(a, b)| a * b).sum());
            lag += 1;
        }
    }
}

/// Autocorrelation at `lag` of `rows` (newest first) with mean `m` and variance `var`.
fn row_acf(rows: &[f64], m: f64, var: f64, lag: u32) -> f64 {
    let n = rows.len();
    let lag = lag as usize;
    if lag == 0 || lag >= n || var <= 0.0 {
        return 0.0;
    }
    let c: f64 = rows[..n - lag]
        .iter()
        .zip(&rows[lag..])
        .map(|(a, b)| (a - m) * (b - m))
        .sum();
    c / (n - lag) as f64 / var
}

impl StatDetector {
    /// Starts loading what the next update reads beyond this struct.
    #[inline]
    pub fn prefetch(&self) {
        self.season.prefetch();
    }

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
            self.snap_now = Snapshot::at(x);
            self.snap_then = Snapshot::at(x);
        }
        let baseline = self.slow;
        let s_stuck = if p.stuck {
            self.stuck.update(p, self.n, x)
        } else {
            0.0
        };
        let season = match &p.season {
            Some(sp) => self.season.update(sp, x, self.spread),
            None => SeasonOut::default(),
        };
        let s_season = season.score;
        // Floor the scales relative to the level so that a flat series does not divide by ~0.
        let floor = p.scale_floor * (self.slow.abs() + self.spread) + 1e-12;
        let mut resid = (x - self.fast).abs();
        if let Some(pred) = season.pred {
            // A jump that recurs every period is expected, not a spike.
            resid = resid.min((x - pred).abs());
        }
        // ... and so is one that comes a little earlier or later than a period ago. That only
        // excuses the value: the noise scale learns from `resid`, since the nearest of many
        // values is closer than a typical one (learning from it inflated every z).
        let excused = season.near.map_or(resid, |near| resid.min(near));
        let noise = if self.n >= 2 * u64::from(p.range_lag) {
            self.noise.min(self.snap_then.noise)
        } else {
            self.noise
        };
        let spike_z = excused / (noise + floor);
        let a_fast = p.a_fast;
        let fast = self.fast + a_fast * (x - self.fast);
        let Snapshot { lo, hi, .. } = self.snap_then;
        let width = hi - lo + floor;
        let beyond = if x > hi {
            (x - hi) / width
        } else if x < lo {
            (lo - x) / width
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
        if self.n.is_multiple_of(u64::from(p.range_lag)) {
            self.snap_then = self.snap_now;
            self.snap_now = Snapshot {
                lo: self.lo,
                hi: self.hi,
                noise: self.noise,
            };
        }

        let (s_novel, novel_new) = if p.novelty {
            let s = self.novelty.update(p, x, self.slow, self.lo, self.hi);
            (s, self.novelty.new)
        } else {
            (0.0, false)
        };
        // ln(1 + z) tames the heavy tails so that calibrated scores keep resolution.
        let s_spike = surprise_score(self.cal_spike.update(&p.pot, spike_z.ln_1p()));
        // A clear new extreme is strong evidence by itself (HTM's range rule), graded by how
        // far beyond the range it lies.
        let s_range = if beyond > p.range_margin && self.n > u64::from(p.calib.learn) {
            let up = x > hi;
            // Past a breakout that scored, a value is judged against that breakout: a value
            // that keeps climbing holds the incident's score instead of scoring a little higher
            // row after row against the lagged range, which re-armed the alarm again and again
            // (one alarm per incident, and the incident goes on while the value stays out).
            let last = self.breakout.filter(|b| p.breakout_holds && b.up == up);
            let past = match last {
                Some(b) if up => (x - b.edge) / (b.edge - lo + floor),
                Some(b) => (b.edge - x) / (hi - b.edge + floor),
                None => beyond,
            };
            match last {
                Some(b) if past <= p.range_margin => b.score,
                _ => {
                    let score = tail_score(p.range_z + 10.0 * past.min(1.0));
                    self.breakout = Some(Breakout { edge: x, score, up });
                    score
                }
            }
        } else {
            self.breakout = None;
            0.0
        };
        let per_row = s_spike.max(s_range).max(s_season).max(s_stuck);
        StatOut {
            score: per_row.max(s_novel),
            own: if novel_new {
                per_row.max(s_novel)
            } else {
                per_row
            },
            baseline,
            channels: StatChannels {
                spike: s_spike,
                range: s_range,
                seasonal: s_season,
                stuck: s_stuck,
                novelty: s_novel,
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::engine::Params;
    use super::super::lifecycle::Shaper;
    use super::*;

    fn params() -> StatParams {
        StatParams::new(&DetectConfig::default())
    }

    /// Deterministic noise in [-0.5, 0.5) (also used by the other detectors' tests).
    pub(crate) fn noise(i: u64) -> f64 {
        // splitmix64's finaliser: consecutive inputs give uncorrelated outputs.
        let mut h = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        ((h >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    /// A daily-like pattern of period 96 rows: a bump in the middle of each period.
    fn daily(i: u64) -> f64 {
        let phase = i % 96;
        let bump = if (30..60).contains(&phase) { 10.0 } else { 0.0 };
        20.0 + bump + noise(i)
    }

    #[test]
    fn seasonal_finds_the_period_and_flags_a_changed_pattern() {
        let p = params();
        let sp = p.season.expect("seasonal on by default");
        let mut s = Seasonal::default();
        let mut normal_max: f64 = 0.0;
        for i in 0..3000 {
            let o = s.update(&sp, daily(i), 1.0);
            if i > 1500 {
                normal_max = normal_max.max(o.score);
            }
        }
        assert_eq!(s.period(), 96);
        // Constant memory: the ring never grows past its configured capacity.
        assert_eq!(s.ring.len(), sp.capacity as usize);
        // The bump goes missing for a period: values stay inside the usual range and level,
        // only the pattern is new.
        let mut changed_max: f64 = 0.0;
        for i in 3000..3096 {
            let x = if (30..60).contains(&(i % 96)) {
                20.0 + noise(i)
            } else {
                daily(i)
            };
            changed_max = changed_max.max(s.update(&sp, x, 1.0).score);
        }
        assert!(normal_max < 0.3, "normal periods scored {normal_max}");
        assert!(changed_max > 0.5, "changed pattern scored {changed_max}");
    }

    /// Highest statistical score over `rows` of `series`, with the stuck channel and without.
    fn stuck_and_not(series: impl Fn(u64) -> f64, rows: std::ops::Range<u64>) -> (f64, f64) {
        let on = params();
        let off = StatParams {
            stuck: false,
            ..params()
        };
        let (mut a, mut b) = (StatDetector::default(), StatDetector::default());
        let (mut max_on, mut max_off) = (0.0f64, 0.0f64);
        for i in 0..rows.end {
            let x = series(i);
            let (sa, sb) = (a.update(&on, x).score, b.update(&off, x).score);
            if rows.contains(&i) {
                max_on = max_on.max(sa);
                max_off = max_off.max(sb);
            }
        }
        (max_on, max_off)
    }

    #[test]
    fn a_value_that_stops_changing_is_flagged_once_it_outlasts_every_earlier_run() {
        // An integer gauge (48 to 52): a fifth of its rows repeat the row before, in runs of a
        // few rows. From row 3000 it repeats one value: inside its range, near its level.
        let gauge = |i: u64| (50.0 + 5.0 * noise(i)).round();
        let stuck = |i: u64| gauge(i.min(3000));
        let (calm_on, calm_off) = stuck_and_not(gauge, 300..3000);
        let (on, off) = stuck_and_not(stuck, 3000..3100);
        // A run longer than every earlier one also happens by chance now and then (the
        // record of a random process), but scores far less than the stuck value.
        assert!(
            calm_on < 0.35 && calm_off < 0.3,
            "calm {calm_on} {calm_off}"
        );
        assert!(on > 0.4, "stuck scored {on}");
        assert!(off < 0.3, "without the channel it scored {off}");
    }

    #[test]
    fn runs_the_series_has_shown_before_are_not_stuck() {
        // Constant from its first row: no history to judge the run by (nothing but what the
        // other channels score on its first rows).
        let (flat, flat_without) = stuck_and_not(|_| 7.0, 0..3000);
        assert_eq!(flat, flat_without);
        // An idle counter: busy stretches of 40 to 80 rows between idle ones of 30 to 40 zeros
        // (irregular: no period for the seasonal channel to miss). An idle stretch of the usual
        // length adds nothing; one three times as long is stuck: above the daemon's event
        // threshold, which without the channel it stays under.
        let mut counter = Vec::new();
        for k in 0u64.. {
            let busy = 40 + ((noise(k) + 0.5) * 40.0) as u64;
            let idle = 30 + ((noise(k + 1000) + 0.5) * 10.0) as u64;
            counter.extend((0..busy).map(|j| 100.0 + 10.0 * noise(7919 * k + j)));
            if counter.len() >= 3000 {
                break;
            }
            counter.extend((0..idle).map(|_| 0.0));
        }
        // It ends busy, at row `end`.
        let end = counter.len() as u64;
        let then = |tail: &[f64]| {
            let mut v = counter.clone();
            v.extend_from_slice(tail);
            move |i: u64| v[i as usize]
        };
        let usual: Vec<f64> = (0..35)
            .map(|_| 0.0)
            .chain((0..100).map(|j| 100.0 + 10.0 * noise(j)))
            .collect();
        let long: Vec<f64> = (0..120)
            .map(|_| 0.0)
            .chain((0..100).map(|j| 100.0 + 10.0 * noise(j)))
            .collect();
        let (usual, usual_without) = stuck_and_not(then(&usual), end..end + 35);
        // Past the longest usual idle stretch (40 rows).
        let (long, without) = stuck_and_not(then(&long), end + 40..end + 120);
        assert_eq!(usual, usual_without, "a usual idle stretch");
        let event = DetectConfig::default().event_threshold;
        assert!(
            long > event + 0.05,
            "an idle stretch 3x the usual scored {long}"
        );
        assert!(without < event, "without the channel it scored {without}");
    }

    /// Noise of width 10 around 50 for 2000 rows, then a slide from `from` by `per_row`.
    pub(crate) fn noise_then_slide(from: f64, per_row: f64) -> impl Fn(u64) -> f64 {
        move |i| {
            if i < 2000 {
                50.0 + 10.0 * noise(i)
            } else {
                from + per_row * (i - 2000) as f64
            }
        }
    }

    /// Scores of `rows` values of `series` with the default (lagged) range and noise, and with
    /// snapshots every row (`range_lag` 1: judged against the range as it just was).
    fn lagged_and_row_by_row(series: impl Fn(u64) -> f64, rows: u64) -> Vec<(f64, f64)> {
        let lagged = params();
        let row_by_row = StatParams {
            range_lag: 1,
            ..params()
        };
        let (mut a, mut b) = (StatDetector::default(), StatDetector::default());
        (0..rows)
            .map(|i| {
                let x = series(i);
                (a.update(&lagged, x).score, b.update(&row_by_row, x).score)
            })
            .collect()
    }

    #[test]
    fn a_value_creeping_out_of_the_range_counts_by_its_full_extent() {
        // Noise of width 10 around 50, then a slide of 0.3 per row: each row is only 3% of
        // the range past the one before (under `range_margin`), but 60 rows later it is far
        // outside the range as it stood before the slide.
        let scores = lagged_and_row_by_row(noise_then_slide(45.0, -0.3), 2060);
        let max = |r: std::ops::Range<usize>, pick: fn(&(f64, f64)) -> f64| {
            scores[r].iter().map(pick).fold(0.0, f64::max)
        };
        let calm = max(300..2000, |s| s.0);
        let slide_lagged = max(2000..2060, |s| s.0);
        let slide_row = max(2000..2060, |s| s.1);
        assert!(calm < 0.3, "calm rows scored {calm}");
        // Clearly above the event threshold (the slide's first breakout scores ~0.49 and the
        // slide holds that score, see the next test).
        let event = DetectConfig::default().event_threshold;
        assert!(slide_lagged > event + 0.15, "slide scored {slide_lagged}");
        assert!(
            slide_lagged > slide_row + 0.1,
            "lagged {slide_lagged} vs row by row {slide_row}"
        );
    }

    #[test]
    fn a_value_that_keeps_climbing_holds_its_first_breakouts_score() {
        // Noise of width 10 around 50, then a climb of 0.3 per row. Judged against the range
        // of 50 to 100 rows before, every row of the climb past its first breakout scores
        // higher than the last and re-arms the alarm: a wandering gauge's cascade of alarms.
        // Judged against the breakout, the climb is one incident: it holds the score.
        let series = noise_then_slide(55.0, 0.3);
        let climb = |breakout_holds: bool| -> Vec<f64> {
            let p = StatParams {
                breakout_holds,
                ..params()
            };
            let mut d = StatDetector::default();
            let scores: Vec<f64> = (0..2100).map(|i| d.update(&p, series(i)).score).collect();
            scores[2000..].to_vec()
        };
        let (held, lagged) = (climb(true), climb(false));
        let c = DetectConfig::default();
        // Alarms as replay reports them: within its refractory span the onset shaper re-arms
        // only for a score `rearm_margin` above the last alarm.
        let alarms = |scores: &[f64]| {
            let p = Params::new(&c).shaper;
            let mut shaper = Shaper::default();
            scores
                .iter()
                .filter(|&&s| shaper.shape(&p, s) >= c.event_threshold)
                .count()
        };
        let first = held
            .iter()
            .position(|&s| s >= c.event_threshold)
            .expect("the climb breaks out");
        assert_eq!(
            lagged.iter().position(|&s| s >= c.event_threshold),
            Some(first),
            "the same first breakout"
        );
        assert_eq!(alarms(&held), 1, "held: {held:?}");
        assert!(
            alarms(&lagged) >= 5,
            "{} alarms: {lagged:?}",
            alarms(&lagged)
        );
        // The incident goes on while the value stays out: every row from the breakout on is
        // above the event threshold (the daemon's events need rows in a row).
        assert!(
            held[first..].iter().all(|&s| s >= c.event_threshold),
            "held: {held:?}"
        );
    }

    #[test]
    fn a_burst_of_volatility_does_not_hide_the_spike_after_it() {
        // Calm noise with two early excursions that widen the range to -15..25, a burst of
        // volatility, then a spike that stays inside the range.
        let series = |i: u64| match i {
            500 => 25.0,
            600 => -15.0,
            2000..2040 => 5.0 + 10.0 * noise(i),
            2060 => 17.0,
            _ => 5.0 + 0.1 * noise(i),
        };
        let (spike_lagged, spike_row) = lagged_and_row_by_row(series, 2061)[2060];
        assert!(spike_lagged > 0.4, "spike scored {spike_lagged}");
        assert!(
            spike_lagged > spike_row + 0.05,
            "lagged {spike_lagged} vs row by row {spike_row}"
        );
    }

    #[test]
    fn a_new_order_of_familiar_levels_is_novel() {
        // Blocks of 4 rows at levels 2, 8, 5 in turn, then the same levels in the order 2, 5,
        // 8: the same values, range and jump sizes (3, 6, 3), only the sequence is new.
        let series = |i: u64| {
            let b = i / 4;
            let old = [2.0, 8.0, 5.0];
            let new = [2.0, 5.0, 8.0];
            let lv = if i < 3000 { old } else { new }[(b % 3) as usize];
            lv + 0.05 * noise(i)
        };
        let run = |novelty: bool| {
            let p = StatParams::new(&DetectConfig {
                novelty,
                seasonal: false,
                ..DetectConfig::default()
            });
            let mut d = StatDetector::default();
            let (mut calm, mut changed): (f64, f64) = (0.0, 0.0);
            for i in 0..3100 {
                let s = d.update(&p, series(i)).score;
                if (1500..3000).contains(&i) {
                    calm = calm.max(s);
                } else if i >= 3000 {
                    changed = changed.max(s);
                }
            }
            (calm, changed)
        };
        let (calm, changed) = run(true);
        let (_, without) = run(false);
        assert!(calm < 0.3, "the familiar order scored {calm}");
        assert!(changed > 0.4, "the new order scored {changed}");
        assert!(without < 0.3, "without the novelty channel: {without}");
    }

    /// Four lags at a time give every lag's sum bit for bit as summing it alone does, for
    /// every range of lags and lengths that are not a multiple of four, signed zeros included
    /// (products of 0 and negatives are -0.0: a sum of them only stays -0.0 from -0.0).
    #[test]
    fn lagged_sums_are_the_one_lag_at_a_time_sums() {
        let series: Vec<Vec<f64>> = vec![
            (0..257u64)
                .map(|i| 10.0 * noise(i) + (i as f64 * 0.3).sin())
                .collect(),
            (0..9u64)
                .map(|i| if i % 2 == 0 { 0.0 } else { -1.0 })
                .collect(),
            (0..64u64).map(|i| 1e300 * noise(i) - 1e-300).collect(),
        ];
        for d in &series {
            let n = d.len();
            for start in 0..n.min(12) {
                for end in start..=n {
                    let mut got = Vec::new();
                    lagged_sums(d, start..end, &mut got);
                    let want: Vec<u64> = (start..end)
                        .map(|lag| {
                            let s: f64 =
                                d[..n - lag].iter().zip(&d[lag..]).map(|(a, b)| a * b).sum();
                            s.to_bits()
                        })
                        .collect();
                    let got: Vec<u64> = got.iter().map(|s| s.to_bits()).collect();
                    assert_eq!(got, want, "n {n}, lags {start}..{end}");
                }
            }
        }
    }

    #[test]
    fn seasonal_is_silent_without_a_period() {
        let p = params();
        let sp = p.season.unwrap();
        let mut s = Seasonal::default();
        for i in 0..5000 {
            let o = s.update(&sp, 5.0 + noise(i), 1.0);
            assert_eq!(o.score, 0.0, "row {i}");
            assert!(o.pred.is_none());
        }
        assert_eq!(s.period(), 0);
    }

    #[test]
    fn a_jump_that_recurs_every_period_is_not_a_spike() {
        // A square wave: with the seasonal prediction its edges are expected.
        let sq = |i: u64| if i % 96 < 48 { 0.0 } else { 50.0 } + 0.1 * noise(i);
        let mut with = StatDetector::default();
        let p = params();
        let p_off = StatParams::new(&DetectConfig {
            seasonal: false,
            ..DetectConfig::default()
        });
        let mut without = StatDetector::default();
        let (mut m_with, mut m_without): (f64, f64) = (0.0, 0.0);
        for i in 0..4000 {
            let a = with.update(&p, sq(i)).score;
            let b = without.update(&p_off, sq(i)).score;
            if i > 2000 {
                m_with = m_with.max(a);
                m_without = m_without.max(b);
            }
        }
        assert!(m_with < m_without, "{m_with} vs {m_without}");
        assert!(m_with < 0.3, "{m_with}");
    }

    /// The daily pattern of [`daily`] with more noise, and a one-row job lifting it by 12 at
    /// phase 70 plus or minus up to 2 rows, a different shift every period: the value and
    /// whether the job runs.
    fn daily_with_jittered_job(i: u64) -> (f64, bool) {
        let shift = (noise(1_000_000 + i / 96) * 5.0).round() as i64; // -2 ..= 2
        let job = (i % 96) as i64 == 70 + shift;
        let x = daily(i) + 3.0 * noise(7_000_000 + i) + if job { 12.0 } else { 0.0 };
        (x, job)
    }

    #[test]
    fn a_job_that_starts_a_little_earlier_or_later_each_period_is_not_a_spike() {
        let with = params();
        // A window of 4 rows either side of a period of 96.
        assert_eq!((96.0 * with.season.unwrap().jitter) as u32, 4);
        let without = StatParams::new(&DetectConfig {
            season_jitter: 0.0,
            ..DetectConfig::default()
        });
        let (mut a, mut b) = (StatDetector::default(), StatDetector::default());
        let (mut m_with, mut m_without): (f64, f64) = (0.0, 0.0);
        let mut jobs = 0;
        for i in 0..6000 {
            let (x, job) = daily_with_jittered_job(i);
            let (sa, sb) = (a.update(&with, x).score, b.update(&without, x).score);
            if i > 3000 && job {
                jobs += 1;
                m_with = m_with.max(sa);
                m_without = m_without.max(sb);
            }
        }
        assert_eq!(a.season.period(), 96);
        assert_eq!(jobs, 31);
        // Without the window a start off the last one's row is a spike at the arm level (0.3);
        // with it, no job row reaches it (what remains is the novelty channel's, 0.2 to 0.26).
        assert!(m_without >= 0.3, "without the window: {m_without}");
        assert!(m_with < 0.27, "with the window: {m_with}");
    }

    #[test]
    fn the_jitter_window_spans_a_fraction_of_the_period_around_one_period_back() {
        let p = params();
        let sp = SeasonParams {
            jitter: 0.25,
            ..p.season.unwrap()
        };
        let mut s = Seasonal::default();
        for i in 0..3172 {
            s.update(&sp, daily(i), 1.0);
        }
        assert_eq!(s.period(), 96);
        // The next value goes to slot 100, so the window (72 to 120 rows back) wraps.
        assert_eq!(s.head, 100);
        // One period back is the value 96 rows ago; the window reaches 24 rows either side:
        // 72 to 120 rows back. Zeros everywhere, marks at both ends and just outside them.
        let cap = s.ring.len() as u32;
        let slot = |k: u32| ((s.head + cap - k) % cap) as usize;
        let (o71, o72, o120, o121) = (slot(71), slot(72), slot(120), slot(121));
        s.ring.iter_mut().for_each(|v| *v = 0.0);
        s.ring[o71] = 1000.0;
        s.ring[o121] = 1000.0;
        s.ring[o72] = 600.0;
        s.ring[o120] = 500.0;
        // 1000 is stored 71 and 121 rows back, outside: the nearest inside is 600.
        assert_eq!(s.nearest_around_one_period_back(&sp, 1000.0), Some(400.0));
        assert_eq!(s.nearest_around_one_period_back(&sp, 500.0), Some(0.0));
        assert_eq!(s.nearest_around_one_period_back(&sp, 590.0), Some(10.0));
        assert_eq!(s.nearest_around_one_period_back(&sp, -3.0), Some(3.0));
        // A window under one row: one period back alone.
        let narrow = SeasonParams { jitter: 0.01, ..sp };
        s.ring[slot(96)] = 7.0;
        assert_eq!(s.nearest_around_one_period_back(&narrow, 7.25), Some(0.25));
        assert_eq!(
            s.nearest_around_one_period_back(&narrow, 600.0),
            Some(593.0)
        );
    }
}
