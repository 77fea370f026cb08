//! `cargo xtask nab --channels`: which channel raised each alarm. The replays then carry
//! `sentinel replay --channels`' columns; every alarm row (at or above the detector's standard
//! threshold, after NAB's probation) is put down to the channel whose calibrated score equals
//! the row's `level` (the largest; on a tie the first in column order), and counted in a window
//! or outside one (a false-positive row). A candidate that gates or reweights one channel is
//! read against these counts instead of a patched build.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// The fraction of each file NAB does not score, and the row count it is capped at a fraction
/// of (the scorer's `--probation` default and `PROBATION_CAP_BASE`).
const PROBATION_FRACTION: f64 = 0.15;
const PROBATION_CAP_BASE: f64 = 5000.0;

/// Rows `[0, probation(n))` of an n-row file are not scored, as in the scorer.
pub fn probation(n: usize) -> usize {
    (PROBATION_FRACTION * n as f64)
        .floor()
        .min(PROBATION_FRACTION * PROBATION_CAP_BASE)
        .ceil() as usize
}

/// A timestamp as the data files and the windows file write it, reduced to a form that sorts
/// as time does: `T` as a space, no fraction of a second (NAB's windows carry `.000000`).
fn stamp(t: &str) -> String {
    let t = t.trim();
    t.split_once('.')
        .map_or(t, |(whole, _)| whole)
        .replace('T', " ")
}

/// Each window `[start, end]` (timestamps) as the rows it covers, as the scorer maps them: the
/// rows that carry its first and last timestamps, or else the rows between them.
pub fn window_rows(times: &[&str], windows: &[(String, String)]) -> Vec<(usize, usize)> {
    let times: Vec<String> = times.iter().map(|t| stamp(t)).collect();
    let mut out = Vec::new();
    for (start, end) in windows {
        let (s, e) = (stamp(start), stamp(end));
        let left = times.iter().position(|t| *t == s);
        let right = left.and_then(|l| (l..times.len()).find(|&j| times[j] == e));
        let range = match (left, right) {
            (Some(l), Some(r)) => Some((l, r)),
            _ => {
                let mut inside = (0..times.len()).filter(|&i| s <= times[i] && times[i] <= e);
                inside.next().map(|l| (l, inside.next_back().unwrap_or(l)))
            }
        };
        out.extend(range);
    }
    out.sort_unstable();
    out
}

/// Alarm rows put down to one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Windows whose first alarm row (the one NAB scores) this channel raised.
    pub windows_first: u64,
    /// Alarm rows inside windows.
    pub in_windows: u64,
    /// Alarm rows outside windows: false-positive rows.
    pub fp_rows: u64,
}

/// One detector's alarms over a corpus, by channel, and its false-positive rows by file.
#[derive(Debug, Default)]
pub struct Tally {
    pub by_channel: BTreeMap<String, Counts>,
    pub fp_by_file: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Tally {
    /// Adds one replay output (`sentinel replay --channels` CSV) of `file`, whose windows are
    /// `windows` (timestamps), at `threshold`.
    pub fn add(
        &mut self,
        file: &str,
        output: &str,
        windows: &[(String, String)],
        threshold: f64,
    ) -> Result<()> {
        let mut lines = output.lines();
        let header: Vec<&str> = lines
            .next()
            .ok_or_else(|| anyhow!("{file}: empty replay output"))?
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| anyhow!("{file}: no `{name}` column (replayed without --channels?)"))
        };
        let (score_col, level_col) = (col("anomaly_score")?, col("level")?);
        let channels: Vec<(usize, &str)> = header
            .iter()
            .enumerate()
            .skip(level_col + 1)
            .map(|(i, h)| (i, *h))
            .collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        let times: Vec<&str> = rows.iter().map(|r| r[0]).collect();
        let wins = window_rows(&times, windows);
        let mut first_seen = vec![false; wins.len()];
        let num = |r: &[&str], i: usize, line: usize| -> Result<f64> {
            r.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("{file}: row {line}: column {} unreadable", header[i]))
        };
        for (i, r) in rows.iter().enumerate().skip(probation(rows.len())) {
            if num(r, score_col, i)? < threshold {
                continue;
            }
            let level = num(r, level_col, i)?;
            let mut channel = "none";
            for &(c, name) in &channels {
                if num(r, c, i)? == level {
                    channel = name;
                    break;
                }
            }
            let counts = self.by_channel.entry(channel.to_string()).or_default();
            match wins.iter().position(|&(a, b)| a <= i && i <= b) {
                Some(w) => {
                    counts.in_windows += 1;
                    if !first_seen[w] {
                        first_seen[w] = true;
                        counts.windows_first += 1;
                    }
                }
                None => {
                    counts.fp_rows += 1;
                    *self
                        .fp_by_file
                        .entry(file.to_string())
                        .or_default()
                        .entry(channel.to_string())
                        .or_default() += 1;
                }
            }
        }
        Ok(())
    }

    fn total(&self) -> Counts {
        self.by_channel
            .values()
            .fold(Counts::default(), |a, c| Counts {
                windows_first: a.windows_first + c.windows_first,
                in_windows: a.in_windows + c.in_windows,
                fp_rows: a.fp_rows + c.fp_rows,
            })
    }
}

/// Tallies every replay output under `results` (files `files`, windows from `labels`, NAB's
/// `combined_windows.json`) at `threshold`.
pub fn tally(
    results: &Path,
    files: &[std::path::PathBuf],
    labels: &Path,
    threshold: f64,
) -> Result<Tally> {
    let text = std::fs::read(labels).with_context(|| labels.display().to_string())?;
    let all: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_slice(&text).with_context(|| labels.display().to_string())?;
    let mut t = Tally::default();
    for f in files {
        let key = f.to_string_lossy();
        let path = results.join(f);
        let out = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let windows = all.get(key.as_ref()).map_or(&[][..], Vec::as_slice);
        t.add(&key, &out, windows, threshold)?;
    }
    Ok(t)
}

/// The markdown section for one detector. `scorer` is the scorer's own count of windows
/// caught and false-positive rows at the same threshold: the tally must agree with it.
pub fn section(det: &str, threshold: f64, t: &Tally, scorer: (u64, u64)) -> Result<String> {
    let total = t.total();
    if (total.windows_first, total.fp_rows) != scorer {
        bail!(
            "{det}: the channel tally finds {} windows caught and {} false-positive rows, the \
             scorer {} and {}: the window or probation mapping here differs from the scorer's",
            total.windows_first,
            total.fp_rows,
            scorer.0,
            scorer.1
        );
    }
    let mut md = format!(
        "{det}: alarm rows at its standard threshold {threshold:.4}, after the probation, by the \
         channel that held the row's level.\n\n\
         | channel | windows caught first | alarm rows in windows | false-positive rows |\n\
         |---|---|---|---|\n"
    );
    for (name, c) in &t.by_channel {
        md.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            c.windows_first, c.in_windows, c.fp_rows
        ));
    }
    md.push_str(&format!(
        "| all | {} | {} | {} |\n",
        total.windows_first, total.in_windows, total.fp_rows
    ));
    if !t.fp_by_file.is_empty() {
        md.push_str("\n| file | false-positive rows by channel |\n|---|---|\n");
        for (file, by) in &t.fp_by_file {
            let cells: Vec<String> = by.iter().map(|(c, n)| format!("{c} {n}")).collect();
            md.push_str(&format!("| {file} | {} |\n", cells.join(", ")));
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "timestamp,value,anomaly_score,level,spike,range,forest";

    fn output(rows: &[(&str, f64, [f64; 3])]) -> String {
        let mut s = format!("{HEADER}\n");
        for (t, score, [spike, range, forest]) in rows {
            let level = spike.max(*range).max(*forest);
            s.push_str(&format!(
                "{t},1,{score:.6},{level:.6},{spike:.6},{range:.6},{forest:.6}\n"
            ));
        }
        s
    }

    #[test]
    fn probation_is_the_scorers() {
        assert_eq!(probation(100), 15);
        assert_eq!(probation(1600), 240);
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(22695), 750);
    }

    #[test]
    fn windows_map_to_rows_exactly_or_by_the_rows_inside() {
        let times = [
            "2014-01-01 00:00:00",
            "2014-01-01 00:05:00",
            "2014-01-01 00:10:00",
            "2014-01-01 00:15:00",
        ];
        let exact = (
            "2014-01-01 00:05:00.000000".to_string(),
            "2014-01-01T00:10:00".to_string(),
        );
        let loose = (
            "2014-01-01 00:12:00.000000".to_string(),
            "2014-01-01 00:20:00.000000".to_string(),
        );
        let none = (
            "2015-01-01 00:00:00".to_string(),
            "2015-01-02 00:00:00".to_string(),
        );
        assert_eq!(window_rows(&times, &[loose, exact, none]), [(1, 2), (3, 3)]);
    }

    #[test]
    fn alarms_are_put_down_to_the_channel_holding_the_level() {
        // 20 rows: probation 3; a window over rows 10..=12.
        let stamps: Vec<String> = (0..20)
            .map(|i| format!("2014-01-01 {i:02}:00:00"))
            .collect();
        let mut rows: Vec<(&str, f64, [f64; 3])> =
            stamps.iter().map(|t| (t.as_str(), 0.0, [0.0; 3])).collect();
        rows[1] = (rows[1].0, 0.9, [0.9, 0.0, 0.0]); // in the probation: not counted
        rows[5] = (rows[5].0, 0.5, [0.1, 0.5, 0.2]); // range, outside
        rows[6] = (rows[6].0, 0.2, [0.2, 0.1, 0.0]); // under the threshold
        rows[11] = (rows[11].0, 0.4, [0.0, 0.1, 0.4]); // forest, first in the window
        rows[12] = (rows[12].0, 0.6, [0.6, 0.6, 0.0]); // tie: the first column, spike
        rows[15] = (rows[15].0, 0.3, [0.0, 0.0, 0.3]); // forest, outside, at the threshold
        let windows = [(stamps[10].clone(), stamps[12].clone())];
        let mut t = Tally::default();
        t.add("cat/a.csv", &output(&rows), &windows, 0.3).unwrap();
        let c = |n: &str| t.by_channel.get(n).copied().unwrap_or_default();
        assert_eq!(
            c("range"),
            Counts {
                windows_first: 0,
                in_windows: 0,
                fp_rows: 1
            }
        );
        assert_eq!(
            c("forest"),
            Counts {
                windows_first: 1,
                in_windows: 1,
                fp_rows: 1
            }
        );
        assert_eq!(
            c("spike"),
            Counts {
                windows_first: 0,
                in_windows: 1,
                fp_rows: 0
            }
        );
        let md = section("combined", 0.3, &t, (1, 2)).unwrap();
        assert!(md.contains("| forest | 1 | 1 | 1 |"), "{md}");
        assert!(md.contains("| all | 1 | 2 | 2 |"), "{md}");
        assert!(md.contains("| cat/a.csv | forest 1, range 1 |"), "{md}");
        // A tally that disagrees with the scorer is an error, not a table.
        let err = section("combined", 0.3, &t, (1, 3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("differs from the scorer"), "{err}");
    }

    #[test]
    fn an_output_without_the_channel_columns_is_an_error() {
        let mut t = Tally::default();
        let err = t
            .add(
                "cat/a.csv",
                "timestamp,value,anomaly_score\nx,1,0.5\n",
                &[],
                0.3,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("no `level` column"), "{err}");
    }
}
