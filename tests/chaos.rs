//! Chaos soak, FAULT-MATRIX row S1 (see CHAOS.md).
//!
//! `chaos_soak` runs a seeded nemesis schedule against a real `sentinel run` and a private
//! dockerd with a small population of containers (some opted in, some not), records four
//! histories (sentinel's audit log, Docker's event stream, the kernel's program list, the
//! sentinel process's RSS and fd count) plus what the nemesis did, and hands them to the
//! checker in `support/chaos.rs`, which judges the run from those histories only.
//!
//! Seed: `SENTINEL_CHAOS_SEED` (default [`DEFAULT_SEED`]), length: `SENTINEL_CHAOS_MINUTES`
//! (default 4), histories kept in `SENTINEL_CHAOS_OUT` when set. `cargo xtask chaos` sets them.
//! Needs root, kernel BTF, docker.io and busybox-static: under `CI=true` their absence fails
//! the test, elsewhere it is skipped loudly.
//!
//! The other tests here feed the checker synthetic histories: a clean one passes, and for each
//! of the six checks a history with one violation is rejected naming that check.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::chaos::*;
use support::docker::{self as sd, IMAGE, PrivateDockerd};

const DEFAULT_SEED: u64 = 20261123;
const SLOTS: usize = 5;
/// Slots 0..LABELLED start opted in.
const LABELLED: usize = 3;
const LABEL: &str = "sentinel.heal";
const HEALTH: &[&str] = &[
    "--health-cmd",
    "test -f /ok",
    "--health-interval",
    "2s",
    "--health-timeout",
    "2s",
    "--health-retries",
    "1",
];
/// Healthy unless `/sick` exists (then it stays unhealthy across restarts); exits on SIGTERM.
const CMD: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; test -f /sick || touch /ok; sleep 100000 & wait",
];

/// Short timings so breakers, back-off and caps all move within minutes.
fn config_toml(host: &str) -> String {
    format!(
        r#"[daemon]
interval = "500ms"

[heal]
docker_host = "{host}"
label = "{LABEL}"
api_timeout_secs = 2
reconnect_initial_secs = 0.5
reconnect_max_secs = 2
action_timeout_secs = 10
permit_wait_secs = 5
grace_secs = 2
verify_secs = 6
storm_fraction = 0.5
storm_min_containers = 3
storm_window_secs = 4
storm_hold_secs = 0.5

[heal.backoff]
initial_secs = 2
multiplier = 2
max_secs = 16
reset_after_secs = 60

[heal.breaker]
failure_threshold = 2
window_secs = 60
open_secs = 4
open_max_secs = 16
half_open_trials = 1
close_after_successes = 1
half_open_max_wait_secs = 15

[heal.global_breaker]
failure_threshold = 15
window_secs = 60
open_secs = 4
open_max_secs = 16
half_open_trials = 1
close_after_successes = 1
half_open_max_wait_secs = 15

[heal.global_cap]
max_actions = 12
window_secs = 60

[[heal.rules]]
name = "autoheal"
trigger = {{ kind = "unhealthy" }}
action = {{ kind = "restart", stop_timeout_secs = 1 }}
max_actions = 4
limit_window_secs = 60
"#
    )
}

/// The bounds `config_toml` promises; the ceilings are fixed for every run length.
fn limits() -> Limits {
    Limits {
        label: LABEL.into(),
        interval: 0.5,
        rule_max: 4,
        rule_window: 60.0,
        backoff_initial: 2.0,
        global_max: 12,
        global_window: 60.0,
        action_timeout: 10.0,
        breaker: BreakerLimits {
            half_open_max_wait: 15.0,
        },
        global_breaker: BreakerLimits {
            half_open_max_wait: 15.0,
        },
        rss_kib_max: 128 * 1024,
        fds_max: 128,
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `docker -H HOST ARGS` with a time-out (a SIGSTOPped engine must not hang the harness).
fn dk(host: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("docker: {e}"))?;
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("docker {args:?}: timed out"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Recorders

/// `docker events` for the whole run: reconnects (with `--since`, de-duplicated) whenever the
/// stream ends, and writes down the spans with no stream connected.
struct EventRecorder {
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    events: Arc<Mutex<Vec<DockerEvent>>>,
    gaps: Arc<Mutex<Vec<(f64, f64)>>>,
    raw: Arc<Mutex<std::fs::File>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventRecorder {
    fn start(host: String, raw_path: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let child: Arc<Mutex<Option<Child>>> = Arc::default();
        let events: Arc<Mutex<Vec<DockerEvent>>> = Arc::default();
        let gaps: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
        let raw = Arc::new(Mutex::new(
            std::fs::File::create(raw_path).expect("events file"),
        ));
        let (s, c, e, g, w) = (
            stop.clone(),
            child.clone(),
            events.clone(),
            gaps.clone(),
            raw.clone(),
        );
        let started = now();
        let thread = std::thread::spawn(move || {
            let mut since = started - 1.0;
            let mut seen = std::collections::HashSet::new();
            let mut gap_from: Option<f64> = None;
            while !s.load(Ordering::SeqCst) {
                let spawned = Command::new("docker")
                    .args(["-H", &host, "events", "--format", "{{json .}}"])
                    .args(["--filter", "type=container"])
                    .arg("--since")
                    .arg(format!("{since:.3}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn();
                let Ok(mut ch) = spawned else {
                    std::thread::sleep(Duration::from_millis(300));
                    continue;
                };
                let out = ch.stdout.take().expect("piped");
                *c.lock().unwrap() = Some(ch);
                let connected_at = now();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let Ok(Some(ev)) = DockerEvent::parse(&line) else {
                        continue;
                    };
                    // Health checks are execs: three events a check, none of them evidence.
                    if ev.action.starts_with("exec_") {
                        continue;
                    }
                    if let Some(g0) = gap_from.take() {
                        // Replay with --since covers the gap for an engine that kept running;
                        // for a restarted one, the old engine's last events may be lost.
                        g.lock().unwrap().push((g0, connected_at));
                    }
                    if seen.insert((ev.t.to_bits(), ev.id.clone(), ev.action.clone())) {
                        let _ = writeln!(w.lock().unwrap(), "{line}");
                        since = since.max(ev.t - 1.0);
                        e.lock().unwrap().push(ev);
                    }
                }
                if let Some(mut ch) = c.lock().unwrap().take() {
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                if s.load(Ordering::SeqCst) {
                    break; // our own shutdown, not a gap in the run
                }
                let t = now();
                if gap_from.is_none() {
                    gap_from = Some(t);
                }
                since = since.max(t - 2.0);
                std::thread::sleep(Duration::from_millis(200));
            }
            if let Some(g0) = gap_from {
                g.lock().unwrap().push((g0, now()));
            }
        });
        // `docker events` subscribes asynchronously.
        std::thread::sleep(Duration::from_millis(500));
        Self {
            stop,
            child,
            events,
            gaps,
            raw,
            thread: Some(thread),
        }
    }

    /// A gap is closed by the first event after a reconnect; one still open at the end is
    /// closed now.
    fn finish(mut self) -> (Vec<DockerEvent>, Vec<(f64, f64)>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut ch) = self.child.lock().unwrap().take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.raw.lock().unwrap().flush();
        let ev = std::mem::take(&mut *self.events.lock().unwrap());
        let gaps = std::mem::take(&mut *self.gaps.lock().unwrap());
        (ev, gaps)
    }
}

/// Program ids named in a process's fdinfo (program fds and link fds).
fn held_progs(pid: i32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in rd.flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path()) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("prog_id:")
                    && let Ok(id) = v.trim().parse::<u32>()
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    ids
}

fn prog_sample(pids: &[i32]) -> ProgSample {
    let kernel = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect();
    ProgSample {
        t: now(),
        kernel,
        held: pids.iter().map(|&p| (p, held_progs(p))).collect(),
    }
}

fn res_sample(pid: i32) -> Option<ResSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(ResSample {
        t: now(),
        pid,
        rss_kib,
        fds,
    })
}

/// Samples RSS/fds every second and the program list every 5 s (plus on demand).
struct Sampler {
    stop: Arc<AtomicBool>,
    pid: Arc<Mutex<Option<i32>>>,
    progs: Arc<Mutex<Vec<ProgSample>>>,
    res: Arc<Mutex<Vec<ResSample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pid: Arc<Mutex<Option<i32>>> = Arc::default();
        let progs: Arc<Mutex<Vec<ProgSample>>> = Arc::default();
        let res: Arc<Mutex<Vec<ResSample>>> = Arc::default();
        let (s, p, pr, rs) = (stop.clone(), pid.clone(), progs.clone(), res.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                let cur = *p.lock().unwrap();
                if let Some(pid) = cur
                    && let Some(r) = res_sample(pid)
                {
                    rs.lock().unwrap().push(r);
                }
                if n.is_multiple_of(5) {
                    let sample = prog_sample(cur.as_slice());
                    pr.lock().unwrap().push(sample);
                }
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self {
            stop,
            pid,
            progs,
            res,
            thread: Some(thread),
        }
    }

    fn set_pid(&self, pid: Option<i32>) {
        *self.pid.lock().unwrap() = pid;
    }

    fn sample_now(&self) {
        let cur = *self.pid.lock().unwrap();
        let s = prog_sample(cur.as_slice());
        self.progs.lock().unwrap().push(s);
    }

    fn finish(mut self) -> (Vec<ProgSample>, Vec<ResSample>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let p = std::mem::take(&mut *self.progs.lock().unwrap());
        let r = std::mem::take(&mut *self.res.lock().unwrap());
        (p, r)
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test

struct Files {
    config: PathBuf,
    audit: PathBuf,
    runtime: PathBuf,
    log: PathBuf,
}

struct Sentinel {
    child: Child,
    pid: i32,
}

/// Sentinel `pid` was reaped: stop sampling it, record the exit, and sample the program list
/// once more after 1.2 s (K14: nothing left once reaped; freeing is deferred a moment, so it is
/// judged at +1 s).
fn note_reaped(nem: &mut Nemesis, sampler: &Sampler, pid: i32) {
    sampler.set_pid(None);
    nem.note(NemesisEvent::SentinelExit { t: now(), pid });
    std::thread::sleep(Duration::from_millis(1200));
    sampler.sample_now();
}

fn start_sentinel(f: &Files, host: &str) -> Sentinel {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f.log)
        .expect("sentinel log");
    let child = Command::new(support::sentinel::BIN)
        .arg("run")
        .arg("--config")
        .arg(&f.config)
        .args(["--interval", "500ms", "--output", "json"])
        .arg("--audit-log")
        .arg(&f.audit)
        .arg("--status-socket")
        .arg(f.runtime.join("sentinel.sock"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("SENTINEL_RUNTIME_DIR", &f.runtime)
        .env("DOCKER_HOST", host)
        .env("SENTINEL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sentinel");
    let pid = child.id() as i32;
    let mut s = Sentinel { child, pid };
    // Ready once its programs are loaded (they show in its fd table).
    let end = Instant::now() + Duration::from_secs(90);
    while held_progs(pid).is_empty() {
        if let Ok(Some(st)) = s.child.try_wait() {
            panic!(
                "sentinel exited during start-up ({st}); log tail:\n{}",
                tail(&f.log, 20)
            );
        }
        assert!(
            Instant::now() < end,
            "sentinel loaded no program within 90 s; log tail:\n{}",
            tail(&f.log, 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let it attach the rest.
    std::thread::sleep(Duration::from_secs(1));
    let _ = &mut s;
    s
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

#[derive(Clone)]
struct Slot {
    name: String,
    id: Option<String>,
    labelled: bool,
    generation: u32,
}

fn run_container(host: &str, slot: usize, s: &mut Slot) -> Result<(), String> {
    s.generation += 1;
    s.name = format!("snt-chaos-{}-{slot}-{}", std::process::id(), s.generation);
    let opt_in = format!("{LABEL}=true");
    let mut args = vec!["run", "-d", "--network", "none", "--name", &s.name];
    if s.labelled {
        args.extend(["--label", &opt_in]);
    }
    args.extend_from_slice(HEALTH);
    args.push(IMAGE);
    args.extend_from_slice(CMD);
    let id = dk(host, &args)?;
    s.id = Some(id);
    Ok(())
}

enum Restore {
    Start(usize),
    Recreate(usize, bool),
}

struct Nemesis {
    host: String,
    log: Vec<NemesisEvent>,
    file: std::fs::File,
    slots: Vec<Slot>,
    restores: Vec<(Instant, Restore)>,
    faults: BTreeMap<String, u64>,
    errors: u64,
}

impl Nemesis {
    fn note(&mut self, e: NemesisEvent) {
        let _ = writeln!(self.file, "{e:?}");
        self.log.push(e);
    }

    fn fault(&mut self, kind: &str, detail: String) {
        *self.faults.entry(kind.to_string()).or_default() += 1;
        self.note(NemesisEvent::Fault {
            t: now(),
            kind: kind.to_string(),
            detail,
        });
    }

    fn docker(&mut self, args: &[&str]) {
        if let Err(e) = dk(&self.host, args) {
            self.errors += 1;
            let _ = writeln!(self.file, "  ({e})");
        }
    }

    fn id(&self, slot: usize) -> Option<String> {
        self.slots[slot].id.clone()
    }

    /// Sleep until `until`, doing the due restores on the way.
    fn wait_until(&mut self, until: Instant) {
        loop {
            let now_i = Instant::now();
            let due: Vec<Restore> = {
                let (d, keep): (Vec<_>, Vec<_>) =
                    self.restores.drain(..).partition(|(t, _)| *t <= now_i);
                self.restores = keep;
                d.into_iter().map(|(_, r)| r).collect()
            };
            for r in due {
                self.restore(r);
            }
            if now_i >= until {
                return;
            }
            std::thread::sleep((until - now_i).min(Duration::from_millis(200)));
        }
    }

    fn restore(&mut self, r: Restore) {
        match r {
            Restore::Start(slot) => {
                if let Some(id) = self.id(slot) {
                    self.docker(&["start", &id]);
                }
            }
            Restore::Recreate(slot, labelled) => {
                let mut s = self.slots[slot].clone();
                s.labelled = labelled;
                let host = self.host.clone();
                match run_container(&host, slot, &mut s) {
                    Ok(()) => {
                        let _ = writeln!(
                            self.file,
                            "  recreated slot {slot} as {} labelled {labelled}",
                            s.name
                        );
                    }
                    Err(e) => {
                        self.errors += 1;
                        let _ = writeln!(self.file, "  ({e})");
                        // Try again in a moment: the population must stay alive.
                        s.id = None;
                        self.restores.push((
                            Instant::now() + Duration::from_secs(2),
                            Restore::Recreate(slot, labelled),
                        ));
                    }
                }
                self.slots[slot] = s;
            }
        }
    }

    /// After dockerd came back every container is stopped: start the population again.
    fn start_all(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(id) = self.id(slot) {
                self.docker(&["start", &id]);
            }
        }
    }

    fn exec(&mut self, slot: usize, script: &str) {
        if let Some(id) = self.id(slot) {
            self.docker(&["exec", &id, "sh", "-c", script]);
        }
    }
}

fn summary_line(k: &str, v: impl std::fmt::Display) {
    println!("CHAOS-SUMMARY {k} {v}");
}

#[test]
fn chaos_soak() {
    if !support::require_root("chaos_soak") {
        return;
    }
    if !support::require(
        "docker",
        sd::have_tools(),
        "docker CLI, dockerd or /bin/busybox missing (CI installs docker.io, busybox-static)",
    ) {
        return;
    }
    let seed: u64 = match std::env::var("SENTINEL_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SENTINEL_CHAOS_SEED={s:?} is not an unsigned integer")),
        Err(_) => DEFAULT_SEED,
    };
    let minutes: f64 = match std::env::var("SENTINEL_CHAOS_MINUTES") {
        Ok(s) => s
            .trim()
            .parse()
            .ok()
            .filter(|m: &f64| *m >= 1.0 && *m <= 24.0 * 60.0)
            .unwrap_or_else(|| {
                panic!("SENTINEL_CHAOS_MINUTES={s:?} is not a number of minutes in 1..=1440")
            }),
        Err(_) => 4.0,
    };
    let secs = minutes * 60.0;
    println!(
        "chaos: seed {seed}, {minutes} min (replay: SENTINEL_CHAOS_SEED={seed} \
         SENTINEL_CHAOS_MINUTES={minutes})"
    );
    let steps = schedule(seed, secs, SLOTS);
    let keep = std::env::var_os("SENTINEL_CHAOS_OUT").map(PathBuf::from);
    let tmp = tempfile::Builder::new()
        .prefix("snt-chaos-")
        .tempdir()
        .expect("tempdir");
    let dir = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("output dir");
    let files = Files {
        config: dir.join("sentinel.toml"),
        audit: dir.join("audit.jsonl"),
        runtime: tmp.path().join("runtime"),
        log: dir.join("sentinel.log"),
    };
    for p in [&files.audit, &files.log] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::create_dir_all(&files.runtime).unwrap();
    let mut sched_file = std::fs::File::create(dir.join("schedule.txt")).unwrap();
    for s in &steps {
        let _ = writeln!(sched_file, "{:8.2} {:?}", s.at, s.fault);
    }
    println!(
        "chaos: {} scheduled faults; histories in {}",
        steps.len(),
        dir.display()
    );

    let mut pd = PrivateDockerd::start().expect("private dockerd");
    let host = pd.host();
    sd::build_image(Some(&host)).expect("image in the private engine");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&files.config, config_toml(&host)).unwrap();
        std::fs::set_permissions(&files.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let recorder = EventRecorder::start(host.clone(), &dir.join("docker-events.jsonl"));
    let mut nem = Nemesis {
        host: host.clone(),
        log: Vec::new(),
        file: std::fs::File::create(dir.join("nemesis.log")).unwrap(),
        slots: (0..SLOTS)
            .map(|i| Slot {
                name: String::new(),
                id: None,
                labelled: i < LABELLED,
                generation: 0,
            })
            .collect(),
        restores: Vec::new(),
        faults: BTreeMap::new(),
        errors: 0,
    };
    for i in 0..SLOTS {
        let mut s = nem.slots[i].clone();
        run_container(&host, i, &mut s).expect("initial population");
        nem.slots[i] = s;
    }
    let sampler = Sampler::start();
    nem.note(NemesisEvent::SentinelStart { t: now(), pid: 0 });
    let mut sentinel = start_sentinel(&files, &host);
    // The start event is written before spawning (its audit lines follow); fix up the pid.
    if let Some(NemesisEvent::SentinelStart { pid, .. }) = nem.log.last_mut() {
        *pid = sentinel.pid;
    }
    let _ = writeln!(nem.file, "  sentinel pid {}", sentinel.pid);
    sampler.set_pid(Some(sentinel.pid));
    sampler.sample_now();

    let t0 = Instant::now();
    for step in &steps {
        nem.wait_until(t0 + Duration::from_secs_f64(step.at));
        let kind = step.fault.kind();
        nem.fault(kind, format!("{:?}", step.fault));
        match step.fault.clone() {
            Fault::DockerStop { secs } => {
                pd.stop();
                nem.wait_until(Instant::now() + Duration::from_secs_f64(secs));
                pd.restart().expect("dockerd back");
                nem.start_all();
            }
            Fault::DockerPause { secs } => {
                pd.pause();
                std::thread::sleep(Duration::from_secs_f64(secs));
                pd.resume();
            }
            Fault::ContainerKill { slot, restore } => {
                if let Some(id) = nem.id(slot) {
                    nem.docker(&["kill", &id]);
                }
                nem.restores.push((
                    Instant::now() + Duration::from_secs_f64(restore),
                    Restore::Start(slot),
                ));
            }
            Fault::ContainerStop { slot, restore } => {
                if let Some(id) = nem.id(slot) {
                    nem.docker(&["stop", "-t", "1", &id]);
                }
                nem.restores.push((
                    Instant::now() + Duration::from_secs_f64(restore),
                    Restore::Start(slot),
                ));
            }
            Fault::ContainerRemove {
                slot,
                restore,
                labelled,
            } => {
                if let Some(id) = nem.id(slot) {
                    nem.docker(&["rm", "-f", &id]);
                    nem.slots[slot].id = None;
                    nem.restores.push((
                        Instant::now() + Duration::from_secs_f64(restore),
                        Restore::Recreate(slot, labelled),
                    ));
                }
            }
            Fault::Unhealthy { slot } => nem.exec(slot, "rm -f /ok"),
            Fault::Sick { slot } => nem.exec(slot, "touch /sick; rm -f /ok"),
            Fault::Healthy { slot } => nem.exec(slot, "rm -f /sick; touch /ok"),
            Fault::UnhealthyAll => {
                for slot in 0..SLOTS {
                    nem.exec(slot, "rm -f /ok");
                }
            }
            Fault::SentinelPause { secs } => {
                let _ = kill(Pid::from_raw(sentinel.pid), Signal::SIGSTOP);
                nem.note(NemesisEvent::SentinelStopped { t: now() });
                std::thread::sleep(Duration::from_secs_f64(secs));
                nem.note(NemesisEvent::SentinelContinued { t: now() });
                let _ = kill(Pid::from_raw(sentinel.pid), Signal::SIGCONT);
            }
            Fault::SentinelKill { secs } => {
                let _ = sentinel.child.kill();
                let _ = sentinel.child.wait();
                note_reaped(&mut nem, &sampler, sentinel.pid);
                nem.wait_until(Instant::now() + Duration::from_secs_f64(secs));
                nem.note(NemesisEvent::SentinelStart { t: now(), pid: 0 });
                sentinel = start_sentinel(&files, &host);
                if let Some(NemesisEvent::SentinelStart { pid, .. }) = nem.log.last_mut() {
                    *pid = sentinel.pid;
                }
                let _ = writeln!(nem.file, "  sentinel pid {}", sentinel.pid);
                sampler.set_pid(Some(sentinel.pid));
                sampler.sample_now();
            }
        }
    }
    nem.wait_until(t0 + Duration::from_secs_f64(secs));
    // Final exit: SIGTERM, then the program list twice.
    let _ = kill(Pid::from_raw(sentinel.pid), Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = sentinel.child.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = sentinel.child.kill();
            let _ = sentinel.child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    note_reaped(&mut nem, &sampler, sentinel.pid);
    std::thread::sleep(Duration::from_millis(1000));
    sampler.sample_now();
    let t_end = now();
    let (progs, res) = sampler.finish();
    // The in-memory histories too, for a post-mortem of a failing seed.
    if let Ok(mut f) = std::fs::File::create(dir.join("programs.txt")) {
        for p in &progs {
            let _ = writeln!(f, "{p:?}");
        }
    }
    if let Ok(mut f) = std::fs::File::create(dir.join("resources.txt")) {
        for r in &res {
            let _ = writeln!(f, "{r:?}");
        }
    }
    let (docker, docker_gaps) = recorder.finish();
    let audit_text = std::fs::read_to_string(&files.audit).unwrap_or_default();
    let mut audit = Vec::new();
    let mut bad_lines = Vec::new();
    for l in audit_text.lines() {
        match AuditLine::parse(l) {
            Ok(a) => audit.push(a),
            Err(e) => bad_lines.push(e),
        }
    }
    let h = Histories {
        audit,
        docker,
        docker_gaps,
        progs,
        res,
        nemesis: nem.log.clone(),
        end: t_end,
    };
    let report = check(&h, &limits());
    for slot in &nem.slots {
        if let Some(id) = &slot.id {
            let _ = dk(&host, &["rm", "-f", id]);
        }
    }
    drop(pd);

    // Summary (cargo xtask chaos collects the CHAOS-SUMMARY lines).
    summary_line("seed", seed);
    summary_line("minutes", minutes);
    let faults_total: u64 = nem.faults.values().sum();
    summary_line("faults_total", faults_total);
    for (k, v) in &nem.faults {
        summary_line(&format!("fault.{k}"), v);
    }
    summary_line("nemesis_docker_cli_errors", nem.errors);
    for (k, v) in &report.stats {
        summary_line(k, v);
    }
    summary_line("docker_gaps", h.docker_gaps.len());
    summary_line(
        "final_exit",
        status.map_or("killed after 30 s".to_string(), |s| s.to_string()),
    );
    for (i, name) in CHECKS.iter().enumerate() {
        summary_line(
            &format!("check{}", i + 1),
            format!(
                "{} {}",
                if report.failed(i + 1) { "FAIL" } else { "pass" },
                name
            ),
        );
    }
    for v in &report.violations {
        println!("VIOLATION (seed {seed}): {v}");
    }
    let failing = !report.violations.is_empty() || !bad_lines.is_empty();
    let tmp = if failing && keep.is_none() {
        // Keep the histories of a failing run (the message below names the directory).
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    assert!(
        bad_lines.is_empty(),
        "seed {seed}: unparseable audit lines: {bad_lines:?}"
    );
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {} violation(s), histories in {} (replay: SENTINEL_CHAOS_SEED={seed} \
         SENTINEL_CHAOS_MINUTES={minutes}):\n{}",
        report.violations.len(),
        dir.display(),
        report.violations.join("\n")
    );
    // A soak in which sentinel never acted proves little about the action checks.
    assert!(
        report.stats.get("docker_restarts").copied().unwrap_or(0) > 0,
        "seed {seed}: sentinel restarted nothing in {minutes} min: the schedule exercised no \
         healing"
    );
    drop(tmp);
}

// ---------------------------------------------------------------------------------------------
// The checker on synthetic histories.

const A: &str = "aaaaaaaaaaaa0000";
const B: &str = "bbbbbbbbbbbb0000";

fn al(t: f64, id: &str, decision: &str, reason: &str) -> AuditLine {
    AuditLine {
        t,
        id: id.into(),
        decision: decision.into(),
        reason: reason.into(),
        action: matches!(decision, "intent" | "taken" | "failed").then(|| "restart".into()),
        breaker: None,
        from: None,
        wait_secs: None,
    }
}

fn br(t: f64, id: &str, from: &str, to: &str, wait: Option<f64>) -> AuditLine {
    AuditLine {
        from: Some(from.into()),
        breaker: Some(to.into()),
        wait_secs: wait,
        ..al(t, id, "breaker", "x")
    }
}

fn ev(t: f64, id: &str, action: &str, labelled: bool) -> DockerEvent {
    let mut attrs = BTreeMap::new();
    attrs.insert("name".to_string(), format!("snt-chaos-{}", &id[..1]));
    if labelled {
        attrs.insert(LABEL.to_string(), "true".to_string());
    }
    DockerEvent {
        t,
        id: id.into(),
        action: action.into(),
        name: attrs["name"].clone(),
        attrs,
    }
}

/// One sentinel run (pid 100, 1000..1100) that acted on A twice, opened and closed A's
/// breaker, never touched B, held programs 11 and 12 which were gone after exit.
fn clean() -> Histories {
    let audit = vec![
        al(1010.0, A, "intent", "health_status: unhealthy"),
        al(1011.0, A, "taken", "done"),
        al(1015.0, B, "skipped", "not_labelled"),
        br(1020.0, A, "CLOSED", "OPEN", Some(4.0)),
        br(1024.1, A, "OPEN", "HALF_OPEN", None),
        al(1024.2, A, "intent", "health_status: unhealthy"),
        al(1025.0, A, "taken", "done"),
        br(1031.0, A, "HALF_OPEN", "CLOSED", None),
    ];
    let docker = vec![
        ev(1001.0, A, "create", true),
        ev(1001.0, B, "create", false),
        ev(1010.9, A, "restart", true),
        ev(1024.9, A, "restart", true),
        ev(1040.0, B, "kill", false),
    ];
    let progs = vec![
        ProgSample {
            t: 1005.0,
            kernel: vec![
                (11, "sched_switch".into()),
                (12, "x".into()),
                (99, "y".into()),
            ],
            held: vec![(100, vec![11, 12])],
        },
        ProgSample {
            t: 1101.5,
            kernel: vec![(99, "y".into())],
            held: vec![],
        },
    ];
    let res = vec![ResSample {
        t: 1050.0,
        pid: 100,
        rss_kib: 30_000,
        fds: 40,
    }];
    Histories {
        audit,
        docker,
        docker_gaps: vec![],
        progs,
        res,
        nemesis: vec![
            NemesisEvent::SentinelStart { t: 999.0, pid: 100 },
            NemesisEvent::SentinelExit {
                t: 1100.0,
                pid: 100,
            },
        ],
        end: 1102.0,
    }
}

fn assert_rejected_by(h: &Histories, check_no: usize) {
    let r = check(h, &limits());
    assert!(
        r.failed(check_no),
        "a violation of {} passed: {:?}",
        CHECKS[check_no - 1],
        r.violations
    );
    println!("rejected as expected: {:?}", r.violations);
}

#[test]
fn checker_passes_a_clean_history() {
    let r = check(&clean(), &limits());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.stats["docker_restarts"], 2);
    assert_eq!(r.stats["breaker_CLOSED->OPEN"], 1);
}

#[test]
fn checker_rejects_action_on_unlabelled_container() {
    let mut h = clean();
    h.audit
        .push(al(1050.0, B, "intent", "health_status: unhealthy"));
    h.docker.push(ev(1050.5, B, "restart", false));
    h.audit.push(al(1050.6, B, "taken", "done"));
    assert_rejected_by(&h, 1);
    // Docker's side alone is enough.
    let mut h = clean();
    h.docker.push(ev(1050.5, B, "restart", false));
    assert_rejected_by(&h, 1);
}

#[test]
fn checker_rejects_actions_beyond_bounds() {
    // Five restarts of A within 60 s, 3 s apart: the rule limit is 4.
    let mut h = clean();
    h.audit.retain(|a| a.decision != "breaker");
    for i in 0..3 {
        let t = 1040.0 + 3.0 * i as f64;
        h.audit.push(al(t, A, "intent", "u"));
        h.docker.push(ev(t + 0.5, A, "restart", true));
        h.audit.push(al(t + 0.6, A, "taken", "done"));
    }
    assert_rejected_by(&h, 2);
    // Two actions 0.5 s apart: faster than the back-off allows.
    let mut h = clean();
    h.audit.push(al(1010.5, A, "intent", "u"));
    assert_rejected_by(&h, 2);
}

#[test]
fn checker_rejects_illegal_or_overlong_breaker_states() {
    // CLOSED -> HALF_OPEN is not a transition.
    let mut h = clean();
    h.audit.push(br(1050.0, B, "CLOSED", "HALF_OPEN", None));
    assert_rejected_by(&h, 3);
    // HALF_OPEN before the wait elapsed.
    let mut h = clean();
    h.audit[4].t = 1021.0;
    assert_rejected_by(&h, 3);
    // OPEN for 30 s with a 4 s wait.
    let mut h = clean();
    h.audit.push(br(1040.0, B, "CLOSED", "OPEN", Some(4.0)));
    h.audit.push(br(1070.0, B, "OPEN", "HALF_OPEN", None));
    assert_rejected_by(&h, 3);
    // ... unless sentinel was SIGSTOPped for most of it.
    h.nemesis
        .insert(1, NemesisEvent::SentinelStopped { t: 1041.0 });
    h.nemesis
        .insert(2, NemesisEvent::SentinelContinued { t: 1069.0 });
    let r = check(&h, &limits());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // A trial that holds HALF_OPEN past the max wait.
    let mut h = clean();
    h.audit.last_mut().unwrap().t = 1060.0;
    assert_rejected_by(&h, 3);
    // Still OPEN when the run ended, long past its wait.
    let mut h = clean();
    h.audit.push(br(1050.0, B, "CLOSED", "OPEN", Some(4.0)));
    assert_rejected_by(&h, 3);
}

#[test]
fn checker_rejects_unaudited_or_unobserved_restarts() {
    // Docker restarted A with no audit line.
    let mut h = clean();
    h.docker.push(ev(1060.0, A, "restart", true));
    assert_rejected_by(&h, 4);
    // Audit claims a restart Docker never did.
    let mut h = clean();
    h.audit.push(al(1060.0, A, "intent", "u"));
    h.audit.push(al(1061.0, A, "taken", "done"));
    assert_rejected_by(&h, 4);
    // ... which is only "unobservable" when no event stream was connected then.
    h.docker_gaps.push((1059.0, 1065.0));
    let r = check(&h, &limits());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.stats["taken_unobservable"], 1);
}

#[test]
fn checker_rejects_programs_left_behind() {
    let mut h = clean();
    h.progs[1].kernel.push((12, "x".into()));
    assert_rejected_by(&h, 5);
    // No sample after the exit: nothing shows the programs went away.
    let mut h = clean();
    h.progs.pop();
    assert_rejected_by(&h, 5);
}

#[test]
fn checker_rejects_memory_or_fd_growth_past_ceilings() {
    let mut h = clean();
    h.res.push(ResSample {
        t: 1060.0,
        pid: 100,
        rss_kib: 200 * 1024,
        fds: 40,
    });
    assert_rejected_by(&h, 6);
    let mut h = clean();
    h.res[0].fds = 1000;
    assert_rejected_by(&h, 6);
}

#[test]
fn schedule_depends_only_on_the_seed() {
    let a = schedule(7, 240.0, SLOTS);
    assert_eq!(a, schedule(7, 240.0, SLOTS));
    assert_ne!(a, schedule(8, 240.0, SLOTS));
    let kills = a
        .iter()
        .filter(|s| matches!(s.fault, Fault::SentinelKill { .. }))
        .count();
    assert_eq!(kills, 1, "exactly one SIGKILL of sentinel per run");
    assert!(a.iter().all(|s| s.at >= 15.0 && s.at <= 240.0 - 25.0));
}
