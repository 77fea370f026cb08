//! The Debian packages the test suite needs, installed once if missing (like the toolchain
//! pieces `build-ebpf` installs), so `cargo xtask test` is the only command a fresh machine
//! needs.

use std::process::Command;

use anyhow::{Result, bail};

use crate::build_ebpf::{status, step};

/// Everything the privileged tests use: network namespaces, mounts, a Docker engine and a
/// local busybox image (no pulls), Prometheus and tmux for the operations tests, QEMU for the
/// kernel portability matrix, systemd-nspawn and mmdebstrap to run the unit under a real
/// systemd (tests/systemd.rs), man-db to check the man pages, lintian and logrotate for the
/// Debian package (tests/dist.rs), podman for the runtime tests (containerd comes with
/// docker.io), protoc, which the containerd client's build needs, and bpftool, whose dump of
/// the kernel's BTF the BTF reader's test compares with.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "busybox-static",
    "docker.io",
    "ca-certificates",
    "prometheus",
    "tmux",
    "systemd",
    "qemu-system-x86",
    "stress-ng",
    "systemd-container",
    "mmdebstrap",
    "man-db",
    "lintian",
    "logrotate",
    "podman",
    "protobuf-compiler",
    "bpftool",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed")
        })
}

pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are needed: {} (run `apt-get install {}` as root)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    status(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
