//! Detector settings: the `[detect]` table of the TOML config.
//!
//! Defaults were chosen by replaying the NAB files in `shared/datasets/nab` (see DETECTION.md);
//! counts are in rows for replay and in intervals for the daemon (one row per interval).

use serde::{Deserialize, Serialize};

/// Which detector produces the score of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Robust statistical detector only.
    Statistical,
    /// Learned detector only (while it has no model the statistical one stands in, visibly).
    Learned,
    /// Both, fused into one score (the maximum of the two calibrated scores); the default,
    /// best on NAB (see DETECTION.md).
    #[default]
    Combined,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Master switch.
    pub enabled: bool,
    /// Detector(s) producing the score.
    pub detector: DetectorKind,
    /// Rows seen before a series is `ready`; until then it never raises an event.
    pub warmup: u32,
    /// Smoothing of the fast baseline, as an equivalent window in rows.
    pub fast_window: u32,
    /// Horizon of the slow baseline and of the noise scale, in rows.
    pub slow_window: u32,
    /// Horizon of the short means (seasonal residual, novelty surprise), in rows.
    pub short_window: u32,
    /// Horizon of the raw-score history (mean and spread) in the likelihood stage, in rows.
    pub long_window: u32,
    /// Values are judged against the running range as it stood between `range_lag` and twice
    /// that many rows earlier, so that a value creeping out of the range row by row counts by
    /// its full distance; spikes against the smaller of the current residual scale and the
    /// scale at that time, so that a burst of volatility does not hide the spikes after it.
    pub range_lag: u32,
    /// A value counts as a new extreme when it is this far beyond that range, as a fraction of
    /// the range's width.
    pub range_margin: f64,
    /// Exceedance threshold of the statistical channels, in ln(1 + deviations/scale).
    pub pot_threshold: f64,
    /// Prior exceedance rate per row (assumed until the series shows its own).
    pub prior_rate: f64,
    /// Relative floor on the noise scale, as a fraction of the series' typical level.
    pub scale_floor: f64,
    /// Score at which a row arms an alarm (the onset row keeps its score; see `refractory`).
    pub arm_level: f64,
    /// Rows after an alarm during which the onset score is not repeated.
    pub refractory: u32,
    /// During the refractory span, a score this much above the last alarm's re-arms.
    pub rearm_margin: f64,
    /// Enables the pattern-novelty channel of the statistical detector.
    pub novelty: bool,
    /// Enables the seasonal channel of the statistical detector (residual against the value
    /// one detected period earlier).
    pub seasonal: bool,
    /// Enables the stuck-value channel of the statistical detector (a run of identical values
    /// longer than any the series has shown before).
    pub stuck: bool,
    /// Values kept by the seasonal channel; periods up to half of it are found.
    pub season_buffer: u32,
    /// Autocorrelation a lag needs to be taken as the period.
    pub season_min_acf: f64,
    /// Fraction of the detected period either side of one period back within which a value
    /// makes the current one expected, not a spike (a daily job that starts a little earlier
    /// or later each day); 0: the value exactly one period back.
    pub season_jitter: f64,
    /// The learned detector works on means of this many rows.
    pub downsample: u32,
    /// Values (block means) per shingle fed to the learned detector.
    pub shingle: u32,
    /// Block means of history kept for training the learned detector (ring buffer).
    pub train_window: u32,
    /// Exceedance threshold of the learned detector's calibration, in ln(1 + z) of the
    /// standardised isolation score.
    pub learned_threshold: f64,
    /// Enables the learned detector's pattern-memory channel: the distance from the latest
    /// `pattern_shingle` block means to the nearest earlier stretch in the training ring.
    pub pattern: bool,
    /// Block means per pattern compared by the pattern-memory channel.
    pub pattern_shingle: u32,
    /// Exceedance threshold of the pattern-memory channel's calibration, in ln(1 + d/scale)
    /// of the nearest-neighbour distance against its usual value.
    pub pattern_threshold: f64,
    /// Anomaly events: a series counts as anomalous on an interval when its (unshaped) score is
    /// at least this. 0.3 is a surprise of ~4.9 nats (tail ~7e-3 per interval); with
    /// `raise_after` = 2 an isolated blip never raises, a sustained shift does.
    pub event_threshold: f64,
    /// Anomalous intervals in a row before an event is raised (k).
    pub raise_after: u32,
    /// Normal intervals in a row before a raised event is cleared (m).
    pub clear_after: u32,
    /// Maximum number of series with detector state; further series are counted, not tracked.
    pub max_series: u32,
    /// Maximum number of series detectors with a learned model (the forest, its ring and its
    /// training: most of a series' memory and CPU time). Taken first come, the host's series
    /// first; a series made when all are taken is judged by the robust statistics alone and
    /// counted (`statistical_only`). 0: none has one.
    pub learned_max_series: u32,
    /// A series not observed for this many intervals (a container that went away) is dropped
    /// with its state, so memory stays bounded under container churn; an event still open
    /// for it is cleared.
    pub series_ttl: u32,
    // Settings removed in this release (DETECTION.md, "Removed settings"): accepted with one
    // deprecation warning each and ignored; rejected as unknown keys in the next release.
    #[serde(default, skip_serializing, deserialize_with = "removed::spread_floor")]
    pub spread_floor: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::range_z")]
    pub range_z: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::season_short")]
    pub season_short: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::season_block")]
    pub season_block: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::novelty_block")]
    pub novelty_block: Removed,
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "removed::novelty_levels"
    )]
    pub novelty_levels: Removed,
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "removed::novelty_context"
    )]
    pub novelty_context: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::retrain_every")]
    pub retrain_every: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::trees")]
    pub trees: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::tree_sample")]
    pub tree_sample: Removed,
    #[serde(default, skip_serializing, deserialize_with = "removed::seed")]
    pub seed: Removed,
}

/// A removed setting found in a config: its value is ignored. Two configs that differ only in
/// removed settings are equal (`config show` drops them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Removed(bool);

impl Removed {
    /// The key was present.
    pub fn present(self) -> bool {
        self.0
    }
}

impl PartialEq for Removed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One deserializer per removed key: accepts any value, ignores it and logs one warning naming
/// the key (once per parse, not per series or row).
mod removed {
    use super::Removed;
    use serde::{Deserialize, Deserializer, de::IgnoredAny};

    fn accept<'de, D: Deserializer<'de>>(
        d: D,
        key: &str,
        instead: &str,
    ) -> Result<Removed, D::Error> {
        IgnoredAny::deserialize(d)?;
        tracing::warn!(
            "detect.{key} is deprecated and ignored ({instead}); it will be rejected in the next release: remove it from the config"
        );
        Ok(Removed(true))
    }

    macro_rules! removed {
        ($($key:ident: $instead:literal;)*) => {$(
            pub fn $key<'de, D: Deserializer<'de>>(d: D) -> Result<Removed, D::Error> {
                accept(d, stringify!($key), $instead)
            }
        )*};
    }

    removed! {
        spread_floor: "it had no effect";
        range_z: "a new extreme just past range_margin is a fixed 3-sigma event";
        season_short: "the seasonal residual is averaged over short_window rows";
        season_block: "the period search uses blocks of 4 rows";
        novelty_block: "the novelty channel uses blocks of 4 rows";
        novelty_levels: "the novelty channel quantises on 8 levels";
        novelty_context: "the novelty context is 6 blocks";
        retrain_every: "the forest is retrained every train_window rows";
        trees: "the forest has 32 trees";
        tree_sample: "each tree samples 64 shingles";
        seed: "the forest's seed is fixed";
    }
}

impl DetectConfig {
    /// The removed settings present in this config (each was warned about when parsed).
    pub fn removed_keys(&self) -> Vec<&'static str> {
        [
            ("spread_floor", self.spread_floor),
            ("range_z", self.range_z),
            ("season_short", self.season_short),
            ("season_block", self.season_block),
            ("novelty_block", self.novelty_block),
            ("novelty_levels", self.novelty_levels),
            ("novelty_context", self.novelty_context),
            ("retrain_every", self.retrain_every),
            ("trees", self.trees),
            ("tree_sample", self.tree_sample),
            ("seed", self.seed),
        ]
        .into_iter()
        .filter(|(_, r)| r.present())
        .map(|(k, _)| k)
        .collect()
    }
}

/// A twenty-fourth of the period either side, an hour of a daily period (DETECTION.md,
/// "Seasonal jitter"); written as 0.0417 so that the documented value is the default, and the
/// same window as 1/24 for every period up to 1000 rows.
pub const DEFAULT_SEASON_JITTER: f64 = 0.0417;

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            detector: DetectorKind::Combined,
            warmup: 150,
            fast_window: 5,
            slow_window: 300,
            short_window: 10,
            long_window: 20_000,
            scale_floor: 0.01,
            range_lag: 50,
            range_margin: 0.1,
            pot_threshold: 1.5,
            prior_rate: 0.01,
            arm_level: 0.3,
            refractory: 200,
            rearm_margin: 0.05,
            novelty: true,
            seasonal: true,
            stuck: true,
            season_buffer: 1024,
            season_min_acf: 0.7,
            season_jitter: DEFAULT_SEASON_JITTER,
            downsample: 4,
            shingle: 8,
            train_window: 256,
            learned_threshold: 1.2,
            pattern: true,
            pattern_shingle: 4,
            pattern_threshold: 1.0,
            event_threshold: 0.3,
            raise_after: 2,
            clear_after: 10,
            max_series: 4096,
            learned_max_series: 256,
            series_ttl: 300,
            spread_floor: Removed::default(),
            range_z: Removed::default(),
            season_short: Removed::default(),
            season_block: Removed::default(),
            novelty_block: Removed::default(),
            novelty_levels: Removed::default(),
            novelty_context: Removed::default(),
            retrain_every: Removed::default(),
            trees: Removed::default(),
            tree_sample: Removed::default(),
            seed: Removed::default(),
        }
    }
}

/// Earlier patterns the pattern-memory channel needs before it judges the latest one.
pub const MIN_PATTERN_CANDIDATES: u32 = 8;

fn check_u(key: &str, v: u32, lo: u32, hi: u32) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("detect.{key} = {v} is out of range [{lo}, {hi}]"))
    }
}

fn check_f(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    // `contains` is false for NaN, which is what we want.
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("detect.{key} = {v} is out of range [{lo}, {hi}]"))
    }
}

impl DetectConfig {
    /// Rejects out-of-range values, naming the key and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        check_u("warmup", self.warmup, 1, 1_000_000)?;
        check_u("fast_window", self.fast_window, 1, 10_000)?;
        check_u("slow_window", self.slow_window, 2, 1_000_000)?;
        check_u("short_window", self.short_window, 1, 10_000)?;
        check_u("long_window", self.long_window, 10, 10_000_000)?;
        check_f("scale_floor", self.scale_floor, 0.0, 1.0)?;
        check_u("range_lag", self.range_lag, 1, 1_000_000)?;
        check_f("range_margin", self.range_margin, 0.0, 10.0)?;
        check_f("pot_threshold", self.pot_threshold, 0.0, 100.0)?;
        check_f("prior_rate", self.prior_rate, 1e-9, 1.0)?;
        check_f("arm_level", self.arm_level, 0.0, 1.0)?;
        check_u("refractory", self.refractory, 0, 1_000_000)?;
        check_f("rearm_margin", self.rearm_margin, 0.0, 1.0)?;
        check_u("season_buffer", self.season_buffer, 64, 65_536)?;
        check_f("season_min_acf", self.season_min_acf, 0.0, 1.0)?;
        check_f("season_jitter", self.season_jitter, 0.0, 0.25)?;
        check_u("downsample", self.downsample, 1, 10_000)?;
        check_u("shingle", self.shingle, 1, 64)?;
        check_u("train_window", self.train_window, 16, 65_536)?;
        check_f("learned_threshold", self.learned_threshold, 0.0, 100.0)?;
        check_u("pattern_shingle", self.pattern_shingle, 1, 64)?;
        check_f("pattern_threshold", self.pattern_threshold, 0.0, 100.0)?;
        check_f("event_threshold", self.event_threshold, 0.0, 1.0)?;
        check_u("raise_after", self.raise_after, 1, 100_000)?;
        check_u("clear_after", self.clear_after, 1, 100_000)?;
        check_u("max_series", self.max_series, 1, 10_000_000)?;
        check_u("learned_max_series", self.learned_max_series, 0, 10_000_000)?;
        check_u("series_ttl", self.series_ttl, 1, 10_000_000)?;
        if 2 * self.pattern_shingle + MIN_PATTERN_CANDIDATES > self.train_window {
            return Err(format!(
                "detect.pattern_shingle = {} needs detect.train_window >= {} (twice the shingle plus {})",
                self.pattern_shingle,
                2 * self.pattern_shingle + MIN_PATTERN_CANDIDATES,
                MIN_PATTERN_CANDIDATES
            ));
        }
        if self.shingle >= self.train_window {
            return Err(format!(
                "detect.shingle = {} must be smaller than detect.train_window = {}",
                self.shingle, self.train_window
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        DetectConfig::default().validate().unwrap();
    }

    #[test]
    fn validate_names_key_and_range() {
        let c = DetectConfig {
            arm_level: 1.5,
            ..DetectConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("detect.arm_level") && e.contains("[0, 1]"),
            "{e}"
        );
        let c = DetectConfig {
            scale_floor: f64::NAN,
            ..DetectConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("scale_floor"));
        // More than a quarter of the period either side would reach past the ring's half.
        let c = DetectConfig {
            season_jitter: 0.3,
            ..DetectConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("detect.season_jitter") && e.contains("[0, 0.25]"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_rejected_and_missing_keys_defaulted() {
        let c: DetectConfig = serde_json::from_str(r#"{"warmup": 7}"#).unwrap();
        assert_eq!(c.warmup, 7);
        assert_eq!(c.refractory, DetectConfig::default().refractory);
        assert!(serde_json::from_str::<DetectConfig>(r#"{"warmpu": 7}"#).is_err());
    }

    /// Log lines written while `f` runs.
    pub(crate) fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Capture(Arc::new(Mutex::new(Vec::new())));
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        let v = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (v, text)
    }

    #[test]
    fn removed_keys_are_accepted_ignored_and_warned_about_once_each() {
        let text = "[detect]\nwarmup = 7\nspread_floor = 0.2\ntrees = 4\nseed = 1\n";
        let (cfg, log) = logged(|| crate::config::parse(text, "t.toml"));
        let cfg = cfg.expect("removed keys are not an error").detect;
        assert_eq!(cfg.removed_keys(), ["spread_floor", "trees", "seed"]);
        assert_eq!(
            cfg,
            DetectConfig {
                warmup: 7,
                ..DetectConfig::default()
            }
        );
        assert_eq!(log.lines().count(), 3, "{log}");
        for key in ["spread_floor", "trees", "seed"] {
            let line = format!("detect.{key} is deprecated and ignored");
            assert_eq!(log.matches(&line).count(), 1, "{log}");
        }
        // `config show` leaves them out.
        let shown = toml::to_string(&cfg).unwrap();
        assert!(
            !shown.contains("trees") && shown.contains("warmup"),
            "{shown}"
        );
        // Replay's --set goes through the same parser.
        let (c, log) = logged(|| {
            crate::replay::apply_overrides(&DetectConfig::default(), &["range_z=2.5".into()])
        });
        assert_eq!(c.unwrap().removed_keys(), ["range_z"]);
        assert_eq!(
            log.matches("detect.range_z is deprecated").count(),
            1,
            "{log}"
        );
        // Keys that never existed are still rejected.
        assert!(crate::config::parse("[detect]\nrange_zz = 1\n", "t.toml").is_err());
    }

    #[test]
    fn documented_example_is_the_defaults() {
        // DETECTION.md shows the `[detect]` table; it must parse (deny_unknown_fields) to
        // exactly the defaults, so the documentation cannot drift.
        #[derive(Deserialize)]
        struct File {
            detect: DetectConfig,
        }
        let doc = include_str!("../../../DETECTION.md");
        let start = doc.find("```toml\n[detect]").expect("toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of block");
        let f: File = toml::from_str(&doc[start..end]).unwrap();
        assert_eq!(f.detect, DetectConfig::default());
    }
}
