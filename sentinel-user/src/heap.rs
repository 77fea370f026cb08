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
