//! The release artifacts of `cargo xtask dist` (issue 18), used as a user would: the tarball
//! unpacked and run, the Debian package installed on this host and under a real systemd, the
//! image loaded into Docker and run with the documented mounts, the DaemonSet's structure.
//! `cargo xtask test` builds the artifacts first; under CI=true their absence is a failure.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Instant,
};

use sentinel::model::Interval;
use support::{
    docker,
    nspawn::{Container, debian_root, free_port, repo_file, scrape, text},
    require, require_root, sentinel_programs, sentinel_programs_left,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn dist(name: &str) -> Option<PathBuf> {
    let p = repo_file("target/dist").join(name);
    require(
        &format!("target/dist/{name}"),
        p.is_file(),
        "run `cargo xtask dist` first (`cargo xtask test` does)",
    )
    .then_some(p)
}

fn tarball() -> Option<PathBuf> {
    dist(&format!(
        "sentinel-{VERSION}-x86_64-unknown-linux-musl.tar.gz"
    ))
}

fn deb() -> Option<PathBuf> {
    dist(&format!("sentinel_{VERSION}_amd64.deb"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("spawn")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn intervals(stdout: &str) -> Vec<Interval> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn sum(ivs: &[Interval], counter: &str) -> u64 {
    ivs.iter()
        .map(|iv| iv.counters.get(counter).copied().flatten().unwrap_or(0))
        .sum()
}

/// `ctxt` of /proc/stat: context switches since boot, all CPUs.
fn host_ctxt() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn checksums_and_the_tarball_with_a_static_binary_that_runs_from_it() {
    let (Some(tarball), Some(deb), Some(image)) = (
        tarball(),
        deb(),
        dist(&format!("sentinel-image-{VERSION}.tar")),
    ) else {
        return;
    };
    ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(tarball.parent().unwrap()));
    let sums = std::fs::read_to_string(tarball.with_file_name("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 3, "{sums}");

    let dir = tempfile::tempdir().unwrap();
    ok(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path()));
    let top = dir
        .path()
        .join(format!("sentinel-{VERSION}-x86_64-unknown-linux-musl"));
    for f in [
        "sentinel",
        "sentinel.service",
        "sentinel.example.toml",
        "sentinel.logrotate",
        "grafana-dashboard.json",
        "prometheus-alerts.yml",
        "kubernetes/daemonset.yaml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "THIRD-PARTY-LICENSES",
        "man/man1/sentinel.1",
        "man/man1/sentinel-run.1",
        "completions/sentinel.bash",
    ] {
        assert!(top.join(f).is_file(), "{f} missing from the tarball");
    }
    for f in [
        "sentinel.service",
        "sentinel.example.toml",
        "sentinel.logrotate",
    ] {
        assert_eq!(
            std::fs::read(top.join(f)).unwrap(),
            std::fs::read(repo_file(&format!("deploy/{f}"))).unwrap(),
            "{f} is the repository's"
        );
    }
    third_party_licenses_are_the_same_in_the_three(&top, &deb, &image, dir.path());
    let bin = top.join("sentinel");
    // Static: glibc's ldd finds no libraries (static-pie is "statically linked").
    let ldd = run(Command::new("ldd").arg(&bin));
    assert!(!text(&ldd).contains("=>"), "dynamic: {}", text(&ldd));
    let version = ok(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("sentinel {VERSION}"));
    let check = ok(Command::new(&bin)
        .args(["config", "check"])
        .arg(top.join("sentinel.example.toml")));
    assert!(check.trim().ends_with(": ok"), "{check}");
    let size = std::fs::metadata(&bin).unwrap().len();
    println!(
        "static binary {:.1} MiB, tarball {:.1} MiB",
        size as f64 / 1048576.0,
        std::fs::metadata(&tarball).unwrap().len() as f64 / 1048576.0
    );
    if !require(
        "logrotate",
        Command::new("logrotate").arg("--version").output().is_ok(),
        "not installed (Debian package logrotate)",
    ) {
        return;
    }
    // The snippet parses: logrotate --debug reads it and rotates nothing.
    let state = dir.path().join("logrotate.state");
    let out = run(Command::new("logrotate")
        .arg("--debug")
        .arg("--state")
        .arg(&state)
        .arg(top.join("sentinel.logrotate")));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("error"), "logrotate: {}", text(&out));
    assert!(
        text(&out).contains("/var/log/sentinel/audit.jsonl"),
        "{}",
        text(&out)
    );
}

/// THIRD-PARTY-LICENSES, the licence notices of what the static binary links (generated by
/// dist and unit-tested in xtask/src/licenses.rs), is the same text in the tarball, in the
/// package (gzipped, under /usr/share/doc/sentinel, named by the copyright file) and in the
/// image's layer.
fn third_party_licenses_are_the_same_in_the_three(
    top: &Path,
    deb: &Path,
    image: &Path,
    dir: &Path,
) {
    const NAME: &str = "THIRD-PARTY-LICENSES";
    let tarball = std::fs::read_to_string(top.join(NAME)).unwrap();
    for needle in [
        "tikv-jemalloc-sys",
        "--- jemalloc/COPYING ---",
        "musl libc",
        "Rich Felker",
        "Apache License",
        "\nThe Rust standard library\n",
        "\nlibunwind (LLVM)\n",
    ] {
        assert!(
            tarball.contains(needle),
            "{needle} not in the tarball's {NAME}"
        );
    }
    let unpacked = dir.join("deb");
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked));
    let doc = unpacked.join("usr/share/doc/sentinel");
    let in_deb = ok(Command::new("gzip")
        .arg("-dc")
        .arg(doc.join(format!("{NAME}.gz"))));
    assert!(
        in_deb == tarball,
        "the package's {NAME} differs from the tarball's"
    );
    let copyright = std::fs::read_to_string(doc.join("copyright")).unwrap();
    assert!(
        copyright.contains(&format!("/usr/share/doc/sentinel/{NAME}.gz")),
        "{copyright}"
    );
    let layout = dir.join("image");
    std::fs::create_dir_all(&layout).unwrap();
    ok(Command::new("tar")
        .arg("-xf")
        .arg(image)
        .arg("-C")
        .arg(&layout));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let in_image = ok(Command::new("tar")
        .arg("-xOf")
        .arg(layout.join(layers[0].as_str().unwrap()))
        .arg(format!("usr/share/doc/sentinel/{NAME}")));
    assert!(
        in_image == tarball,
        "the image's {NAME} differs from the tarball's"
    );
}

/// lintian has nothing to say (the one tag that does not apply is overridden in the package,
/// with its reason); the control fields, conffiles and the rendered unit are right.
#[test]
fn the_package_is_lintian_clean_and_well_formed() {
    let Some(deb) = deb() else {
        return;
    };
    let fields = ok(Command::new("dpkg-deb").arg("--field").arg(&deb));
    for f in [
        "Package: sentinel",
        &format!("Version: {VERSION}"),
        "Architecture: amd64",
        "Depends: init-system-helpers",
    ] {
        assert!(fields.contains(f), "{f} not in:\n{fields}");
    }
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(dir.path()));
    let conffiles = std::fs::read_to_string(dir.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from(["/etc/sentinel/sentinel.toml", "/etc/logrotate.d/sentinel"])
    );
    let unit =
        std::fs::read_to_string(dir.path().join("lib/systemd/system/sentinel.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/sentinel run --config /etc/sentinel/sentinel.toml"),
        "{unit}"
    );
    assert_eq!(
        unit.replace("/usr/bin/sentinel run", "/usr/local/bin/sentinel run"),
        std::fs::read_to_string(repo_file("deploy/sentinel.service")).unwrap(),
        "the package's unit is the source unit with /usr/bin"
    );
    if !require(
        "lintian",
        Command::new("lintian").arg("--version").output().is_ok(),
        "not installed (Debian package lintian)",
    ) {
        return;
    }
    let out = run(Command::new("lintian")
        .args(["--fail-on", "error,warning,info,pedantic"])
        .arg(&deb));
    let tags: Vec<String> = text(&out)
        .lines()
        .filter(|l| l.contains(": ") && !l.contains("running with root privileges"))
        .map(str::to_string)
        .collect();
    assert!(
        out.status.success() && tags.is_empty(),
        "lintian: {tags:#?}"
    );
}

/// Removes the package on every exit path of the host test.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", "sentinel"]));
    }
}

/// Every path under the places a package touches whose name mentions sentinel.
fn sentinel_paths() -> BTreeSet<String> {
    let out = run(Command::new("find")
        .args([
            "/etc",
            "/lib/systemd",
            "/usr/bin",
            "/usr/share/man/man1",
            "/usr/share/doc",
            "/usr/share/bash-completion",
            "/usr/share/zsh",
            "/usr/share/fish",
            "/usr/share/lintian",
            "/var/lib/systemd",
            "/var/log",
            "-name",
            "*sentinel*",
        ])
        .stderr(Stdio::null()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Installed on this host (no systemd as PID 1 here: enabled, not started), `sentinel check` and
/// a short run from /usr/bin, then remove (config and audit log stay) and purge (nothing left).
#[test]
fn the_package_installs_runs_and_purges_cleanly_on_this_host() {
    if !require_root("the_package_installs_runs_and_purges_cleanly_on_this_host") {
        return;
    }
    let Some(deb) = deb() else {
        return;
    };
    let status = run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "sentinel"]));
    assert!(
        !text(&status).contains("installed"),
        "a sentinel package is already on this host: {}",
        text(&status)
    );
    let before = sentinel_paths();
    let _guard = Installed;
    ok(Command::new("dpkg").arg("--install").arg(&deb));
    let meta = std::fs::metadata("/etc/sentinel/sentinel.toml").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o644),
        "conffile owner and mode"
    );
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/sentinel.service");
    assert_eq!(
        std::fs::read_link(wants).unwrap(),
        Path::new("/lib/systemd/system/sentinel.service"),
        "enabled on install"
    );
    let man = ok(Command::new("man").args(["-w", "sentinel-run"]));
    assert_eq!(man.trim(), "/usr/share/man/man1/sentinel-run.1.gz");

    let check = run(Command::new("/usr/bin/sentinel").arg("check"));
    assert!(check.status.success(), "sentinel check: {}", text(&check));
    // The installed config, as the service reads it; only the listener moves off the default
    // port, which a developer's own sentinel may hold.
    let ctxt0 = host_ctxt();
    let out = run(Command::new("/usr/bin/sentinel")
        .args(["run", "--duration", "3s", "--output", "json"])
        .args(["--config", "/etc/sentinel/sentinel.toml"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--status-socket", "/run/sentinel-dist-test/sentinel.sock"]));
    let ctxt = host_ctxt() - ctxt0;
    assert!(out.status.success(), "sentinel run: {}", text(&out));
    let ivs = intervals(&String::from_utf8_lossy(&out.stdout));
    assert!(ivs.len() >= 3, "{} intervals", ivs.len());
    let switches = sum(&ivs, "sched_switch");
    assert!(
        switches > 0 && switches <= ctxt,
        "sched_switch {switches} vs the kernel's ctxt {ctxt}"
    );
    let _ = std::fs::remove_dir_all("/run/sentinel-dist-test");
    // The audit log as the service leaves it (healing writes it when it acts).
    std::fs::create_dir_all("/var/log/sentinel").unwrap();
    std::fs::write("/var/log/sentinel/audit.jsonl", "{}\n").unwrap();

    ok(Command::new("dpkg").args(["--remove", "sentinel"]));
    assert!(!Path::new("/usr/bin/sentinel").exists());
    assert!(
        Path::new("/etc/sentinel/sentinel.toml").exists(),
        "remove keeps the config"
    );
    assert!(
        Path::new("/var/log/sentinel/audit.jsonl").exists(),
        "remove keeps the audit log"
    );
    ok(Command::new("dpkg").args(["--purge", "sentinel"]));
    let after = sentinel_paths();
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "left behind by purge"
    );
    let status = run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "sentinel"]));
    assert!(!text(&status).contains(" installed"), "{}", text(&status));
}

/// Under systemd 252 as PID 1 (nspawn): installing enables and starts the service (READY before
/// dpkg returns); an upgrade keeps the admin's edit of the conffile and restarts the daemon,
/// which then applies it; remove stops it (no snt_ program left); purge removes the config and
/// the audit log.
#[test]
fn the_package_under_systemd_starts_upgrades_and_purges() {
    if !require_root("the_package_under_systemd_starts_upgrades_and_purges") {
        return;
    }
    let Some(deb) = deb() else {
        return;
    };
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
    ] {
        if !require(
            tool,
            Command::new(tool).arg("--version").output().is_ok(),
            &format!("not installed (Debian package {package})"),
        ) {
            return;
        }
    }
    assert!(sentinel_programs_left().is_empty(), "another sentinel runs");
    // The upgrade: the same package as the next version.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    ok(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let next = format!("{VERSION}+upgrade1");
    std::fs::write(
        &control,
        std::fs::read_to_string(&control).unwrap().replace(
            &format!("Version: {VERSION}\n"),
            &format!("Version: {next}\n"),
        ),
    )
    .unwrap();
    let upgrade = dir.path().join("upgrade.deb");
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&upgrade));

    let root = debian_root();
    let c = Container::boot(
        &root,
        &[(&deb, "/tmp/sentinel.deb"), (&upgrade, "/tmp/upgrade.deb")],
        &dir.path().join("console.log"),
    );
    let t = Instant::now();
    let out = c.exec(&["dpkg", "--install", "/tmp/sentinel.deb"]);
    assert!(out.status.success(), "{}", text(&out));
    println!("dpkg --install took {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(c.show("UnitFileState"), "enabled");
    assert_eq!(c.show("ActiveState"), "active", "{}", c.journal());
    assert_eq!(
        c.show("FragmentPath"),
        "/lib/systemd/system/sentinel.service"
    );
    assert!(sentinel_programs().len() >= 12, "started on install");
    let out = c.exec(&["sentinel", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    let first_pid = c.show("MainPID");

    // The admin moves the metrics listener; the upgrade keeps that and restarts into it.
    let port = free_port();
    let out = c.exec(&[
        "sed",
        "-i",
        &format!("s/^addr = \"127.0.0.1:9464\"/addr = \"127.0.0.1:{port}\"/"),
        "/etc/sentinel/sentinel.toml",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.exec(&["dpkg", "--install", "/tmp/upgrade.deb"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("Configuration file"),
        "no conffile prompt: {}",
        text(&out)
    );
    assert_eq!(c.show("ActiveState"), "active", "{}", c.journal());
    assert_ne!(c.show("MainPID"), first_pid, "restarted by the upgrade");
    let config = text(&c.exec(&["cat", "/etc/sentinel/sentinel.toml"]));
    assert!(config.contains(&format!("127.0.0.1:{port}")), "edit kept");
    let body = scrape(port).expect("the edited metrics.addr, after the restart");
    assert!(body.contains("sentinel_build_info"), "{body}");
    let version = text(&c.exec(&["dpkg-query", "-W", "-f", "${Version}", "sentinel"]));
    assert_eq!(version.trim(), next);

    // Remove: stopped, programs gone, config and audit log directory kept.
    let out = c.exec(&["dpkg", "--remove", "sentinel"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        sentinel_programs_left(),
        Vec::<String>::new(),
        "after remove"
    );
    assert_ne!(c.show("ActiveState"), "active");
    assert!(
        c.exec(&["test", "-f", "/etc/sentinel/sentinel.toml"])
            .status
            .success()
    );
    assert!(
        c.exec(&["test", "-d", "/var/log/sentinel"])
            .status
            .success()
    );
    // Purge: nothing of it left.
    let out = c.exec(&["dpkg", "--purge", "sentinel"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = text(&c.exec(&[
        "find",
        "/etc",
        "/lib/systemd",
        "/usr",
        "/var/lib/systemd",
        "/var/log",
        "-name",
        "*sentinel*",
    ]));
    assert!(left.trim().is_empty(), "left after purge: {left}");
}

/// `docker load` gives `sentinel:VERSION`; run with the documented mounts and privileges it
/// prints intervals with the host's context switches and names a labelled container running on
/// the host.
#[test]
fn the_image_loads_and_runs_with_the_documented_mounts() {
    if !require_root("the_image_loads_and_runs_with_the_documented_mounts") || !docker::ensure() {
        return;
    }
    let Some(image) = dist(&format!("sentinel-image-{VERSION}.tar")) else {
        return;
    };
    let tag = format!("sentinel:{VERSION}");
    let _ = docker::docker(&["rmi", "-f", &tag]);
    let loaded = docker::docker_ok(&["load", "--input", image.to_str().unwrap()]);
    assert!(loaded.contains(&format!("Loaded image: {tag}")), "{loaded}");
    let entrypoint = docker::docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}}",
        &tag,
    ]);
    assert_eq!(entrypoint, r#"["/usr/bin/sentinel"]"#);
    let size: u64 = docker::docker_ok(&["image", "inspect", "-f", "{{.Size}}", &tag])
        .parse()
        .unwrap();
    println!("image {tag}: {:.1} MB", size as f64 / 1e6);

    let busy = docker::Container::run(
        "snt-dist-labelled",
        &["--label", "sentinel.heal=true"],
        docker::IMAGE,
        &["sh", "-c", "while :; do :; done"],
    );
    let audit = tempfile::tempdir().unwrap();
    // The DaemonSet's mounts and capabilities (deploy/kubernetes/daemonset.yaml), through Docker.
    let manifest_caps = ["BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE"];
    let attempt = |caps: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--rm", "--name", "snt-dist-image", "--pid=host"])
            .args(["--network=host", "--read-only", "--cap-drop=ALL"])
            .args(caps.iter().map(|c| format!("--cap-add={c}")))
            .args(["--security-opt", "seccomp=unconfined"])
            .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
            .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
            .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
            .args(["--tmpfs", "/run/sentinel"])
            .arg("-v")
            .arg(format!("{}:/var/log/sentinel", audit.path().display()))
            .arg(&tag)
            .args(["run", "--duration", "5s", "--output", "json"])
            .args(["--metrics-addr", "127.0.0.1:0"]);
        let t0 = host_ctxt();
        let out = run(&mut cmd);
        (out, host_ctxt() - t0)
    };
    // This host's bounding set has no CAP_SYS_RESOURCE (only needed before Linux 5.11), and
    // Docker before 23 rejects CAP_BPF and CAP_PERFMON as unknown: then CAP_SYS_ADMIN stands in
    // for them, as OPS.md says.
    let host_caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = u64::from_str_radix(
        host_caps
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .unwrap()
            .trim(),
        16,
    )
    .unwrap();
    let mut caps: Vec<&str> = manifest_caps
        .iter()
        .copied()
        .filter(|c| *c != "SYS_RESOURCE" || bounding & (1 << 24) != 0)
        .collect();
    let (mut out, mut ctxt) = attempt(&caps);
    if !out.status.success() && text(&out).contains("unknown capability") {
        println!("this Docker does not know CAP_BPF/CAP_PERFMON: CAP_SYS_ADMIN instead");
        caps.retain(|c| *c != "BPF" && *c != "PERFMON");
        caps.push("SYS_ADMIN");
        (out, ctxt) = attempt(&caps);
    }
    assert!(out.status.success(), "docker run {caps:?}: {}", text(&out));
    let ivs = intervals(&String::from_utf8_lossy(&out.stdout));
    assert!(ivs.len() >= 4, "{} intervals: {}", ivs.len(), text(&out));
    let switches = sum(&ivs, "sched_switch");
    let proc_ctxt: u64 = ivs.iter().map(|iv| iv.system.context_switches).sum();
    println!(
        "{} intervals: sched_switch {switches}, /proc/stat ctxt in them {proc_ctxt}, host ctxt over the docker run {ctxt}",
        ivs.len()
    );
    // The programs see every CPU of the host, not the container's share: about as many
    // switches as the kernel counted in the same intervals (read a few us apart, on a busy
    // machine), and no more than in the whole run.
    assert!(switches <= ctxt, "{switches} > {ctxt}");
    let ratio = switches as f64 / proc_ctxt as f64;
    assert!(
        (0.75..=1.33).contains(&ratio),
        "sched_switch/ctxt {ratio:.3}"
    );
    let named = ivs
        .iter()
        .flat_map(|iv| &iv.containers)
        .find(|c| *c.name == *busy.name)
        .unwrap_or_else(|| {
            panic!(
                "{} never named; containers seen: {:?}",
                busy.name,
                ivs.iter()
                    .flat_map(|iv| iv.containers.iter().map(|c| c.name.clone()))
                    .collect::<BTreeSet<_>>()
            )
        });
    assert_eq!(named.id, busy.id, "named with its own id");
    assert!(named.stats.cpu_ns > 0);
    assert!(
        ivs.iter().all(|iv| iv.docker == "up"),
        "Docker reachable through the socket"
    );
}

/// The DaemonSet's structure: what the image needs from the node, as the image test ran it.
#[test]
fn the_daemonset_manifest_has_the_documented_shape() {
    use yaml_rust2::{Yaml, YamlLoader};
    let text = std::fs::read_to_string(repo_file("deploy/kubernetes/daemonset.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let ns = ds["metadata"]["namespace"].as_str().unwrap();
    assert!(
        docs.iter().any(|d| d["kind"].as_str() == Some("Namespace")
            && d["metadata"]["name"].as_str() == Some(ns)),
        "its namespace is in the file"
    );
    let labels = &ds["spec"]["selector"]["matchLabels"];
    assert_eq!(labels, &ds["spec"]["template"]["metadata"]["labels"]);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_ne!(pod["hostNetwork"].as_bool(), Some(true));
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9464"));
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["image"].as_str(),
        Some(format!("sentinel:{VERSION}").as_str())
    );
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    let addr = args
        .windows(2)
        .find(|w| w[0] == "--metrics-addr")
        .map(|w| w[1])
        .expect("--metrics-addr");
    assert!(addr.ends_with(":9464"), "{addr}");
    // The probe and the scrape reach the bind: pod network, all addresses of the pod.
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["path"].as_str(),
            Some("/metrics"),
            "{probe}"
        );
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{probe}"
        );
    }
    let port = &c["ports"][0];
    assert_eq!(port["name"].as_str(), Some("metrics"));
    assert_eq!(port["containerPort"].as_i64(), Some(9464));
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][r].as_str().is_some(),
                "resources.{kind}.{r}"
            );
        }
    }
    let sc = &c["securityContext"];
    assert_ne!(
        sc["privileged"].as_bool(),
        Some(true),
        "capabilities, not privileged"
    );
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let strs = |y: &Yaml| -> BTreeSet<String> {
        y.as_vec()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strs(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".into()])
    );
    assert_eq!(
        strs(&sc["capabilities"]["add"]),
        ["BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE"]
            .map(String::from)
            .into()
    );
    // Every mount has its volume; the node paths the image needs are there.
    let volumes: Vec<(String, String)> = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["hostPath"]["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mounts: Vec<(String, String, bool)> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    for (name, _, _) in &mounts {
        assert!(volumes.iter().any(|(v, _)| v == name), "volume {name}");
    }
    for (host, read_only) in [
        ("/sys/kernel/btf", true),
        ("/sys/kernel/tracing", true),
        ("/sys/fs/cgroup", true),
        ("/var/run/docker.sock", false),
        ("/run/containerd/containerd.sock", false),
        ("/var/log/sentinel", false),
    ] {
        let (name, _) = volumes
            .iter()
            .find(|(_, p)| p == host)
            .unwrap_or_else(|| panic!("no hostPath {host}"));
        let (_, path, ro) = mounts
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{host} not mounted"));
        assert_eq!(path, host, "{host} mounted where sentinel reads it");
        assert_eq!(*ro, read_only, "{host} readOnly");
    }
    assert!(
        mounts.iter().any(|(_, p, _)| p == "/run/sentinel"),
        "a writable /run/sentinel on a read-only root"
    );
}
