//! Podman and containerd for integration tests, each private to the test (own storage, state
//! and API socket, so nothing touches the host's or another engineer's): Debian's `podman`
//! (rootful, with `podman system service` serving its Docker-compatible API) and `containerd`
//! driven with `ctr`. Images are the busybox image of `docker.rs`, imported locally (nothing
//! can be pulled). Everything started here is stopped and removed on drop, panics included.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not ready after {timeout:?}"))
}

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The busybox root filesystem of the Docker test image, as a tar for `podman import`.
fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "true", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let tar = dir.join("busybox.tar");
    let o = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    ok("tar", &o);
    tar
}

/// A private rootful podman: its own storage (`--root`, `--runroot`) and its API service on
/// a socket of its own.
pub struct Podman {
    pub dir: tempfile::TempDir,
    service: Option<Child>,
}

pub const PODMAN_IMAGE: &str = "localhost/sentinel-test-busybox:latest";

impl Podman {
    /// Podman is installed (CI installs Debian's `podman`, `cargo xtask test` too).
    pub fn available() -> bool {
        super::require(
            "podman",
            which("podman") && Path::new("/bin/busybox").exists(),
            "podman or /bin/busybox missing (cargo xtask test installs podman, busybox-static)",
        )
    }

    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("snt-podman-")
            .tempdir()
            .unwrap();
        let mut p = Self { dir, service: None };
        let tar = busybox_tar(p.dir.path());
        let o = p.podman(&[
            "import",
            "-c",
            "ENV PATH=/bin",
            tar.to_str().unwrap(),
            PODMAN_IMAGE,
        ]);
        ok("podman import", &o);
        let log = std::fs::File::create(p.dir.path().join("service.log")).unwrap();
        let child = Command::new("podman")
            .args(p.global())
            .args(["system", "service", "--time=0"])
            .arg(p.host())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("podman system service");
        p.service = Some(child);
        let sock = p.socket();
        wait_for("podman API socket", Duration::from_secs(30), || {
            sock.exists()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", p.log()));
        p
    }

    fn global(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--root".into(),
            d.join("root").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
            // cgroupfs whatever PID 1 is: the layout this host and the tests know.
            "--cgroup-manager".into(),
            "cgroupfs".into(),
        ]
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// `unix://...`: what `CONTAINER_HOST` carries for sentinel.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(self.global())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman")
    }

    /// `podman run -d` with the limits this sandbox needs (podman's defaults exceed them);
    /// returns the container id.
    pub fn run(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--name",
            name,
            PODMAN_IMAGE,
        ];
        args.extend_from_slice(cmd);
        ok("podman run", &self.podman(&args))
    }

    pub fn version(&self) -> String {
        ok(
            "podman version",
            &self.podman(&["version", "--format", "{{.Client.Version}}"]),
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
        stop_child(&mut self.service);
        let _ = self.podman(&["system", "reset", "-f"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

/// A private containerd (own root, state and socket; the CRI plugin off), driven with `ctr`.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
}

/// The image name `ctr images import` gives the Docker test image.
pub const CTR_IMAGE: &str = "docker.io/library/sentinel-test-busybox:latest";

impl Containerd {
    pub fn available() -> bool {
        super::require(
            "containerd",
            which("containerd") && which("ctr"),
            "containerd or ctr missing (Debian's docker.io installs containerd)",
        )
    }

    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("snt-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
                d.join("root").display(),
                d.join("state").display(),
                d.join("containerd.sock").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let c = Self {
            dir,
            daemon: Some(child),
        };
        wait_for("containerd", Duration::from_secs(30), || {
            c.ctr("default", &["version"]).status.success()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", c.log()));
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    /// Imports the Docker test image (`docker save`) into `namespace`.
    pub fn import_image(&self, namespace: &str) {
        let tar = self.dir.path().join("image.tar");
        let o = super::docker::docker(&["save", "-o", tar.to_str().unwrap(), super::docker::IMAGE]);
        ok("docker save", &o);
        ok(
            "ctr images import",
            &self.ctr(namespace, &["images", "import", tar.to_str().unwrap()]),
        );
    }

    /// `ctr run -d` with labels and, if given, a cgroup path (`--cgroup`, e.g. a kubelet-style
    /// `/kubepods/besteffort/pod<uid>/<id>`).
    pub fn run(
        &self,
        namespace: &str,
        id: &str,
        labels: &[(&str, &str)],
        cgroup: Option<&str>,
        cmd: &[&str],
    ) {
        let mut args: Vec<String> = vec!["run".into(), "-d".into()];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        if let Some(cg) = cgroup {
            args.push("--cgroup".into());
            args.push(cg.into());
        }
        args.push(CTR_IMAGE.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| (*s).to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok("ctr run", &self.ctr(namespace, &refs));
    }

    /// The PID of a task.
    pub fn pid(&self, namespace: &str, id: &str) -> u32 {
        let out = ok("ctr task ls", &self.ctr(namespace, &["tasks", "ls"]));
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id))
                    .then(|| f.next()?.parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no task {id}: {out}"))
    }

    pub fn version(&self) -> String {
        let out = ok("ctr version", &self.ctr("default", &["version"]));
        out.lines()
            .skip_while(|l| !l.starts_with("Server"))
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Version:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    }
}

/// Every namespace the tests run containers in: all are cleaned up on drop (a task left
/// behind keeps its runc state, shared by every containerd of the host, and the next run's
/// `ctr run` of the same id fails).
const NAMESPACES: [&str; 3] = ["default", "k8s.io", "moby"];

impl Drop for Containerd {
    fn drop(&mut self) {
        for ns in NAMESPACES {
            let tasks = self.ctr(ns, &["tasks", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).lines() {
                let _ = self.ctr(ns, &["tasks", "kill", "-s", "KILL", id]);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for ns in NAMESPACES {
            let tasks = self.ctr(ns, &["tasks", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).lines() {
                let _ = self.ctr(ns, &["tasks", "delete", "-f", id]);
            }
            let containers = self.ctr(ns, &["containers", "ls", "-q"]);
            for id in String::from_utf8_lossy(&containers.stdout).lines() {
                let _ = self.ctr(ns, &["containers", "delete", id]);
            }
        }
        stop_child(&mut self.daemon);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

/// `sentinel top` in a tmux pane of 160x50, captured until `done(screen)` or 30 s; `q` quits
/// it. Returns the last screen.
pub fn top_screen(bin: &str, socket: &Path, done: impl Fn(&str) -> bool) -> String {
    top_session(bin, socket, done).0
}

/// As [`top_screen`], and whether `top` quit on `q` (its tmux session ended by itself).
pub fn top_session(bin: &str, socket: &Path, done: impl Fn(&str) -> bool) -> (String, bool) {
    let session = format!("snt-top-{}-{}", std::process::id(), rand_suffix());
    let cmd = format!(
        "{bin} top --refresh 500ms --status-socket {}",
        socket.display()
    );
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "50",
            &cmd,
        ])
        .env("TERM", "xterm-256color")
        .status()
        .unwrap()
        .success();
    assert!(started, "tmux new-session");
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut screen = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(700));
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap();
        screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&screen) {
            break;
        }
    }
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let alive = Command::new("tmux")
        .args(["has-session", "-t", &session])
        .status()
        .unwrap()
        .success();
    (screen, !alive)
}

fn rand_suffix() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// tmux is installed (`cargo xtask test` installs it).
pub fn have_tmux() -> bool {
    super::require(
        "tmux",
        which("tmux"),
        "tmux missing (cargo xtask test installs it)",
    )
}
