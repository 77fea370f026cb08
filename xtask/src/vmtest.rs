//! `cargo xtask vmtest`: the kernel portability matrix. Boots Debian 12's 6.1 and 6.12 and
//! Debian 11's 5.10 cloud kernels under QEMU (TCG: nested KVM does not work on the CI machines) with a BusyBox
//! initramfs holding a static `sentinel`, runs `sentinel selftest` in each guest and on the host
//! kernel, and prints one `VMTEST <kernel> <check> PASS|FAIL <detail>` line per check plus a
//! `VMTEST-RESULT` line per kernel. Fails if any check fails or a guest gives no summary.
//!
//! Downloads and the extracted kernels are cached under target/vmtest.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::build_ebpf;

#[derive(clap::Args, Clone, Debug)]
pub struct VmtestArgs {
    /// Seconds each guest may take from boot to power-off.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Only the guests, not the host kernel.
    #[arg(long)]
    no_host: bool,
    /// An extra kernel image (bzImage/vmlinuz) to boot as well (repeatable).
    #[arg(long)]
    kernel: Vec<PathBuf>,
    /// Skip the Debian kernels (use with --kernel).
    #[arg(long)]
    no_debian: bool,
    /// Put the glibc build and its shared libraries in the guests instead of a static musl
    /// build: shares `target/release` with `cargo build --release` instead of compiling
    /// everything a second time for the musl target.
    #[arg(long)]
    dynamic: bool,
    /// Extra kernel command-line parameters for every guest, e.g. `lockdown=confidentiality`.
    #[arg(long, default_value = "")]
    append: String,
    /// Boot the binary users download: built by `cargo xtask dist` and unpacked from its
    /// tarball.
    #[arg(long, conflicts_with = "dynamic")]
    from_dist: bool,
}

/// Kernel series to test: package name prefix and suffix around a numeric part, and the
/// Debian suite that has them (`None`: the host's own apt sources, Debian 12). The newest
/// package of each series is picked from `apt-cache search`, never hard-coded.
const SERIES: [(&str, &str, Option<&str>); 3] = [
    (
        "linux-image-5.10.0-",
        "-cloud-amd64-unsigned",
        Some("bullseye"),
    ),
    ("linux-image-6.1.0-", "-cloud-amd64-unsigned", None),
    ("linux-image-6.12.", "+deb12-cloud-amd64-unsigned", None),
];

const MUSL: &str = "x86_64-unknown-linux-musl";

struct Outcome {
    kernel: String,
    passed: u32,
    failed: u32,
    summary: bool,
    seconds: f64,
    note: String,
    /// The first console line where the guest kernel reported a CPU stuck (soft lockup, RCU
    /// stall) or a trap in its own patched text (int3 oops): the guest is stopped there
    /// instead of waiting out the time-out.
    stall: Option<String>,
}

/// Console lines of a guest kernel whose CPUs stopped making progress, or that trapped on a
/// breakpoint in its own text. Under TCG both have been the emulator, while sentinel attached or
/// detached its programs, which patches kernel text on every CPU: on 6.1 after every check had
/// passed, CPU 0's timers stopped firing; on 6.12 under lockdown, after all 28 checks had
/// passed, the RCU thread hit an `int3` oops (a BPF program cannot place one). A hang of
/// sentinel's own would show as a check that never reports, with no such line.
const STALL_SIGNS: [&str; 4] = [
    "watchdog: BUG: soft lockup",
    "self-detected stall on CPU",
    "detected stalls on CPUs",
    "Oops: int3",
];

fn stall_sign(line: &str) -> bool {
    STALL_SIGNS.iter().any(|sign| line.contains(sign))
}

/// Why a guest gets one more boot, if it does: it ran no check at all (its kernel died while
/// booting), or its kernel stalled or trapped before the summary with no check failed. A check that ran
/// and failed is never retried.
fn retry_reason(o: &Outcome) -> Option<String> {
    if o.summary || o.failed > 0 {
        return None;
    }
    if let Some(line) = &o.stall {
        return Some(format!(
            "guest kernel stalled or trapped after {} passed checks: {}",
            o.passed,
            line.trim()
        ));
    }
    (o.passed == 0).then(|| format!("no check ran ({})", o.note))
}

pub fn run(args: &VmtestArgs) -> Result<()> {
    let started = Instant::now();
    let root = build_ebpf::workspace_root();
    let work = root.join("target/vmtest");
    fs::create_dir_all(&work)?;
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")?;

    let sentinel = if args.from_dist {
        from_dist(&work)?
    } else {
        build_sentinel(&root, args.dynamic)?
    };
    // (name, image, extra kernel parameters)
    let mut kernels: Vec<(String, PathBuf, &str)> = Vec::new();
    if !args.no_debian {
        for (prefix, suffix, suite) in SERIES {
            let apt = match suite {
                Some(suite) => Apt::private(&work, suite)?,
                None => Apt::host(),
            };
            let pkg = newest_package(&apt, prefix, suffix)?;
            let image = fetch_kernel(&work, &apt, &pkg)?;
            kernels.push((pkg, image, ""));
        }
        // Row P7: the newest kernel again under kernel lockdown (what Secure Boot imposes).
        if let Some((pkg, image, _)) = kernels.last().cloned() {
            kernels.push((format!("{pkg}+lockdown"), image, "lockdown=confidentiality"));
        }
    }
    for k in &args.kernel {
        kernels.push((k.display().to_string(), k.clone(), ""));
    }
    let initrd = work.join("initramfs.cpio");
    build_initramfs(&sentinel.binary, &sentinel.libs, &initrd)?;
    step(&format!(
        "initramfs {} ({} KiB); sentinel built {}",
        initrd.display(),
        fs::metadata(&initrd)?.len() / 1024,
        sentinel.how
    ));

    let mut outcomes = Vec::new();
    for (name, image, extra) in &kernels {
        step(&format!("booting {name} under QEMU/TCG"));
        let mut o = boot(&work, name, image, &initrd, extra, args, 1)?;
        if let Some(why) = retry_reason(&o) {
            // The emulator, not sentinel (seen once each: an int3 oops while the kernel
            // patched its own text before sentinel started; a stalled CPU 0 while sentinel
            // detached): one more boot, and the first one's fate stays in the result line.
            step(&format!("{name}: {why}; booting it once more"));
            let first = why;
            o = boot(&work, name, image, &initrd, extra, args, 2)?;
            o.note = [format!("second boot; the first: {first}"), o.note]
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
        }
        outcomes.push(o);
    }
    if !args.no_host {
        outcomes.push(host(&sentinel.binary)?);
    }

    println!();
    let mut all_ok = true;
    for o in &outcomes {
        let ok = o.summary && o.failed == 0;
        all_ok &= ok;
        println!(
            "VMTEST-RESULT {} {} passed={} failed={} seconds={:.1}{}",
            o.kernel,
            if ok { "PASS" } else { "FAIL" },
            o.passed,
            o.failed,
            o.seconds,
            if o.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.note)
            }
        );
    }
    println!(
        "VMTEST-TOTAL {} kernels={} seconds={:.1}",
        if all_ok { "PASS" } else { "FAIL" },
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    if !all_ok {
        bail!("kernel portability checks failed (see the VMTEST lines above)");
    }
    Ok(())
}

fn step(message: &str) {
    eprintln!("xtask vmtest: {message}");
}

fn need_tool(tool: &str, install: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{tool} not found: run `{install}`");
    }
    Ok(())
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct BuiltSentinel {
    binary: PathBuf,
    /// Shared libraries to copy next to a dynamically linked binary (empty for musl).
    libs: Vec<PathBuf>,
    how: &'static str,
}

/// A static musl build when the target can be installed; otherwise the glibc build plus the
/// libraries `ldd` names.
fn build_sentinel(root: &Path, dynamic: bool) -> Result<BuiltSentinel> {
    build_ebpf::run(&build_ebpf::Options { release: true })?;
    let installed = output(
        Command::new("rustup").args(["target", "list", "--installed"]),
        "rustup target list",
    )
    .unwrap_or_default();
    let musl = !dynamic
        && (installed.lines().any(|l| l.trim() == MUSL)
            || Command::new("rustup")
                .args(["target", "add", MUSL])
                .status()
                .is_ok_and(|s| s.success()));
    let mut cmd = Command::new(build_ebpf::cargo());
    cmd.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "sentinel-user",
        "--bin",
        "sentinel",
    ]);
    if musl {
        cmd.args(["--target", MUSL]);
        build_ebpf::status(&mut cmd, "building a static sentinel (musl)")?;
        return Ok(BuiltSentinel {
            binary: root.join("target").join(MUSL).join("release/sentinel"),
            libs: Vec::new(),
            how: "static (musl)",
        });
    }
    if !dynamic {
        step("musl target unavailable: using the glibc build and its shared libraries");
    }
    build_ebpf::status(&mut cmd, "building sentinel")?;
    let binary = root.join("target/release/sentinel");
    let ldd = output(Command::new("ldd").arg(&binary), "ldd")?;
    let libs = ldd
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect();
    Ok(BuiltSentinel {
        binary,
        libs,
        how: "dynamic (glibc + ldd libraries)",
    })
}

/// The static binary as shipped: `cargo xtask dist`'s tarball, unpacked.
fn from_dist(work: &Path) -> Result<BuiltSentinel> {
    let tarball = crate::dist::build()?.tarball;
    let dir = work.join("dist");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dir),
        "unpacking the dist tarball",
    )?;
    let top = crate::dist::tarball_name();
    Ok(BuiltSentinel {
        binary: dir.join(top.trim_end_matches(".tar.gz")).join("sentinel"),
        libs: Vec::new(),
        how: "static (musl), unpacked from the dist tarball",
    })
}

/// The numeric part between `prefix` and `suffix`, compared as a version (6.12.9 < 6.12.10).
fn series_key(name: &str, prefix: &str, suffix: &str) -> Option<Vec<u64>> {
    let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    middle
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<u64>>>()
}

/// apt with the host's sources, or with a private sources list and state for another suite
/// of the same Debian package source (the host's own apt configuration is never changed).
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn host() -> Self {
        Self {
            options: Vec::new(),
        }
    }

    /// `suite` (e.g. `bullseye`) from the Debian archive the host's sources name (its main
    /// suite only: the archive serves it, not every security pocket); the lists are refreshed
    /// once a day.
    fn private(work: &Path, suite: &str) -> Result<Self> {
        let dir = work.join(format!("apt-{suite}"));
        let lists = dir.join("lists");
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let archive = debian_archive()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let sources = format!("deb [signed-by={keyring}] {archive} {suite} main\n");
        let list = dir.join("sources.list");
        fs::write(&list, sources)?;
        let apt = Self {
            options: vec![
                format!("Dir::Etc::sourcelist={}", list.display()),
                "Dir::Etc::sourceparts=/dev/null".into(),
                format!("Dir::State::lists={}", lists.display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
                "Dir::State::status=/dev/null".into(),
            ],
        };
        let fresh = fs::metadata(lists.join("lock"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(86_400));
        if !fresh {
            step(&format!(
                "apt-get update for Debian {suite} (private lists)"
            ));
            output(apt.command("apt-get").arg("update"), "apt-get update")?;
        }
        Ok(apt)
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        for o in &self.options {
            cmd.args(["-o", o]);
        }
        cmd
    }
}

/// The Debian archive URI of the host's apt sources (deb822 or one-line format), e.g.
/// `http://deb.debian.org/debian`: the one that serves a release suite such as `bookworm`.
fn debian_archive() -> Result<String> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sources") || name.ends_with(".list") {
                texts.push(fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts
        .iter()
        .flat_map(|t| source_entries(t))
        .find(|(uri, suites)| uri.contains("debian") && suites.iter().any(|s| !s.contains('-')))
        .map(|(uri, _)| uri)
        .ok_or_else(|| {
            anyhow!("no Debian archive in the host's apt sources (/etc/apt/sources.list[.d])")
        })
}

/// (URI, suites) of every `deb` source in one file, deb822 stanzas or one-line entries.
fn source_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace().peekable();
        if words.next() == Some("deb") {
            // deb [options] URI suite components...
            let rest: Vec<&str> = words
                .skip_while(|w| w.starts_with('[') || w.ends_with(']'))
                .collect();
            if rest.len() >= 2 {
                out.push((rest[0].to_string(), vec![rest[1].to_string()]));
            }
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if let (true, Some(uris), Some(suites)) = (deb, field("URIs"), field("Suites")) {
            let suites: Vec<String> = suites.split_whitespace().map(String::from).collect();
            for uri in uris.split_whitespace() {
                out.push((uri.to_string(), suites.clone()));
            }
        }
    }
    out
}

fn newest_package(apt: &Apt, prefix: &str, suffix: &str) -> Result<String> {
    let pattern = format!("^{}", prefix.replace('.', "\\.").replace('+', "\\+"));
    let listing = output(
        apt.command("apt-cache")
            .args(["search", "--names-only", &pattern]),
        "apt-cache search",
    )?;
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| series_key(n, prefix, suffix).map(|k| (k, n.to_string())))
        .max()
        .map(|(_, n)| n)
        .ok_or_else(|| {
            anyhow!("no package {prefix}*{suffix} in the apt sources: run `apt-get update`")
        })
}

/// Downloads the package (once) and extracts its vmlinuz (once).
fn fetch_kernel(work: &Path, apt: &Apt, pkg: &str) -> Result<PathBuf> {
    let image = work.join("kernels").join(format!("{pkg}.vmlinuz"));
    if image.is_file() {
        return Ok(image);
    }
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    let find_deb = || -> Option<PathBuf> {
        fs::read_dir(&debs)
            .ok()?
            .filter_map(Result::ok)
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.starts_with(&format!("{pkg}_")) && name.ends_with(".deb")).then(|| e.path())
            })
    };
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            step(&format!("apt-get download {pkg}"));
            output(
                apt.command("apt-get")
                    .args(["download", pkg])
                    .current_dir(&debs),
                "apt-get download",
            )?;
            find_deb().ok_or_else(|| anyhow!("apt-get download left no {pkg}_*.deb"))?
        }
    };
    let tmp = work.join("extract");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let script = format!(
        "dpkg --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*'",
        deb.display(),
        tmp.display()
    );
    output(
        Command::new("sh").args(["-c", &script]),
        "extracting vmlinuz",
    )?;
    let vmlinuz = fs::read_dir(tmp.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("{} holds no boot/vmlinuz-*", deb.display()))?;
    fs::create_dir_all(image.parent().unwrap())?;
    fs::copy(&vmlinuz, &image)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(image)
}

/// The guest's /init: mounts proc and sysfs (tracefs is left to sentinel, as on a fresh host),
/// brings up loopback, runs the checks, prints sentinel's log, powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ip link set lo up || ifconfig lo 127.0.0.1 up
echo "VMTEST-BOOT $(uname -r) possible=$(cat /sys/devices/system/cpu/possible) online=$(cat /sys/devices/system/cpu/online)"
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
label=$(uname -r)
mode=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/security/lockdown 2>/dev/null)
[ -n "$mode" ] && [ "$mode" != none ] && label="$label+lockdown=$mode"
SENTINEL_LOG=info /bin/sentinel --log-format human selftest --label "$label" --cpu-hotplug --oom --drop-caps --clock-jump 2>/tmp/selftest.log
rc=$?
sed 's/^/GUEST-LOG /' /tmp/selftest.log
echo "VMTEST-END rc=$rc"
poweroff -f
"#;

fn build_initramfs(sentinel: &Path, libs: &[PathBuf], out: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox not found: run `apt-get install busybox-static`");
    }
    let ldd = Command::new("ldd").arg(busybox).output();
    if let Ok(o) = ldd
        && o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains("=>")
    {
        bail!("/bin/busybox is dynamically linked: run `apt-get install busybox-static`");
    }
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "run", "lib", "lib64"] {
        cpio.dir(dir);
    }
    // Without /dev/console in the initramfs the kernel starts init with no console at all.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", INIT.as_bytes(), 0o755);
    cpio.file("bin/busybox", &fs::read(busybox)?, 0o755);
    cpio.file("bin/sentinel", &fs::read(sentinel)?, 0o755);
    for lib in libs {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        for parent in Path::new(&inside).ancestors().skip(1) {
            let p = parent.to_string_lossy();
            if !p.is_empty() {
                cpio.dir(&p);
            }
        }
        cpio.file(&inside, &fs::read(lib)?, 0o755);
    }
    fs::write(out, cpio.finish())?;
    Ok(())
}

/// A `newc` cpio archive, the format the kernel unpacks into its initial rootfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: std::collections::HashSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040_755, &[], (0, 0));
        }
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100_000 | perm, data, (0, 0));
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

/// Reads `VMTEST` lines from a child's stdout until it exits or the time-out; echoes them.
fn collect(mut child: std::process::Child, timeout: Duration, log: &Path) -> Result<Collected> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut logfile = fs::File::create(log)?;
    let mut timed_out = false;
    let mut stall = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                writeln!(logfile, "{line}")?;
                if line.starts_with("VMTEST") {
                    println!("{line}");
                }
                if stall_sign(&line) {
                    eprintln!("{line}");
                    stall = Some(line.clone());
                }
                lines.push(line);
                if stall.is_some() {
                    let _ = child.kill();
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    Ok(Collected {
        lines,
        timed_out,
        stall,
    })
}

struct Collected {
    lines: Vec<String>,
    timed_out: bool,
    stall: Option<String>,
}

/// Counts the checks of a run; `note` says how it ended if that was not by itself.
fn tally(kernel: String, run: &Collected, seconds: f64, mut note: String) -> Outcome {
    let mut o = Outcome {
        kernel,
        passed: 0,
        failed: 0,
        summary: false,
        seconds,
        note: String::new(),
        stall: run.stall.clone(),
    };
    for line in &run.lines {
        let mut f = line.split_whitespace();
        if f.next() != Some("VMTEST") {
            continue;
        }
        let label = f.next().unwrap_or_default();
        let check = f.next().unwrap_or_default();
        let verdict = f.next().unwrap_or_default();
        o.kernel = label.to_string();
        if check == "summary" {
            o.summary = true;
        } else if verdict == "PASS" {
            o.passed += 1;
        } else {
            o.failed += 1;
        }
    }
    if !o.summary && note.is_empty() {
        note = "no summary line: the checks did not finish".into();
    }
    o.note = note;
    o
}

fn boot(
    work: &Path,
    name: &str,
    image: &Path,
    initrd: &Path,
    extra: &str,
    args: &VmtestArgs,
    attempt: u32,
) -> Result<Outcome> {
    let started = Instant::now();
    let timeout = args.timeout;
    let cmdline = format!(
        "console=ttyS0 panic=-1 loglevel=4 maxcpus=2 {extra} {}",
        args.append
    );
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-smp", "4", "-m", "512"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        // loglevel=4 keeps kernel messages from splitting the VMTEST lines on the console.
        // Four CPUs present, two brought up at boot (maxcpus=2): possible 0-3, online 0-1 on
        // every kernel. QEMU's `-smp 2,maxcpus=4` gives that on 6.1, but 6.12 does not count
        // QEMU 7.2's not-yet-plugged CPUs as possible (possible 0-1 there).
        .args(["-append", cmdline.trim()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    let file = name.rsplit('/').next().unwrap_or(name);
    let log = if attempt == 1 {
        logs.join(format!("{file}.log"))
    } else {
        logs.join(format!("{file}.boot{attempt}.log"))
    };
    let run = collect(child, Duration::from_secs(timeout), &log)?;
    let note = if run.timed_out {
        format!("timed out after {timeout} s; console in {}", log.display())
    } else if run.stall.is_some() {
        format!(
            "stopped at a stalled CPU or a kernel trap; console in {}",
            log.display()
        )
    } else {
        String::new()
    };
    let outcome = tally(
        name.to_string(),
        &run,
        started.elapsed().as_secs_f64(),
        note,
    );
    let lines = &run.lines;
    if !(outcome.summary && outcome.failed == 0) {
        eprintln!(
            "--- console of {name} (last 40 lines besides the checks; full log {}) ---",
            log.display()
        );
        let rest: Vec<&String> = lines.iter().filter(|l| !l.starts_with("VMTEST ")).collect();
        for line in rest.iter().rev().take(40).rev() {
            eprintln!("{line}");
        }
    }
    Ok(outcome)
}

/// The same checks on the host kernel (no CPU hot-plug: CPUs of a shared machine stay up).
fn host(sentinel: &Path) -> Result<Outcome> {
    let started = Instant::now();
    if !nix_is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            bail!("the host kernel checks need root, and CI=true");
        }
        step("SKIPPED the host kernel: not root (the guests ran)");
        return Ok(Outcome {
            kernel: "host".into(),
            passed: 0,
            failed: 0,
            summary: true,
            seconds: 0.0,
            note: "skipped: not root".into(),
            stall: None,
        });
    }
    step("checking the host kernel");
    let child = Command::new(sentinel)
        .args(["selftest", "--drop-caps"])
        .env("SENTINEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run sentinel selftest on the host")?;
    let logs = build_ebpf::workspace_root().join("target/vmtest/logs");
    fs::create_dir_all(&logs)?;
    let run = collect(child, Duration::from_secs(120), &logs.join("host.log"))?;
    let note = if run.timed_out {
        "timed out".into()
    } else {
        String::new()
    };
    Ok(tally(
        "host".into(),
        &run,
        started.elapsed().as_secs_f64(),
        note,
    ))
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u"), "id -u").is_ok_and(|s| s.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_by_version_not_by_text() {
        let (p, s, _) = SERIES[2];
        let mut names = [
            "linux-image-6.12.9+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.38+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.38+deb12-cloud-amd64-dbg",
        ]
        .map(|n| (series_key(n, p, s), n));
        names.sort();
        assert_eq!(names[0].0, None, "other packages do not match");
        assert_eq!(
            names.last().unwrap().1,
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
        );
        assert_eq!(
            series_key(
                "linux-image-6.1.0-56-cloud-amd64-unsigned",
                SERIES[1].0,
                SERIES[1].1
            ),
            Some(vec![56])
        );
        assert_eq!(
            series_key(
                "linux-image-5.10.0-46-cloud-amd64-unsigned",
                SERIES[0].0,
                SERIES[0].1
            ),
            Some(vec![46])
        );
    }

    #[test]
    fn debian_archives_are_found_in_both_source_formats() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                      URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            source_entries(deb822),
            vec![
                (
                    "http://deb.debian.org/debian".to_string(),
                    vec!["bookworm".to_string(), "bookworm-updates".to_string()]
                ),
                (
                    "http://deb.debian.org/debian-security".to_string(),
                    vec!["bookworm-security".to_string()]
                ),
            ]
        );
        let one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror/debian bookworm main\n\
                        deb-src http://mirror/debian bookworm main\n";
        assert_eq!(
            source_entries(one_line),
            vec![(
                "http://mirror/debian".to_string(),
                vec!["bookworm".to_string()]
            )]
        );
    }

    fn run_of(lines: &[&str], stall: Option<&str>) -> Collected {
        Collected {
            lines: lines.iter().map(ToString::to_string).collect(),
            timed_out: false,
            stall: stall.map(ToString::to_string),
        }
    }

    #[test]
    fn only_the_emulators_failures_get_a_second_boot() {
        let lockup = "[  209.6] watchdog: BUG: soft lockup - CPU#1 stuck for 187s! [sentinel:95]";
        assert!(stall_sign(lockup));
        assert!(stall_sign(
            "[  219.7] rcu: INFO: rcu_preempt self-detected stall on CPU"
        ));
        assert!(!stall_sign("VMTEST 6.1 packets PASS 1000 UDP datagrams"));
        let trap = "[    8.604651] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI";
        assert!(stall_sign(trap));
        let passed = "VMTEST 6.1 packets PASS 1000 UDP datagrams";
        let failed = "VMTEST 6.1 skb_drops FAIL skb_drops=0";
        let summary = "VMTEST 6.1 summary PASS passed=1 failed=0";

        // Stalled after passing checks: retried, and the reason names the console line.
        let o = tally(
            "k".into(),
            &run_of(&[passed, lockup], Some(lockup)),
            1.0,
            String::new(),
        );
        let why = retry_reason(&o).expect("a stall before the summary is retried");
        assert!(
            why.contains("1 passed checks") && why.contains("soft lockup"),
            "{why}"
        );
        // Trapped in its own text after passing checks: retried too.
        let o = tally(
            "k".into(),
            &run_of(&[passed, trap], Some(trap)),
            1.0,
            String::new(),
        );
        let why = retry_reason(&o).expect("an int3 oops before the summary is retried");
        assert!(why.contains("Oops: int3"), "{why}");
        // Died before any check: retried.
        let o = tally(
            "k".into(),
            &run_of(&["Kernel panic"], None),
            1.0,
            String::new(),
        );
        assert!(retry_reason(&o).is_some_and(|w| w.starts_with("no check ran")));
        // A failed check is sentinel's, stall or not; so is a hang with no stall line.
        let o = tally(
            "k".into(),
            &run_of(&[failed, lockup], Some(lockup)),
            1.0,
            String::new(),
        );
        assert_eq!(retry_reason(&o), None);
        let o = tally(
            "k".into(),
            &run_of(&[passed], None),
            1.0,
            "timed out".into(),
        );
        assert_eq!(retry_reason(&o), None);
        // Finished: nothing to retry, whatever came after the summary.
        let o = tally(
            "k".into(),
            &run_of(&[passed, summary, lockup], Some(lockup)),
            1.0,
            String::new(),
        );
        assert_eq!(retry_reason(&o), None);
        assert!(o.summary && o.failed == 0 && o.passed == 1);
    }

    #[test]
    fn a_stalled_guest_is_stopped_at_once() {
        let child = Command::new("sh")
            .args([
                "-c",
                "echo 'VMTEST k a PASS'; echo '[ 22.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s!'; exec sleep 60",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::env::temp_dir().join(format!("vmtest-stall-{}.log", std::process::id()));
        let started = Instant::now();
        let run = collect(child, Duration::from_secs(30), &log).unwrap();
        let _ = fs::remove_file(&log);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the time-out"
        );
        assert!(!run.timed_out);
        assert_eq!(run.lines.len(), 2);
        assert!(run.stall.is_some_and(|l| l.contains("CPU#1 stuck")));
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", b"#!/bin/sh\n", 0o755);
        c.char_dev("dev/console", 5, 1);
        let buf = c.finish();
        assert!(buf.len().is_multiple_of(4));
        assert!(buf.starts_with(b"070701"));
        let trailer = buf
            .windows(10)
            .position(|w| w == b"TRAILER!!!")
            .expect("trailer");
        assert!(trailer > 0);
    }
}
