//! Cross-validation of the NAB score (`cargo xtask nab --cv`): the threshold of each profile is
//! optimised on the training files only and applied unchanged to the held-out files, so that
//! the held-out figure says how a detector does on series it was not fitted to.
//!
//! Two schemes:
//! * by file: k folds with a fixed seed, stratified by category (each category's files are
//!   spread evenly over the folds), every file held out exactly once; repeated with several
//!   fixed seeds (repeated k-fold), because one deal of 35 files into 5 folds moves the held-out
//!   mean by up to 3 points, as much as the gap it is read for;
//! * by category: each category that has anomaly windows is held out in turn; categories
//!   without windows (NAB's artificialNoAnomaly) stay in every training and every test set,
//!   where they can only cost false positives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::nab_crop::source_of;

/// One fold: the threshold is chosen on `train` and applied to `test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fold {
    pub name: String,
    pub train: Vec<PathBuf>,
    pub test: Vec<PathBuf>,
}

/// The category of `<category>/<file>.csv`.
pub fn category(file: &Path) -> String {
    file.parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The detector's SplitMix64: a fixed seed gives the same shuffle on every machine and run.
struct Rng(sentinel::detect::learned::Rng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

/// `k` folds by file, stratified by category: the files of each category (in name order) are
/// shuffled with `seed` and dealt round-robin, each category starting at the fold after the
/// one where the previous category stopped, so fold sizes differ by at most one and every
/// category's share differs by at most one between folds (files cut from one source count as
/// one, see `nab_crop::source_of`). `windows` gives each file's window
/// count; every fold must hold out at least one window (else its score is undefined).
pub fn by_file(
    files: &[PathBuf],
    windows: &BTreeMap<PathBuf, usize>,
    k: usize,
    seed: u64,
) -> Result<Vec<Fold>> {
    // Dealt by source: a file and the crops cut from it (`--crop --with-whole`) are one
    // series, held out together; on the NAB folder each file is its own source.
    let mut by_cat: BTreeMap<String, BTreeMap<PathBuf, Vec<PathBuf>>> = BTreeMap::new();
    for f in files {
        by_cat
            .entry(category(f))
            .or_default()
            .entry(source_of(f))
            .or_default()
            .push(f.clone());
    }
    let sources: usize = by_cat.values().map(BTreeMap::len).sum();
    if k < 2 || k > sources {
        bail!("--folds {k}: needs 2..={sources} (the number of series)");
    }
    let mut rng = Rng(sentinel::detect::learned::Rng(seed));
    let mut held: Vec<Vec<PathBuf>> = vec![Vec::new(); k];
    let mut next = 0;
    for sources in by_cat.values() {
        let mut list: Vec<&Vec<PathBuf>> = sources.values().collect();
        // Fisher-Yates.
        for i in (1..list.len()).rev() {
            let j = rng.below(i + 1);
            list.swap(i, j);
        }
        for group in list {
            held[next].extend(group.iter().cloned());
            next = (next + 1) % k;
        }
    }
    let mut folds = Vec::with_capacity(k);
    for (i, test) in held.into_iter().enumerate() {
        let mut test = test;
        test.sort();
        if test
            .iter()
            .map(|f| windows.get(f).copied().unwrap_or(0))
            .sum::<usize>()
            == 0
        {
            bail!(
                "--folds {k}: fold {} holds out no anomaly window; use fewer folds",
                i + 1
            );
        }
        let train = files
            .iter()
            .filter(|f| !test.contains(f))
            .cloned()
            .collect();
        folds.push(Fold {
            name: format!("file fold {}", i + 1),
            train,
            test,
        });
    }
    Ok(folds)
}

/// [`by_file`] dealt `repeats` times, with seeds `seed`, `seed + 1`, ...: `repeats * k` folds,
/// every file held out once per deal. The first deal is `by_file(.., seed)` itself; with more
/// than one deal each fold's name carries its seed.
pub fn by_file_repeated(
    files: &[PathBuf],
    windows: &BTreeMap<PathBuf, usize>,
    k: usize,
    seed: u64,
    repeats: usize,
) -> Result<Vec<Fold>> {
    if repeats == 0 {
        bail!("--cv-repeats 0: needs at least one deal of the files into folds");
    }
    let mut folds = Vec::with_capacity(k * repeats);
    for r in 0..repeats {
        let seed = seed.wrapping_add(r as u64);
        for mut fold in by_file(files, windows, k, seed)? {
            if repeats > 1 {
                fold.name = format!("{}, seed {seed:#x}", fold.name);
            }
            folds.push(fold);
        }
    }
    Ok(folds)
}

/// One fold per category that has windows: that category is held out; categories without
/// windows are in every training and test set.
pub fn by_category(files: &[PathBuf], windows: &BTreeMap<PathBuf, usize>) -> Result<Vec<Fold>> {
    let mut wins: BTreeMap<String, usize> = BTreeMap::new();
    for f in files {
        *wins.entry(category(f)).or_default() += windows.get(f).copied().unwrap_or(0);
    }
    let labelled: Vec<&String> = wins
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, _)| c)
        .collect();
    if labelled.len() < 2 {
        bail!("by-category folds need at least two categories with windows");
    }
    Ok(labelled
        .iter()
        .map(|cat| {
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for f in files {
                let c = category(f);
                if &&c == cat {
                    test.push(f.clone());
                } else if wins[&c] == 0 {
                    train.push(f.clone());
                    test.push(f.clone());
                } else {
                    train.push(f.clone());
                }
            }
            Fold {
                name: format!("held out: {cat}"),
                train,
                test,
            }
        })
        .collect())
}

/// Mean, sample standard deviation, minimum and maximum.
pub fn spread(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

/// One candidate setting's cross-validation: per fold, the training (in-sample) and held-out
/// scores of each profile.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateFolds {
    pub train: Vec<[f64; 3]>,
    pub held_out: Vec<[f64; 3]>,
}

/// Nested cross-validation: for each fold and profile, the candidate whose *training* score is
/// highest (on a tie, the earlier one: the defaults come first) and that candidate's held-out
/// score. The held-out files never take part in the choice, so the mean of these scores says
/// how the choice of a setting, not just of the threshold, carries to files it did not see.
/// A candidate replaces the defaults (the first) only if it beats their training score by at
/// least `margin` points, as the adoption rule asks of a change.
/// Returns, per fold and profile, `(candidate index, held-out score)`.
pub fn nested(cands: &[CandidateFolds], margin: f64) -> Vec<[(usize, f64); 3]> {
    let folds = cands.first().map_or(0, |c| c.train.len());
    (0..folds)
        .map(|f| {
            std::array::from_fn(|p| {
                let mut best = 0;
                for (i, c) in cands.iter().enumerate() {
                    // NaN (a fold the scorer could not score) never wins.
                    if c.train[f][p] > cands[best].train[f][p] || cands[best].train[f][p].is_nan() {
                        best = i;
                    }
                }
                if cands[best].train[f][p] < cands[0].train[f][p] + margin {
                    best = 0;
                }
                (best, cands[best].held_out[f][p])
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the shared NAB subset: 5 files without windows, 6 + 17 + 7 with.
    fn corpus() -> (Vec<PathBuf>, BTreeMap<PathBuf, usize>) {
        let mut files = Vec::new();
        let mut windows = BTreeMap::new();
        for (cat, n, w) in [
            ("artificialNoAnomaly", 5, 0),
            ("artificialWithAnomaly", 6, 1),
            ("realAWSCloudwatch", 17, 2),
            ("realKnownCause", 7, 3),
        ] {
            for i in 0..n {
                let f = PathBuf::from(format!("{cat}/f{i:02}.csv"));
                windows.insert(f.clone(), w);
                files.push(f);
            }
        }
        (files, windows)
    }

    #[test]
    fn file_folds_are_deterministic_stratified_and_hold_each_file_out_once() {
        let (files, windows) = corpus();
        let folds = by_file(&files, &windows, 5, 42).unwrap();
        assert_eq!(folds, by_file(&files, &windows, 5, 42).unwrap());
        // Another seed deals the files differently (the seed is used).
        assert_ne!(folds, by_file(&files, &windows, 5, 43).unwrap());
        assert_eq!(folds.len(), 5);
        let mut held: BTreeMap<&PathBuf, usize> = BTreeMap::new();
        for fold in &folds {
            for f in &fold.test {
                *held.entry(f).or_default() += 1;
                assert!(!fold.train.contains(f), "{} in train and test", f.display());
            }
            assert_eq!(fold.train.len() + fold.test.len(), files.len());
            // Stratified: each category's share of a fold is within one of its even share.
            let mut per_cat: BTreeMap<String, usize> = BTreeMap::new();
            for f in &fold.test {
                *per_cat.entry(category(f)).or_default() += 1;
            }
            for (cat, total) in [
                ("artificialNoAnomaly", 5),
                ("artificialWithAnomaly", 6),
                ("realAWSCloudwatch", 17),
                ("realKnownCause", 7),
            ] {
                let got = per_cat.get(cat).copied().unwrap_or(0);
                assert!(
                    got == total / 5 || got == total.div_ceil(5),
                    "{}: {got} of {cat}",
                    fold.name
                );
            }
        }
        assert_eq!(held.len(), files.len());
        assert!(held.values().all(|&n| n == 1));
        // Fold sizes differ by at most one.
        let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }

    #[test]
    fn repeated_file_folds_deal_every_file_once_per_seed() {
        let (files, windows) = corpus();
        let once = by_file(&files, &windows, 5, 42).unwrap();
        let four = by_file_repeated(&files, &windows, 5, 42, 4).unwrap();
        assert_eq!(four.len(), 20);
        // The first deal is the single deal of the same seed; the others differ from it.
        for (a, b) in once.iter().zip(&four[..5]) {
            assert_eq!((&a.train, &a.test), (&b.train, &b.test));
        }
        for deal in four.chunks(5).skip(1) {
            assert_ne!(
                deal.iter().map(|f| &f.test).collect::<Vec<_>>(),
                once.iter().map(|f| &f.test).collect::<Vec<_>>()
            );
        }
        for deal in four.chunks(5) {
            let mut held: Vec<&PathBuf> = deal.iter().flat_map(|f| &f.test).collect();
            held.sort();
            held.dedup();
            assert_eq!(held.len(), files.len());
            assert_eq!(
                deal.iter().map(|f| f.test.len()).sum::<usize>(),
                files.len()
            );
        }
        assert!(four[7].name.contains("seed 0x2b"), "{}", four[7].name);
        assert_eq!(by_file_repeated(&files, &windows, 5, 42, 1).unwrap(), once);
        assert!(by_file_repeated(&files, &windows, 5, 42, 0).is_err());
    }

    #[test]
    fn a_file_and_its_crops_are_held_out_together() {
        let (mut files, mut windows) = corpus();
        for f in files.clone() {
            for c in 0..3 {
                let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
                let crop = f.with_file_name(format!("{stem}__{c}.csv"));
                windows.insert(crop.clone(), 1);
                files.push(crop);
            }
        }
        let folds = by_file(&files, &windows, 5, 42).unwrap();
        for fold in &folds {
            for f in &fold.test {
                let source = source_of(f);
                assert!(
                    fold.test.contains(&source),
                    "{} without its source",
                    f.display()
                );
                assert!(!fold.train.iter().any(|t| source_of(t) == source));
            }
        }
        // The whole files are dealt as they are without crops.
        let (whole, whole_windows) = corpus();
        let plain = by_file(&whole, &whole_windows, 5, 42).unwrap();
        for (with, without) in folds.iter().zip(&plain) {
            let kept: Vec<&PathBuf> = with.test.iter().filter(|f| whole.contains(f)).collect();
            assert_eq!(kept, without.test.iter().collect::<Vec<_>>());
        }
        // k counts series, not files.
        assert!(by_file(&files, &windows, 36, 0).is_err());
    }

    #[test]
    fn file_folds_reject_bad_k_and_folds_without_windows() {
        let (files, windows) = corpus();
        assert!(by_file(&files, &windows, 1, 0).is_err());
        assert!(by_file(&files, &windows, 36, 0).is_err());
        // 35 folds of one file: the no-anomaly files would be folds without a window.
        assert!(by_file(&files, &windows, 35, 0).is_err());
    }

    #[test]
    fn category_folds_hold_out_each_labelled_category_and_keep_the_rest() {
        let (files, windows) = corpus();
        let folds = by_category(&files, &windows).unwrap();
        let names: Vec<&str> = folds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "held out: artificialWithAnomaly",
                "held out: realAWSCloudwatch",
                "held out: realKnownCause"
            ]
        );
        for fold in &folds {
            let held = fold.name.trim_start_matches("held out: ");
            for f in &files {
                let c = category(f);
                let (tr, te) = (fold.train.contains(f), fold.test.contains(f));
                if c == "artificialNoAnomaly" {
                    assert!(tr && te, "{}: {}", fold.name, f.display());
                } else if c == held {
                    assert!(!tr && te, "{}: {}", fold.name, f.display());
                } else {
                    assert!(tr && !te, "{}: {}", fold.name, f.display());
                }
            }
        }
    }

    #[test]
    fn spread_is_mean_sd_min_max() {
        let (m, sd, lo, hi) = spread(&[1.0, 2.0, 3.0]);
        assert_eq!((m, lo, hi), (2.0, 1.0, 3.0));
        assert!((sd - 1.0).abs() < 1e-12);
    }

    #[test]
    fn nested_choice_looks_at_training_scores_only() {
        // Candidate 0 (defaults), 1 and 2 over two folds.
        let c = |train: [[f64; 3]; 2], held: [[f64; 3]; 2]| CandidateFolds {
            train: train.to_vec(),
            held_out: held.to_vec(),
        };
        let cands = [
            c(
                [[70.0, 60.0, 80.0], [71.0, 61.0, 81.0]],
                [[50.0; 3], [51.0; 3]],
            ),
            // Best held out everywhere, never best in training: never chosen.
            c(
                [[69.0, 59.0, 79.0], [70.0, 60.0, 80.0]],
                [[99.0; 3], [99.0; 3]],
            ),
            // Best in training on fold 0 standard and low FN only; ties on fold 1 low FP.
            c(
                [[72.0, 55.0, 85.0], [65.0, 61.0, 70.0]],
                [[10.0; 3], [11.0; 3]],
            ),
        ];
        let n = nested(&cands, 0.0);
        assert_eq!(n.len(), 2);
        assert_eq!(n[0], [(2, 10.0), (0, 50.0), (2, 10.0)]);
        // The tie on fold 1's low FP goes to the earlier candidate (the defaults).
        assert_eq!(n[1], [(0, 51.0), (0, 51.0), (0, 51.0)]);
        // With a margin of 2 points the defaults stay where candidate 2 beat them by 2 (fold
        // 0 standard), and give way where it beat them by 5 (fold 0 low FN).
        let n = nested(&cands, 2.0);
        assert_eq!(n[0], [(2, 10.0), (0, 50.0), (2, 10.0)]);
        let n = nested(&cands, 2.5);
        assert_eq!(n[0], [(0, 50.0), (0, 50.0), (2, 10.0)]);
    }

    #[test]
    fn nested_choice_skips_unscored_candidates() {
        let cands = [
            CandidateFolds {
                train: vec![[f64::NAN; 3]],
                held_out: vec![[1.0; 3]],
            },
            CandidateFolds {
                train: vec![[5.0; 3]],
                held_out: vec![[2.0; 3]],
            },
        ];
        assert_eq!(nested(&cands, 0.0)[0], [(1, 2.0); 3]);
    }
}
