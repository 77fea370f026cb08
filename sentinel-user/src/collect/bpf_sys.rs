//! The kernel interfaces aya 0.14 does not wrap: batched map reads (`BPF_MAP_LOOKUP_BATCH`,
//! Linux 5.6+ for hash and per-CPU hash maps), memory-mapped arrays (`BPF_F_MMAPABLE`, 5.5+)
//! and a task iterator read again and again (`BPF_LINK_CREATE` for an iterator, then one
//! `BPF_ITER_CREATE` per read: aya's `IterLink::into_file` consumes the link). All work on file
//! descriptors aya exposes.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    ptr::NonNull,
};

use nix::libc;

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_attach_type`'s `BPF_TRACE_ITER`.
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr`'s map element member, for a delete.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Deletes `key` (its bytes) from the map behind `fd`; a missing key is not an error.
pub fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: the attribute points at a key of the map's key size that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}

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

/// A `bpf()` command that returns a new file descriptor.
fn new_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` member laid out as the kernel expects, valid for the
    // call; the kernel reads no more than `size_of::<T>()` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the command returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Links the loaded iterator program `prog` (an iterator over every task: no `iter_info`).
pub fn link_iterator(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        ..Default::default()
    };
    new_fd(BPF_LINK_CREATE, &mut attr)
}

/// A new file that runs the iterator behind `link` once as it is read.
pub fn iterator_file(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    new_fd(BPF_ITER_CREATE, &mut attr)
}

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Whether a process without any capability can read the map behind `fd`: a forked child
/// drops every capability and asks the map for its first key. Only raw system calls run in the
/// child; call this while the process has one thread.
pub fn reads_need_privilege(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut key = [0u8; 64];
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: 0,
        // `next_key` sits where `value` does for element commands.
        value: key.as_mut_ptr() as u64,
        flags: 0,
    };
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let no_caps = [0u32; 6];
    // SAFETY: the child only makes raw system calls on memory prepared before the fork and
    // leaves with _exit; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            if libc::syscall(libc::SYS_capset, &raw mut header, no_caps.as_ptr()) != 0 {
                libc::_exit(2);
            }
            let rc = libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            );
            let denied = rc < 0 && *libc::__errno_location() == libc::EPERM;
            libc::_exit(if denied { 1 } else { 0 });
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(io::Error::other(format!(
                "the capability probe ended with status {status:#x}"
            ))),
        }
    }
}

/// Reusable buffers for reading a whole hash map in a few system calls.
pub struct BatchReader {
    key_size: usize,
    /// Bytes per key's value: `round_up(value_size, 8) * possible CPUs` for a per-CPU map.
    value_stride: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl BatchReader {
    /// `capacity` entries fit in one call; a map holding more is read in several.
    pub fn new(key_size: usize, value_stride: usize, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            key_size,
            value_stride,
            keys: vec![0; key_size * capacity],
            values: vec![0; value_stride * capacity],
        }
    }

    fn capacity(&self) -> usize {
        self.keys.len() / self.key_size
    }

    /// Calls `each(key bytes, value bytes)` for every entry of the map. An entry deleted or
    /// added during the read is seen whole or not at all (each bucket is copied under its lock).
    pub fn read(
        &mut self,
        fd: BorrowedFd<'_>,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> io::Result<()> {
        let mut token = [0u64; 2];
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token.as_ptr() as u64 },
                out_batch: token.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.capacity() as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: the attribute points at buffers that hold `count` keys and values of the
            // sizes the map was created with, and at a token big enough for any map type's
            // batch cursor; all outlive the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let n = attr.count as usize;
            for i in 0..n.min(self.capacity()) {
                each(
                    &self.keys[i * self.key_size..(i + 1) * self.key_size],
                    &self.values[i * self.value_stride..(i + 1) * self.value_stride],
                );
            }
            match err {
                None => {}
                // The end of the map: this call's entries were the last ones.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                // One bucket holds more entries than the buffers (the kernel then returns none):
                // grow them and repeat the same call.
                Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                    let bigger = self.capacity() * 2;
                    self.keys.resize(self.key_size * bigger, 0);
                    self.values.resize(self.value_stride * bigger, 0);
                    continue;
                }
                Some(e) => return Err(e),
            }
            first = false;
        }
    }
}

/// A read-only or read-write view of a `BPF_F_MMAPABLE` array map's values.
pub struct MappedArray {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through volatile or atomic
// loads and stores of aligned u64 words.
unsafe impl Send for MappedArray {}

impl MappedArray {
    /// Maps `bytes` bytes of the array behind `fd` (its values, contiguous, from offset 0).
    pub fn map(fd: BorrowedFd<'_>, bytes: usize, writable: bool) -> io::Result<Self> {
        let page = 4096;
        let len = bytes.div_ceil(page).max(1) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a map fd we hold; the kernel checks the length
        // against the map's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len: bytes,
        })
    }

    /// Private anonymous memory with the same interface, for tests and benchmarks of the code
    /// that reads the kernel's arrays.
    pub fn anonymous(bytes: usize) -> io::Result<Self> {
        let len = bytes.div_ceil(4096).max(1) * 4096;
        // SAFETY: a fresh private anonymous mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len: bytes,
        })
    }

    /// Stores a word (what the kernel does; tests and benchmarks play the kernel with it).
    pub fn store_word(&self, index: usize, value: u64) {
        assert!((index + 1) * 8 <= self.len, "word {index} past the mapping");
        // SAFETY: in bounds and aligned; only called on writable mappings.
        unsafe { std::ptr::write_volatile(self.base.as_ptr().cast::<u64>().add(index), value) }
    }

    /// The u64 word at `index` (0-based, in units of 8 bytes), read whole.
    #[inline]
    pub fn word(&self, index: usize) -> u64 {
        assert!((index + 1) * 8 <= self.len, "word {index} past the mapping");
        // SAFETY: in bounds (checked above) and 8-byte aligned (the mapping is page-aligned).
        unsafe { std::ptr::read_volatile(self.base.as_ptr().cast::<u64>().add(index)) }
    }

    /// Atomically replaces the word at `index` with 0 and returns what it held.
    #[inline]
    pub fn take_word(&self, index: usize) -> u64 {
        assert!((index + 1) * 8 <= self.len, "word {index} past the mapping");
        // SAFETY: in bounds, aligned, and the mapping is writable when this is called (the
        // dirty bitmap); AtomicU64 has the layout of u64.
        let word = unsafe {
            &*(self.base.as_ptr().cast::<u64>().add(index) as *const std::sync::atomic::AtomicU64)
        };
        word.swap(0, std::sync::atomic::Ordering::AcqRel)
    }

    /// Copies `out.len()` words starting at word `index`.
    #[inline]
    pub fn read_words(&self, index: usize, out: &mut [u64]) {
        // One bounds check for the run, not one per word (a drain reads thousands of runs).
        assert!(
            (index + out.len()) * 8 <= self.len,
            "words {index}..{} past the mapping",
            index + out.len()
        );
        let base = self.base.as_ptr().cast::<u64>();
        for (i, slot) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above) and 8-byte aligned (the mapping is
            // page-aligned); each word is read whole, as the kernel writes it.
            *slot = unsafe { std::ptr::read_volatile(base.add(index + i)) };
        }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        let len = self.len.div_ceil(4096).max(1) * 4096;
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), len);
        }
    }
}
