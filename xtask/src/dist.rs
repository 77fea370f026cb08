//! `cargo xtask dist`: the release artifacts, under target/dist/:
//!
//! * `sentinel-VERSION-x86_64-unknown-linux-musl.tar.gz`: the static binary (eBPF object
//!   embedded), the unit, the example config, the logrotate snippet, the Grafana dashboard and
//!   alert rules, man pages, shell completions, README, CHANGELOG, the licences and
//!   `THIRD-PARTY-LICENSES`;
//! * `sentinel_VERSION_amd64.deb`: built here with `dpkg-deb` (see [`deb`]);
//! * `sentinel-image-VERSION.tar`: an OCI image layout that `docker load` also reads (a
//!   `manifest.json` beside `index.json`), tagged `sentinel:VERSION`, holding the binary and
//!   its `THIRD-PARTY-LICENSES`;
//! * `SHA256SUMS` of the three.
//!
//! `THIRD-PARTY-LICENSES` ([`crate::licenses`]) holds the licence notices of every crate,
//! jemalloc, musl libc, the Rust standard library and LLVM's libunwind linked into the static
//! binary: their licences ask for them to ship with it. It is generated first, so a crate
//! without a licence text stops dist before the build.
//!
//! The binary is always the static musl build: dist fails when that target cannot be had.
//! Archive entries carry fixed owners and the commit's time, so a rebuild of one commit gives
//! the same tarball and image.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::build_ebpf::{self, status, step};

pub const MUSL: &str = "x86_64-unknown-linux-musl";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(clap::Args, Clone, Debug, Default)]
pub struct DistArgs {}

pub struct Artifacts {
    pub tarball: PathBuf,
    pub deb: PathBuf,
    pub image: PathBuf,
}

pub fn tarball_name() -> String {
    format!("sentinel-{VERSION}-{MUSL}.tar.gz")
}

pub fn dist_dir() -> PathBuf {
    build_ebpf::workspace_root().join("target/dist")
}

pub fn run(_args: &DistArgs) -> Result<()> {
    let a = build()?;
    for p in [&a.tarball, &a.deb, &a.image] {
        println!(
            "{}  {:.1} MiB",
            p.display(),
            fs::metadata(p)?.len() as f64 / (1 << 20) as f64
        );
    }
    println!("{}", dist_dir().join("SHA256SUMS").display());
    Ok(())
}

pub fn build() -> Result<Artifacts> {
    let root = build_ebpf::workspace_root();
    let out = dist_dir();
    let stage = out.join("stage");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&stage)?;
    let licenses = crate::licenses::generate(&root)?;
    step(&format!(
        "{}: {} KiB",
        crate::licenses::FILE_NAME,
        licenses.len() / 1024
    ));
    let binary = static_binary(&root, &stage)?;
    let generated = Generated::new(&binary, &stage.join("generated"), licenses.into_bytes())?;
    let mtime = source_date_epoch(&root);

    let tarball = out.join(tarball_name());
    write_tarball(&root, &binary, &generated, mtime, &tarball)?;
    let deb = deb::build(&root, &binary, &generated, mtime, &stage.join("deb"), &out)?;
    let image = out.join(format!("sentinel-image-{VERSION}.tar"));
    image::write(&binary, &generated.licenses, mtime, &image)?;

    let mut sums = String::new();
    for p in [&tarball, &deb, &image] {
        let name = p.file_name().unwrap().to_string_lossy();
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&fs::read(p)?)));
    }
    fs::write(out.join("SHA256SUMS"), sums)?;
    let _ = fs::remove_dir_all(&stage);
    Ok(Artifacts {
        tarball,
        deb,
        image,
    })
}

/// Builds the static musl binary (installing the target once if rustup lacks it), checks that
/// it is static, and leaves a stripped copy in `stage`.
fn static_binary(root: &Path, stage: &Path) -> Result<PathBuf> {
    build_ebpf::run(&build_ebpf::Options { release: true })?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == MUSL) {
        status(
            Command::new("rustup").args(["target", "add", MUSL]),
            &format!("rustup target add {MUSL} (dist ships only a static binary)"),
        )?;
    }
    // ring (the crypto of the https probes) compiles C and assembly for the target: cc finds
    // Debian's musl-gcc.
    crate::packages::ensure(&["musl-tools"])?;
    let mut cmd = Command::new(build_ebpf::cargo());
    cmd.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "sentinel-user",
        "--bin",
        "sentinel",
        "--target",
        MUSL,
    ]);
    status(&mut cmd, "building the static sentinel (musl)")?;
    let built = root.join("target").join(MUSL).join("release/sentinel");
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if elf_interpreter(&bytes)? {
        bail!(
            "{} asks for a dynamic loader (PT_INTERP): not a static binary",
            built.display()
        );
    }
    let stripped = stage.join("sentinel");
    status(
        Command::new("strip")
            .args(["--strip-all", "-o"])
            .arg(&stripped)
            .arg(&built),
        "strip (binutils)",
    )?;
    step(&format!(
        "static binary: {} KiB ({} KiB before strip)",
        fs::metadata(&stripped)?.len() / 1024,
        bytes.len() / 1024
    ));
    Ok(stripped)
}

/// Whether an x86-64 ELF executable has a PT_INTERP program header (needs a dynamic loader).
pub fn elf_interpreter(elf: &[u8]) -> Result<bool> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        bail!("not a 64-bit ELF file");
    }
    if u16_at(18) != Some(0x3e) {
        bail!("not an x86-64 ELF file");
    }
    let short = || anyhow!("truncated ELF header");
    let phoff = u64_at(0x20).ok_or_else(short)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(short)? as usize;
    let phnum = u16_at(0x38).ok_or_else(short)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(short)?;
        if p_type == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Man pages and completions, generated by the binary being shipped, and the third-party
/// licence notices of what it links.
pub struct Generated {
    /// (file name, roff)
    pub man: Vec<(String, Vec<u8>)>,
    pub bash: Vec<u8>,
    pub zsh: Vec<u8>,
    pub fish: Vec<u8>,
    /// THIRD-PARTY-LICENSES
    pub licenses: Vec<u8>,
}

impl Generated {
    fn new(binary: &Path, dir: &Path, licenses: Vec<u8>) -> Result<Self> {
        let man_dir = dir.join("man1");
        fs::create_dir_all(&man_dir)?;
        status(
            Command::new(binary)
                .args(["manpage", "--dir"])
                .arg(&man_dir),
            "sentinel manpage",
        )?;
        let mut man = Vec::new();
        for e in fs::read_dir(&man_dir)? {
            let e = e?;
            man.push((
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path())?,
            ));
        }
        man.sort();
        let completions = |shell: &str| -> Result<Vec<u8>> {
            let o = Command::new(binary)
                .args(["completions", shell])
                .output()
                .context("sentinel completions")?;
            if !o.status.success() || o.stdout.is_empty() {
                bail!("sentinel completions {shell} failed");
            }
            Ok(o.stdout)
        };
        Ok(Self {
            man,
            bash: completions("bash")?,
            zsh: completions("zsh")?,
            fish: completions("fish")?,
            licenses,
        })
    }
}

/// The commit's time (or SOURCE_DATE_EPOCH), for every timestamp in the artifacts.
fn source_date_epoch(root: &Path) -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return t;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar archive with fixed owners (root) and one mtime: entries are (path, bytes, mode);
/// directories end in `/` and have no bytes.
fn tar_bytes(entries: &[(String, Vec<u8>, u32)], mtime: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_mtime(mtime);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty())?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data.as_slice())?;
        }
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // No file name and mtime 0 in the header (gzip -n): the output depends on the data only.
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn repo(root: &Path, rel: &str) -> Result<Vec<u8>> {
    fs::read(root.join(rel)).with_context(|| format!("reading {rel}"))
}

/// The files of a source install that ship beside the binary in the tarball and the package.
const DEPLOY_FILES: [(&str, &str); 6] = [
    ("deploy/sentinel.service", "sentinel.service"),
    ("deploy/sentinel.example.toml", "sentinel.example.toml"),
    ("deploy/sentinel.logrotate", "sentinel.logrotate"),
    ("deploy/grafana-dashboard.json", "grafana-dashboard.json"),
    ("deploy/prometheus-alerts.yml", "prometheus-alerts.yml"),
    (
        "deploy/kubernetes/daemonset.yaml",
        "kubernetes/daemonset.yaml",
    ),
];
const DOC_FILES: [&str; 5] = [
    "README.md",
    "OPS.md",
    "CHANGELOG.md",
    "LICENSE-MIT",
    "LICENSE-APACHE",
];

fn write_tarball(
    root: &Path,
    binary: &Path,
    generated: &Generated,
    mtime: u64,
    out: &Path,
) -> Result<()> {
    let top = format!("sentinel-{VERSION}-{MUSL}");
    let mut entries = vec![
        (format!("{top}/"), Vec::new(), 0o755),
        (format!("{top}/sentinel"), fs::read(binary)?, 0o755),
        (format!("{top}/kubernetes/"), Vec::new(), 0o755),
    ];
    for (src, name) in DEPLOY_FILES {
        entries.push((format!("{top}/{name}"), repo(root, src)?, 0o644));
    }
    for doc in DOC_FILES {
        entries.push((format!("{top}/{doc}"), repo(root, doc)?, 0o644));
    }
    entries.push((
        format!("{top}/{}", crate::licenses::FILE_NAME),
        generated.licenses.clone(),
        0o644,
    ));
    entries.push((format!("{top}/man/"), Vec::new(), 0o755));
    entries.push((format!("{top}/man/man1/"), Vec::new(), 0o755));
    for (name, roff) in &generated.man {
        entries.push((format!("{top}/man/man1/{name}"), roff.clone(), 0o644));
    }
    entries.push((format!("{top}/completions/"), Vec::new(), 0o755));
    for (name, data) in [
        ("sentinel.bash", &generated.bash),
        ("_sentinel", &generated.zsh),
        ("sentinel.fish", &generated.fish),
    ] {
        entries.push((format!("{top}/completions/{name}"), data.clone(), 0o644));
    }
    fs::write(out, gzip(&tar_bytes(&entries, mtime)?)?)?;
    Ok(())
}

/// The unit of the package: the source install's unit with the binary in /usr/bin.
pub fn render_unit(template: &str, bindir: &str) -> Result<String> {
    const SOURCE: &str = "ExecStart=/usr/local/bin/sentinel ";
    if template.matches(SOURCE).count() != 1 {
        bail!("deploy/sentinel.service: expected one `{SOURCE}...` line to render");
    }
    Ok(template.replace(SOURCE, &format!("ExecStart={bindir}/sentinel ")))
}

pub mod deb {
    //! The Debian package, laid out by hand and built by `dpkg-deb`: what debhelper would
    //! produce for a daemon (dh_installsystemd's maintainer scripts: enabled and started on
    //! install, restarted on upgrade, stopped on remove), with the conffiles in /etc.

    use super::*;

    pub fn file_name() -> String {
        format!("sentinel_{VERSION}_amd64.deb")
    }

    /// Maintainer and changelog identity. The project has no public contact address yet: a
    /// reserved `.invalid` domain (RFC 2606) says so plainly until it has one.
    const MAINTAINER: &str = "Sentinel developers <maintainers@sentinel.invalid>";

    /// Tags lintian would report, each with the reason it does not apply; installed where
    /// lintian reads them, the Debian way to explain a tag.
    const LINTIAN_OVERRIDES: &str = "\
# The binary is a static-pie musl executable (ELF type DYN without DT_NEEDED): lintian takes it
# for a shared library without dependencies. Static by design: one file, no libc dependency.
sentinel: shared-library-lacks-prerequisites [usr/bin/sentinel]
";

    const POSTINST: &str = r#"#!/bin/sh
set -e
# As dh_installsystemd writes it: enable on first install (keep the admin's choice on upgrade),
# then start, or restart on upgrade, when systemd runs.
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	deb-systemd-helper unmask 'sentinel.service' >/dev/null || true
	if deb-systemd-helper --quiet was-enabled 'sentinel.service'; then
		deb-systemd-helper enable 'sentinel.service' >/dev/null || true
	else
		deb-systemd-helper update-state 'sentinel.service' >/dev/null || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke restart 'sentinel.service' >/dev/null || true
		else
			deb-systemd-invoke start 'sentinel.service' >/dev/null || true
		fi
	fi
fi
"#;

    const PRERM: &str = r#"#!/bin/sh
set -e
# Stopping detaches every eBPF program; an upgrade restarts it from postinst instead.
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop 'sentinel.service' >/dev/null || true
fi
"#;

    const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && [ -x "/usr/bin/deb-systemd-helper" ]; then
	deb-systemd-helper mask 'sentinel.service' >/dev/null || true
fi
if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge 'sentinel.service' >/dev/null || true
		deb-systemd-helper unmask 'sentinel.service' >/dev/null || true
	fi
	# The healing audit log (LogsDirectory=) stays on remove, goes on purge.
	rm -rf /var/log/sentinel
fi
"#;

    fn control(installed_kib: u64) -> String {
        format!(
            "Package: sentinel
Version: {VERSION}
Architecture: amd64
Maintainer: {MAINTAINER}
Installed-Size: {installed_kib}
Depends: init-system-helpers (>= 1.54~)
Suggests: docker.io, prometheus
Section: admin
Priority: optional
Description: eBPF host sentinel: kernel metrics, anomaly detection, healing
 Sentinel attaches eBPF programs to the kernel's scheduler and network
 tracepoints and drains them every interval into exact per-interval
 counts, attributed to containers. Every series goes through a streaming
 anomaly detector, and Docker containers that opted in (label
 sentinel.heal=true) are restarted when unhealthy, behind circuit
 breakers, rate limits and an audit log.
 .
 It runs as a systemd service, serves Prometheus metrics on
 127.0.0.1:9464 and is inspected with `sentinel status` and `sentinel top`.
 The binary is static, with its eBPF object embedded; it needs Linux 5.8
 or later with BTF.
"
        )
    }

    fn copyright(root: &Path) -> Result<String> {
        let mit = String::from_utf8(repo(root, "LICENSE-MIT")?)?;
        let mit_body: String = mit
            .lines()
            .skip_while(|l| !l.starts_with("Permission"))
            .map(|l| {
                if l.is_empty() {
                    " .\n".to_string()
                } else {
                    format!(" {l}\n")
                }
            })
            .collect();
        Ok(format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sentinel
Comment: /usr/bin/sentinel is a static binary: it also contains third-party
 Rust crates, jemalloc, musl libc, the Rust standard library and LLVM's
 libunwind. Their licences and copyright notices are in
 /usr/share/doc/sentinel/{third_party}.gz.

Files: *
Copyright: 2026 The Sentinel developers
License: MIT or Apache-2.0

License: MIT
{mit_body}
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in the file `/usr/share/common-licenses/Apache-2.0'.
",
            third_party = crate::licenses::FILE_NAME,
        ))
    }

    fn changelog(mtime: u64) -> Result<String> {
        let date = Command::new("date")
            .args(["-u", "-R", "-d", &format!("@{mtime}")])
            .output()
            .context("date")?;
        let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
        Ok(format!(
            "sentinel ({VERSION}) unstable; urgency=medium\n\n  * Release {VERSION}. The \
             user-visible changes are in\n    /usr/share/doc/sentinel/CHANGELOG.md.gz.\n\n \
             -- {MAINTAINER}  {date}\n"
        ))
    }

    /// (path in the package, bytes, mode): the package's files, conffiles first.
    fn files(
        root: &Path,
        binary: &Path,
        g: &Generated,
        mtime: u64,
    ) -> Result<Vec<(String, Vec<u8>, u32)>> {
        let unit = String::from_utf8(repo(root, "deploy/sentinel.service")?)?;
        let mut files = vec![
            (
                "etc/sentinel/sentinel.toml".to_string(),
                repo(root, "deploy/sentinel.example.toml")?,
                0o644,
            ),
            (
                "etc/logrotate.d/sentinel".to_string(),
                repo(root, "deploy/sentinel.logrotate")?,
                0o644,
            ),
            ("usr/bin/sentinel".to_string(), fs::read(binary)?, 0o755),
            (
                "lib/systemd/system/sentinel.service".to_string(),
                render_unit(&unit, "/usr/bin")?.into_bytes(),
                0o644,
            ),
            (
                "usr/share/bash-completion/completions/sentinel".to_string(),
                g.bash.clone(),
                0o644,
            ),
            (
                "usr/share/zsh/vendor-completions/_sentinel".to_string(),
                g.zsh.clone(),
                0o644,
            ),
            (
                "usr/share/fish/vendor_completions.d/sentinel.fish".to_string(),
                g.fish.clone(),
                0o644,
            ),
        ];
        for (name, roff) in &g.man {
            files.push((format!("usr/share/man/man1/{name}.gz"), gzip(roff)?, 0o644));
        }
        files.push((
            "usr/share/lintian/overrides/sentinel".to_string(),
            LINTIAN_OVERRIDES.as_bytes().to_vec(),
            0o644,
        ));
        let doc = "usr/share/doc/sentinel";
        files.push((
            format!("{doc}/copyright"),
            copyright(root)?.into_bytes(),
            0o644,
        ));
        files.push((
            format!("{doc}/changelog.gz"),
            gzip(changelog(mtime)?.as_bytes())?,
            0o644,
        ));
        for (src, name) in [
            ("README.md", "README.md.gz"),
            ("OPS.md", "OPS.md.gz"),
            ("CHANGELOG.md", "CHANGELOG.md.gz"),
        ] {
            files.push((format!("{doc}/{name}"), gzip(&repo(root, src)?)?, 0o644));
        }
        files.push((
            format!("{doc}/{}.gz", crate::licenses::FILE_NAME),
            gzip(&g.licenses)?,
            0o644,
        ));
        for (src, name) in [
            ("deploy/grafana-dashboard.json", "grafana-dashboard.json"),
            ("deploy/prometheus-alerts.yml", "prometheus-alerts.yml"),
            ("deploy/kubernetes/daemonset.yaml", "daemonset.yaml"),
        ] {
            files.push((format!("{doc}/examples/{name}"), repo(root, src)?, 0o644));
        }
        Ok(files)
    }

    pub fn build(
        root: &Path,
        binary: &Path,
        g: &Generated,
        mtime: u64,
        stage: &Path,
        out: &Path,
    ) -> Result<PathBuf> {
        let _ = fs::remove_dir_all(stage);
        let files = files(root, binary, g, mtime)?;
        let mut installed_kib = 0;
        let mut md5sums = String::new();
        for (path, data, mode) in &files {
            let dest = stage.join(path);
            fs::create_dir_all(dest.parent().unwrap())?;
            fs::write(&dest, data)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(*mode))?;
            installed_kib += (data.len() as u64).div_ceil(1024);
            if !path.starts_with("etc/") {
                md5sums.push_str(&format!("{}  {path}\n", md5_hex(&dest)?));
            }
        }
        let debian = stage.join("DEBIAN");
        fs::create_dir_all(&debian)?;
        let conffiles: String = files
            .iter()
            .filter(|(p, _, _)| p.starts_with("etc/"))
            .map(|(p, _, _)| format!("/{p}\n"))
            .collect();
        for (name, text, mode) in [
            ("control", control(installed_kib), 0o644),
            ("conffiles", conffiles, 0o644),
            ("md5sums", md5sums, 0o644),
            ("postinst", POSTINST.to_string(), 0o755),
            ("prerm", PRERM.to_string(), 0o755),
            ("postrm", POSTRM.to_string(), 0o755),
        ] {
            let p = debian.join(name);
            fs::write(&p, text)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
        // Directories 0755 whatever the umask.
        status(
            Command::new("find")
                .arg(stage)
                .args(["-type", "d", "-exec", "chmod", "0755", "{}", "+"]),
            "chmod the package's directories",
        )?;
        let deb = out.join(file_name());
        status(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zxz", "--build"])
                .arg(stage)
                .arg(&deb)
                .env("SOURCE_DATE_EPOCH", mtime.to_string()),
            "dpkg-deb --build",
        )?;
        Ok(deb)
    }

    fn md5_hex(path: &Path) -> Result<String> {
        let o = Command::new("md5sum")
            .arg(path)
            .output()
            .context("md5sum")?;
        if !o.status.success() {
            bail!("md5sum {} failed", path.display());
        }
        Ok(String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    }
}

pub mod image {
    //! The container image: one layer holding /usr/bin/sentinel, entrypoint `sentinel`, and the
    //! licence notices of what the binary links, /usr/share/doc/sentinel/THIRD-PARTY-LICENSES
    //! (uncompressed, as in the tarball). Written
    //! as an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) with Docker's
    //! `manifest.json` beside it, which is what `docker save` writes and both `docker load` and
    //! OCI tools (skopeo, podman, containerd's `ctr import`) read. No daemon is needed to build it.

    use super::*;

    pub fn tag() -> String {
        format!("sentinel:{VERSION}")
    }

    fn rfc3339(epoch: u64) -> String {
        let o = Command::new("date")
            .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output();
        o.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
    }

    pub fn write(binary: &Path, licenses: &[u8], mtime: u64, out: &Path) -> Result<()> {
        let layer = tar_bytes(
            &[
                ("usr/".into(), Vec::new(), 0o755),
                ("usr/bin/".into(), Vec::new(), 0o755),
                ("usr/bin/sentinel".into(), fs::read(binary)?, 0o755),
                ("usr/share/".into(), Vec::new(), 0o755),
                ("usr/share/doc/".into(), Vec::new(), 0o755),
                ("usr/share/doc/sentinel/".into(), Vec::new(), 0o755),
                (
                    format!("usr/share/doc/sentinel/{}", crate::licenses::FILE_NAME),
                    licenses.to_vec(),
                    0o644,
                ),
            ],
            mtime,
        )?;
        let layer_digest = sha256_hex(&layer);
        let created = rfc3339(mtime);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Entrypoint": ["/usr/bin/sentinel"],
                "Cmd": ["run"],
                "Env": ["PATH=/usr/bin"],
                "Labels": {
                    "org.opencontainers.image.title": "sentinel",
                    "org.opencontainers.image.version": VERSION,
                    "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
                    "org.opencontainers.image.description":
                        "eBPF host sentinel; run with the mounts and capabilities in deploy/kubernetes/daemonset.yaml",
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
            "history": [{"created": created, "created_by": "cargo xtask dist"}],
        });
        let config = serde_json::to_vec(&config)?;
        let config_digest = sha256_hex(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = sha256_hex(&manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": format!("docker.io/library/{}", tag()),
                    "org.opencontainers.image.ref.name": VERSION,
                },
            }],
        }))?;
        let docker_manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": format!("blobs/sha256/{config_digest}"),
            "RepoTags": [tag()],
            "Layers": [format!("blobs/sha256/{layer_digest}")],
        }]))?;
        let archive = tar_bytes(
            &[
                ("blobs/".into(), Vec::new(), 0o755),
                ("blobs/sha256/".into(), Vec::new(), 0o755),
                (format!("blobs/sha256/{layer_digest}"), layer, 0o644),
                (format!("blobs/sha256/{config_digest}"), config, 0o644),
                (format!("blobs/sha256/{manifest_digest}"), manifest, 0o644),
                ("index.json".into(), index, 0o644),
                ("manifest.json".into(), docker_manifest, 0o644),
                (
                    "oci-layout".into(),
                    br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
                    0o644,
                ),
            ],
            mtime,
        )?;
        fs::write(out, archive)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_unit_is_the_source_unit_with_usr_bin() {
        let root = build_ebpf::workspace_root();
        let source = fs::read_to_string(root.join("deploy/sentinel.service")).unwrap();
        let rendered = render_unit(&source, "/usr/bin").unwrap();
        let diff: Vec<(&str, &str)> = source
            .lines()
            .zip(rendered.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(
            diff[0]
                .1
                .starts_with("ExecStart=/usr/bin/sentinel run --config ")
        );
        assert!(render_unit("no exec start", "/usr/bin").is_err());
    }

    #[test]
    fn elf_interpreter_is_found_in_a_dynamic_binary_and_not_in_a_static_one() {
        // This test binary is dynamically linked (glibc).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_interpreter(&me).unwrap());
        let busybox = Path::new("/bin/busybox");
        if let Ok(bytes) = fs::read(busybox)
            && Command::new("ldd")
                .arg(busybox)
                .output()
                .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("=>"))
        {
            assert!(!elf_interpreter(&bytes).unwrap(), "busybox-static");
        }
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_interpreter(b"\x7fELF\x02").is_err(), "truncated");
    }

    #[test]
    fn archives_are_reproducible_and_owned_by_root() {
        let entries = vec![
            ("d/".to_string(), Vec::new(), 0o755),
            ("d/f".to_string(), b"x".to_vec(), 0o644),
        ];
        let a = tar_bytes(&entries, 1_700_000_000).unwrap();
        assert_eq!(a, tar_bytes(&entries, 1_700_000_000).unwrap());
        let mut ar = tar::Archive::new(a.as_slice());
        for e in ar.entries().unwrap() {
            let h = e.unwrap().header().clone();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        }
        assert_eq!(gzip(b"abc").unwrap(), gzip(b"abc").unwrap());
    }
}
