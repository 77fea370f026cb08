//! `sentinel replay`: streams a recorded series through the same per-series detector code the
//! daemon uses ([`SeriesDetector`]) and writes `timestamp,value,anomaly_score`, one row per
//! input row, in order. Models are trained inline at fixed row counts, so the output depends
//! only on the input and the settings.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::detect::engine::metric_value;
use crate::detect::{
    DetectConfig, DetectorKind, FallbackChange, LearnedBudget, Params, SeriesDetector, Trainer,
};
use crate::model::Interval;
use crate::sanitize;

#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// CSV `timestamp,value` (header optional), or JSON lines of `sentinel run --output json`;
    /// `-` reads standard input.
    #[arg(long)]
    pub input: PathBuf,
    /// Output CSV (default: standard output).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Series to replay from JSON-lines input, e.g. `sched_switch`, `runqueue_latency_us.p99`,
    /// `system.cpu_percent`.
    #[arg(long)]
    pub metric: Option<String>,
    /// Detector to replay (default: the config's `detector`).
    #[arg(long, value_enum)]
    pub detector: Option<DetectorArg>,
    /// Override a `[detect]` setting, e.g. `--set refractory=300` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Also write the fused score before the onset shaper (`level`) and each channel's
    /// calibrated score (`spike,range,seasonal,stuck,novelty,forest,pattern`): which channel
    /// raised an alarm.
    #[arg(long)]
    pub channels: bool,
}

/// The columns `--channels` adds after `anomaly_score`.
pub const CHANNEL_COLUMNS: [&str; 8] = [
    "level", "spike", "range", "seasonal", "stuck", "novelty", "forest", "pattern",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectorArg {
    Statistical,
    Learned,
    Combined,
}

impl From<DetectorArg> for DetectorKind {
    fn from(d: DetectorArg) -> Self {
        match d {
            DetectorArg::Statistical => DetectorKind::Statistical,
            DetectorArg::Learned => DetectorKind::Learned,
            DetectorArg::Combined => DetectorKind::Combined,
        }
    }
}

/// Applies `KEY=VALUE` overrides on top of `base` through serde, so that key names, types and
/// unknown keys are checked exactly as in the config file.
pub fn apply_overrides(base: &DetectConfig, set: &[String]) -> Result<DetectConfig> {
    let mut v = serde_json::to_value(base)?;
    let map = v
        .as_object_mut()
        .ok_or_else(|| anyhow!("config is not a table"))?;
    for kv in set {
        let (k, val) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {}: expected KEY=VALUE", sanitize::for_log(kv)))?;
        let val = serde_json::from_str(val).unwrap_or_else(|_| serde_json::Value::from(val));
        map.insert(k.to_string(), val);
    }
    // serde echoes an unknown key verbatim; the list of known keys after it is worth keeping.
    let cfg: DetectConfig = serde_json::from_value(v).map_err(|e| {
        anyhow!(
            "invalid --set: {}",
            sanitize::printable(&e.to_string(), 1_000)
        )
    })?;
    cfg.validate().map_err(|e| anyhow!(e))?;
    Ok(cfg)
}

pub fn run(args: &ReplayArgs) -> Result<()> {
    let mut cfg = apply_overrides(&DetectConfig::default(), &args.set)?;
    if let Some(d) = args.detector {
        cfg.detector = d.into();
    }
    // `-` is standard input, as for most Unix filters (`sentinel run --output json | ...`).
    let stdin = args.input.as_os_str() == "-";
    let input: Box<dyn std::io::Read> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            File::open(&args.input)
                .with_context(|| format!("{}: cannot open", args.input.display()))?,
        )
    };
    let name = if stdin {
        Path::new("<stdin>")
    } else {
        args.input.as_path()
    };
    let out: Box<dyn Write> = match &args.output {
        Some(p) => {
            Box::new(File::create(p).with_context(|| format!("{}: cannot create", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    replay(
        &cfg,
        BufReader::new(input),
        name,
        args.metric.as_deref(),
        args.channels,
        &mut out,
    )?;
    out.flush().context("writing output")?;
    Ok(())
}

/// Replays `input` (named `path` in errors) into `out` as `timestamp,value,anomaly_score`,
/// followed by [`CHANNEL_COLUMNS`] with `channels`.
pub fn replay(
    cfg: &DetectConfig,
    mut input: impl BufRead,
    path: &Path,
    metric: Option<&str>,
    channels: bool,
    out: &mut impl Write,
) -> Result<()> {
    let params = Params::new(cfg);
    let trainer = Trainer::Inline;
    let name = metric.unwrap_or("value");
    // `detect.learned_max_series = 0` replays the series as the daemon judges one without a seat.
    let budget = LearnedBudget::new(cfg.learned_max_series as usize);
    let mut det = SeriesDetector::budgeted(&params, &budget);
    let mut w = csv::Writer::from_writer(out);
    let mut header = vec!["timestamp", "value", "anomaly_score"];
    if channels {
        header.extend(CHANNEL_COLUMNS);
    }
    w.write_record(&header)?;
    let mut record: Vec<String> = Vec::with_capacity(header.len());
    let mut emit = |ts: &str, value: &str, x: Option<f64>| -> Result<()> {
        let step = match x {
            Some(x) => {
                let step = det.update(&params, &trainer, name, x);
                // One series: each change on a line of its own (the daemon sums them up).
                match step.fallback {
                    Some(change @ FallbackChange::Unavailable) => tracing::warn!(
                        series = name,
                        reason = det.unavailable(&params).as_deref().unwrap_or("unknown"),
                        "{}",
                        change.message()
                    ),
                    Some(change) => tracing::info!(series = name, "{}", change.message()),
                    None => {}
                }
                Some(step)
            }
            None => None,
        };
        let score = step.as_ref().map_or(0.0, |s| s.score);
        if !channels {
            w.write_record([ts, value, &format!("{score:.6}")])?;
            return Ok(());
        }
        // A row without a value (a blank in JSON-lines input) scores 0 on every column.
        let (level, c) = step.map_or((0.0, Default::default()), |s| (s.level, s.channels));
        record.clear();
        record.extend([ts.to_string(), value.to_string()]);
        record.extend(
            [
                score,
                level,
                c.stat.spike,
                c.stat.range,
                c.stat.seasonal,
                c.stat.stuck,
                c.stat.novelty,
                c.forest,
                c.pattern,
            ]
            .map(|v| format!("{v:.6}")),
        );
        w.write_record(&record)?;
        Ok(())
    };

    // Sniff the format from the first non-blank byte without consuming it.
    let first = loop {
        let buf = input
            .fill_buf()
            .with_context(|| format!("{}: read error", path.display()))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(buf[i]),
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    };
    let p = path.display();
    if first == Some(b'{') {
        let metric = metric.ok_or_else(|| anyhow!("{p}: JSON-lines input needs --metric NAME"))?;
        for (i, line) in input.lines().enumerate() {
            let line = line.with_context(|| format!("{p}:{}: read error", i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let iv: Interval = serde_json::from_str(&line)
                .map_err(|e| anyhow!("{p}:{}: not an interval: {}", i + 1, json_error(&e)))?;
            let x = metric_value(&iv, metric)
                .ok_or_else(|| anyhow!("{p}:{}: no metric named {metric:?}", i + 1))?;
            let shown = x.map(|x| x.to_string()).unwrap_or_default();
            emit(&iv.ts, &shown, x)?;
        }
    } else {
        if metric.is_some() {
            bail!("{p}: --metric applies to JSON-lines input only");
        }
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(csv::Trim::All)
            .from_reader(input);
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(i as u64 + 1, csv::Position::line);
                anyhow!("{p}:{line}: {e}")
            })?;
            let line = rec.position().map_or(i as u64 + 1, csv::Position::line);
            if rec.len() != 2 {
                bail!(
                    "{p}:{line}: expected 2 fields (timestamp,value), found {}",
                    rec.len()
                );
            }
            let (ts, v) = (&rec[0], &rec[1]);
            match v.parse::<f64>() {
                Ok(x) => emit(ts, v, Some(x))?,
                // A header row is allowed only as the first line.
                Err(_) if i == 0 => continue,
                Err(_) => bail!("{p}:{line}: value {} is not a number", shown(v)),
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// serde_json's message names an unknown variant or field as it was sent, control characters
/// and all, at any length: shown escaped and bounded, with the column it gave.
fn json_error(e: &serde_json::Error) -> String {
    const MAX: usize = 160;
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);
    format!(
        "{} (column {})",
        sanitize::printable(message, MAX),
        e.column()
    )
}

/// A field echoed in an error, bounded: an unclosed quote makes the rest of the file one field.
fn shown(v: &str) -> String {
    const MAX: usize = 60;
    let quoted = format!("\"{}\"", crate::sanitize::printable(v, MAX));
    if v.chars().count() > MAX {
        format!("{quoted} ({} bytes)", v.len())
    } else {
        quoted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(n: usize) -> String {
        let mut s = String::from("timestamp,value\n");
        for i in 0..n {
            // Daily-ish pattern with a spike and a level shift.
            let mut v = 50.0 + 10.0 * ((i as f64) * 0.05).sin() + ((i * 7919) % 13) as f64 * 0.3;
            if i == 900 {
                v += 80.0;
            }
            if i > 1400 {
                v += 40.0;
            }
            s.push_str(&format!("2024-01-01 {i:05},{v:.3}\n"));
        }
        s
    }

    fn run_str(cfg: &DetectConfig, input: &str) -> Result<String> {
        run_with(cfg, input, false)
    }

    fn run_with(cfg: &DetectConfig, input: &str, channels: bool) -> Result<String> {
        let mut out = Vec::new();
        replay(
            cfg,
            input.as_bytes(),
            Path::new("in.csv"),
            None,
            channels,
            &mut out,
        )?;
        Ok(String::from_utf8(out)?)
    }

    /// The default config with each detector kind.
    fn each_kind() -> impl Iterator<Item = (DetectorKind, DetectConfig)> {
        [
            DetectorKind::Statistical,
            DetectorKind::Learned,
            DetectorKind::Combined,
        ]
        .into_iter()
        .map(|kind| {
            let cfg = DetectConfig {
                detector: kind,
                ..DetectConfig::default()
            };
            (kind, cfg)
        })
    }

    #[test]
    fn replay_is_deterministic_and_one_row_per_input_row() {
        let input = synth(2000);
        for (kind, cfg) in each_kind() {
            let a = run_str(&cfg, &input).unwrap();
            let b = run_str(&cfg, &input).unwrap();
            assert_eq!(a, b, "{kind:?}");
            let lines: Vec<&str> = a.lines().collect();
            assert_eq!(lines.len(), 2001);
            assert_eq!(lines[0], "timestamp,value,anomaly_score");
            // Timestamps and values verbatim.
            assert!(lines[1].starts_with("2024-01-01 00000,"));
            assert!(lines[901].starts_with("2024-01-01 00900,"));
            // The spike is flagged.
            let s: f64 = lines[901].rsplit(',').next().unwrap().parse().unwrap();
            assert!(s > 0.3, "{kind:?}: spike score {s}");
        }
    }

    #[test]
    fn channels_show_what_each_row_scored_and_the_level_is_their_largest() {
        let input = synth(2000);
        for (kind, cfg) in each_kind() {
            let plain = run_str(&cfg, &input).unwrap();
            let out = run_with(&cfg, &input, true).unwrap();
            assert_eq!(
                out.lines().next().unwrap(),
                "timestamp,value,anomaly_score,level,spike,range,seasonal,stuck,novelty,forest,pattern"
            );
            assert_eq!(out.lines().count(), plain.lines().count());
            let mut learned_max: f64 = 0.0;
            for (i, (row, plain_row)) in out.lines().zip(plain.lines()).enumerate().skip(1) {
                // The plain output, then the columns.
                assert_eq!(row.strip_prefix(plain_row).unwrap().as_bytes()[0], b',');
                let v: Vec<f64> = row.split(',').skip(2).map(|f| f.parse().unwrap()).collect();
                let (score, level, ch) = (v[0], v[1], &v[2..]);
                let all = ch.iter().copied().fold(0.0, f64::max);
                let learned = ch[5].max(ch[6]);
                learned_max = learned_max.max(learned);
                // The onset shaper reports the level or nothing.
                assert!(score == 0.0 || score == level, "{kind:?} row {i}: {row}");
                if i <= cfg.warmup as usize {
                    assert_eq!(level, 0.0, "{kind:?} row {i}: warming up");
                    continue;
                }
                match kind {
                    DetectorKind::Statistical => {
                        assert_eq!(learned, 0.0, "row {i}: {row}");
                        assert_eq!(level, all, "row {i}: {row}");
                    }
                    DetectorKind::Combined => assert_eq!(level, all, "row {i}: {row}"),
                    // Without a model yet the statistics judge it too; with one, the learned
                    // channels alone.
                    DetectorKind::Learned => {
                        assert!(level == all || level == learned, "row {i}: {row}");
                    }
                }
            }
            // The spike at row 900 leaves the range seen so far: the range channel holds the
            // level, and the spike channel sees it too.
            let spike: Vec<f64> = out
                .lines()
                .nth(901)
                .unwrap()
                .split(',')
                .skip(2)
                .map(|f| f.parse().unwrap())
                .collect();
            if kind != DetectorKind::Learned {
                assert!(
                    spike[3] == spike[1] && spike[2] > 0.3,
                    "{kind:?}: {spike:?}"
                );
            }
            assert_eq!(
                learned_max > 0.0,
                kind != DetectorKind::Statistical,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn replay_without_a_learned_seat_is_the_statistical_detector() {
        let input = synth(2000);
        let with = |learned_max_series, detector| DetectConfig {
            learned_max_series,
            detector,
            ..DetectConfig::default()
        };
        let statistical = run_str(&with(256, DetectorKind::Statistical), &input).unwrap();
        for kind in [DetectorKind::Combined, DetectorKind::Learned] {
            let no_seat = run_str(&with(0, kind), &input).unwrap();
            assert_eq!(no_seat, statistical, "{kind:?}");
        }
        // (On this series the combined detector's learned part changes no score: the
        // learned detector alone tells a seat from none.)
        let seated = run_str(&with(1, DetectorKind::Learned), &input).unwrap();
        assert_ne!(seated, statistical);
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let cfg = DetectConfig::default();
        let e = run_str(&cfg, "timestamp,value\n1,2\n2,x\n").unwrap_err();
        assert!(format!("{e:#}").contains("in.csv:3"), "{e:#}");
        let e = run_str(&cfg, "1,2\n2,3,4\n").unwrap_err();
        assert!(format!("{e:#}").contains("in.csv:2"), "{e:#}");
        // Found by fuzzing (fuzz/regressions/replay_csv/crash-unclosed-quote-long-error.csv):
        // an unclosed quote turned the rest of the file into one value, echoed whole.
        let long = format!(
            "t,v\n1,2\n0,\"\n{}",
            "2014-04-01 00:05:00,20.0\n".repeat(200)
        );
        let e = format!("{:#}", run_str(&cfg, &long).unwrap_err());
        assert!(e.contains("in.csv:3") && e.len() < 200, "{e}");
    }

    #[test]
    fn json_lines_replay_uses_interval_ts_and_metric() {
        let mut input = String::new();
        for i in 0..300u64 {
            let mut iv = Interval {
                ts: format!("2024-01-01T00:{:02}:{:02}Z", i / 60, i % 60),
                seq: i,
                ..Interval::default()
            };
            iv.counters
                .insert("sched_switch".into(), Some(1000 + i % 7));
            iv.runqueue_latency_us.p99 = 20.0 + (i % 3) as f64;
            input.push_str(&serde_json::to_string(&iv).unwrap());
            input.push('\n');
        }
        let cfg = DetectConfig::default();
        for metric in ["sched_switch", "runqueue_latency_us.p99"] {
            let mut out = Vec::new();
            replay(
                &cfg,
                input.as_bytes(),
                Path::new("run.jsonl"),
                Some(metric),
                false,
                &mut out,
            )
            .unwrap();
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out.lines().count(), 301);
            assert!(
                out.lines()
                    .nth(1)
                    .unwrap()
                    .starts_with("2024-01-01T00:00:00Z,")
            );
        }
        let mut out = Vec::new();
        let e = replay(
            &cfg,
            input.as_bytes(),
            Path::new("run.jsonl"),
            Some("nope"),
            false,
            &mut out,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("run.jsonl:1"), "{e:#}");
    }

    /// serde names an unknown variant as it was sent, control characters and all, and any
    /// string of the wrong type at any length: the error is still one bounded, printable line.
    #[test]
    fn a_json_line_with_a_hostile_value_is_one_printable_bounded_error() {
        let line = serde_json::to_string(&Interval::default()).unwrap();
        // JSON escapes: the decoded string holds ESC and a newline.
        let hostile = format!(r"\u001b[31m\n{}", "x".repeat(10_000));
        for (field, value) in [
            ("\"docker\":\"", format!("\"docker\":\"{hostile}")),
            ("\"seq\":0", format!("\"seq\":\"{hostile}\"")),
        ] {
            let input = line.replacen(field, &value, 1);
            assert_ne!(input, line, "{field} is in the line");
            let mut out = Vec::new();
            let e = replay(
                &DetectConfig::default(),
                input.as_bytes(),
                Path::new("run.jsonl"),
                Some("sched_switch"),
                false,
                &mut out,
            )
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(e.starts_with("run.jsonl:1: not an interval: "), "{e}");
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(e.len() < 400, "{} bytes: {e}", e.len());
        }
    }

    #[test]
    fn overrides_check_keys() {
        let base = DetectConfig::default();
        let c =
            apply_overrides(&base, &["refractory=7".into(), "detector=learned".into()]).unwrap();
        assert_eq!(c.refractory, 7);
        assert_eq!(c.detector, DetectorKind::Learned);
        assert!(apply_overrides(&base, &["nope=1".into()]).is_err());
        assert!(apply_overrides(&base, &["arm_level=3".into()]).is_err());
        for hostile in ["war\x1b[2Jmup=1", "no\nequals"] {
            let e = apply_overrides(&base, &[hostile.into()])
                .unwrap_err()
                .to_string();
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(e.contains(r"\u{1b}[2J") || e.contains(r"no\nequals"), "{e}");
        }
    }
}
