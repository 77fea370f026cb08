//! The service under systemd (issue 17 item 3): the notify protocol against a socket of the
//! test's own, then the shipped unit under a real systemd as PID 1 in a systemd-nspawn
//! container (it shares the host's kernel, so the BPF programs are the host's to count).

mod support;

use std::{
    io::Read,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    nspawn::{Container, debian_root, free_port, repo_file, scrape, text},
    require, require_root,
    sentinel::BIN,
    sentinel_programs, sentinel_programs_left,
};

/// READY=1 comes after the programs are attached, WATCHDOG=1 every WATCHDOG_USEC/2 from the
/// drain loop, STOPPING=1 on SIGTERM; outside systemd nothing is sent (every other test).
#[test]
fn notify_ready_after_attach_watchdog_pings_and_stopping() {
    if !require_root("notify_ready_after_attach_watchdog_pings_and_stopping") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--output", "none", "--no-docker", "--no-metrics"])
        .arg("--status-socket")
        .arg(dir.path().join("run/sentinel.sock"))
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env("SENTINEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv();
    let at_ready = sentinel_programs();
    println!(
        "READY after {:?}: {ready:?}; {} snt_ programs loaded then",
        started.elapsed(),
        at_ready.len()
    );
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=running"), "{ready:?}");
    assert!(
        at_ready.len() >= 12,
        "READY before the programs were attached: {at_ready:?}"
    );
    // Pings every 100 ms: at least 5 in the next second, nothing else.
    let t = Instant::now();
    let mut pings = 0;
    while t.elapsed() < Duration::from_secs(1) {
        let m = recv();
        assert_eq!(m, "WATCHDOG=1\n");
        pings += 1;
    }
    assert!(
        pings >= 5,
        "{pings} watchdog pings in 1 s (every 100 ms asked)"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = loop {
        let m = recv();
        if m != "WATCHDOG=1\n" {
            break m;
        }
    };
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(
        stopping.contains("STATUS=stopping (SIGTERM)"),
        "{stopping:?}"
    );
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.trim().is_empty(),
        "no warning about the notifications: {err}"
    );
}

/// The shipped unit (deploy/sentinel.service, unmodified) under systemd 252 as PID 1:
/// `systemctl start` returns once READY=1 is in (Type=notify), the config file's [metrics] and
/// [status] take effect, `systemctl stop` leaves no snt_ program in the kernel; a stuck daemon
/// is killed by the watchdog and restarted; a broken config ends in `failed` at once with its
/// one error line in the journal and no restart.
#[test]
fn the_unit_under_a_real_systemd() {
    if !require_root("the_unit_under_a_real_systemd") {
        return;
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
    ] {
        if !require(
            tool,
            Command::new(tool).arg("--version").output().is_ok(),
            &format!("not installed (Debian package {package})"),
        ) {
            return;
        }
    }
    let left = sentinel_programs_left();
    assert!(
        left.is_empty(),
        "snt_ programs loaded before the test: another sentinel runs ({left:?})"
    );
    let started = Instant::now();
    let root = debian_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("sentinel.toml");
    let good = format!(
        "[daemon]\ndocker = false\n\n[metrics]\naddr = \"127.0.0.1:{port}\"\n\n\
         [status]\nsocket = \"/run/sentinel/from-config.sock\"\n"
    );
    std::fs::write(&config, &good).unwrap();
    let unit = repo_file("deploy/sentinel.service");
    let c = Container::boot(
        &root,
        &[
            (Path::new(BIN), "/usr/local/bin/sentinel"),
            (&unit, "/etc/systemd/system/sentinel.service"),
            (&config, "/etc/sentinel/sentinel.toml"),
        ],
        &dir.path().join("console.log"),
    );
    let booted = started.elapsed();

    // Start: Type=notify, so `systemctl start` returns after READY=1.
    let t = Instant::now();
    let out = c.exec(&["systemctl", "start", "sentinel"]);
    let start_time = t.elapsed();
    assert!(
        out.status.success(),
        "start: {}\n{}",
        text(&out),
        c.journal()
    );
    assert_eq!(c.show("ActiveState"), "active");
    assert_eq!(c.show("Type"), "notify");
    assert!(
        c.show("StatusText").starts_with("running: interval 1s"),
        "the STATUS= sent with READY=1: {:?}",
        c.show("StatusText")
    );
    let loaded = sentinel_programs();
    assert!(
        loaded.len() >= 12,
        "start returned before attach: {loaded:?}"
    );
    // [metrics] addr from the file (the unit passes no --metrics-addr).
    let body = scrape(port).expect("the config's metrics.addr");
    assert!(body.contains("sentinel_build_info"), "{body}");
    // `sentinel status` with no flag finds the config's status.socket.
    let out = c.exec(&["sentinel", "status"]);
    assert!(out.status.success(), "status: {}", text(&out));
    assert!(
        text(&out).contains(&format!("metrics 127.0.0.1:{port}")),
        "{}",
        text(&out)
    );
    assert!(
        c.exec(&["test", "-S", "/run/sentinel/from-config.sock"])
            .status
            .success()
    );
    assert!(
        !c.exec(&["test", "-e", "/run/sentinel/sentinel.sock"])
            .status
            .success()
    );
    let journal = c.journal();
    assert!(
        journal.contains("capabilities dropped after attach"),
        "{journal}"
    );
    assert!(
        journal.contains("sentinel running"),
        "logs reach the journal: {journal}"
    );

    // Stop: nothing left in the kernel.
    let out = c.exec(&["systemctl", "stop", "sentinel"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert_eq!(c.show("ActiveState"), "inactive");
    assert_eq!(c.show("Result"), "success");
    assert_eq!(sentinel_programs_left(), Vec::<String>::new(), "after stop");
    println!(
        "booted in {:.1} s; systemctl start returned after {:.2} s with {} programs attached",
        booted.as_secs_f64(),
        start_time.as_secs_f64(),
        loaded.len()
    );

    // Watchdog: with WatchdogSec=2s the pings keep it alive; once the daemon stops (SIGSTOP)
    // systemd kills it and restarts it.
    let dropin = "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=1s\nRestartSec=1s\n";
    let out = c.exec(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /etc/systemd/system/sentinel.service.d && printf '{}' > \
             /etc/systemd/system/sentinel.service.d/watchdog.conf && systemctl daemon-reload",
            dropin.replace('\n', "\\n")
        ),
    ]);
    assert!(out.status.success(), "drop-in: {}", text(&out));
    let out = c.exec(&["systemctl", "start", "sentinel"]);
    assert!(out.status.success(), "{}", text(&out));
    let ping1 = c.show("WatchdogTimestampMonotonic");
    std::thread::sleep(Duration::from_millis(4500));
    let ping2 = c.show("WatchdogTimestampMonotonic");
    assert_ne!(ping1, ping2, "no WATCHDOG=1 in 4.5 s");
    assert_eq!(c.show("ActiveState"), "active", "{}", c.journal());
    assert_eq!(c.show("NRestarts"), "0");
    let main_pid = c.show("MainPID");
    let out = c.exec(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "--signal=SIGSTOP",
        "sentinel",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    c.wait_for(
        "a restart after the watchdog",
        Duration::from_secs(20),
        |c| c.show("NRestarts") == "1" && c.show("ActiveState") == "active",
    );
    assert_ne!(c.show("MainPID"), main_pid);
    let journal = c.journal();
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    let out = c.exec(&["systemctl", "stop", "sentinel"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        sentinel_programs_left(),
        Vec::<String>::new(),
        "after the watchdog"
    );
    let out = c.exec(&[
        "sh",
        "-c",
        "rm -r /etc/systemd/system/sentinel.service.d && systemctl daemon-reload",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // A broken config: failed at once, exit 78, the one error line, no restart.
    std::fs::write(&config, "[daemon]\nintervall = \"2s\"\n").unwrap();
    let restarts = c.show("NRestarts");
    let out = c.exec(&["systemctl", "start", "sentinel"]);
    assert!(
        !out.status.success(),
        "start with a broken config succeeded"
    );
    // Longer than RestartSec=5s: a restart would have happened by now.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(c.show("ActiveState"), "failed", "{}", c.journal());
    assert_eq!(c.show("Result"), "exit-code");
    assert_eq!(c.show("ExecMainStatus"), "78");
    assert_eq!(c.show("NRestarts"), restarts, "restarted a broken config");
    let out = c.exec(&[
        "journalctl",
        "-u",
        "sentinel",
        "--no-pager",
        "-o",
        "cat",
        "_COMM=sentinel",
    ]);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("error"))
        .map(str::to_string)
        .collect();
    let config_errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("error: config /etc/sentinel/sentinel.toml"))
        .collect();
    assert_eq!(config_errors.len(), 1, "one error line: {lines:#?}");
    assert!(
        config_errors[0].contains("line 2: key daemon.intervall"),
        "{}",
        config_errors[0]
    );
    assert_eq!(sentinel_programs(), Vec::<String>::new());
    drop(c);
    println!(
        "systemd test: {:.1} s in all (root build included)",
        started.elapsed().as_secs_f64()
    );
}
