//! `cargo xtask nab --against DIR`: which series a change moved. A held-out mean that rises by
//! a point can be one window of one file (one window caught moves a five-fold mean by ~1.7);
//! this lists, file by file, what each run catches and how many false-positive rows it raises
//! at its own standard threshold, so that a gain is read as a trend or as one window.

use std::path::Path;

use anyhow::{Context, Result};

/// One file's outcome at a run's standard threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub detected: u64,
    pub windows: u64,
    pub fp_rows: u64,
}

/// A file whose outcome differs between the earlier run (`there`) and this one (`here`).
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub file: String,
    pub there: Outcome,
    pub here: Outcome,
}

/// Per-file outcomes from a `nab_score.py --per-file --json` result (standard profile).
pub fn outcomes(score: &serde_json::Value) -> Vec<(String, Outcome)> {
    let files = score["profiles"]["standard"]["files"].as_object();
    files
        .into_iter()
        .flatten()
        .map(|(f, v)| {
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            (
                f.clone(),
                Outcome {
                    detected: n("detected"),
                    windows: n("windows"),
                    fp_rows: n("fp_rows"),
                },
            )
        })
        .collect()
}

/// The files whose outcome differs, in file order; a file missing from one run counts as
/// nothing caught and no false positives there.
pub fn changes(there: &[(String, Outcome)], here: &[(String, Outcome)]) -> Vec<Change> {
    let mut all: std::collections::BTreeMap<&str, (Outcome, Outcome)> = Default::default();
    for (f, o) in there {
        all.entry(f).or_default().0 = *o;
    }
    for (f, o) in here {
        all.entry(f).or_default().1 = *o;
    }
    all.into_iter()
        .filter(|(_, (a, b))| a.detected != b.detected || a.fp_rows != b.fp_rows)
        .map(|(f, (there, here))| Change {
            file: f.to_string(),
            there,
            here,
        })
        .collect()
}

/// How many result files (`<category>/<file>.csv`) of `here` differ from the same file in
/// `there` (a file `there` lacks differs), and how many `here` holds. Only each line's first
/// three columns (`timestamp,value,anomaly_score`) are compared, byte for byte: a run with
/// `--channels` carries more columns and the same scores.
pub fn differing_outputs(there: &Path, here: &Path) -> Result<(usize, usize)> {
    let files = crate::nab::csv_files(here)?;
    let mut differ = 0;
    for f in &files {
        let a = std::fs::read(here.join(f)).with_context(|| here.join(f).display().to_string())?;
        if std::fs::read(there.join(f)).map_or(true, |b| scores(&b).ne(scores(&a))) {
            differ += 1;
        }
    }
    Ok((differ, files.len()))
}

/// Each line of a replay output cut after its third column.
fn scores(output: &[u8]) -> impl Iterator<Item = &[u8]> {
    output.split(|&b| b == b'\n').map(|line| {
        let cut = line
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b',')
            .nth(2)
            .map_or(line.len(), |(i, _)| i);
        &line[..cut]
    })
}

/// The markdown section for one detector.
pub fn section(
    det: &str,
    against: &Path,
    thresholds: (f64, f64),
    outputs: (usize, usize),
    changes: &[Change],
) -> String {
    let sum = |pick: fn(&Change) -> i64| changes.iter().map(pick).sum::<i64>();
    let caught = sum(|c| c.here.detected as i64 - c.there.detected as i64);
    let fp = sum(|c| c.here.fp_rows as i64 - c.there.fp_rows as i64);
    let mut t = format!(
        "{det} against {} (standard profile, each run at its own threshold: {:.4} there, {:.4} \
         here): {} of {} series' scores differ; {} change what they catch or their false \
         positives, windows caught {caught:+}, false-positive rows {fp:+}.\n\n",
        against.display(),
        thresholds.0,
        thresholds.1,
        outputs.0,
        outputs.1,
        changes.len(),
    );
    if !changes.is_empty() {
        t.push_str(
            "| file | windows caught (there -> here) | FP rows (there -> here) |\n|---|---|---|\n",
        );
        for c in changes {
            t.push_str(&format!(
                "| {} | {} -> {} of {} | {} -> {} |\n",
                c.file,
                c.there.detected,
                c.here.detected,
                c.here.windows,
                c.there.fp_rows,
                c.here.fp_rows
            ));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(files: &[(&str, u64, u64, u64)]) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for &(f, detected, windows, fp_rows) in files {
            m.insert(
                f.to_string(),
                serde_json::json!({"score": 0.0, "windows": windows, "detected": detected,
                    "missed": windows - detected, "fp_rows": fp_rows, "tp_rows": 0}),
            );
        }
        serde_json::json!({"profiles": {"standard": {"files": m}}})
    }

    #[test]
    fn only_files_whose_catch_or_false_positives_moved_are_listed() {
        let there = outcomes(&score(&[
            ("a/one.csv", 1, 2, 3),
            ("a/two.csv", 0, 1, 0),
            ("b/three.csv", 2, 2, 5),
        ]));
        let here = outcomes(&score(&[
            ("a/one.csv", 1, 2, 3),
            ("a/two.csv", 1, 1, 0),
            ("b/three.csv", 2, 2, 4),
            ("b/new.csv", 0, 0, 1),
        ]));
        let c = changes(&there, &here);
        let files: Vec<&str> = c.iter().map(|c| c.file.as_str()).collect();
        assert_eq!(files, ["a/two.csv", "b/new.csv", "b/three.csv"]);
        assert_eq!(c[0].there.detected, 0);
        assert_eq!(c[0].here.detected, 1);
        assert_eq!(c[1].there, Outcome::default());
        let md = section(
            "combined",
            Path::new("target/nab-base"),
            (0.37, 0.38),
            (4, 4),
            &c,
        );
        assert!(md.contains("3 change what they catch"), "{md}");
        assert!(
            md.contains("windows caught +1, false-positive rows +0"),
            "{md}"
        );
        assert!(md.contains("| a/two.csv | 0 -> 1 of 1 | 0 -> 0 |"), "{md}");
    }

    #[test]
    fn identical_runs_list_nothing() {
        let s = outcomes(&score(&[("a/one.csv", 1, 2, 3)]));
        assert!(changes(&s, &s).is_empty());
        let md = section("combined", Path::new("x"), (0.3, 0.3), (0, 1), &[]);
        assert!(
            md.contains("0 of 1 series' scores differ; 0 change"),
            "{md}"
        );
        assert!(!md.contains("| file |"), "{md}");
    }

    #[test]
    fn outputs_whose_scores_differ_are_counted_and_extra_columns_ignored() {
        let dir = std::env::temp_dir().join(format!("nab-against-{}", std::process::id()));
        let (a, b) = (dir.join("a/cat"), dir.join("b/cat"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for (name, x, y) in [
            ("same.csv", "t,v,s\n1,2,0.1\n", "t,v,s\n1,2,0.1\n"),
            ("moved.csv", "t,v,s\n1,2,0.1\n", "t,v,s\n1,2,0.2\n"),
            (
                "more-columns.csv",
                "t,v,s\n1,2,0.1\n",
                "t,v,s,level\n1,2,0.1,0.4\n",
            ),
        ] {
            std::fs::write(a.join(name), x).unwrap();
            std::fs::write(b.join(name), y).unwrap();
        }
        std::fs::write(b.join("only-here.csv"), "1").unwrap();
        std::fs::write(b.join("score.json"), "{}").unwrap();
        let got = differing_outputs(&dir.join("a"), &dir.join("b")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, (2, 4));
    }
}
