//! The fuzz corpora as ordinary tests (stable toolchain, no libFuzzer): every seed in
//! `fuzz/seeds/<target>/` and every kept input in `fuzz/regressions/<target>/` goes through the
//! same checks the fuzz targets run (`fuzz/harness.rs`). A panic or broken invariant fails the
//! test; so does an outcome that contradicts the file name: `ok-*` inputs must be accepted,
//! `err-*` inputs must be rejected (with a one-line error). Other names only have to pass the
//! checks. See FUZZING.md.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["seeds", "regressions"] {
        let dir = root.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

fn run(target: &str, check: fn(&[u8]) -> bool) {
    let files = inputs(target);
    // The seeds are committed; an empty list means the paths are wrong, not that all passed.
    assert!(files.len() >= 3, "{target}: corpus not found ({files:?})");
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let outcome = std::panic::catch_unwind(|| check(&data));
        let want = if name.starts_with("ok-") {
            Some(true)
        } else if name.starts_with("err-") {
            Some(false)
        } else {
            None
        };
        match (outcome, want) {
            (Err(_), _) => failures.push(format!("{}: panicked", path.display())),
            (Ok(got), Some(want)) if got != want => failures.push(format!(
                "{}: {} but the name says it must be {}",
                path.display(),
                if got { "accepted" } else { "rejected" },
                if want { "accepted" } else { "rejected" },
            )),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn config_corpus() {
    run("config", harness::config);
}

#[test]
fn replay_csv_corpus() {
    run("replay_csv", harness::replay_csv);
}

#[test]
fn replay_json_corpus() {
    run("replay_json", harness::replay_json);
}
