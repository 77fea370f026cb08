//! The process's allocator: jemalloc, for every binary that links this crate (the daemon,
//! its benches and its tests alike, so that what is measured is what ships).
//!
//! The daemon builds the same large buffers every interval (container records, the series
//! list, the output line: about 1 KiB per container each) beside thousands of small, long-lived
//! detector states. At 1000 containers (`cargo bench -p sentinel-user --bench interval`, CPU
//! per interval, means over runs in BENCHMARKS.md): musl's allocator, the static release
//! binary's, 10.4 ms; glibc's 8.0 ms, as it unmapped or trimmed the buffers after each
//! interval and faulted them in again (1.1 M page faults over the bench); glibc with fixed
//! thresholds 6.6-7.1 ms; jemalloc 6.1 ms, whose freed pages wait seconds before they are
//! returned, so one interval reuses the last one's.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes in live heap allocations (jemalloc's `stats.allocated`), as of this call; `None` if
/// the allocator does not answer. Unlike the resident size, it does not move with freed memory
/// the allocator keeps for reuse or with page granularity, so it is what shows a leak.
pub(crate) fn allocated_bytes() -> Option<u64> {
    use std::ffi::c_void;
    use tikv_jemalloc_sys::mallctl;
    // The statistics are a snapshot, refreshed by writing to `epoch`.
    let mut epoch: u64 = 1;
    let mut epoch_len = std::mem::size_of::<u64>();
    let epoch_ptr = (&raw mut epoch).cast::<c_void>();
    // SAFETY: `epoch` is a u64 read and written through pointers to a live local of that
    // size, as jemalloc's documentation gives its type.
    let rc = unsafe {
        mallctl(
            c"epoch".as_ptr(),
            epoch_ptr,
            &mut epoch_len,
            epoch_ptr,
            std::mem::size_of::<u64>(),
        )
    };
    if rc != 0 {
        return None;
    }
    let mut allocated: usize = 0;
    let mut len = std::mem::size_of::<usize>();
    // SAFETY: `stats.allocated` is a size_t, read into a live local of that size.
    let rc = unsafe {
        mallctl(
            c"stats.allocated".as_ptr(),
            (&raw mut allocated).cast::<c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(allocated as u64)
}

#[cfg(test)]
mod tests {
    /// The allocated bytes follow an allocation and its release, to within what other test
    /// threads allocate meanwhile (far less than the 64 MiB here).
    #[test]
    fn the_allocated_bytes_follow_the_heap() {
        let before = super::allocated_bytes().expect("jemalloc's statistics");
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let during = super::allocated_bytes().unwrap();
        drop(block);
        let after = super::allocated_bytes().unwrap();
        let grew = during as i64 - before as i64;
        let fell = during as i64 - after as i64;
        assert!(
            (60 << 20..68 << 20).contains(&grew) && (60 << 20..68 << 20).contains(&fell),
            "allocated {before} -> {during} -> {after} bytes around a 64 MiB block"
        );
    }
}
