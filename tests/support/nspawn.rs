//! systemd as PID 1 in a systemd-nspawn container on a Debian root built by mmdebstrap, for
//! the tests that need a real service manager (tests/systemd.rs, tests/dist.rs). The container
//! shares the host's kernel: the BPF programs sentinel attaches inside are counted from here.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A booted Debian root (systemd as PID 1) in systemd-nspawn, torn down on drop.
pub struct Container {
    nspawn: Child,
    leader: i32,
}

/// Debian root for the container: built once with mmdebstrap from the host's Debian release and
/// kept under target/ (about a minute the first time, nothing after).
pub fn debian_root() -> PathBuf {
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
    pub fn boot(root: &Path, binds: &[(&Path, &str)], log: &Path) -> Self {
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
        // systemctl cannot connect until systemd has set up its private socket: it prints
        // nothing, or "offline" (with or without "Failed to connect to bus": both were seen
        // in CI) then; once it can, --wait returns when the boot is over.
        let state = loop {
            let out = c.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let connected = !text(&out).contains("Failed to connect") && state != "offline";
            if (connected && !state.is_empty()) || Instant::now() > deadline {
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
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    pub fn show(&self, property: &str) -> String {
        let out = self.exec(&["systemctl", "show", "sentinel", "-p", property, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn journal(&self) -> String {
        text(&self.exec(&["journalctl", "-u", "sentinel", "--no-pager", "-o", "cat"]))
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Self) -> bool) {
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

pub fn scrape(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}
