//! The checks behind every fuzz target, shared by the libFuzzer targets (`fuzz/fuzz_targets/`)
//! and the regression test (`tests/fuzz_regressions.rs`), so a corpus input is judged the same
//! way under `cargo fuzz` and under plain `cargo test`. Each function panics when the code under
//! test panics or breaks an invariant, and returns whether the input was accepted.
//!
//! Only the functions the binary itself runs are called (`config::parse_bytes` for `sentinel
//! config check`, `replay::replay` for `sentinel replay`): no second implementation.

// Each fuzz target uses only its own entry point.
#![allow(dead_code)]

use std::path::Path;

use sentinel::config;
use sentinel::detect::{DetectConfig, DetectorKind};
use sentinel::replay;

/// A rendered error must be one bounded line without terminal control characters, whatever
/// the input contained (error lines end up in terminals and journald).
fn assert_one_line(what: &str, e: &str) {
    assert!(
        !e.chars().any(char::is_control),
        "{what}: error has control characters: {e:?}"
    );
    assert!(e.len() <= 2_000, "{what}: error is {} bytes long", e.len());
}

/// `sentinel config check` minus the ownership check, then `sentinel config show` on the
/// result: an accepted config must re-serialise and re-parse to the same value.
pub fn config(data: &[u8]) -> bool {
    match config::parse_bytes(data, "fuzz.toml") {
        Ok(cfg) => {
            let shown = toml::to_string(&cfg).expect("`config show` serialises an accepted config");
            let again = config::parse(&shown, "shown.toml")
                .unwrap_or_else(|e| panic!("`config show` output is rejected: {e}\n{shown}"));
            assert_eq!(
                again, cfg,
                "config show round trip changed the config\n{shown}"
            );
            true
        }
        Err(e) => {
            assert_one_line("config", &e.to_string());
            false
        }
    }
}

/// Settings that let a few hundred rows reach every detector state (warm-up, both models
/// trained and retrained, the shaper's refractory period): the defaults need thousands.
fn small_windows() -> DetectConfig {
    let set: Vec<String> = [
        "warmup=8",
        "slow_window=16",
        "long_window=64",
        "refractory=5",
        "downsample=1",
        "shingle=4",
        "train_window=16",
        "raise_after=1",
        "clear_after=2",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    replay::apply_overrides(&DetectConfig::default(), &set).expect("fuzz settings are valid")
}

fn configs() -> Vec<DetectConfig> {
    let mut v = vec![DetectConfig::default()];
    for kind in [DetectorKind::Combined, DetectorKind::Learned] {
        v.push(DetectConfig {
            detector: kind,
            ..small_windows()
        });
    }
    v
}

/// Runs `sentinel replay` on `data` with `cfg` and checks the output's shape: the header, then
/// rows of exactly three fields whose score is a number in [0, 1]; returns the data rows.
fn replay_once(data: &[u8], cfg: &DetectConfig, metric: Option<&str>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    match replay::replay(cfg, data, Path::new("fuzz.in"), metric, false, &mut out) {
        Ok(()) => {
            let text = String::from_utf8(out).expect("replay output is UTF-8");
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(text.as_bytes());
            let mut rows = Vec::new();
            for (i, rec) in r.records().enumerate() {
                let rec = rec.unwrap_or_else(|e| panic!("replay output is not CSV: {e}\n{text}"));
                assert_eq!(rec.len(), 3, "row {i} of the output: {rec:?}");
                if i == 0 {
                    assert_eq!(
                        rec.iter().collect::<Vec<_>>(),
                        ["timestamp", "value", "anomaly_score"]
                    );
                    continue;
                }
                let score: f64 = rec[2]
                    .parse()
                    .unwrap_or_else(|e| panic!("score {:?}: {e}", &rec[2]));
                assert!((0.0..=1.0).contains(&score), "score {score} outside [0, 1]");
                rows.push(format!("{},{},{}", &rec[0], &rec[1], &rec[2]));
            }
            assert!(
                text.starts_with("timestamp,value,anomaly_score\n"),
                "{text}"
            );
            Some(rows)
        }
        Err(e) => {
            let s = format!("{e:#}");
            assert_one_line("replay", &s);
            assert!(s.starts_with("fuzz.in"), "errors name the input: {s}");
            None
        }
    }
}

/// Replays `data` under each setting; the outcome (accepted or not, and the rows for every
/// column but the score) cannot depend on the detector settings, and a second run with the
/// same settings gives the same bytes (determinism).
fn replay_all(data: &[u8], metric: Option<&str>) -> Option<usize> {
    let mut first: Option<Option<Vec<String>>> = None;
    for cfg in configs() {
        let a = replay_once(data, &cfg, metric);
        let b = replay_once(data, &cfg, metric);
        assert_eq!(a, b, "replay is not deterministic");
        let strip = |rows: &Option<Vec<String>>| {
            rows.as_ref().map(|rows| {
                rows.iter()
                    .map(|r| r.rsplit_once(',').map_or(r.clone(), |(h, _)| h.to_string()))
                    .collect::<Vec<_>>()
            })
        };
        match &first {
            None => first = Some(a),
            Some(f) => assert_eq!(strip(f), strip(&a), "rows depend on the detector"),
        }
    }
    first.flatten().map(|rows| rows.len())
}

/// `sentinel replay --input FILE.csv`: `timestamp,value` rows, header optional.
pub fn replay_csv(data: &[u8]) -> bool {
    let rows = replay_all(data, None);
    if let Some(n) = rows {
        // At most one row per input line (a record may span lines inside quotes). A line ends
        // as the csv reader ends one: at `\n`, `\r\n` or a lone `\r` (old Mac files).
        let lines = data
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .map(|line| line.split(|&b| b == b'\r').count())
            .sum::<usize>();
        assert!(n <= lines, "{n} rows from {lines} lines");
    }
    rows.is_some()
}

/// Metrics the JSON-lines target replays: a fixed field, a counter, a container series.
pub const JSON_METRICS: [&str; 3] = [
    "runqueue_latency_us.p99",
    "sched_switch",
    "container.web.cpu",
];

/// `sentinel replay --input FILE.jsonl --metric NAME` over `sentinel run --output json` lines:
/// exactly one output row per non-blank input line when accepted.
pub fn replay_json(data: &[u8]) -> bool {
    let mut any = false;
    for metric in JSON_METRICS {
        if let Some(n) = replay_all(data, Some(metric)) {
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
            assert_eq!(n, lines, "one output row per interval line");
            any = true;
        }
    }
    any
}
