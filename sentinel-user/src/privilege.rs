//! Capabilities: the one module that reads and drops them (on the `caps` crate, so no unsafe
//! here). The daemon drops all but `CAP_SYS_PTRACE` (and `CAP_BPF` where the kernel needs it,
//! below) once its programs are attached (`--drop-capabilities`); `sentinel selftest
//! --drop-caps` (vmtest) drops through the same function with the same rule and checks the
//! drain still works, so the guests test the code the daemon runs.
//!
//! Why it works (FAULT-MATRIX P3; verified on 5.10, 6.1, 6.12 and 6.18, `cargo xtask vmtest`):
//! map fds created while privileged stay readable with no capability at all from Linux 6.1 on,
//! and fd-based links keep the programs attached. Linux 5.10 checks CAP_BPF on every bpf()
//! command while unprivileged BPF is disabled (Debian's default): there `CAP_BPF` stays, which
//! `Collector::map_reads_need_privilege` finds out from the running kernel. What the daemon keeps is what steady state needs:
//! `CAP_SYS_PTRACE`, because the kernel checks ptrace access for `/proc/PID/ns/*`
//! (network-namespace and, on cgroup v1 hosts, container attribution). Loading or re-attaching
//! anything later would need the capabilities back, which a process that dropped them cannot
//! get: that is the trade.

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};

pub use caps::Capability as Cap;

/// Keeps only `keep` (intersected with what the process has) in the effective and permitted
/// sets, clears the inheritable and ambient sets and, when the process may (CAP_SETPCAP), the
/// bounding set too, so nothing it executes can regain a capability (a service unit bounds it
/// already otherwise). Returns the new effective set as a bit mask.
///
/// Capabilities are per thread: call it while the process has one thread (threads created
/// later inherit the reduced sets).
pub fn drop_all_but(keep: &[Capability]) -> Result<u64> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, std::iter::Iterator::count);
    if threads > 1 {
        bail!("cannot drop capabilities: the process already has {threads} threads");
    }
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the capset removes.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        // Only the capabilities this kernel knows (a 5.8 kernel has no CAP_CHECKPOINT_RESTORE).
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
            }
        }
    }
    // Fails before Linux 4.3, which has no ambient set to clear.
    let _ = caps::clear(None, CapSet::Ambient);
    let permitted = caps::read(None, CapSet::Permitted).context("capget")?;
    let set: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::clear(None, CapSet::Inheritable).context("capset (inheritable)")?;
    // Effective must stay within permitted: shrink it first.
    caps::set(None, CapSet::Effective, &set).context("capset (effective)")?;
    caps::set(None, CapSet::Permitted, &set).context("capset (permitted)")?;
    Ok(mask(&set))
}

/// The calling thread's effective capabilities as a bit mask (`CapEff`), if they can be read.
pub fn effective() -> Option<u64> {
    caps::read(None, CapSet::Effective).ok().map(|s| mask(&s))
}

/// Does the bit mask hold this capability?
pub fn has(mask: u64, cap: Capability) -> bool {
    mask & cap.bitmask() != 0
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_the_kernel_numbers() {
        assert_eq!(Capability::CAP_SYS_PTRACE.bitmask(), 1 << 19);
        assert_eq!(Capability::CAP_BPF.bitmask(), 1 << 39);
        let m = mask(
            &[Capability::CAP_BPF, Capability::CAP_PERFMON]
                .into_iter()
                .collect(),
        );
        assert!(has(m, Capability::CAP_BPF) && has(m, Capability::CAP_PERFMON));
        assert!(!has(m, Capability::CAP_SYS_ADMIN));
        assert!(effective().is_some(), "capget works for the calling thread");
    }

    /// Capabilities are per thread: once another thread exists, dropping them in this one would
    /// leave the others privileged, so it is refused (the test harness always runs a second
    /// thread: this one).
    #[test]
    fn dropping_is_refused_once_other_threads_exist() {
        let e = drop_all_but(&[]).unwrap_err().to_string();
        assert!(e.contains("threads"), "{e}");
        assert!(effective().is_some(), "nothing was dropped");
    }
}
