//! Docker set-up for integration tests. Installs nothing (CI's `.ci/run` installs docker.io and
//! busybox-static); starts the engine when it is not running, builds the test image locally
//! (nothing can be pulled), and removes containers on every exit path (Drop guard).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "sentinel-test-busybox:latest";
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "sleep", "test", "touch", "rm", "true", "false", "cat", "echo", "kill", "ls",
];

/// `docker ARGS` against the default engine (or `host` when given).
pub fn docker_at(host: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new("docker");
    if let Some(h) = host {
        c.arg("-H").arg(h);
    }
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker CLI")
}

pub fn docker(args: &[&str]) -> Output {
    docker_at(None, args)
}

/// `docker ARGS`, panicking with stderr on failure; stdout trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(
        o.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn engine_answers(host: Option<&str>) -> bool {
    docker_at(host, &["version", "--format", "{{.Server.APIVersion}}"])
        .status
        .success()
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

static ENGINE: OnceLock<Result<(), String>> = OnceLock::new();

/// The default engine is up (started here if needed) and the test image exists.
/// Returns false (after `support::require`'s loud skip) outside CI when impossible.
pub fn ensure() -> bool {
    if !super::require("root", super::is_root(), "integration tests need uid 0") {
        return false;
    }
    let have = which("docker") && which("dockerd") && Path::new("/bin/busybox").exists();
    if !super::require(
        "docker",
        have,
        "docker CLI, dockerd or /bin/busybox missing (CI installs docker.io, busybox-static)",
    ) {
        return false;
    }
    let r = ENGINE.get_or_init(|| {
        start_default_engine()?;
        build_image(None)
    });
    super::require(
        "docker engine",
        r.is_ok(),
        r.as_ref().err().map_or("", |s| s),
    )
}

fn start_default_engine() -> Result<(), String> {
    if engine_answers(None) {
        return Ok(());
    }
    let log =
        std::env::temp_dir().join(format!("sentinel-test-dockerd-{}.log", std::process::id()));
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    // Left running after the tests (other test binaries may share it); `--bridge=none
    // --iptables=false` keeps it away from the host's network set-up.
    Command::new("dockerd")
        .args(["--bridge=none", "--iptables=false"])
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map_err(|e| format!("spawn dockerd: {e}"))?;
    eprintln!("started dockerd (log {})", log.display());
    wait_for("dockerd", Duration::from_secs(60), || engine_answers(None)).map_err(|e| {
        format!(
            "{e}; log tail: {}",
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        )
    })
}

/// `docker import` a rootfs with Debian's static busybox and applet symlinks.
pub fn build_image(host: Option<&str>) -> Result<(), String> {
    if docker_at(host, &["image", "inspect", IMAGE])
        .status
        .success()
    {
        return Ok(());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path();
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| e.to_string())?;
    for a in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))
            .map_err(|e| e.to_string())?;
    }
    let tar = root.with_extension("tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("tar failed".into());
    }
    let tar_s = tar.to_string_lossy().to_string();
    let o = docker_at(
        host,
        &[
            "import",
            "-c",
            "ENV PATH=/bin",
            "-c",
            "CMD [\"/bin/sh\"]",
            &tar_s,
            IMAGE,
        ],
    );
    let _ = std::fs::remove_file(&tar);
    if !o.status.success() {
        return Err(format!(
            "docker import: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

/// A derived image carrying `LABEL key=value` (opt-in inherited from the image, L2).
pub fn image_with_label(tag: &str, key: &str, value: &str) -> String {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let id = docker_ok(&["create", IMAGE, "true"]);
    let change = format!("LABEL {key}={value}");
    let o = docker(&["commit", "-c", &change, &id, tag]);
    let _ = docker(&["rm", "-f", &id]);
    assert!(
        o.status.success(),
        "commit: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    tag.to_string()
}

/// A running container removed (`docker rm -f`) when dropped, even when the test panics.
pub struct Container {
    pub name: String,
    pub id: String,
    host: Option<String>,
}

impl Container {
    /// `docker run -d --network none --name NAME EXTRA... IMAGE CMD...`
    pub fn run(name: &str, extra: &[&str], image: &str, cmd: &[&str]) -> Self {
        Self::run_at(None, name, extra, image, cmd)
    }

    pub fn run_at(
        host: Option<&str>,
        name: &str,
        extra: &[&str],
        image: &str,
        cmd: &[&str],
    ) -> Self {
        let _ = docker_at(host, &["rm", "-f", name]);
        let mut args = vec!["run", "-d", "--network", "none", "--name", name];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(cmd);
        let o = docker_at(host, &args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Self {
            name: name.to_string(),
            id: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            host: host.map(str::to_string),
        }
    }

    /// `docker inspect -f FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        let o = docker_at(self.host.as_deref(), &["inspect", "-f", format, &self.id]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn started_at(&self) -> String {
        self.inspect("{{.State.StartedAt}}")
    }

    pub fn health(&self) -> String {
        self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    }

    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", self.id.as_str()];
        args.extend_from_slice(cmd);
        docker_at(self.host.as_deref(), &args)
    }

    pub fn wait_health(&self, status: &str, timeout: Duration) -> Result<(), String> {
        wait_for(&format!("{} {status}", self.name), timeout, || {
            self.health() == status
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_at(self.host.as_deref(), &["rm", "-f", &self.id]);
    }
}

/// Records Docker's container `start` events from now on (a streaming `docker events`): the
/// restart count judged from Docker, not from sentinel. (`docker events --since` replays only
/// the daemon's last 256 events, which health-check exec events push out within seconds.)
pub struct StartEvents {
    child: Child,
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl StartEvents {
    pub fn record() -> Self {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--format",
                "{{.ID}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        let out = child.stdout.take().unwrap();
        let lines: std::sync::Arc<Mutex<Vec<String>>> = Default::default();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(l);
            }
        });
        // `docker events` subscribes asynchronously; give it a moment before anything starts.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, lines }
    }

    /// Starts of container `id` seen so far.
    pub fn starts(&self, id: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.as_str() == id)
            .count()
    }
}

impl Drop for StartEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A second, private dockerd (own data-root, exec-root, socket, pidfile) for tests that stop
/// and start the engine without disturbing the shared one. Killed and cleaned up on drop.
pub struct PrivateDockerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl PrivateDockerd {
    pub fn start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("sentinel-dockerd-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut d = Self {
            socket: dir.join("docker.sock"),
            dir,
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--bridge=none")
            .arg("--iptables=false")
            .arg(format!("--data-root={}", self.dir.join("data").display()))
            .arg(format!("--exec-root={}", self.dir.join("exec").display()))
            .arg(format!(
                "--pidfile={}",
                self.dir.join("dockerd.pid").display()
            ))
            .arg(format!("-H={}", self.host()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn dockerd: {e}"))?;
        self.child = Some(child);
        let host = self.host();
        wait_for("private dockerd", Duration::from_secs(60), || {
            engine_answers(Some(&host))
        })
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGSTOP: Docker hung, not down (its socket accepts, nothing answers).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGTERM and wait: Docker "stopped mid-run".
    pub fn stop(&mut self) {
        // A paused engine would sit on the SIGTERM until the kill below.
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = Instant::now() + Duration::from_secs(20);
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

    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        self.stop();
        // Overlay mounts are gone once dockerd exited; anything still busy stays for the OS.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("data"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Docker CLI, dockerd and Debian's static busybox (for the test image) are installed.
pub fn have_tools() -> bool {
    which("docker") && which("dockerd") && Path::new("/bin/busybox").exists()
}
