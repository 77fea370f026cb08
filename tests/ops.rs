//! Operations surface: `sentinel check`, `/metrics` (promtool and a real Prometheus server),
//! `sentinel status` over the unix socket, `sentinel top` in a real terminal (tmux), and the
//! files in deploy/ (systemd unit, alert rules, Grafana dashboard).
//!
//! Needs root and BPF (like every privileged test), plus `promtool`/`prometheus` (Debian
//! package `prometheus`), `tmux`, `systemd-analyze` (package `systemd`) and `setpriv`
//! (`util-linux`). Under CI=true a missing tool is a failure.

mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    docker::{self, Container, IMAGE},
    require, require_root,
    sentinel::{BIN, SentinelRun, http_get, metrics_addr_of, status_json},
};

const FIRST: Duration = Duration::from_secs(60);

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn require_tool(tool: &str, package: &str) -> bool {
    require(
        tool,
        which(tool),
        &format!("`{tool}` not found (Debian package {package})"),
    )
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A port that was free a moment ago (the kernel does not hand it out again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn check_reports_every_item_and_exit_status_follows_failures() {
    let out = Command::new(BIN).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    for line in &lines {
        let status = line.split_whitespace().next().unwrap_or_default();
        assert!(
            ["ok", "warn", "fail"].contains(&status),
            "line without ok/warn/fail: {line}"
        );
    }
    let item = |name: &str| {
        lines
            .iter()
            .find(|l| {
                l.split_once("  ")
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(name))
            })
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{stdout}"))
    };
    for name in [
        "kernel:",
        "btf:",
        "tracefs:",
        "bpf permission:",
        "memlock limit:",
        "docker:",
        "cgroup:",
        "lockdown:",
        "ebpf object:",
    ] {
        item(name);
    }
    for hook in sentinel::collect::loader::HOOKS {
        item(&format!("tracepoint {}:{}", hook.category, hook.tracepoint));
    }
    let failed = lines.iter().any(|l| l.starts_with("fail"));
    assert_eq!(
        out.status.success(),
        !failed,
        "exit status follows the fail lines"
    );
    // Every warn/fail says what to do.
    for l in lines.iter().filter(|l| l.starts_with("fail")) {
        assert!(l.contains(" — "), "fail without advice: {l}");
    }
    // The JSON form carries the same verdict.
    let json = Command::new(BIN)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"].as_bool(), Some(!failed));
    assert_eq!(v["items"].as_array().unwrap().len(), lines.len());

    if !require_root("check as an unprivileged user") || !require_tool("setpriv", "util-linux") {
        return;
    }
    if support::is_root() {
        // This machine can run sentinel as root; as nobody without capabilities it cannot.
        assert!(
            out.status.success(),
            "root on this host should pass:\n{stdout}"
        );
        let out = support::sentinel::as_nobody()
            .args(["check"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(
            !out.status.success(),
            "unprivileged check must fail:\n{stdout}"
        );
        let perm = stdout
            .lines()
            .find(|l| l.contains("bpf permission:"))
            .unwrap();
        assert!(
            perm.starts_with("fail") && perm.contains("CAP_BPF"),
            "{perm}"
        );
    }
}

/// A Prometheus server on loopback with a temporary config and data directory.
struct PromServer {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl PromServer {
    fn start(target: &str, rules: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: sentinel\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn query(&self, q: &str) -> Option<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (code, body) = http_get(&self.addr, &path, Duration::from_secs(5)).ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/metrics` parses with promtool; a real Prometheus scrapes it, answers a query for
/// `sentinel_sched_switch_total` with a rising value, loads the alert rules and evaluates
/// every Grafana dashboard query; 200 idle connections do not lock scrapes out.
#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    if !require_root("metrics_pass_promtool_and_a_real_prometheus_scrapes_them")
        || !require_tool("promtool", "prometheus")
        || !require_tool("prometheus", "prometheus")
    {
        return;
    }
    let mut run = SentinelRun::start(&["--interval", "500ms"]);
    run.next_interval(FIRST);
    run.next_interval(FIRST);
    let addr = metrics_addr_of(&run.socket());
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let started = Instant::now();
    let (code, body) = http_get(&addr, "/metrics", Duration::from_secs(10)).unwrap();
    let scrape = started.elapsed();
    assert_eq!(code, 200, "{body}");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let families = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
    println!(
        "scrape: {} bytes, {families} families, {samples} samples in {scrape:?}",
        body.len()
    );
    for name in [
        "sentinel_sched_switch_total ",
        "sentinel_runqueue_latency_seconds_bucket{le=",
        "sentinel_drain_duration_seconds_bucket{le=",
        "sentinel_bpf_program_attached{program=\"snt_sched_switch\"} 1",
        "sentinel_map_overflow_total{map=\"ifaces\"}",
        "sentinel_cpu_busy_ratio ",
        "sentinel_map_overflow_total{map=\"netns_tcp\"}",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "sentinel_heap_allocated_bytes ",
        "sentinel_build_info{",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    let (code, _) = http_get(&addr, "/", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 404);

    // promtool reads the exposition from stdin.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 200 idle connections (slow or hostile scraper) while Prometheus scrapes.
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    let rules = repo_file("deploy/prometheus-alerts.yml");
    let prom = PromServer::start(&addr, &rules);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut values: Vec<f64> = Vec::new();
    while Instant::now() < deadline && values.len() < 2 {
        std::thread::sleep(Duration::from_millis(1500));
        let Some(v) = prom.query("sentinel_sched_switch_total") else {
            continue;
        };
        if let Some(value) = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            && values.last().is_none_or(|&last| value > last)
        {
            values.push(value);
        }
    }
    assert!(
        values.len() >= 2,
        "Prometheus did not return a rising sentinel_sched_switch_total: {values:?}; log:\n{}",
        prom.log()
    );
    println!("prometheus: sentinel_sched_switch_total {values:?}");
    drop(idle);

    // The alert rules load and evaluate without errors.
    let (code, rules_body) = http_get(&prom.addr, "/api/v1/rules", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200);
    let rules: serde_json::Value = serde_json::from_str(&rules_body).unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let loaded: usize = groups
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(loaded >= 10, "{rules_body}");
    // Every dashboard query is valid PromQL for this Prometheus and names existing metrics.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            let v = prom
                .query(&expr)
                .unwrap_or_else(|| panic!("Prometheus rejected the dashboard query {expr}"));
            assert_eq!(v["status"], "success", "{expr}: {v}");
            checked += 1;
        }
    }
    println!("dashboard: {checked} queries accepted by Prometheus");
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let longest = finished
        .intervals
        .iter()
        .map(|iv| iv.interval_ms)
        .fold(0.0, f64::max);
    println!("longest interval with 200 idle connections open: {longest:.1} ms (500 ms set)");
    let seqs: Vec<u64> = finished.intervals.iter().map(|iv| iv.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the drain kept its sequence under 200 idle connections: {seqs:?}"
    );
}

/// `status` round-trips over the unix socket; the socket is 0600 in a 0700 root-owned dir and
/// refuses other users; a second daemon on the same socket refuses to start, naming the PID.
#[test]
fn status_round_trips_and_the_socket_is_root_only() {
    if !require_root("status_round_trips_and_the_socket_is_root_only")
        || !require_tool("setpriv", "util-linux")
    {
        return;
    }
    let mut run = SentinelRun::start(&["--interval", "200ms", "--no-metrics"]);
    run.next_interval(FIRST);
    run.next_interval(FIRST);
    let socket = run.socket();
    let snap = status_json(&socket);
    assert_eq!(snap["pid"].as_i64(), Some(i64::from(run.pid())));
    assert!(snap["latest"]["seq"].as_u64().is_some(), "{snap}");
    assert!(
        snap["latest"]["counters"]["sched_switch"]
            .as_u64()
            .is_some()
    );
    assert!(snap["metrics_addr"].is_null(), "--no-metrics: {snap}");
    let later = status_json(&socket);
    assert!(later["latest"]["seq"].as_u64() >= snap["latest"]["seq"].as_u64());

    let text = Command::new(BIN)
        .args(["status", "--status-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    println!("{text}");
    assert!(text.starts_with(&format!("sentinel {}", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains(&format!("pid {}", run.pid())));
    assert!(text.contains("latest "));

    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    let dir = std::fs::metadata(&run.runtime_dir).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    assert_eq!(dir.uid(), 0);

    // Another user cannot connect (EACCES on the 0700 directory / 0600 socket).
    let out = support::sentinel::as_nobody()
        .args(["status", "--status-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // A second daemon with the same runtime directory refuses at once, naming the first.
    let second = Command::new(BIN)
        .args(["run", "--no-metrics", "--status-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr
            .to_lowercase()
            .contains(&format!("pid {}", run.pid()))
            && stderr.contains("already running"),
        "{stderr}"
    );
    // The first one is unaffected.
    assert!(status_json(&socket)["latest"]["seq"].as_u64().is_some());
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// Without flags the metrics endpoint listens on 127.0.0.1:9464 only: a non-loopback address
/// of this host is refused. Binding 0.0.0.0 is allowed, with one loud warning.
#[test]
fn metrics_default_bind_is_loopback_and_all_interfaces_warns() {
    if !require_root("metrics_default_bind_is_loopback_and_all_interfaces_warns") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("rt/sentinel.sock");
    let mut child = Command::new(BIN)
        .args(["run", "--interval", "200ms", "--status-socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + FIRST;
    let mut answered = None;
    while Instant::now() < deadline {
        if let Ok(r) = http_get("127.0.0.1:9464", "/metrics", Duration::from_secs(2))
            && r.1.contains("sentinel_build_info")
        {
            answered = Some(r);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("sentinel exited {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered.is_some(), "127.0.0.1:9464 did not answer");
    let snap = status_json(&socket);
    assert_eq!(snap["metrics_addr"].as_str(), Some("127.0.0.1:9464"));
    // Every non-loopback IPv4 address of this host: connection refused.
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let mut tried = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(cidr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1) else {
            continue;
        };
        let ip = cidr.split('/').next().unwrap();
        if ip.starts_with("127.") {
            continue;
        }
        let e = TcpStream::connect_timeout(
            &format!("{ip}:9464").parse().unwrap(),
            Duration::from_secs(2),
        )
        .expect_err("metrics reachable on a non-loopback address");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{ip}: {e}");
        tried += 1;
    }
    println!("non-loopback addresses refused: {tried}");
    // E1 as the row states it: from another network namespace, over a veth pair, the host's
    // veth address does not answer on 9464.
    let ns = support::netns::Netns::new("e1");
    let host_if = format!("snte1h{}", std::process::id() % 10000);
    let run_ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run_ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "e1peer", "netns", &ns.name,
    ]);
    run_ip(&["addr", "add", "169.254.251.1/30", "dev", &host_if]);
    run_ip(&["link", "set", &host_if, "up"]);
    run_ip(&[
        "-n",
        &ns.name,
        "addr",
        "add",
        "169.254.251.2/30",
        "dev",
        "e1peer",
    ]);
    run_ip(&["-n", &ns.name, "link", "set", "e1peer", "up"]);
    let from_netns = ns.run(|| {
        TcpStream::connect_timeout(
            &"169.254.251.1:9464".parse().unwrap(),
            Duration::from_secs(3),
        )
        .map(|_| ())
    });
    let _ = Command::new("ip").args(["link", "del", &host_if]).output();
    let e = from_netns.expect_err("metrics reachable from another netns over a veth");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    println!("E1: from a netns over veth, 169.254.251.1:9464: {e}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());

    // 0.0.0.0: allowed, one warning naming the address.
    let port = free_port();
    let mut run = SentinelRun::start(&[
        "--interval",
        "200ms",
        "--metrics-addr",
        &format!("0.0.0.0:{port}"),
    ]);
    run.next_interval(FIRST);
    let finished = run.stop();
    let warnings: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("ALL interfaces"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", finished.stderr);
    assert!(warnings[0].contains(&format!("0.0.0.0:{port}")) && warnings[0].contains("WARN"));
}

/// `sentinel top` in a real terminal: the screen shows the host section and a container row.
/// The capture is written to target/ops-top-capture.txt (the README's screenshot).
#[test]
fn top_renders_host_and_containers_in_tmux() {
    if !require_tool("tmux", "tmux") || !docker::ensure() {
        return;
    }
    let busy = Container::run(
        "snt-ops-top",
        &[],
        IMAGE,
        &["sh", "-c", "while :; do sleep 0.05; done"],
    );
    let mut run = SentinelRun::start(&["--interval", "500ms", "--no-metrics"]);
    run.next_interval(FIRST);
    let socket = run.socket();
    let (screen, quit) = support::runtimes::top_session(BIN, &socket, |s| {
        s.contains("Host") && s.contains(&busy.name)
    });
    println!("{screen}");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ops-top-capture.txt");
    let _ = std::fs::write(&capture, &screen);
    assert!(screen.contains("sentinel top"), "header missing");
    assert!(
        screen.contains("Host") && screen.contains("sched switch/s"),
        "host section missing"
    );
    assert!(screen.contains("runq lat"), "run-queue latency missing");
    assert!(
        screen.contains("Busiest containers"),
        "container section missing"
    );
    assert!(screen.contains("SLOWED BY"), "slowed-by column missing");
    // Its own row: the name in the first column (another row may name it as the contender it
    // waited behind, in SLOWED BY).
    let row = screen
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with(busy.name.as_str()))
        .unwrap_or_else(|| panic!("no row for container {}", busy.name));
    assert!(
        row.contains("sentinel-test-busybox"),
        "row without its image: {row}"
    );
    // `q` quits and restores the terminal.
    assert!(quit, "top did not quit on q");
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}

/// The shipped unit passes `systemd-analyze verify`; the alert rules pass `promtool check
/// rules`; the dashboard is valid JSON naming only sentinel metrics.
#[test]
fn deploy_files_validate() {
    if require_tool("systemd-analyze", "systemd") {
        let dir = tempfile::tempdir().unwrap();
        // verify wants ExecStart to exist: point it at the binary under test.
        let unit = std::fs::read_to_string(repo_file("deploy/sentinel.service"))
            .unwrap()
            .replace("/usr/local/bin/sentinel", BIN);
        let path = dir.path().join("sentinel.service");
        std::fs::write(&path, unit).unwrap();
        // verify runs `man` for each Documentation= page: give it the generated ones.
        let man1 = dir.path().join("man/man1");
        std::fs::create_dir_all(&man1).unwrap();
        let pages = Command::new(BIN)
            .args(["manpage", "--dir"])
            .arg(&man1)
            .status()
            .unwrap();
        assert!(pages.success(), "sentinel manpage --dir");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("MANPATH", dir.path().join("man"))
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && all.trim().is_empty(),
            "verify: {all}"
        );
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) {
            println!("{line}");
        }
    }
    if require_tool("promtool", "prometheus") {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo_file("deploy/prometheus-alerts.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let exprs: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 15);
    // sentinel's own metrics, and the process_* ones it exports about itself.
    assert!(
        exprs
            .iter()
            .all(|e| e.contains("sentinel_") || e.contains("process_")),
        "{exprs:?}"
    );
    // Percentages are 0-1 ratios now (CHANGELOG): nothing asks for the old names.
    assert!(exprs.iter().all(|e| !e.contains("_percent")), "{exprs:?}");
}

/// `--drop-capabilities`: once attached, every capability but CAP_SYS_PTRACE is gone from every
/// thread, and the daemon keeps draining, serving and removing map entries of gone namespaces.
#[test]
fn capabilities_are_dropped_after_attach_and_drains_continue() {
    if !require_root("capabilities_are_dropped_after_attach_and_drains_continue")
        || !require_tool("ip", "iproute2")
    {
        return;
    }
    let ns = support::netns::Netns::new("ops-caps");
    let mut run = SentinelRun::start(&["--interval", "200ms", "--drop-capabilities"]);
    run.next_interval(FIRST);
    let pid = run.pid();
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .trim();
            let expect = if matches!(key, "CapEff:" | "CapPrm:") {
                "0000000000080000" // CAP_SYS_PTRACE only
            } else {
                "0000000000000000"
            };
            assert_eq!(value, expect, "{key} of a thread of pid {pid}");
        }
        threads += 1;
    }
    println!("threads checked: {threads}");
    // Traffic in a namespace creates a map entry; deleting the namespace lets the periodic
    // clean-up remove it, a map write made without CAP_BPF.
    ns.run(|| support::netns::udp_burst(200, 16));
    let with_ns = (0..3)
        .map(|_| run.next_interval(FIRST).collector.iface_entries)
        .max()
        .unwrap();
    assert!(with_ns >= 1);
    drop(ns);
    let mut entries = with_ns;
    for _ in 0..30 {
        entries = run.next_interval(FIRST).collector.iface_entries;
        if entries < with_ns {
            break;
        }
    }
    assert!(
        entries < with_ns,
        "entries of the deleted namespace stayed ({entries})"
    );
    let snap = run.status_json();
    assert!(snap["latest"]["seq"].as_u64().unwrap() > 5);
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("capabilities dropped after attach"),
        "{}",
        finished.stderr
    );
    for denied in [
        "Operation not permitted",
        "Permission denied",
        "keeping the start-up",
    ] {
        assert!(!finished.stderr.contains(denied), "{}", finished.stderr);
    }
    let after: u64 = finished
        .intervals
        .iter()
        .skip(1)
        .map(|iv| iv.counters["sched_switch"].expect("attached"))
        .sum();
    assert!(after > 0, "no context switches counted after the drop");
    assert!(finished.intervals.last().unwrap().final_totals.is_some());
}

/// E4: a slow or hostile scraper holds 200 idle connections (some send half a request and
/// stop) for 60 s. The drain keeps its cadence (longest interval < 2x the interval), memory
/// stays flat (the heap's live allocations and the resident size grow by at most 2 MiB), and a
/// fresh scrape is answered within Prometheus' default scrape time-out (10 s)
/// while the idle connections are held.
#[test]
fn e4_idle_and_half_open_scrapers_do_not_stall_the_drain_or_lock_out_scrapes() {
    if !require_root("e4_idle_and_half_open_scrapers_do_not_stall_the_drain_or_lock_out_scrapes") {
        return;
    }
    let mut run = SentinelRun::start(&["--interval", "500ms"]);
    run.next_interval(FIRST);
    run.next_interval(FIRST);
    let addr = metrics_addr_of(&run.socket());
    // Warm the encoder once so the baseline includes its buffers.
    http_get(&addr, "/metrics", Duration::from_secs(10)).unwrap();
    let mem_start = run.memory();
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::new();
    let mut answered = Vec::new();
    let mut mem_max = mem_start;
    // Keep 200 open for 60 s: the server closes idle ones after its header time-out, so the
    // "scraper" reopens what was closed, as a hostile one would.
    while started.elapsed() < Duration::from_secs(60) {
        held.retain(|s| {
            let mut b = [0u8; 512];
            s.set_nonblocking(true).unwrap();
            // WouldBlock: still open and silent. EOF, an error reply or a reset: the server
            // gave up on it.
            matches!((&*s).read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while held.len() < 200 {
            let Ok(mut s) = TcpStream::connect(&addr) else {
                break;
            };
            if held.len().is_multiple_of(2) {
                // Half a request line, then nothing.
                let _ = s.write_all(b"GET /metr");
            }
            held.push(s);
        }
        let t = Instant::now();
        let (code, body) = http_get(&addr, "/metrics", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("a scrape with {} idle connections held: {e}", held.len()));
        assert_eq!(code, 200);
        assert!(body.contains("sentinel_sched_switch_total"));
        answered.push(t.elapsed());
        mem_max = mem_max.max(run.memory());
        std::thread::sleep(Duration::from_secs(5));
    }
    let mem_end = run.memory();
    drop(held);
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let during: Vec<f64> = finished
        .intervals
        .iter()
        .skip(3)
        .map(|iv| iv.interval_ms)
        .collect();
    let longest = during.iter().copied().fold(0.0, f64::max);
    let slowest = answered.iter().max().copied().unwrap_or_default();
    println!(
        "E4: {} scrapes answered with 200 idle connections held, slowest {slowest:?}; \
         longest interval {longest:.1} ms (500 ms set) over {} intervals; memory {mem_start:?} \
         -> {mem_end:?} (max {mem_max:?})",
        answered.len(),
        during.len()
    );
    assert!(answered.len() >= 10, "{answered:?}");
    assert!(
        longest < 1000.0,
        "drain cadence under idle scrapers: {during:?}"
    );
    assert!(
        mem_max.heap_kib <= mem_start.heap_kib + 2048,
        "the heap grew by more than 2 MiB under idle scrapers: {mem_start:?} -> {mem_max:?}"
    );
    assert!(
        mem_max.rss_kib <= mem_start.rss_kib + 2048,
        "RSS grew by more than 2 MiB under idle scrapers: {mem_start:?} -> {mem_max:?}"
    );
}

/// E5: nothing secret leaks into `/metrics` or `status --json`: no environment values (the
/// daemon's or a container's), no exec command strings (the config's or a container's), no
/// config path beyond the file name.
#[test]
fn e5_metrics_and_status_carry_no_secrets() {
    if !require_root("e5_metrics_and_status_carry_no_secrets") || !docker::ensure() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("snt-ops-secretdir-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("sentinel.toml");
    std::fs::write(
        &config,
        r#"[[heal.rules]]
name = "flush"
trigger = { kind = "unhealthy" }
action = { kind = "exec", cmd = ["sh", "-c", "echo cfgcmdsecret4711"] }
"#,
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let name = format!("snt-ops-e5-{}", std::process::id());
    let _c = Container::run(
        &name,
        &[
            "--label",
            "sentinel.heal=true",
            "-e",
            "CONTAINER_TOKEN=envsecret0815",
        ],
        IMAGE,
        &["sh", "-c", "while true; do sleep 1; done # argvsecret42"],
    );
    let cfg = config.to_str().unwrap();
    let mut run = SentinelRun::start_with_env(
        &["--interval", "200ms", "--config", cfg],
        &[("SENTINEL_API_TOKEN", "daemonenvsecret99")],
    );
    let socket = run.socket();
    // Wait until the container is attributed (its row proves the snapshot has content).
    let deadline = Instant::now() + FIRST;
    let mut status = serde_json::Value::Null;
    while Instant::now() < deadline {
        run.next_interval(FIRST);
        status = status_json(&socket);
        if status.to_string().contains(&name) {
            break;
        }
    }
    assert!(
        status.to_string().contains(&name),
        "container never showed up in status: {status}"
    );
    let addr = metrics_addr_of(&socket);
    let (code, metrics) = http_get(&addr, "/metrics", Duration::from_secs(10)).unwrap();
    assert_eq!(code, 200);
    let status = status.to_string();
    let dir_path = dir.path().to_str().unwrap();
    for (what, text) in [("/metrics", &metrics), ("status --json", &status)] {
        for secret in [
            "daemonenvsecret99",
            "envsecret0815",
            "argvsecret42",
            "cfgcmdsecret4711",
            dir_path,
        ] {
            assert!(!text.contains(secret), "{what} leaks {secret:?}");
        }
    }
    println!(
        "E5: /metrics {} bytes and status {} bytes hold none of 5 planted secrets",
        metrics.len(),
        status.len()
    );
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}

/// C5: there is no live reload. SIGHUP (a reload by habit) must not kill the daemon, which is
/// the signal's default action: one warning says so and the drain goes on.
#[test]
fn c5_sighup_does_not_kill_the_daemon_and_says_there_is_no_reload() {
    if !require_root("c5_sighup_does_not_kill_the_daemon_and_says_there_is_no_reload") {
        return;
    }
    let mut run = SentinelRun::start(&["--interval", "200ms", "--no-metrics"]);
    run.next_interval(FIRST);
    let before = run.next_interval(FIRST).seq;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let mut after = before;
    for _ in 0..5 {
        after = run.next_interval(FIRST).seq;
    }
    assert!(after >= before + 5);
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let warnings: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("SIGHUP"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", finished.stderr);
    assert!(warnings[0].contains("no live reload"), "{}", warnings[0]);
}

/// Every series (metric name and labels) of one scrape, checked unique: two samples with one
/// label set are a scrape error for Prometheus. Returns the series.
fn unique_series(body: &str) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashSet::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        assert!(
            seen.insert(series.to_string()),
            "two samples of {series} in one scrape:\n{body}"
        );
    }
    seen
}

fn promtool_check_metrics(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.trim().is_empty(),
        "promtool check metrics: {all}"
    );
}

/// Samples Prometheus dropped as duplicates (same series, same timestamp) in its scrapes.
fn prom_duplicates(prom: &PromServer) -> f64 {
    let (_, own) = http_get(&prom.addr, "/metrics", Duration::from_secs(5)).unwrap();
    own.lines()
        .find_map(|l| l.strip_prefix("prometheus_target_scrapes_sample_duplicate_timestamp_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Prometheus counts duplicate samples")
}

/// Issue 17 item 5: `docker rm -f web; docker run --name web ...` while Prometheus scrapes.
/// The old and the new `web` are both exported for a while (the old one until it decays),
/// each with its own short id; no scrape (every one parsed here, and Prometheus' own count of
/// duplicate samples) ever has two samples with one label set. Per-container run-queue
/// latency, the TCP map overflow and the process_* metrics are there; promtool is clean.
#[test]
fn metrics_have_no_duplicate_series_across_a_recreate_under_one_name() {
    if !require_root("metrics_have_no_duplicate_series_across_a_recreate_under_one_name")
        || !docker::ensure()
        || !require_tool("promtool", "prometheus")
        || !require_tool("prometheus", "prometheus")
    {
        return;
    }
    let name = format!("snt-ops-web-{}", std::process::id());
    let busy = ["sh", "-c", "while :; do sleep 0.02; done"];
    let first = Container::run(&name, &[], IMAGE, &busy);
    let mut run = SentinelRun::start(&["--interval", "500ms"]);
    run.next_interval(FIRST);
    let addr = metrics_addr_of(&run.socket());
    let rules = repo_file("deploy/prometheus-alerts.yml");
    let prom = PromServer::start(&addr, &rules);
    let label = format!("container=\"{name}\"");
    let id_of = |c: &Container| format!("id=\"{}\"", &c.id[..12]);
    let mut scrapes = 0;
    let mut scrape = || {
        let (code, body) = http_get(&addr, "/metrics", Duration::from_secs(10)).unwrap();
        assert_eq!(code, 200);
        unique_series(&body);
        scrapes += 1;
        body
    };
    let cpu_row = |body: &str, id: &str| {
        body.lines().any(|l| {
            l.starts_with("sentinel_container_cpu_seconds_total{")
                && l.contains(&label)
                && l.contains(id)
        })
    };
    let wait = |what: &str, scrape: &mut dyn FnMut() -> String, f: &dyn Fn(&str) -> bool| {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let body = scrape();
            if f(&body) {
                return body;
            }
            assert!(Instant::now() < end, "{what} never seen:\n{body}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let old_id = id_of(&first);
    let body = wait("the first container", &mut scrape, &|b| cpu_row(b, &old_id));
    for family in [
        "sentinel_container_runqueue_waits_total{",
        "sentinel_container_runqueue_wait_seconds_total{",
        "sentinel_container_runqueue_latency_p99_seconds{",
    ] {
        assert!(
            body.lines()
                .any(|l| l.starts_with(family) && l.contains(&label)),
            "{family} for {name} missing"
        );
    }
    // The recreate. On this cgroup-v1/hybrid host the container key is the mount namespace
    // inode, which the kernel hands to the next namespace created: an idle filler is meant to
    // take the freed one. Whether the daemon names the new `web` at all is issue 17 item 2 (key
    // re-resolution, another change): the side-by-side check runs once the daemon's own
    // intervals list the new container; every scrape meanwhile is checked for duplicates.
    drop(first);
    let _filler = Container::run(&format!("{name}-filler"), &[], IMAGE, &["sleep", "600"]);
    let second = Container::run(&name, &[], IMAGE, &busy);
    let new_id = id_of(&second);
    let end = Instant::now() + Duration::from_secs(40);
    let mut listed_new = false;
    let mut both = None;
    while Instant::now() < end {
        let iv = run.next_interval(FIRST);
        listed_new |= iv.containers.iter().any(|c| c.id == second.id);
        let body = scrape();
        if cpu_row(&body, &old_id) && cpu_row(&body, &new_id) {
            both = Some(body);
            break;
        }
        assert!(
            !listed_new || cpu_row(&body, &old_id) || cpu_row(&body, &new_id),
            "the daemon lists the new {name} but /metrics has no {name} row:\n{body}"
        );
    }
    let Some(both) = both else {
        let body = scrape();
        let rows: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("sentinel_container_cpu_seconds_total{"))
            .collect();
        println!("container rows at the end: {rows:#?}");
        // Still a test of the exporter: every scrape of the recreate was free of duplicates.
        assert!(
            !listed_new,
            "the daemon listed the new {name} ({new_id}) but /metrics never showed it beside the old one"
        );
        let last = scrape();
        promtool_check_metrics(&last);
        assert_eq!(
            prom_duplicates(&prom),
            0.0,
            "Prometheus saw duplicate samples"
        );
        println!(
            "NOTE: the daemon never listed the new {name} within 40 s (issue 17 item 2: the \
             recycled container key keeps the old name); {scrapes} scrapes parsed, no duplicate series"
        );
        let finished = run.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        return;
    };
    let rows: Vec<&str> = both
        .lines()
        .filter(|l| l.starts_with("sentinel_container_cpu_seconds_total{") && l.contains(&label))
        .collect();
    println!("after the recreate: {rows:#?}");
    // Keep scraping while Prometheus does too.
    for _ in 0..10 {
        scrape();
        std::thread::sleep(Duration::from_millis(500));
    }
    promtool_check_metrics(&both);
    let last = scrape();
    promtool_check_metrics(&last);
    // Prometheus stored both `web` series and counted no duplicate sample in any scrape.
    let q = format!("count by (id) (sentinel_container_cpu_seconds_total{{{label}}})");
    let end = Instant::now() + Duration::from_secs(30);
    let mut ids = 0;
    while Instant::now() < end && ids < 2 {
        std::thread::sleep(Duration::from_millis(1000));
        ids = prom
            .query(&q)
            .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
            .unwrap_or(0);
    }
    assert_eq!(
        ids,
        2,
        "Prometheus did not store two `{name}` series; log:\n{}",
        prom.log()
    );
    let dup = prom_duplicates(&prom);
    let up = prom.query("up{job=\"sentinel\"}").and_then(|v| {
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    });
    println!(
        "{scrapes} scrapes parsed, no duplicate series; Prometheus: up {up:?}, duplicate samples {dup}"
    );
    assert_eq!(dup, 0.0, "Prometheus saw duplicate samples");
    assert_eq!(up.as_deref(), Some("1"));
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}
