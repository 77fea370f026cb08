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

/// jemalloc's options, read when it starts (the C API's `malloc_conf`, under the crate's
/// symbol prefix); `_RJEM_MALLOC_CONF` in the environment still overrides them.
///
/// `thp:always`: the heap in transparent huge pages (where the kernel's THP mode is `madvise`,
/// Debian's default; nothing changes where it is `never`). At 1000 containers detection walks
/// tens of megabytes once a second, thousands of series each in its own places (a seasonal
/// ring is a page of its own), so in 4 KiB pages nearly every series misses the TLB, and on a
/// virtual machine each miss walks two page tables: the one store into each ring took 13% to
/// 36% of the daemon's main thread from run to run (perf, BENCHMARKS.md), 8% in huge pages.
/// 2 MiB pages cover the heap with a few dozen TLB entries; they cost ~15 MB of resident
/// memory at 1000 containers.
#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"thp:always\0"[0];

/// Bytes in live heap allocations (jemalloc's `stats.allocated`), as of this call; `None` if
/// the allocator does not answer. Unlike the resident size, it does not move with page
/// granularity (2 MiB steps in huge pages) or with freed memory the allocator keeps for reuse,
/// so it is what shows a leak.
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
    /// `AnonHugePages` of the mapping that holds `address` (in /proc/self/smaps), in KiB.
    fn anon_huge_kib_at(address: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((lo, hi)) = range
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&address);
            } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .expect("a size");
            }
        }
        panic!("no mapping holds {address:#x}")
    }

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

    /// `MALLOC_CONF` is in effect: a large allocation is in huge pages wherever the kernel
    /// grants them on request (`madvise` or `always`).
    #[test]
    fn the_heap_asks_for_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let heap = std::hint::black_box(vec![1u8; 64 << 20]);
        let huge = anon_huge_kib_at(heap.as_ptr() as usize + heap.len() / 2);
        if mode.contains("[never]") || mode.is_empty() {
            assert_eq!(huge, 0, "THP is off here ({mode:?})");
        } else {
            assert!(
                huge >= 16 << 10,
                "{huge} KiB in huge pages of 64 MiB (THP {mode:?})"
            );
        }
    }
}
