//! Command-line conventions (issue 17 item 6): `RUST_LOG`, shell completions, the man page and
//! `replay --input -`, run as a user would run them, through the built binary.

mod support;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use support::{require, require_root, sentinel::BIN};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `sentinel ARGS` with `input` on stdin.
fn with_stdin(args: &[&str], env: &[(&str, &str)], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SENTINEL_LOG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sentinel");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A writer thread: the child may fill its stdout pipe before it has read all of stdin.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait sentinel");
    writer.join().unwrap();
    out
}

/// A series with a level shift and a spike, so the scores are not all zero.
fn series_csv(rows: usize) -> String {
    let mut s = String::from("timestamp,value\n");
    for i in 0..rows {
        let base = if i < rows / 2 { 10.0 } else { 25.0 };
        let spike = if i == rows * 3 / 4 { 200.0 } else { 0.0 };
        let noise = ((i * 7919) % 13) as f64 * 0.1;
        s.push_str(&format!(
            "2024-01-01 00:{:02}:{:02},{}\n",
            i / 60 % 60,
            i % 60,
            base + spike + noise
        ));
    }
    s
}

#[test]
fn replay_reads_standard_input_like_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = series_csv(600);
    let file = dir.path().join("series.csv");
    std::fs::write(&file, &csv).unwrap();
    let from_file = with_stdin(
        &[
            "replay",
            "--input",
            file.to_str().unwrap(),
            "--detector",
            "statistical",
        ],
        &[],
        b"",
    );
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let from_stdin = with_stdin(
        &["replay", "--input", "-", "--detector", "statistical"],
        &[],
        csv.as_bytes(),
    );
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    let rows = stdout(&from_stdin);
    assert_eq!(rows.lines().count(), 601, "header + one row per input row");
    assert_eq!(
        rows,
        stdout(&from_file),
        "stdin and file give the same scores"
    );
    let max_score = rows
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit(',').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(max_score > 0.5, "the spike scores: max {max_score}");

    // JSON lines on stdin (a recorded `sentinel run --output json`, piped).
    let mut json = String::new();
    for i in 0..40u64 {
        let iv = sentinel::model::Interval {
            ts: format!("2024-01-01T00:00:{i:02}Z"),
            interval_ms: 1000.0,
            seq: i,
            counters: [("sched_switch".to_string(), Some(1000 + i))].into(),
            ..Default::default()
        };
        json.push_str(&serde_json::to_string(&iv).unwrap());
        json.push('\n');
    }
    let out = with_stdin(
        &["replay", "--input", "-", "--metric", "sched_switch"],
        &[],
        json.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 41);
    assert!(stdout(&out).lines().nth(1).unwrap().contains(",1000,"));

    // Errors in standard input name it as such, on one line.
    let out = with_stdin(&["replay", "--input", "-"], &[], b"{\"ts\":\"x\"}\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("<stdin>") && err.contains("--metric"), "{err}");
}

#[test]
fn rust_log_is_read_and_sentinel_log_wins() {
    // A filter that does not parse is reported with the variable it came from.
    let out = with_stdin(&["config", "show"], &[("RUST_LOG", "sentinel=[[[")], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("RUST_LOG=\"sentinel=[[[\" is not a log filter"),
        "{}",
        stderr(&out)
    );
    // SENTINEL_LOG wins: RUST_LOG is not even parsed.
    let out = with_stdin(
        &["config", "show"],
        &[("RUST_LOG", "sentinel=[[["), ("SENTINEL_LOG", "info")],
        b"",
    );
    assert!(out.status.success());
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

/// RUST_LOG=debug turns on the daemon's debug lines; SENTINEL_LOG=info beside it turns them off.
#[test]
fn rust_log_debug_reaches_the_daemon() {
    if !require_root("rust_log_debug_reaches_the_daemon") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let runtime = dir.path().join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        // A stale socket file: the daemon removes it and says so at debug level.
        let socket = runtime.join("sentinel.sock");
        std::fs::write(&socket, b"").unwrap();
        let out = with_stdin(
            &[
                "run",
                "--duration",
                "1s",
                "--output",
                "none",
                "--no-docker",
                "--no-metrics",
                "--status-socket",
                socket.to_str().unwrap(),
                "--audit-log",
                dir.path().join("audit.jsonl").to_str().unwrap(),
            ],
            env,
            b"",
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let debug = run(&[("RUST_LOG", "debug")]);
    assert!(debug.contains("removing stale socket"), "{debug}");
    let info = run(&[("RUST_LOG", "debug"), ("SENTINEL_LOG", "info")]);
    assert!(!info.contains("removing stale socket"), "{info}");
    assert!(info.contains("sentinel running"), "{info}");
}

#[test]
fn completions_load_in_bash_and_complete_subcommands() {
    let out = with_stdin(&["completions", "bash"], &[], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    if !require(
        "bash",
        Command::new("bash").arg("--version").output().is_ok(),
        "bash not found",
    ) {
        return;
    }
    // Source the script and ask it what `sentinel st<TAB>` completes to.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentinel.bash");
    std::fs::write(&path, &script).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(sentinel st); COMP_CWORD=1; COMP_LINE='sentinel st'; \
         COMP_POINT=11; _sentinel sentinel st sentinel; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let words = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        words.lines().collect::<Vec<_>>(),
        ["status"],
        "completions of `sentinel st`: {words:?}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = with_stdin(&["completions", shell], &[], b"");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("status-socket"), "{shell}");
    }
    let out = with_stdin(&["completions", "tcsh"], &[], b"");
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn man_pages_render_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_stdin(
        &["manpage", "--dir", dir.path().to_str().unwrap()],
        &[],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout_page = with_stdin(&["manpage"], &[], b"");
    assert_eq!(
        stdout(&stdout_page),
        std::fs::read_to_string(dir.path().join("sentinel.1")).unwrap(),
        "`manpage` and `manpage --dir` give the same sentinel(1)"
    );
    if !require(
        "man",
        Command::new("man").arg("--version").output().is_ok(),
        "man not found (Debian package man-db)",
    ) {
        return;
    }
    for page in ["sentinel.1", "sentinel-run.1", "sentinel-replay.1"] {
        // What lintian runs: man's own warnings, rendered to a throw-away width.
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(dir.path().join(page))
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(out.status.success(), "{page}: {}", stderr(&out));
        assert!(stderr(&out).trim().is_empty(), "{page}: {}", stderr(&out));
    }
    let out = Command::new("man")
        .args(["-l"])
        .arg(dir.path().join("sentinel.1"))
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let text = stdout(&out);
    for section in [
        "EXIT STATUS",
        "FILES",
        "ENVIRONMENT",
        "RUST_LOG",
        "sentinel-run(1)",
    ] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
}

/// `sentinel run` exits 78 (EX_CONFIG) for an invalid config; `config check` keeps 1.
#[test]
fn config_errors_exit_78_from_run_and_1_from_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[daemon]\nintervall = \"2s\"\n").unwrap();
    let run = with_stdin(&["run", "--config", bad.to_str().unwrap()], &[], b"");
    assert_eq!(run.status.code(), Some(78), "{}", stderr(&run));
    assert_eq!(
        stderr(&run).lines().count(),
        1,
        "one line: {}",
        stderr(&run)
    );
    assert!(
        stderr(&run).contains("line 2: key daemon.intervall"),
        "{}",
        stderr(&run)
    );
    let check = with_stdin(&["config", "check", bad.to_str().unwrap()], &[], b"");
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    // A missing file named with --config is a config error too.
    let missing = with_stdin(&["run", "--config", "/nonexistent/sentinel.toml"], &[], b"");
    assert_eq!(missing.status.code(), Some(78), "{}", stderr(&missing));
}

/// `status` and `top` take the socket from the config file's `status.socket`; the flag wins.
#[test]
fn status_uses_the_config_files_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sentinel.toml");
    std::fs::write(
        &cfg,
        "[status]\nsocket = \"/nonexistent/from-config.sock\"\n",
    )
    .unwrap();
    let out = with_stdin(&["status", "--config", cfg.to_str().unwrap()], &[], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/from-config.sock"),
        "{}",
        stderr(&out)
    );
    let out = with_stdin(
        &[
            "status",
            "--config",
            cfg.to_str().unwrap(),
            "--status-socket",
            "/nonexistent/flag.sock",
        ],
        &[],
        b"",
    );
    assert!(
        stderr(&out).contains("/nonexistent/flag.sock"),
        "{}",
        stderr(&out)
    );
    // The file is read (and validated) by `top` too, before it looks for a terminal.
    std::fs::write(&cfg, "[status]\nsocket = \"relative.sock\"\n").unwrap();
    for cmd in ["status", "top"] {
        let out = with_stdin(&[cmd, "--config", cfg.to_str().unwrap()], &[], b"");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("key status.socket"),
            "{cmd}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn an_error_naming_a_hostile_path_is_one_escaped_line() {
    // A file name may hold a newline and an escape sequence; the error names the path.
    let out = with_stdin(
        &[
            "replay",
            "--input",
            "/nonexistent/a\u{1b}[31mRED\nline2.csv",
        ],
        &[],
        b"",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(err.contains("a\\u{1b}[31mRED\\nline2.csv"), "{err:?}");
    // The same for a flag clap rejects.
    let out = with_stdin(&["replay", "--bogus\u{1b}[2J"], &[], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}
