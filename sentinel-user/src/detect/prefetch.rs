//! Hints to the CPU to start loading cache lines that are about to be read.
//!
//! At 1000 containers each series' state is cold at every interval (thousands of detectors
//! between two visits of one), and its reads depend on one another: the detector is behind a
//! box, the seasonal ring's slots one and two periods back are found from the ring's head, the
//! learned detector is behind another box and its model behind a slot. Asking for the next
//! series' lines while this one is worked on lets the misses overlap the arithmetic instead of
//! following one another. Hints only: they change no result.

const LINE: usize = 64;

/// Starts loading the cache line holding `*value`.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    line(std::ptr::from_ref(value).cast::<u8>());
}

/// Starts loading every cache line of `*value`.
#[inline(always)]
pub fn prefetch_lines<T>(value: &T) {
    prefetch_slice(std::slice::from_ref(value));
}

/// Starts loading every cache line of `values`.
#[inline(always)]
pub fn prefetch_slice<T>(values: &[T]) {
    let start = values.as_ptr().cast::<u8>();
    // From the line of the first byte to the line of the last one.
    let skew = start as usize % LINE;
    let first = start.wrapping_sub(skew);
    for offset in (0..skew + size_of_val(values)).step_by(LINE) {
        line(first.wrapping_add(offset));
    }
}

#[inline(always)]
fn line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing into the program's state and never faults, whatever
        // the address; the callers' addresses are inside live values anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
