//! The allocator's settings for a process that builds the same large buffers every interval.

/// Allocations up to this size come from the heap, never from a mapping of their own.
const MMAP_THRESHOLD: usize = 16 << 20;
/// Free memory at the heap's top kept for the next interval instead of being given back.
const TRIM_THRESHOLD: usize = 32 << 20;

/// Keeps the per-interval buffers' memory between intervals. glibc maps a block above its
/// mmap threshold (128 KiB at first, raised to the largest block freed so far) on its own and
/// unmaps it when freed, and gives the heap's top back once 128 KiB of it are free; the
/// daemon's interval buffers (container records, the series list, the output line: about
/// 1 KiB per container each) were faulted in afresh every interval, 17% of its CPU at 1000
/// containers (`cargo bench -p sentinel-user --bench interval`). Fixed thresholds keep them:
/// the heap stays bounded by the most ever in use plus `TRIM_THRESHOLD`. Returns what could
/// not be set (other C libraries: nothing to do).
pub fn keep_interval_buffers() -> Result<(), String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (name, option, value) in [
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        let value = libc::c_int::try_from(value).map_err(|_| format!("{name} out of range"))?;
        // SAFETY: mallopt only sets the allocator's parameters (under its own lock); it
        // returns 0 when it rejects the value.
        if unsafe { libc::mallopt(option, value) } == 0 {
            return Err(format!("mallopt({name}, {value}) was rejected"));
        }
    }
    Ok(())
}
