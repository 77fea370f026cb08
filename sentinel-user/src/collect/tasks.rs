//! Every process and its container key in one pass, from the kernel's BPF task iterator
//! (`snt_iter_task`, Linux 5.8+): what the container roster reads instead of one readlink or
//! cgroup read per process under /proc.
//!
//! The iterator's program stays loaded through its link, which this holds: each snapshot is
//! one `BPF_ITER_CREATE` on the link and a few `read`s of the file it returns.

use std::{
    fs::File,
    io::{self, Read},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use nix::libc;
use sentinel_common::{ContainerKey, TaskEntry};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_attach_type`'s `BPF_TRACE_ITER`.
const BPF_TRACE_ITER: u32 = 28;

/// The init PID namespace's inode (`PROC_PID_INIT_INO`, fixed in the kernel).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// `union bpf_attr`'s `link_create` member, as far as an iterator link needs it.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    /// `iter_info` and its length: none for a task iterator over every task.
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_attr`'s `iter_create` member.
#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` member laid out as the kernel expects, valid for the
    // call; the kernel reads no more than `size_of::<T>()` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both commands return a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// A loaded task iterator, ready to be read any number of times (from any thread).
#[derive(Debug)]
pub struct TaskIterator {
    link: OwnedFd,
}

impl TaskIterator {
    /// Links the loaded `snt_iter_task` program (`prog` is its file descriptor).
    pub fn link(prog: BorrowedFd<'_>) -> io::Result<Self> {
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_TRACE_ITER,
            ..Default::default()
        };
        Ok(Self {
            link: bpf(BPF_LINK_CREATE, &mut attr)?,
        })
    }

    /// Another handle on the same link.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            link: self.link.try_clone()?,
        })
    }

    /// Why the iterator's PIDs would not be /proc's, if they would not: the kernel writes
    /// PIDs of the initial PID namespace, and a sentinel in a PID namespace of its own (a pod
    /// without `hostPID`) must read its /proc instead.
    pub fn unusable_here() -> Option<String> {
        match std::fs::metadata("/proc/self/ns/pid") {
            Ok(m) if std::os::unix::fs::MetadataExt::ino(&m) == INIT_PID_NS => None,
            Ok(_) => Some("sentinel runs in a PID namespace of its own".into()),
            Err(e) => Some(format!("cannot read /proc/self/ns/pid: {e}")),
        }
    }

    /// Every process (thread-group leader) with its container key, in PID order, into
    /// `out` (cleared first); `buf` is reused between calls. A process that exits during the
    /// read may be missing; one that could not be resolved has key 0 and is left out.
    pub fn snapshot(
        &self,
        buf: &mut Vec<u8>,
        out: &mut Vec<(u32, ContainerKey)>,
    ) -> io::Result<()> {
        let mut attr = IterCreateAttr {
            link_fd: self.link.as_fd().as_raw_fd() as u32,
            flags: 0,
        };
        let mut file = File::from(bpf(BPF_ITER_CREATE, &mut attr)?);
        buf.clear();
        file.read_to_end(buf)?;
        out.clear();
        let size = std::mem::size_of::<TaskEntry>();
        if !buf.len().is_multiple_of(size) {
            return Err(io::Error::other(format!(
                "the task iterator wrote {} bytes, not a whole number of {size}-byte entries",
                buf.len()
            )));
        }
        out.extend(
            buf.chunks_exact(size)
                .map(bytemuck::pod_read_unaligned::<TaskEntry>)
                .filter(|e| e.key != 0)
                .map(|e| (e.tgid, e.key)),
        );
        Ok(())
    }
}

/// Compares one snapshot with /proc, as `sentinel selftest` and the tests do: every process
/// /proc lists both before and after the snapshot is in it with /proc's key, and no thread
/// other than a leader is. `key_of_pid` gives /proc's key of a PID. Returns a one-line
/// summary, or what disagreed.
pub fn agrees_with_proc(
    tasks: &TaskIterator,
    key_of_pid: impl Fn(u32) -> Option<ContainerKey>,
) -> Result<String, String> {
    use std::collections::{HashMap, HashSet};
    let proc_pids = || -> HashSet<u32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    };
    let before: HashMap<u32, Option<ContainerKey>> = proc_pids()
        .into_iter()
        .map(|p| (p, key_of_pid(p)))
        .collect();
    let (mut buf, mut seen) = (Vec::new(), Vec::new());
    tasks
        .snapshot(&mut buf, &mut seen)
        .map_err(|e| format!("snapshot: {e}"))?;
    let after = proc_pids();
    let snapshot: HashMap<u32, ContainerKey> = seen.iter().copied().collect();
    if snapshot.len() != seen.len() {
        return Err(format!(
            "{} entries for {} PIDs",
            seen.len(),
            snapshot.len()
        ));
    }
    let mut compared = 0;
    for (pid, key) in &before {
        // Gone or changed during the snapshot, or no key to compare (a zombie, say).
        let Some(key) = key else { continue };
        if !after.contains(pid) || key_of_pid(*pid) != Some(*key) {
            continue;
        }
        match snapshot.get(pid) {
            Some(k) if k == key => compared += 1,
            Some(k) => return Err(format!("PID {pid}: key {k}, /proc says {key}")),
            None => return Err(format!("PID {pid} (key {key}) is missing")),
        }
    }
    let me = std::process::id();
    let threads: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|t| *t != me)
        .collect();
    if let Some(t) = threads.iter().find(|t| snapshot.contains_key(t)) {
        return Err(format!("thread {t} of PID {me} is listed as a process"));
    }
    if !snapshot.contains_key(&me) {
        return Err(format!("this process ({me}) is missing"));
    }
    Ok(format!(
        "{} processes, {compared} compared with /proc, same keys; {} other threads of this \
         process left out",
        seen.len(),
        threads.len()
    ))
}
