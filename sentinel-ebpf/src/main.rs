//! Sentinel's kernel side: entry points only. Each program is named `snt_<hook>` so that
//! sentinel's programs are easy to find in the kernel's program list (`bpftool prog`).
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod container;
mod floor;
mod maps;
mod net;
mod sched;
mod slots;
mod tasks;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects any program that could get here.
    loop {}
}

/// tp_btf programs may only call GPL helpers from a GPL-compatible program.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
