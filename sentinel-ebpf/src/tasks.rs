//! The container roster's snapshot of every process: a BPF task iterator (`iter/task`, Linux
//! 5.8+) writes one [`TaskEntry`] per thread-group leader, its TGID and its container key, in
//! PID order. Userspace reads it in a few `read` calls instead of a readlink (mount namespace)
//! or a cgroup file read and a stat (cgroup id) per process under /proc: at 1000 containers a
//! /proc scan cost about 8 us per process.

use aya_ebpf::{cty::c_void, helpers::bpf_seq_write};
use sentinel_common::TaskEntry;

use crate::{
    container::container_key,
    maps::{TASK_PID_OFF, TASK_TGID_OFF, field, global},
};

/// `struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }`, and
/// `struct bpf_iter_meta`'s first member is `struct seq_file *seq`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn snt_iter_task(ctx: *mut c_void) -> i32 {
    unsafe {
        let ctx = ctx as *const *const u8;
        let meta = core::ptr::read_volatile(ctx);
        // NULL once, after the last task.
        let task = core::ptr::read_volatile(ctx.add(1));
        if task.is_null() {
            return 0;
        }
        let tgid: u32 = field(task, global(&TASK_TGID_OFF));
        // One entry per process, as /proc lists them: threads share their leader's key.
        if field::<u32>(task, global(&TASK_PID_OFF)) != tgid {
            return 0;
        }
        let entry = TaskEntry {
            key: container_key(task),
            tgid,
            _pad: 0,
        };
        let seq: *mut c_void = field(meta, 0);
        bpf_seq_write(
            seq as *mut _,
            &entry as *const TaskEntry as *const c_void,
            core::mem::size_of::<TaskEntry>() as u32,
        );
    }
    0
}
