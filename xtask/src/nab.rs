//! `cargo xtask nab`: builds sentinel (release), replays every NAB file through each detector,
//! scores the results with `shared/tools/nab_score.py` and prints/writes the table.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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
}

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

fn csv_files(data: &Path) -> Result<Vec<PathBuf>> {
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

pub fn run(args: NabArgs) -> Result<()> {
    let root = repo_root();
    let data = root.join(&args.data);
    let scorer = args
        .scorer
        .clone()
        .map_or_else(|| data.join("../../tools/nab_score.py"), |s| root.join(s));
    let out = root.join(&args.out);
    let labels = data.join("combined_windows.json");

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
    let files = csv_files(&data)?;
    if files.is_empty() {
        bail!("{}: no <category>/<file>.csv found", data.display());
    }

    let mut rows = Vec::new();
    for det in &args.detectors {
        let dir = out.join(det);
        let _ = std::fs::remove_dir_all(&dir);
        for f in &files {
            let dst = dir.join(f);
            std::fs::create_dir_all(dst.parent().expect("file has a category"))?;
            let mut cmd = Command::new(&sentinel);
            cmd.arg("replay")
                .arg("--input")
                .arg(data.join(f))
                .arg("--output")
                .arg(&dst)
                .args(["--detector", det]);
            for s in &args.set {
                cmd.args(["--set", s]);
            }
            let st = cmd.status().context("running sentinel replay")?;
            if !st.success() {
                bail!("sentinel replay failed on {}", f.display());
            }
        }
        let o = Command::new("python3")
            .arg(&scorer)
            .arg("--data")
            .arg(&data)
            .arg("--labels")
            .arg(&labels)
            .arg("--results")
            .arg(&dir)
            .arg("--json")
            .output()
            .context("running nab_score.py")?;
        if !o.status.success() {
            bail!(
                "nab_score.py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        std::fs::write(dir.join("score.json"), &o.stdout)?;
        rows.push((det.clone(), v));
    }

    let mut table = String::from(
        "| detector | standard | low FP | low FN | windows (std) | FP rows (std) | threshold (std) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (det, v) in &rows {
        let p = &v["profiles"];
        let cell = |k: &str| p[k]["normalized"].as_f64().unwrap_or(f64::NAN);
        let s = &p["standard"];
        table.push_str(&format!(
            "| {det} | {:.1} | {:.1} | {:.1} | {}/{} | {} | {:.4} |\n",
            cell(PROFILES[0].0),
            cell(PROFILES[1].0),
            cell(PROFILES[2].0),
            s["windows_detected"],
            s["windows"],
            s["fp_detections"],
            s["threshold"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    print!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    eprintln!("wrote {}", out.join("table.md").display());
    Ok(())
}
