//! The service under systemd (issue 17 item 3): the notify protocol against a socket of the
//! test's own, then the shipped unit under a real systemd as PID 1 in a systemd-nspawn
//! container (it shares the host's kernel, so the BPF programs are the host's to count).

mod support;

use std::{
    io::{Read, Write},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::{require, require_root, sentinel::BIN};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Names of the loaded BPF programs that are sentinel's.
fn sentinel_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("snt_"))
        .collect()
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

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

/// A booted Debian root (systemd as PID 1) in systemd-nspawn, torn down on drop.
struct Container {
    nspawn: Child,
    leader: i32,
}

/// Debian root for the container: built once with mmdebstrap from the host's Debian release and
/// kept under target/ (about a minute the first time, nothing after).
fn debian_root() -> PathBuf {
    let base = repo_file("target/systemd-nspawn");
    let root = base.join("root");
    // Bump when the package list changes: a stale root is rebuilt.
    let spec = "minbase systemd systemd-sysv v1";
    let stamp = base.join("root.spec");
    if root.join("sbin/init").exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == spec) {
        return root;
    }
    let release = std::fs::read_to_string("/etc/os-release")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_string))
        .expect("VERSION_CODENAME in /etc/os-release");
    let _ = std::fs::remove_dir_all(&root);
    let tmp = base.join("root.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&base).unwrap();
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv",
            "--mode=root",
            "--format=directory",
            "--quiet",
            &release,
        ])
        .arg(&tmp)
        .output()
        .expect("run mmdebstrap");
    assert!(out.status.success(), "mmdebstrap: {}", text(&out));
    std::fs::rename(&tmp, &root).unwrap();
    std::fs::write(&stamp, spec).unwrap();
    println!(
        "built the Debian {release} root in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    root
}

impl Container {
    /// Boots `root` with the overlay discarded at exit, the given read-only binds (host path,
    /// container path) and the capabilities and system calls sentinel needs (nspawn's defaults
    /// leave out CAP_BPF and CAP_PERFMON and filter bpf(2)).
    fn boot(root: &Path, binds: &[(&Path, &str)], log: &Path) -> Self {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory").arg(root).args([
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=pipe",
            "--machine=sentinel-systemd-test",
            "--capability=CAP_BPF,CAP_PERFMON,CAP_SYS_RESOURCE",
            "--system-call-filter=bpf perf_event_open",
        ]);
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("start systemd-nspawn");
        let pid = nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader = loop {
            let children: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|s| {
                    s.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect();
            let init = children.into_iter().find(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            });
            if let Some(init) = init {
                break init;
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after 60 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let c = Container { nspawn, leader };
        // systemctl cannot connect until systemd has set up its private socket; then --wait
        // returns once the boot is over.
        let state = loop {
            let out = c.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !state.is_empty() || Instant::now() > deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            state == "running" || state == "degraded",
            "boot ended {state:?}: {}",
            text(&c.exec(&["systemctl", "--failed", "--no-pager"]))
        );
        c
    }

    /// Runs a command inside the container (all its namespaces; as root).
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn show(&self, property: &str) -> String {
        let out = self.exec(&["systemctl", "show", "sentinel", "-p", property, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn journal(&self) -> String {
        text(&self.exec(&["journalctl", "-u", "sentinel", "--no-pager", "-o", "cat"]))
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "{what} not within {timeout:?}; journal:\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes nspawn shut the container down cleanly; SIGKILL if that hangs.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn scrape(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
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
    assert!(
        sentinel_programs().is_empty(),
        "snt_ programs loaded before the test: another sentinel runs ({:?})",
        sentinel_programs()
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
    assert_eq!(sentinel_programs(), Vec::<String>::new(), "after stop");
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
        sentinel_programs(),
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
