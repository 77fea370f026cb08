//! Every process and its container key in one pass, from the kernel's BPF task iterator
//! (`snt_iter_task`, Linux 5.8+): what the container roster reads instead of one readlink or
//! cgroup read per process under /proc.
//!
//! The iterator's program stays loaded through its link, which this holds: each snapshot is
//! one `BPF_ITER_CREATE` on the link and a few `read`s of the file it returns.

use std::{
    fs::File,
    io::{self, Read},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use sentinel_common::{ContainerKey, TaskEntry};

use super::bpf_sys;

/// The init PID namespace's inode (`PROC_PID_INIT_INO`, fixed in the kernel).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// A loaded task iterator, ready to be read any number of times (from any thread).
#[derive(Debug)]
pub struct TaskIterator {
    link: OwnedFd,
}

impl TaskIterator {
    /// Links the loaded `snt_iter_task` program (`prog` is its file descriptor).
    pub fn link(prog: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self {
            link: bpf_sys::link_iterator(prog)?,
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
        let mut file = File::from(bpf_sys::iterator_file(self.link.as_fd())?);
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
