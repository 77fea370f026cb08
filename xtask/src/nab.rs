//! `cargo xtask nab`: builds sentinel (release), replays every NAB file through each detector,
//! scores the results with `shared/tools/nab_score.py` and prints/writes the table. With
//! `--cv` it also cross-validates the threshold (see [`crate::nab_cv`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::nab_against;
use crate::nab_calm;
use crate::nab_channels;
use crate::nab_crop;
use crate::nab_cv::{self, CandidateFolds, Fold};

#[derive(Debug, clap::Args)]
pub struct NabArgs {
    /// NAB data folder (<category>/<file>.csv plus combined_windows.json), relative to the
    /// repository root.
    #[arg(long, default_value = "../shared/datasets/nab")]
    pub data: PathBuf,
    /// The scorer script (default: tools/nab_score.py next to the data's `datasets` folder).
    #[arg(long)]
    pub scorer: Option<PathBuf>,
    /// Detectors to evaluate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "statistical,learned,combined"
    )]
    pub detectors: Vec<String>,
    /// `[detect]` overrides passed to every replay (KEY=VALUE, repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where results and the table go (relative to the repository root).
    #[arg(long, default_value = "target/nab")]
    pub out: PathBuf,
    /// Also cross-validate: thresholds optimised on training folds, scored on held-out ones
    /// (k folds by file, stratified by category, and one fold per labelled category).
    #[arg(long)]
    pub cv: bool,
    /// Folds of the by-file cross-validation.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seed of the by-file fold assignment (fixed, so that runs are comparable).
    #[arg(long, default_value_t = 0x5e47_1e1a)]
    pub cv_seed: u64,
    /// Deals of the files into by-file folds (seeds --cv-seed, --cv-seed + 1, ...): the
    /// by-file figures are the mean over every held-out fold of every deal, since one deal alone
    /// moves them by up to 3 points.
    #[arg(long, default_value_t = 4)]
    pub cv_repeats: usize,
    /// Nested cross-validation of settings (needs --cv): each value is a candidate that changes
    /// one key from the defaults; in every fold the candidate with the best training score is
    /// chosen and scored on the held-out files. Writes tune.md (KEY=V1,V2,..., repeatable).
    #[arg(long = "tune", value_name = "KEY=V1,V2,...")]
    pub tune: Vec<String>,
    /// Judge short series instead: one crop of this many rows around each labelled anomaly
    /// (see `nab_crop`), written with its windows to <out>/crop-ROWS/data and evaluated there.
    #[arg(long, value_name = "ROWS")]
    pub crop: Option<usize>,
    /// With --crop: keep each file whole beside its crops (under <out>/crop-ROWS-whole), so
    /// that one threshold is judged across short and long series, as on the full NAB corpus
    /// (a file and its crops are held out together).
    #[arg(long, requires = "crop")]
    pub with_whole: bool,
    /// Also count false alarms on anomaly-free synthetic series of kinds the NAB files lack
    /// (see `nab_calm`), at each detector's thresholds chosen here; writes calm.md.
    #[arg(long)]
    pub calm: bool,
    /// An earlier run's --out (relative to the repository root, same corpus options): list
    /// the series whose windows caught or false-positive rows differ, each run at its own
    /// standard threshold, so that a gain can be told from one window. Writes against.md.
    #[arg(long, value_name = "DIR")]
    pub against: Option<PathBuf>,
    /// Replay with `sentinel replay --channels` and count every alarm row at the standard
    /// threshold by the channel that raised it, in windows and outside (see `nab_channels`).
    /// Writes channels.md; with --calm, calm.md gets the same count for the synthetic corpus.
    #[arg(long)]
    pub channels: bool,
}

/// Points of training score a candidate needs over the defaults to replace them in the nested
/// cross-validation's rule column.
const ADOPTION_MARGIN: f64 = 1.0;

const PROFILES: [(&str, &str); 3] = [
    ("standard", "standard"),
    ("reward_low_FP_rate", "low FP"),
    ("reward_low_FN_rate", "low FN"),
];

fn repo_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

pub(crate) fn csv_files(data: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for cat in std::fs::read_dir(data).with_context(|| format!("{}", data.display()))? {
        let cat = cat?.path();
        if !cat.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&cat)? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "csv") {
                files.push(f.strip_prefix(data)?.to_path_buf());
            }
        }
    }
    // Fixed order so that runs are comparable line by line.
    files.sort();
    Ok(files)
}

/// Anomaly windows per file, from `combined_windows.json`.
fn window_counts(labels: &Path) -> Result<BTreeMap<PathBuf, usize>> {
    let text = std::fs::read(labels).with_context(|| format!("{}", labels.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{}", labels.display()))?;
    let map = v
        .as_object()
        .ok_or_else(|| anyhow!("{}: not a JSON object", labels.display()))?;
    Ok(map
        .iter()
        .map(|(k, w)| (PathBuf::from(k), w.as_array().map_or(0, Vec::len)))
        .collect())
}

/// Paths of the scorer inputs.
struct Scorer {
    script: PathBuf,
    data: PathBuf,
    labels: PathBuf,
}

impl Scorer {
    /// Scores `results` (all files, or the `files` subset through a list file written to
    /// `list`); `thresholds` fixes each profile's threshold instead of optimising it.
    fn score(
        &self,
        results: &Path,
        files: Option<(&[PathBuf], &Path)>,
        thresholds: Option<&[Option<f64>; 3]>,
    ) -> Result<serde_json::Value> {
        self.score_files(results, files, thresholds, false)
    }

    /// [`Scorer::score`], with each file's windows and false positives if `per_file`.
    fn score_files(
        &self,
        results: &Path,
        files: Option<(&[PathBuf], &Path)>,
        thresholds: Option<&[Option<f64>; 3]>,
        per_file: bool,
    ) -> Result<serde_json::Value> {
        let mut cmd = Command::new("python3");
        cmd.arg(&self.script)
            .arg("--data")
            .arg(&self.data)
            .arg("--labels")
            .arg(&self.labels)
            .arg("--results")
            .arg(results)
            .arg("--json");
        if per_file {
            cmd.arg("--per-file");
        }
        if let Some((files, list)) = files {
            let mut text = String::new();
            for f in files {
                text.push_str(&f.to_string_lossy());
                text.push('\n');
            }
            std::fs::write(list, text)?;
            cmd.arg("--files").arg(list);
        }
        for (i, t) in thresholds.into_iter().flatten().enumerate() {
            // None: the training folds were best with no detection at all.
            let t = t.map_or_else(|| "inf".to_string(), |t| t.to_string());
            cmd.arg("--threshold").arg(format!("{}={t}", PROFILES[i].0));
        }
        let o = cmd.output().context("running nab_score.py")?;
        if !o.status.success() {
            bail!(
                "nab_score.py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(serde_json::from_slice(&o.stdout)?)
    }
}

fn normalized(v: &serde_json::Value, profile: usize) -> f64 {
    v["profiles"][PROFILES[profile].0]["normalized"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// One fold's outcome: the thresholds chosen on its training files, and per profile the
/// training (in-sample) and held-out scores.
struct FoldResult {
    name: String,
    test_files: usize,
    test_windows: usize,
    thresholds: [Option<f64>; 3],
    train: [f64; 3],
    held_out: [f64; 3],
}

fn cross_validate(
    scorer: &Scorer,
    results: &Path,
    folds: &[Fold],
    windows: &BTreeMap<PathBuf, usize>,
) -> Result<Vec<FoldResult>> {
    let list = results.join("cv-files.txt");
    let mut out = Vec::new();
    for fold in folds {
        let train = scorer.score(results, Some((&fold.train, &list)), None)?;
        let thresholds: [Option<f64>; 3] =
            std::array::from_fn(|i| train["profiles"][PROFILES[i].0]["threshold"].as_f64());
        let test = scorer.score(results, Some((&fold.test, &list)), Some(&thresholds))?;
        out.push(FoldResult {
            name: fold.name.clone(),
            test_files: fold.test.len(),
            test_windows: fold.test.iter().filter_map(|f| windows.get(f)).sum(),
            thresholds,
            train: std::array::from_fn(|i| normalized(&train, i)),
            held_out: std::array::from_fn(|i| normalized(&test, i)),
        });
    }
    let _ = std::fs::remove_file(&list);
    Ok(out)
}

/// `mean ± sd [min, max]` of the held-out scores of one profile.
fn held_out_cell(folds: &[FoldResult], profile: usize) -> String {
    let xs: Vec<f64> = folds.iter().map(|f| f.held_out[profile]).collect();
    let (m, sd, lo, hi) = nab_cv::spread(&xs);
    format!("{m:.1} ± {sd:.1} [{lo:.1}, {hi:.1}]")
}

fn mean_of(folds: &[FoldResult], pick: impl Fn(&FoldResult) -> f64) -> f64 {
    folds.iter().map(pick).sum::<f64>() / folds.len() as f64
}

/// The candidates of `--tune`: `(label, the --set list)`, the defaults (plus `--set`) first.
fn tune_candidates(set: &[String], tune: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let mut out = vec![("defaults".to_string(), set.to_vec())];
    for t in tune {
        let (key, values) = t
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| anyhow!("--tune {t:?}: expected KEY=V1,V2,..."))?;
        for v in values.split(',') {
            if v.is_empty() {
                bail!("--tune {t:?}: an empty value");
            }
            let mut sets = set.to_vec();
            sets.push(format!("{key}={v}"));
            out.push((format!("{key}={v}"), sets));
        }
    }
    Ok(out)
}

/// Replays every file through `sentinel replay` with detector `det` and `sets` into `dir`.
fn replay_all(
    sentinel: &Path,
    data: &Path,
    files: &[PathBuf],
    det: &str,
    sets: &[String],
    channels: bool,
    dir: &Path,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for f in files {
        let dst = dir.join(f);
        std::fs::create_dir_all(dst.parent().expect("file has a category"))?;
        let mut cmd = Command::new(sentinel);
        cmd.arg("replay")
            .arg("--input")
            .arg(data.join(f))
            .arg("--output")
            .arg(&dst)
            .args(["--detector", det]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        if channels {
            cmd.arg("--channels");
        }
        let st = cmd.status().context("running sentinel replay")?;
        if !st.success() {
            bail!("sentinel replay failed on {}", f.display());
        }
    }
    Ok(())
}

pub fn run(args: NabArgs) -> Result<()> {
    let root = repo_root();
    let mut data = root.join(&args.data);
    let mut scorer = Scorer {
        script: args
            .scorer
            .clone()
            .map_or_else(|| data.join("../../tools/nab_score.py"), |s| root.join(s)),
        data: data.clone(),
        labels: data.join("combined_windows.json"),
    };
    let mut out = root.join(&args.out);

    let mut files = csv_files(&data)?;
    if files.is_empty() {
        bail!("{}: no <category>/<file>.csv found", data.display());
    }
    if let Some(rows) = args.crop {
        let whole = if args.with_whole { "-whole" } else { "" };
        out = out.join(format!("crop-{rows}{whole}"));
        let cropped = out.join("data");
        let n = nab_crop::write(&data, &files, &cropped, rows, args.with_whole)?;
        eprintln!(
            "cropped {n} series of {rows} rows into {}",
            cropped.display()
        );
        files = csv_files(&cropped)?;
        scorer.data = cropped.clone();
        scorer.labels = cropped.join("combined_windows.json");
        data = cropped;
    }
    let windows = window_counts(&scorer.labels)?;
    if !args.tune.is_empty() && !args.cv {
        bail!("--tune needs --cv (the candidates are judged on held-out folds)");
    }
    let candidates = tune_candidates(&args.set, &args.tune)?;
    // Fold assignment first: a bad --folds fails before anything is built.
    let folds = if args.cv {
        let mut f =
            nab_cv::by_file_repeated(&files, &windows, args.folds, args.cv_seed, args.cv_repeats)?;
        let by_file = f.len();
        f.extend(nab_cv::by_category(&files, &windows)?);
        Some((f, by_file))
    } else {
        None
    };

    // The earlier run must hold every detector's results: said now, before the replays.
    let against: Option<(PathBuf, PathBuf)> = match &args.against {
        Some(a) => {
            let rel = out.strip_prefix(root.join(&args.out))?;
            let there = root.join(a).join(rel);
            for det in &args.detectors {
                let score = there.join(det).join("score.json");
                if !score.is_file() {
                    bail!(
                        "--against {}: no {} (run it with the same --crop/--with-whole and --detectors first)",
                        a.display(),
                        score.display()
                    );
                }
            }
            Some((there, a.join(rel)))
        }
        None => None,
    };

    // The containerd client compiles its protocol with protoc: a fresh machine lacks it.
    crate::packages::ensure(&["protobuf-compiler"])?;
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "sentinel-user",
            "--bin",
            "sentinel",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let sentinel = root.join("target/release/sentinel");

    let mut rows = Vec::new();
    let mut cv_rows = Vec::new();
    for det in &args.detectors {
        let dir = out.join(det);
        replay_all(
            &sentinel,
            &data,
            &files,
            det,
            &args.set,
            args.channels,
            &dir,
        )?;
        let v = scorer.score(&dir, None, None)?;
        std::fs::write(dir.join("score.json"), serde_json::to_vec_pretty(&v)?)?;
        if let Some((folds, _)) = &folds {
            cv_rows.push((det.clone(), cross_validate(&scorer, &dir, folds, &windows)?));
        }
        rows.push((det.clone(), v));
    }

    let mut table = String::from(
        "| detector | standard | low FP | low FN | windows (std) | FP rows (std) | threshold (std) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (det, v) in &rows {
        let s = &v["profiles"]["standard"];
        table.push_str(&format!(
            "| {det} | {:.1} | {:.1} | {:.1} | {}/{} | {} | {:.4} |\n",
            normalized(v, 0),
            normalized(v, 1),
            normalized(v, 2),
            s["windows_detected"],
            s["windows"],
            s["fp_detections"],
            s["threshold"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    print!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    eprintln!("wrote {}", out.join("table.md").display());

    if args.channels {
        let mut md = String::new();
        for (det, v) in &rows {
            md.push_str(&channels_section(
                det,
                &out.join(det),
                &files,
                &scorer.labels,
                v,
            )?);
            md.push('\n');
        }
        print!("\n{md}");
        std::fs::write(out.join("channels.md"), &md)?;
        eprintln!("wrote {}", out.join("channels.md").display());
    }

    if let Some((there_root, shown)) = &against {
        let mut md = String::new();
        for (det, v) in &rows {
            let there = there_root.join(det);
            let path = there.join("score.json");
            let there_score: serde_json::Value = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice(&b)?))
                .with_context(|| path.display().to_string())?;
            let threshold = |v: &serde_json::Value| v["profiles"]["standard"]["threshold"].as_f64();
            let (t_there, t_here) = (threshold(&there_score), threshold(v));
            let per_file = |dir: &Path, t: Option<f64>| {
                scorer.score_files(dir, None, Some(&[t, None, None]), true)
            };
            let a = nab_against::outcomes(&per_file(&there, t_there)?);
            let b = nab_against::outcomes(&per_file(&out.join(det), t_here)?);
            let outputs = nab_against::differing_outputs(&there, &out.join(det))?;
            md.push_str(&nab_against::section(
                det,
                &shown.join(det),
                (
                    t_there.unwrap_or(f64::INFINITY),
                    t_here.unwrap_or(f64::INFINITY),
                ),
                outputs,
                &nab_against::changes(&a, &b),
            ));
            md.push('\n');
        }
        print!("\n{md}");
        std::fs::write(out.join("against.md"), &md)?;
        eprintln!("wrote {}", out.join("against.md").display());
    }

    if let Some((_, by_file)) = &folds {
        let cv = cv_tables(
            &rows,
            &cv_rows,
            *by_file,
            args.folds,
            args.cv_seed,
            args.cv_repeats,
        );
        print!("\n{cv}");
        std::fs::write(out.join("cv.md"), &cv)?;
        eprintln!("wrote {}", out.join("cv.md").display());
    }

    if args.calm {
        let calm = calm_table(
            &sentinel,
            &scorer.script,
            &rows,
            &args.set,
            args.channels,
            &out.join("calm"),
        )?;
        print!("\n{calm}");
        std::fs::write(out.join("calm.md"), &calm)?;
        eprintln!("wrote {}", out.join("calm.md").display());
    }

    if let Some((folds, by_file)) = folds.as_ref().filter(|_| candidates.len() > 1) {
        let mut md = String::new();
        for ((det, v), (_, default_folds)) in rows.iter().zip(&cv_rows) {
            let mut in_sample = vec![normalized_all(v)];
            let mut cands = vec![to_candidate(default_folds)];
            for (i, (label, sets)) in candidates.iter().enumerate().skip(1) {
                eprintln!("tune: {det} {label} ({i}/{})", candidates.len() - 1);
                let dir = out.join("tune").join(det).join(i.to_string());
                replay_all(&sentinel, &data, &files, det, sets, false, &dir)?;
                let all = scorer.score(&dir, None, None)?;
                let cv = cross_validate(&scorer, &dir, folds, &windows)?;
                in_sample.push(normalized_all(&all));
                cands.push(to_candidate(&cv));
            }
            md.push_str(&tune_tables(
                det,
                &candidates,
                &in_sample,
                &cands,
                folds,
                *by_file,
            ));
        }
        print!("\n{md}");
        std::fs::write(out.join("tune.md"), &md)?;
        eprintln!("wrote {}", out.join("tune.md").display());
    }
    Ok(())
}

/// `nab_channels`' section for the replays of `det` under `dir`, at the standard threshold of
/// the scorer's result `score` on them, checked against its counts.
fn channels_section(
    det: &str,
    dir: &Path,
    files: &[PathBuf],
    labels: &Path,
    score: &serde_json::Value,
) -> Result<String> {
    let s = &score["profiles"]["standard"];
    // No threshold: the best standard score raised no alarm at all.
    let threshold = s["threshold"].as_f64().unwrap_or(f64::INFINITY);
    let t = nab_channels::tally(dir, files, labels, threshold)?;
    let counted = |k: &str| s[k].as_u64().unwrap_or(0);
    nab_channels::section(
        det,
        threshold,
        &t,
        (counted("windows_detected"), counted("fp_detections")),
    )
}

/// The synthetic corpus of `nab_calm` through every detector of `rows`, at the thresholds each
/// chose on the NAB files: false alarms per 1000 rows on the calm series per kind, then the NAB
/// score of the calm and injected series together and the injected anomalies caught per kind.
fn calm_table(
    sentinel: &Path,
    script: &Path,
    rows: &[(String, serde_json::Value)],
    sets: &[String],
    channels: bool,
    dir: &Path,
) -> Result<String> {
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let (calm, labelled) = nab_calm::write(&data)?;
    let files: Vec<PathBuf> = calm.iter().chain(&labelled).cloned().collect();
    let scorer = Scorer {
        script: script.to_path_buf(),
        data: data.clone(),
        labels: data.join("combined_windows.json"),
    };
    let per_kind = nab_calm::PER_KIND;
    // Per detector: calm false alarms [profile][file], the synthetic corpus's score at the NAB
    // thresholds and at its own, and per anomaly the kinds whose window was caught (standard).
    let mut rates = Vec::new();
    let mut scores = Vec::new();
    let mut by_channel = String::new();
    for (det, v) in rows {
        let out = dir.join(det);
        replay_all(sentinel, &data, &files, det, sets, channels, &out)?;
        let nab_thresholds: [Option<f64>; 3] =
            std::array::from_fn(|p| v["profiles"][PROFILES[p].0]["threshold"].as_f64());
        let mut by_profile = Vec::new();
        for t in &nab_thresholds[..2] {
            let mut r = Vec::new();
            for f in &calm {
                let text = std::fs::read_to_string(out.join(f))
                    .with_context(|| format!("{}", out.join(f).display()))?;
                let t = t.unwrap_or(f64::INFINITY);
                r.push(
                    nab_calm::alarms_per_1000(&text, t).with_context(|| f.display().to_string())?,
                );
            }
            by_profile.push(r);
        }
        rates.push(by_profile);
        let carried = scorer.score_files(&out, None, Some(&nab_thresholds), true)?;
        if channels {
            by_channel.push_str(&format!(
                "\nThe synthetic corpus at the NAB threshold, by channel: {}",
                channels_section(det, &out, &files, &scorer.labels, &carried)?
            ));
        }
        let own = scorer.score(&out, None, None)?;
        // `write` lists the injected series kind by kind, each kind's anomalies in order.
        let caught: Vec<usize> = (0..nab_calm::ANOMALIES.len())
            .map(|a| {
                labelled
                    .iter()
                    .skip(a)
                    .step_by(nab_calm::ANOMALIES.len())
                    .filter(|f| {
                        carried["profiles"]["standard"]["files"][&*f.to_string_lossy()]["detected"]
                            .as_u64()
                            .is_some_and(|d| d > 0)
                    })
                    .count()
            })
            .collect();
        scores.push((carried, own, caught));
    }
    let mut t = format!(
        "Anomaly-free synthetic series ({} kinds x {per_kind} series of {} rows, the first {} \
         unscored): false alarms per 1000 rows at each detector's standard / low-FP thresholds \
         chosen on the NAB files; per kind the mean of its series [the highest].\n\n| kind |",
        nab_calm::KINDS.len(),
        nab_calm::ROWS,
        nab_calm::PROBATION,
    );
    for (det, _) in rows {
        t.push_str(&format!(" {det} |"));
    }
    t.push_str(&format!("\n|---|{}\n", "---|".repeat(rows.len())));
    let cell = |xs: &[f64]| {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let hi = xs.iter().copied().fold(0.0, f64::max);
        format!("{m:.2} [{hi:.2}]")
    };
    let kinds = nab_calm::KINDS.iter().map(|(name, _)| *name).chain(["all"]);
    for (k, name) in kinds.enumerate() {
        let span = if name == "all" {
            0..calm.len()
        } else {
            k * per_kind..(k + 1) * per_kind
        };
        t.push_str(&format!("| {name} |"));
        for by_profile in &rates {
            t.push_str(&format!(
                " {} / {} |",
                cell(&by_profile[0][span.clone()]),
                cell(&by_profile[1][span.clone()])
            ));
        }
        t.push('\n');
    }
    t.push_str(&format!(
        "\nThe same kinds with one anomaly each from row {} ({}), labelled as NAB labels, scored \
         with the calm series: NAB score (standard / low FP / low FN) at the thresholds chosen \
         on the NAB files, and at the thresholds optimised on this corpus; windows caught and \
         false-positive rows at the standard one.\n\n\
         | detector | NAB thresholds | own thresholds | windows | FP rows |",
        nab_calm::LABEL_AT,
        nab_calm::ANOMALIES.map(|(a, _)| a).join(", "),
    ));
    for (anomaly, _) in nab_calm::ANOMALIES {
        t.push_str(&format!(" {anomaly} |"));
    }
    t.push_str(&format!(
        "\n|---|---|---|---|---|{}\n",
        "---|".repeat(nab_calm::ANOMALIES.len())
    ));
    for ((det, _), (carried, own, caught)) in rows.iter().zip(&scores) {
        let s = &carried["profiles"]["standard"];
        let three = |v: &serde_json::Value| {
            let [a, b, c] = normalized_all(v);
            format!("{a:.1} / {b:.1} / {c:.1}")
        };
        t.push_str(&format!(
            "| {det} | {} | {} | {}/{} | {} |",
            three(carried),
            three(own),
            s["windows_detected"],
            s["windows"],
            s["fp_detections"],
        ));
        for c in caught {
            t.push_str(&format!(" {c}/{} |", nab_calm::KINDS.len()));
        }
        t.push('\n');
    }
    t.push_str(&by_channel);
    Ok(t)
}

fn normalized_all(v: &serde_json::Value) -> [f64; 3] {
    std::array::from_fn(|p| normalized(v, p))
}

fn to_candidate(folds: &[FoldResult]) -> CandidateFolds {
    CandidateFolds {
        train: folds.iter().map(|f| f.train).collect(),
        held_out: folds.iter().map(|f| f.held_out).collect(),
    }
}

/// The nested cross-validation of `--tune`: per scheme and profile, the defaults' held-out mean
/// against the mean of the candidates chosen on each fold's training files; each fold's
/// choice; and every candidate's in-sample and held-out means (the candidate log).
fn tune_tables(
    det: &str,
    candidates: &[(String, Vec<String>)],
    in_sample: &[[f64; 3]],
    cands: &[CandidateFolds],
    folds: &[Fold],
    by_file: usize,
) -> String {
    let chosen = nab_cv::nested(cands, 0.0);
    // The adoption rule: a change must beat the defaults by a point (DETECTION.md).
    let ruled = nab_cv::nested(cands, ADOPTION_MARGIN);
    let schemes = [
        ("by file", 0..by_file),
        ("by category", by_file..folds.len()),
    ];
    let mut t = format!(
        "Nested cross-validation of {det}: in every fold, each profile takes the candidate with \
         the best training score (threshold optimised there too) and is scored on the held-out \
         files; in the last column a candidate replaces the defaults only if it beats them by \
         {ADOPTION_MARGIN} point on the training files. {} candidates: the defaults and one key \
         changed at a time.\n\n\
         | profile | scheme | defaults: held-out mean ± sd | best on training folds: held-out mean ± sd | best by {ADOPTION_MARGIN} point: held-out mean ± sd |\n\
         |---|---|---|---|---|\n",
        candidates.len()
    );
    let cell = |xs: &[f64]| {
        let (m, sd, _, _) = nab_cv::spread(xs);
        format!("{m:.1} ± {sd:.1}")
    };
    for (p, (_, label)) in PROFILES.iter().enumerate() {
        for (scheme, range) in &schemes {
            let defaults: Vec<f64> = range.clone().map(|f| cands[0].held_out[f][p]).collect();
            let nested: Vec<f64> = range.clone().map(|f| chosen[f][p].1).collect();
            let by_rule: Vec<f64> = range.clone().map(|f| ruled[f][p].1).collect();
            t.push_str(&format!(
                "| {label} | {scheme} | {} | {} | {} |\n",
                cell(&defaults),
                cell(&nested),
                cell(&by_rule)
            ));
        }
    }
    t.push_str(
        "\n| fold | best std / low FP / low FN | held-out std / low FP / low FN | defaults held-out | by the margin: chosen std / low FP / low FN |\n\
         |---|---|---|---|---|\n",
    );
    for (f, fold) in folds.iter().enumerate() {
        let c = &chosen[f];
        let r = &ruled[f];
        t.push_str(&format!(
            "| {} | {} / {} / {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {} / {} / {} |\n",
            fold.name,
            candidates[c[0].0].0,
            candidates[c[1].0].0,
            candidates[c[2].0].0,
            c[0].1,
            c[1].1,
            c[2].1,
            cands[0].held_out[f][0],
            cands[0].held_out[f][1],
            cands[0].held_out[f][2],
            candidates[r[0].0].0,
            candidates[r[1].0].0,
            candidates[r[2].0].0,
        ));
    }
    t.push_str(
        "\n| candidate | in-sample | held out by file (mean) | held out by category (mean) |\n\
         |---|---|---|---|\n",
    );
    for (((label, _), all), c) in candidates.iter().zip(in_sample).zip(cands) {
        let mean = |range: &std::ops::Range<usize>, p: usize| {
            range.clone().map(|f| c.held_out[f][p]).sum::<f64>() / range.len() as f64
        };
        let three = |range: &std::ops::Range<usize>| {
            format!(
                "{:.1} / {:.1} / {:.1}",
                mean(range, 0),
                mean(range, 1),
                mean(range, 2)
            )
        };
        t.push_str(&format!(
            "| {label} | {:.1} / {:.1} / {:.1} | {} | {} |\n",
            all[0],
            all[1],
            all[2],
            three(&schemes[0].1),
            three(&schemes[1].1),
        ));
    }
    t
}

/// The cross-validation summary (per detector and profile: in-sample, mean training score
/// over the folds, held-out mean ± sd [min, max] per scheme) and the per-fold detail.
fn cv_tables(
    rows: &[(String, serde_json::Value)],
    cv_rows: &[(String, Vec<FoldResult>)],
    by_file: usize,
    k: usize,
    seed: u64,
    repeats: usize,
) -> String {
    let deals = if repeats > 1 {
        format!(
            "dealt {repeats} times (seeds {seed:#x} to {:#x}), the mean and spread over all {by_file} held-out folds",
            seed.wrapping_add(repeats as u64 - 1)
        )
    } else {
        format!("seed {seed:#x}")
    };
    let mut t = format!(
        "Cross-validation: thresholds optimised on the training folds, applied unchanged to the \
         held-out fold. By file: {k} folds stratified by category, {deals}; by \
         category: each labelled category held out in turn, the files without windows in \
         every fold.\n\n\
         | detector | profile | in-sample | by file: train | by file: held-out mean ± sd [min, max] | by category: train | by category: held-out mean ± sd [min, max] |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for ((det, v), (_, folds)) in rows.iter().zip(cv_rows) {
        let (files, cats) = folds.split_at(by_file);
        for (p, (_, label)) in PROFILES.iter().enumerate() {
            t.push_str(&format!(
                "| {det} | {label} | {:.1} | {:.1} | {} | {:.1} | {} |\n",
                normalized(v, p),
                mean_of(files, |f| f.train[p]),
                held_out_cell(files, p),
                mean_of(cats, |f| f.train[p]),
                held_out_cell(cats, p),
            ));
        }
    }
    if repeats > 1 {
        t.push_str(
            "\nBy file, each deal's held-out mean (standard / low FP / low FN):\n\n\
             | detector | seed | held-out std / low FP / low FN |\n|---|---|---|\n",
        );
        for (det, folds) in cv_rows {
            for (r, deal) in folds[..by_file].chunks(k).enumerate() {
                let m: [f64; 3] = std::array::from_fn(|p| mean_of(deal, |f| f.held_out[p]));
                t.push_str(&format!(
                    "| {det} | {:#x} | {:.1} / {:.1} / {:.1} |\n",
                    seed.wrapping_add(r as u64),
                    m[0],
                    m[1],
                    m[2]
                ));
            }
        }
    }
    t.push_str(
        "\n| detector | fold | held-out files (windows) | thresholds std / low FP / low FN | held-out std / low FP / low FN |\n\
         |---|---|---|---|---|\n",
    );
    let thr = |t: Option<f64>| t.map_or_else(|| "none".to_string(), |t| format!("{t:.4}"));
    for (det, folds) in cv_rows {
        for f in folds {
            t.push_str(&format!(
                "| {det} | {} | {} ({}) | {} / {} / {} | {:.1} / {:.1} / {:.1} |\n",
                f.name,
                f.test_files,
                f.test_windows,
                thr(f.thresholds[0]),
                thr(f.thresholds[1]),
                thr(f.thresholds[2]),
                f.held_out[0],
                f.held_out[1],
                f.held_out[2],
            ));
        }
    }
    t
}
