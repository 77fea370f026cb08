//! `cargo xtask nab --crop ROWS`: a corpus of short series cut from the NAB files, to judge how
//! the detectors do on series shorter than the ~4000 to 22 000 rows of most shared files (a
//! young container, a metric sampled hourly for two months). One crop of `ROWS` rows per
//! labelled anomaly, the label at 65% of the crop (clipped to the file), and one crop (the last
//! `ROWS` rows) of each file without anomalies. Windows are laid out as NAB's labeller does for
//! a file of the crop's length: 10% of its rows divided by the labels it holds, centred on each
//! label; a label in the crop's first 15% (the scorer's probation) gets no window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// Where in the crop the label sits: enough history before it for every channel to have learned
/// (at 1600 rows, 1040 rows before the label), and room after it for the window's right half.
const LABEL_AT: f64 = 0.65;
/// The scorer's probation: the first 15% of a file is not scored.
const PROBATION: f64 = 0.15;
/// NAB's window length: 10% of a file's rows, shared among its labels.
const WINDOW_SHARE: f64 = 0.10;
/// Between a source file's stem and a crop's number: `nyc_taxi__3.csv` (`plan` names crops so,
/// `source_of` reads it back).
const CROP_MARK: &str = "__";

/// One crop: rows `start..start + rows` of `source`, with anomaly windows as row ranges
/// (inclusive) within the crop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crop {
    pub source: PathBuf,
    pub name: PathBuf,
    pub start: usize,
    pub rows: usize,
    pub windows: Vec<(usize, usize)>,
}

/// The crops of one file of `rows` rows whose labels sit at `labels` (row indices).
pub fn plan(source: &Path, rows: usize, labels: &[usize], len: usize) -> Vec<Crop> {
    let n = len.min(rows);
    let starts: Vec<usize> = if labels.is_empty() {
        vec![rows - n]
    } else {
        labels
            .iter()
            .map(|&i| {
                i.saturating_sub((LABEL_AT * n as f64) as usize)
                    .min(rows - n)
            })
            .collect()
    };
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let first_scored = start + (PROBATION * n as f64) as usize;
            let inside: Vec<usize> = labels
                .iter()
                .filter(|&&i| i >= first_scored && i < start + n)
                .map(|&i| i - start)
                .collect();
            let half = (WINDOW_SHARE * n as f64 / inside.len().max(1) as f64) as usize / 2;
            let mut windows: Vec<(usize, usize)> = Vec::new();
            for j in inside {
                let (a, b) = (j.saturating_sub(half), (j + half).min(n - 1));
                // NAB's windows never overlap: two labels closer than a window merge.
                match windows.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => windows.push((a, b)),
                }
            }
            Crop {
                source: source.to_path_buf(),
                name: source.with_file_name(format!("{stem}{CROP_MARK}{k}.csv")),
                start,
                rows: n,
                windows,
            }
        })
        .collect()
}

/// The file a crop was cut from (`cat/name__3.csv` -> `cat/name.csv`); any other file is its
/// own source. The cross-validation keeps a file and its crops in one fold.
pub fn source_of(file: &Path) -> PathBuf {
    let Some(stem) = file.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return file.to_path_buf();
    };
    match stem.rsplit_once(CROP_MARK) {
        Some((base, k))
            if !base.is_empty() && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) =>
        {
            file.with_file_name(format!("{base}.csv"))
        }
        _ => file.to_path_buf(),
    }
}

/// Writes the cropped corpus of the NAB folder `data` (its `combined_labels.json` gives the
/// labels) to `dest`, with its own `combined_windows.json`. Returns the number of crops.
/// `whole`: each file is also copied whole, with its NAB windows, beside its crops (a crop that
/// would be the whole file is then left out), so that one threshold is judged across young and
/// long series, as on the full NAB corpus.
pub fn write(
    data: &Path,
    files: &[PathBuf],
    dest: &Path,
    len: usize,
    whole: bool,
) -> Result<usize> {
    if len < 100 {
        bail!("--crop {len}: needs at least 100 rows");
    }
    let labels_path = data.join("combined_labels.json");
    let text = std::fs::read(&labels_path)
        .with_context(|| format!("{} (the labels --crop needs)", labels_path.display()))?;
    let labels: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&text).with_context(|| {
            format!(
                "{}: expected {{file: [timestamp, ...]}}",
                labels_path.display()
            )
        })?;
    let whole_windows: serde_json::Map<String, serde_json::Value> = if whole {
        let path = data.join("combined_windows.json");
        let text = std::fs::read(&path)
            .with_context(|| format!("{} (the windows --with-whole keeps)", path.display()))?;
        serde_json::from_slice(&text).with_context(|| {
            format!("{}: expected {{file: [[start, end], ...]}}", path.display())
        })?
    } else {
        serde_json::Map::new()
    };
    let _ = std::fs::remove_dir_all(dest);
    let mut windows = serde_json::Map::new();
    let mut count = 0;
    for rel in files {
        let src = data.join(rel);
        let text = std::fs::read_to_string(&src).with_context(|| format!("{}", src.display()))?;
        let mut lines = text.lines();
        let header = lines
            .next()
            .ok_or_else(|| anyhow!("{}: empty", src.display()))?;
        let body: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        if body.is_empty() {
            bail!("{}: no rows", src.display());
        }
        let stamp = |l: &str| l.split(',').next().unwrap_or("").to_string();
        let stamps: Vec<String> = body.iter().map(|l| stamp(l)).collect();
        let key = rel.to_string_lossy().into_owned();
        let mut rows_of = Vec::new();
        for label in labels.get(&key).map(Vec::as_slice).unwrap_or(&[]) {
            let i = stamps
                .iter()
                .position(|s| s == label)
                .ok_or_else(|| anyhow!("{key}: label {label} matches no row"))?;
            rows_of.push(i);
        }
        rows_of.sort_unstable();
        if whole {
            let path = dest.join(rel);
            std::fs::create_dir_all(path.parent().expect("a file has a category"))?;
            std::fs::write(&path, &text).with_context(|| format!("{}", path.display()))?;
            let ws = whole_windows
                .get(&key)
                .cloned()
                .ok_or_else(|| anyhow!("{key}: not in combined_windows.json"))?;
            windows.insert(key.clone(), ws);
        }
        for crop in plan(rel, body.len(), &rows_of, len) {
            if whole && crop.rows == body.len() {
                continue;
            }
            let path = dest.join(&crop.name);
            std::fs::create_dir_all(path.parent().expect("a crop has a category"))?;
            let mut out = String::with_capacity(text.len().min(64 * crop.rows));
            out.push_str(header);
            out.push('\n');
            for l in &body[crop.start..crop.start + crop.rows] {
                out.push_str(l);
                out.push('\n');
            }
            std::fs::write(&path, out).with_context(|| format!("{}", path.display()))?;
            let ws = crop
                .windows
                .iter()
                .map(|&(a, b)| serde_json::json!([stamps[crop.start + a], stamps[crop.start + b]]))
                .collect();
            windows.insert(
                crop.name.to_string_lossy().into_owned(),
                serde_json::Value::Array(ws),
            );
            count += 1;
        }
    }
    std::fs::write(
        dest.join("combined_windows.json"),
        serde_json::to_vec_pretty(&windows)?,
    )?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_sits_at_65_percent_with_a_centred_window() {
        let c = plan(Path::new("cat/f.csv"), 4000, &[2000], 1600);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, PathBuf::from("cat/f__0.csv"));
        assert_eq!((c[0].start, c[0].rows), (2000 - 1040, 1600));
        // 10% of 1600 rows for one label: 160 rows, centred on row 1040 of the crop.
        assert_eq!(c[0].windows, vec![(960, 1120)]);
    }

    #[test]
    fn crops_are_clipped_to_the_file_and_share_the_window_among_labels() {
        // Near the start: the crop begins at row 0; near the end: it ends at the last row.
        let c = plan(Path::new("cat/f.csv"), 3000, &[400, 2900], 1000);
        assert_eq!((c[0].start, c[1].start), (0, 2000));
        // The first crop holds only the label at 400 (2900 is outside it).
        assert_eq!(c[0].windows, vec![(350, 450)]);
        assert_eq!(c[1].windows, vec![(850, 950)]);
        // Two labels in one crop share its 10%: 50 rows each.
        let c = plan(Path::new("cat/f.csv"), 3000, &[1500, 1700], 1000);
        assert_eq!(c[0].start, 850);
        assert_eq!(c[0].windows, vec![(625, 675), (825, 875)]);
    }

    #[test]
    fn labels_in_the_probation_get_no_window_and_close_ones_merge() {
        // The crop of the label at 100 starts at 0: the label is in the first 15%.
        let c = plan(Path::new("cat/f.csv"), 5000, &[100], 1000);
        assert_eq!(c[0].start, 0);
        assert!(c[0].windows.is_empty());
        // Two labels 20 rows apart: their 50-row windows overlap and merge.
        let c = plan(Path::new("cat/f.csv"), 5000, &[3000, 3020], 1000);
        assert_eq!(c[0].windows, vec![(625, 695)]);
    }

    #[test]
    fn a_crop_names_its_source_and_other_files_are_their_own() {
        for (file, source) in [
            ("cat/nyc_taxi__3.csv", "cat/nyc_taxi.csv"),
            ("cat/a__b__0.csv", "cat/a__b.csv"),
            ("cat/nyc_taxi.csv", "cat/nyc_taxi.csv"),
            ("cat/odd__.csv", "cat/odd__.csv"),
            ("cat/__7.csv", "cat/__7.csv"),
            ("cat/x__1a.csv", "cat/x__1a.csv"),
        ] {
            assert_eq!(source_of(Path::new(file)), PathBuf::from(source), "{file}");
        }
        for c in plan(Path::new("cat/f.csv"), 9000, &[2000, 7000], 1600) {
            assert_eq!(source_of(&c.name), PathBuf::from("cat/f.csv"));
        }
    }

    #[test]
    fn whole_files_are_kept_beside_their_crops_with_their_windows() {
        let dir = std::env::temp_dir().join(format!("nab-crop-whole-{}", std::process::id()));
        let (data, dest) = (dir.join("data"), dir.join("out"));
        std::fs::create_dir_all(data.join("cat")).unwrap();
        let mut long = String::from("timestamp,value\n");
        for i in 0..3000 {
            long.push_str(&format!("t{i:05},{i}\n"));
        }
        let mut short = String::from("timestamp,value\n");
        for i in 0..500 {
            short.push_str(&format!("s{i:05},{i}\n"));
        }
        std::fs::write(data.join("cat/long.csv"), &long).unwrap();
        std::fs::write(data.join("cat/short.csv"), &short).unwrap();
        std::fs::write(
            data.join("combined_labels.json"),
            r#"{"cat/long.csv": ["t02000"], "cat/short.csv": ["s00400"]}"#,
        )
        .unwrap();
        std::fs::write(
            data.join("combined_windows.json"),
            r#"{"cat/long.csv": [["t01850", "t02150"]], "cat/short.csv": [["s00375", "s00425"]]}"#,
        )
        .unwrap();
        let files = [
            PathBuf::from("cat/long.csv"),
            PathBuf::from("cat/short.csv"),
        ];
        // The short file is one crop of itself: kept once, whole, with its NAB window.
        assert_eq!(write(&data, &files, &dest, 1000, true).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(dest.join("cat/long.csv")).unwrap(),
            long
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("cat/short.csv")).unwrap(),
            short
        );
        assert!(dest.join("cat/long__0.csv").exists());
        assert!(!dest.join("cat/short__0.csv").exists());
        let w: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("combined_windows.json")).unwrap())
                .unwrap();
        assert_eq!(w["cat/long.csv"], serde_json::json!([["t01850", "t02150"]]));
        assert_eq!(
            w["cat/short.csv"],
            serde_json::json!([["s00375", "s00425"]])
        );
        assert_eq!(
            w["cat/long__0.csv"],
            serde_json::json!([["t01950", "t02050"]])
        );
        assert_eq!(w.as_object().unwrap().len(), 3);
        // Without it, only the crops.
        assert_eq!(write(&data, &files, &dest, 1000, false).unwrap(), 2);
        assert!(!dest.join("cat/long.csv").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_without_labels_give_their_last_rows_and_short_files_stay_whole() {
        let c = plan(Path::new("cat/quiet.csv"), 4000, &[], 1600);
        assert_eq!((c[0].start, c[0].rows), (2400, 1600));
        assert!(c[0].windows.is_empty());
        let c = plan(Path::new("cat/short.csv"), 1200, &[900], 1600);
        assert_eq!((c[0].start, c[0].rows), (0, 1200));
        assert_eq!(c[0].windows, vec![(840, 960)]);
    }
}
