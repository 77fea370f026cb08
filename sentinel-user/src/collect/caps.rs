//! Dropping every capability once the programs are attached (fault matrix row P3).
//!
//! Verified on 6.1, 6.12 and 6.18 (see FAULT-MATRIX 1.5 and `cargo xtask vmtest`): map fds
//! created while privileged stay readable with no capability at all, and fd-based links keep
//! the programs attached. Loading or re-attaching anything later needs the capabilities back,
//! which a process that dropped them cannot get: that is the trade.

use anyhow::{Result, bail};
use nix::libc;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
pub const CAP_BPF: u32 = 39;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Highest capability number the running kernel knows (40 on 6.x kernels).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Empties the bounding, ambient, inheritable, permitted and effective sets of the calling
/// thread, so neither this process nor anything it executes can regain a capability (uid 0
/// gets no capabilities on exec once they are out of the bounding set).
///
/// Capability sets are per thread: call this before starting any other thread, or the others
/// keep theirs.
pub fn drop_all() -> Result<()> {
    drop_all_but(&[])
}

/// As `drop_all`, but `keep` stays in the effective and permitted sets (and the bounding
/// set), e.g. CAP_BPF where the kernel checks it on every map read.
pub fn drop_all_but(keep: &[u32]) -> Result<()> {
    let mask: u64 = keep.iter().fold(0, |m, &c| m | (1u64 << c));
    // The bounding set first: dropping from it needs CAP_SETPCAP, which capset removes.
    for cap in (0..=last_cap()).filter(|c| mask & (1u64 << c) == 0) {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        // EINVAL: a capability this kernel does not know; nothing to drop.
        if rc != 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
            bail!(
                "cannot drop capability {cap} from the bounding set: {}",
                nix::errno::Errno::last()
            );
        }
    }
    // SAFETY: prctl with integer arguments only. Fails with EINVAL before Linux 4.3, which
    // has no ambient set to clear.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        CapData {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data have the layout of the kernel's v3 capset arguments.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        bail!("capset failed: {}", nix::errno::Errno::last());
    }
    Ok(())
}

/// `CapEff` of the calling thread, from `/proc/thread-self/status`.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}
