//! Dropping capabilities once the programs are loaded and attached (FAULT-MATRIX P3): the maps
//! are then read through file descriptors the process already holds, which needs no capability
//! on current kernels. What stays is what steady state needs: `CAP_SYS_PTRACE`, because the
//! kernel checks ptrace access for `/proc/PID/ns/*` (network-namespace and, on cgroup v1 hosts,
//! container attribution).

use anyhow::{Result, bail};

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_BPF: u32 = 39;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const PR_CAPBSET_DROP: i32 = 24;
const PR_CAP_AMBIENT: i32 = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
const CAP_LAST: u32 = 63;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps only `keep` (intersected with what the process has) in the effective and permitted
/// sets, clears the inheritable and ambient sets and, where allowed, the bounding set. Returns
/// the new effective set. Capabilities are per thread: call it while the process has one thread
/// (threads created later inherit the reduced sets).
pub fn drop_all_but(keep: &[u32]) -> Result<u64> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        bail!("cannot drop capabilities: the process already has {threads} threads");
    }
    let mask: u64 = keep.iter().fold(0, |m, &c| m | (1u64 << c));
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header read/write exactly two `Data` structs.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    // The bounding set needs CAP_SETPCAP to shrink; a service unit already bounds it.
    for cap in 0..=CAP_LAST {
        if mask & (1u64 << cap) == 0 {
            // SAFETY: plain prctl with integer arguments.
            unsafe { nix::libc::prctl(PR_CAPBSET_DROP, u64::from(cap), 0u64, 0u64, 0u64) };
        }
    }
    // SAFETY: as above.
    unsafe { nix::libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0u64, 0u64, 0u64) };
    let set = permitted & mask;
    let data = [
        Data {
            effective: set as u32,
            permitted: set as u32,
            inheritable: 0,
        },
        Data {
            effective: (set >> 32) as u32,
            permitted: (set >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: as above.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capset,
            &mut header as *mut Header,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    Ok(set)
}
