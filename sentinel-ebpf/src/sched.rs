//! Scheduler hooks: context switches, run-queue latency (wakeup -> on-CPU, like bcc's
//! runqlat), task life cycle and OOM kills.
//!
//! Raw tracepoint arguments, as in include/trace/events/sched.h (checked on 6.1, 6.12, 6.18):
//! sched_switch(preempt, prev, next, prev_state); sched_wakeup(p); sched_wakeup_new(p);
//! sched_process_fork(parent, child); sched_process_exec(p, old_pid, bprm);
//! sched_process_exit(p, ...); oom mark_victim(task, uid) (6.8+) or (pid) before.
//! prev_state is read from the task instead of argument 3, which 5.x kernels lack.

use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sentinel_common::{
    CONTAINER_HIST_BUCKETS, HIST_BUCKETS, IDLE_KEY, container_hist_bucket, counter, hist_bucket,
};

use crate::{
    container::{container_entry, container_key},
    maps::{
        ONCPU, RUNQ_HIST, RUNQ_START, TASK_EXIT_CODE_OFF, TASK_PID_OFF, TASK_STATE_OFF,
        TASK_TGID_OFF, atomic_add, count, field, global,
    },
};

const TASK_RUNNING: u32 = 0;

#[inline(always)]
fn task_pid(task: *const u8) -> u32 {
    unsafe { field::<u32>(task, global(&TASK_PID_OFF)) }
}

/// A thread-group leader: the task that stands for the process in fork and exit counts.
#[inline(always)]
fn is_process(task: *const u8) -> bool {
    task_pid(task) == unsafe { field::<u32>(task, global(&TASK_TGID_OFF)) }
}

/// A task became runnable: remember when, to measure how long it waits for a CPU.
#[inline(always)]
fn enqueued(pid: u32, now: u64) {
    if pid == 0 {
        return; // the idle task never waits
    }
    if RUNQ_START.insert(&pid, &now, 0).is_err() {
        count(counter::RUNQ_START_OVERFLOW, 1);
    }
}

#[btf_tracepoint(function = "sched_switch")]
pub fn snt_sched_switch(ctx: BtfTracePointContext) -> i32 {
    count(counter::SCHED_SWITCH, 1);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let now = unsafe { bpf_ktime_get_ns() };
    // A preempted task stays runnable: its run-queue wait starts now. Only the low 32 bits of
    // the state are read, which covers both `unsigned int __state` and the older `long state`.
    if unsafe { field::<u32>(prev, global(&TASK_STATE_OFF)) } == TASK_RUNNING {
        enqueued(task_pid(prev), now);
    }
    let pid = task_pid(next);
    let next_key = if pid == 0 {
        IDLE_KEY
    } else {
        container_key(next)
    };

    // On-CPU time and the switch go to the container of the task leaving the CPU, whose key
    // was recorded when it arrived. Only sched_switch writes ONCPU, and it cannot interrupt
    // itself on one CPU, so plain stores are safe there.
    if let Some(oncpu) = ONCPU.get_ptr_mut(0) {
        let (since, key) = unsafe { ((*oncpu).since_ns, (*oncpu).key) };
        if since != 0
            && key != IDLE_KEY
            && let Some(stats) = container_entry(key)
        {
            unsafe {
                atomic_add(&raw mut (*stats).cpu_ns, now.saturating_sub(since));
                atomic_add(&raw mut (*stats).switches, 1);
            }
        }
        unsafe {
            (*oncpu).since_ns = now;
            (*oncpu).key = next_key;
        }
    }

    if let Some(start) = unsafe { RUNQ_START.get(&pid) } {
        let waited = now.saturating_sub(*start);
        let bucket = hist_bucket(waited);
        if let Some(hist) = RUNQ_HIST.get_ptr_mut(0)
            && bucket < HIST_BUCKETS
        {
            atomic_add(unsafe { &raw mut (*hist).buckets[bucket] }, 1);
        }
        let bucket = container_hist_bucket(waited);
        if next_key != IDLE_KEY
            && bucket < CONTAINER_HIST_BUCKETS
            && let Some(stats) = container_entry(next_key)
        {
            atomic_add(unsafe { &raw mut (*stats).runq_hist[bucket] }, 1);
        }
        let _ = RUNQ_START.remove(&pid);
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    count(counter::SCHED_WAKEUP, 1);
    let task: *const u8 = ctx.arg(0);
    enqueued(task_pid(task), unsafe { bpf_ktime_get_ns() });
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn snt_sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    count(counter::SCHED_WAKEUP_NEW, 1);
    let task: *const u8 = ctx.arg(0);
    enqueued(task_pid(task), unsafe { bpf_ktime_get_ns() });
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn snt_sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    count(counter::PROCESS_FORK, 1);
    // Per container, new processes only (a new thread is not a fork to an operator).
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    if is_process(child)
        && let Some(stats) = container_entry(container_key(parent))
    {
        atomic_add(unsafe { &raw mut (*stats).forks }, 1);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn snt_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    count(counter::PROCESS_EXEC, 1);
    let task: *const u8 = ctx.arg(0);
    if let Some(stats) = container_entry(container_key(task)) {
        atomic_add(unsafe { &raw mut (*stats).execs }, 1);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn snt_sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    count(counter::PROCESS_EXIT, 1);
    // A task that exits while runnable never switches in: drop its start so the map cannot
    // fill up with dead tasks.
    let task: *const u8 = ctx.arg(0);
    let _ = RUNQ_START.remove(&task_pid(task));
    // Namespaces are still attached here (exit_task_namespaces comes later in do_exit), and
    // exit_code is set: non-zero means exit(n != 0) or death by a signal.
    if is_process(task)
        && let Some(stats) = container_entry(container_key(task))
    {
        atomic_add(unsafe { &raw mut (*stats).exits }, 1);
        if unsafe { field::<i32>(task, global(&TASK_EXIT_CODE_OFF)) } != 0 {
            atomic_add(unsafe { &raw mut (*stats).abnormal_exits }, 1);
        }
    }
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn snt_oom_mark_victim(_ctx: BtfTracePointContext) -> i32 {
    count(counter::OOM_KILLS, 1);
    // The victim argument changed type across kernels (pid before 6.8, task after); the
    // allocating task that ran into the limit is current, and for a container's memory limit
    // it is in the same container as the victim.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    if !task.is_null()
        && let Some(stats) = container_entry(container_key(task))
    {
        atomic_add(unsafe { &raw mut (*stats).oom_kills }, 1);
    }
    0
}
