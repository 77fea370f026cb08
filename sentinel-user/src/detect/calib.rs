//! Per-series calibration of raw channel values into surprise (`-ln` of a tail probability,
//! nats) and the map of surprise to a score in [0, 1]. Calibration makes the scores of a flat
//! gauge and a bursty counter comparable, so that one threshold serves all series. (HTM's
//! Gaussian "anomaly likelihood" of a short mean was tried in its place, on top and as a gate;
//! it lost under cross-validation, see DETECTION.md.)

/// Natural log of the upper Gaussian tail `Q(z) = P(Z > z)`, accurate to ~1e-7 relative and
/// finite for every finite `z` (no underflow: the exponent is kept in log space).
pub fn ln_upper_tail(z: f64) -> f64 {
    // erfc(x) ~ t * exp(-x^2 + poly(t)), Numerical Recipes' erfcc (|rel err| < 1.2e-7).
    let x = z.abs() * std::f64::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ln_erfc = t.ln() - x * x + poly;
    if z >= 0.0 {
        ln_erfc - std::f64::consts::LN_2
    } else {
        // Q(z) = 1 - erfc(x)/2 for negative z.
        (1.0 - 0.5 * ln_erfc.exp()).ln()
    }
}

/// `-ln` of the tail probability that maps to score 0.5 (1e-5, where HTM's detector alarms).
pub const HALF_SCORE_SURPRISE: f64 = 11.512_925_464_970_229;

/// Maps a z value to a score in [0, 1]: `s / (s + s_half)` with surprise `s = -ln Q(z)`. It is
/// monotone and never saturates, so very rare events stay ordered and the threshold sweep has
/// resolution at the top (a hard log-scale cap put many rows at exactly 1.0).
pub fn tail_score(z: f64) -> f64 {
    if !z.is_finite() {
        return if z > 0.0 { 1.0 } else { 0.0 };
    }
    surprise_score(-ln_upper_tail(z))
}

/// Maps a surprise in nats (`-ln` of a probability) to a score in [0, 1].
pub fn surprise_score(s: f64) -> f64 {
    if s.is_nan() {
        return 0.0;
    }
    let s = s.max(0.0);
    if s.is_infinite() {
        return 1.0;
    }
    (s / (s + HALF_SCORE_SURPRISE)).clamp(0.0, 1.0)
}

/// Horizons shared by the calibrators of an engine (kept out of the per-series state).
#[derive(Clone, Copy, Debug)]
pub struct CalibParams {
    /// EW weight of a short mean.
    pub a_short: f64,
    /// EW weight of the long-run estimates.
    pub a_long: f64,
    /// Samples before scores are emitted.
    pub learn: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_matches_known_values_and_never_underflows() {
        // Q(0) = 0.5, Q(1.959964) = 0.025, Q(4.264891) = 1e-5.
        assert!((ln_upper_tail(0.0).exp() - 0.5).abs() < 1e-6);
        assert!((ln_upper_tail(1.959_964).exp() - 0.025).abs() < 1e-6);
        assert!((ln_upper_tail(4.264_891).exp() / 1e-5 - 1.0).abs() < 1e-4);
        assert!((ln_upper_tail(-1.959_964).exp() - 0.975).abs() < 1e-6);
        assert!(ln_upper_tail(100.0).is_finite());
        assert!((tail_score(4.264_891) - 0.5).abs() < 1e-4);
        assert_eq!(tail_score(f64::INFINITY), 1.0);
        assert_eq!(tail_score(f64::NAN), 0.0);
    }
}

/// Peaks-over-threshold calibrator: raw values above `u` are exceedances; their rate `p` and
/// mean excess `beta` are tracked per series (exponential tail). A value `m > u` has surprise
/// `-ln p + (m - u) / beta` nats, i.e. `-ln P(raw >= m)`. A series that spikes often gets a
/// high rate (and, over tens of thousands of rows, a wide tail), so its spikes stop alarming; a
/// quiet one alarms on its first.
#[derive(Clone, Copy, Debug)]
pub struct Pot {
    rate: f64,
    beta: f64,
    n: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct PotParams {
    pub u: f64,
    /// EW weight of the rate and tail estimates.
    pub a: f64,
    /// Prior rate and mean excess (what a series is assumed to do before it shows otherwise).
    pub rate0: f64,
    pub beta0: f64,
    pub beta_floor: f64,
    pub learn: u32,
}

impl Default for Pot {
    fn default() -> Self {
        Self {
            rate: f64::NAN,
            beta: f64::NAN,
            n: 0,
        }
    }
}

impl Pot {
    /// Returns the surprise (nats) of `raw`, then learns from it.
    pub fn update(&mut self, p: &PotParams, raw: f64) -> f64 {
        if self.rate.is_nan() {
            self.rate = p.rate0;
            self.beta = p.beta0;
        }
        let raw = if raw.is_finite() { raw } else { 0.0 };
        let exceed = raw > p.u;
        let surprise = if exceed && self.n >= p.learn {
            -self.rate.ln() + (raw - p.u) / self.beta.max(p.beta_floor)
        } else {
            0.0
        };
        self.rate += p.a * (f64::from(u8::from(exceed)) - self.rate);
        if exceed {
            // The excess estimate only moves on exceedances, so they weigh 8 times a row; it
            // still takes thousands of them to leave the prior (the spike channel's width ends
            // within 10% of it on every NAB file: DETECTION.md, "What the calibration learns").
            let a = (8.0 * p.a).min(0.5);
            self.beta += a * ((raw - p.u).min(50.0 * self.beta.max(p.beta_floor)) - self.beta);
        }
        self.n = self.n.saturating_add(1);
        surprise
    }
}
