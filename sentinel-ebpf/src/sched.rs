//! Scheduler hooks: context switches, run-queue latency (how long a runnable task waited for a
//! CPU, like bcc's runqlat), task life cycle and OOM kills.
//!
//! Raw tracepoint arguments, as in include/trace/events/sched.h (checked on 5.10, 6.1, 6.12,
//! 6.18): sched_switch(preempt, prev, next, prev_state); sched_wakeup(p); sched_wakeup_new(p);
//! sched_process_fork(parent, child); sched_process_exec(p, old_pid, bprm);
//! sched_process_exit(p, ...); oom mark_victim(task, uid) (6.8+) or (pid) before.
//! prev_state is read from the task instead of argument 3, which 5.x kernels lack.
//!
//! Run-queue wait, `sched_info` source (the default wherever the kernel keeps it): the kernel
//! stamps `task->sched_info.last_queued = rq_clock(rq)` when a task is queued (woken, or
//! preempted and still runnable), and at the switch that puts it on a CPU, right after the
//! `sched_switch` tracepoint, adds `rq_clock(rq) - last_queued` to the task's `run_delay` and
//! zeroes the stamp (kernel/sched/stats.h: sched_info_enqueue, sched_info_arrive). At the
//! tracepoint the stamp is still set and the run queue's clock already holds the value
//! sched_info_arrive will use (`update_rq_clock` ran at the top of `__schedule`, nothing
//! updates it in between), so the wait measured here is exactly the one the kernel adds to
//! `/proc/PID/schedstat`'s run_delay, read from `next->se.cfs_rq->rq->clock` with no map
//! operation. Migration: when the load balancer moves a waiting task to another CPU, the
//! kernel adds the wait so far to run_delay at the dequeue and stamps the task again on the
//! new run queue (sched_info_dequeue, then sched_info_enqueue). The wait recorded here is then
//! the part spent on the run queue the task finally ran from; the part before the move is in
//! the task's run_delay but in no histogram (its length is gone by the time any tracepoint
//! sees the task). BENCHMARKS.md measures how much that is under a storm.
//!
//! CPU time per container: each slice from switch-in to switch-out, in the run queue's
//! `clock_task` with the `sched_info` source (what the kernel charges: a hypervisor's stolen
//! time is not the container's), in `bpf_ktime_get_ns` with `hash` (stolen time included).
//!
//! `hash` source (kernels without SCHED_INFO or a cfs_rq->rq pointer, or forced by
//! `--runq-source hash`): the wakeup programs store `bpf_ktime_get_ns` per task in the shared
//! `RUNQ_START` hash and sched_switch takes it out; sched_process_exit drops the stamp of a
//! task that dies while runnable. The wait then runs from the wakeup, across migrations.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use sentinel_common::{
    CONTAINER_HIST_BUCKETS, CpuRecord, HIST_BUCKETS, NO_SLOT, container_bucket_of_log2, counter,
    hist_bucket_of_log2, log2_floor, runq_source,
};

use crate::{
    container::{container_key, mark_dirty, slot_of, stats},
    maps::{
        CFS_RQ_RQ_OFF, RQ_CLOCK_OFF, RQ_CLOCK_TASK_OFF, RUNQ_SOURCE, RUNQ_START, TASK_CFS_RQ_OFF,
        TASK_EXIT_CODE_OFF, TASK_LAST_QUEUED_OFF, TASK_PID_OFF, TASK_STATE_OFF, TASK_TGID_OFF, add,
        count, count_shared, field, global, record,
    },
};

const TASK_RUNNING: u32 = 0;
/// How often (in the run-queue clock) sched_switch refreshes its CPU's clock offset.
const CALIBRATE_EVERY_NS: u64 = 1_000_000_000;

#[inline(always)]
fn task_pid(task: *const u8) -> u32 {
    unsafe { field::<u32>(task, global(&TASK_PID_OFF)) }
}

/// A thread-group leader: the task that stands for the process in fork and exit counts.
#[inline(always)]
fn is_process(task: *const u8) -> bool {
    task_pid(task) == unsafe { field::<u32>(task, global(&TASK_TGID_OFF)) }
}

#[inline(always)]
fn hash_source() -> bool {
    global(&RUNQ_SOURCE) as u32 == runq_source::HASH
}

/// The clocks of the run queue of `task`'s CPU, `task->se.cfs_rq->rq`: `clock`, which
/// `last_queued` is stamped in, and `clock_task`, which the kernel charges CPU time in
/// (`clock` less steal and, with IRQ_TIME_ACCOUNTING, interrupt time): a slice measured in it
/// is what `se.sum_exec_runtime` and the cgroup's `cpu.stat` grow by, so a container's CPU
/// time agrees with `docker stats` on a host whose hypervisor steals time. Every task has a
/// cfs_rq on its CPU, whatever its scheduling class; the `rq` back pointer exists with
/// CONFIG_FAIR_GROUP_SCHED, which the loader checks in BTF. Both are (0, 0) without one.
#[inline(always)]
fn rq_clocks(task: *const u8) -> (u64, u64) {
    unsafe {
        let cfs_rq: *const u8 = field(task, global(&TASK_CFS_RQ_OFF));
        if cfs_rq.is_null() {
            return (0, 0);
        }
        let rq: *const u8 = field(cfs_rq, global(&CFS_RQ_RQ_OFF));
        if rq.is_null() {
            return (0, 0);
        }
        (
            field::<u64>(rq, global(&RQ_CLOCK_OFF)),
            field::<u64>(rq, global(&RQ_CLOCK_TASK_OFF)),
        )
    }
}

/// `hash` source: a task became runnable; remember when.
#[inline(always)]
fn enqueued(pid: u32, now: u64) {
    if pid == 0 {
        return; // the idle task never waits
    }
    if RUNQ_START.insert(&pid, &now, 0).is_err() {
        count_shared(counter::RUNQ_START_OVERFLOW, 1);
    }
}

#[btf_tracepoint(function = "sched_switch")]
pub fn snt_sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(rec) = record() else {
        return 0;
    };
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    unsafe {
        add(&raw mut (*rec).counters[counter::SCHED_SWITCH], 1);
        let hash = hash_source();
        // `now` times waits, `cpu_now` slices (one clock with `hash`).
        let (now, cpu_now) = if hash {
            let now = bpf_ktime_get_ns();
            (now, now)
        } else {
            rq_clocks(next)
        };
        if cpu_now.wrapping_sub((*rec).calib_clock) > CALIBRATE_EVERY_NS {
            calibrate(rec, cpu_now, hash);
        }
        // The slice that ends goes to the container of the task leaving the CPU, whose slot
        // was cached when it arrived: no lookup.
        let since = (*rec).since;
        let prev_slot = (*rec).cur_slot;
        if since != 0
            && let Some(cs) = stats(rec, prev_slot)
        {
            add(&raw mut (*cs).cpu_ns, cpu_now.saturating_sub(since));
            add(&raw mut (*cs).switches, 1);
            mark_dirty(rec, prev_slot);
        }
        (*rec).since = cpu_now;
        if hash && field::<u32>(prev, global(&TASK_STATE_OFF)) == TASK_RUNNING {
            // Preempted, still runnable: its wait starts now. Only the low 32 bits of the
            // state are read, which covers both `unsigned int __state` and the older `long`.
            enqueued(task_pid(prev), now);
        }

        let pid = task_pid(next);
        if pid == 0 {
            (*rec).cur_slot = NO_SLOT;
            return 0;
        }
        let slot = slot_of(rec, container_key(next));
        (*rec).cur_slot = slot;

        let waited = if hash {
            let Some(start) = RUNQ_START.get(&pid) else {
                return 0;
            };
            let waited = now.saturating_sub(*start);
            let _ = RUNQ_START.remove(&pid);
            waited
        } else {
            let queued: u64 = field(next, global(&TASK_LAST_QUEUED_OFF));
            if queued == 0 {
                return 0; // not queued since its last run: the kernel counts no wait either
            }
            now.saturating_sub(queued)
        };
        record_wait(rec, slot, waited);
    }
    0
}

/// Keeps this CPU's (CPU-time clock, `bpf_ktime_get_ns`) offset for userspace, in one 8-byte
/// store so it is never read half-written. `clock_task` falls behind ktime by the time stolen
/// since: the offset is refreshed every second, and a running slice credited a little too
/// much at a drain is paid back when it ends (collect/drain.rs, `RunningSlices`).
#[inline(never)]
fn calibrate(rec: *mut CpuRecord, now: u64, hash: bool) {
    unsafe {
        (*rec).calib_clock = now;
        (*rec).ktime_minus_clock = if hash {
            0
        } else {
            bpf_ktime_get_ns().wrapping_sub(now)
        };
    }
}

#[inline(always)]
fn record_wait(rec: *mut CpuRecord, slot: u32, waited: u64) {
    // One logarithm for both histograms. The indices are masked rather than compared: both
    // bucket counts are powers of two and the arithmetic keeps them in range anyway, and a
    // verifier before 6.x loses a comparison's bound when the compiler indexes with a copy of
    // the register it compared ("unbounded memory access" on 5.10 and 6.1).
    const _: () = assert!(HIST_BUCKETS.is_power_of_two());
    const _: () = assert!(CONTAINER_HIST_BUCKETS.is_power_of_two());
    let msb = log2_floor(waited | 1);
    let bucket = hist_bucket_of_log2(waited, msb) & (HIST_BUCKETS - 1);
    unsafe {
        add(&raw mut (*rec).runq_hist[bucket], 1);
        add(&raw mut (*rec).runq_wait_ns, waited);
        let bucket = container_bucket_of_log2(msb) & (CONTAINER_HIST_BUCKETS - 1);
        if let Some(cs) = stats(rec, slot) {
            add(&raw mut (*cs).runq_hist[bucket], 1);
            add(&raw mut (*cs).runq_wait_ns, waited);
            mark_dirty(rec, slot);
        }
    }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn snt_sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    count(counter::SCHED_WAKEUP, 1);
    if hash_source() {
        let task: *const u8 = ctx.arg(0);
        enqueued(task_pid(task), unsafe { bpf_ktime_get_ns() });
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn snt_sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    count(counter::SCHED_WAKEUP_NEW, 1);
    if hash_source() {
        let task: *const u8 = ctx.arg(0);
        enqueued(task_pid(task), unsafe { bpf_ktime_get_ns() });
    }
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn snt_sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(rec) = record() else {
        return 0;
    };
    unsafe { add(&raw mut (*rec).counters[counter::PROCESS_FORK], 1) };
    // Per container, new processes only (a new thread is not a fork to an operator).
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    if is_process(child) {
        let slot = slot_of(rec, container_key(parent));
        if let Some(cs) = stats(rec, slot) {
            add(unsafe { &raw mut (*cs).forks }, 1);
            mark_dirty(rec, slot);
        }
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn snt_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let Some(rec) = record() else {
        return 0;
    };
    unsafe { add(&raw mut (*rec).counters[counter::PROCESS_EXEC], 1) };
    // Resolved from the task, not the slot cached at its switch-in: a runtime's init process
    // joins the container's namespaces or cgroup and execs without switching out in between.
    let task: *const u8 = ctx.arg(0);
    let slot = slot_of(rec, container_key(task));
    if let Some(cs) = stats(rec, slot) {
        add(unsafe { &raw mut (*cs).execs }, 1);
        mark_dirty(rec, slot);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn snt_sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let Some(rec) = record() else {
        return 0;
    };
    unsafe { add(&raw mut (*rec).counters[counter::PROCESS_EXIT], 1) };
    let task: *const u8 = ctx.arg(0);
    if hash_source() {
        // A task that exits while runnable never switches in: drop its stamp so the map
        // cannot fill up with dead tasks. (The kernel's own stamp dies with the task.)
        let _ = RUNQ_START.remove(&task_pid(task));
    }
    // Namespaces are still attached here (exit_task_namespaces comes later in do_exit), and
    // exit_code is set: non-zero means exit(n != 0) or death by a signal.
    if is_process(task) {
        let slot = slot_of(rec, container_key(task));
        if let Some(cs) = stats(rec, slot) {
            unsafe {
                add(&raw mut (*cs).exits, 1);
                if field::<i32>(task, global(&TASK_EXIT_CODE_OFF)) != 0 {
                    add(&raw mut (*cs).abnormal_exits, 1);
                }
            }
            mark_dirty(rec, slot);
        }
    }
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn snt_oom_mark_victim(_ctx: BtfTracePointContext) -> i32 {
    let Some(rec) = record() else {
        return 0;
    };
    unsafe { add(&raw mut (*rec).counters[counter::OOM_KILLS], 1) };
    // The victim argument changed type across kernels (pid before 6.8, task after); the
    // allocating task that ran into the limit is the one running here, and for a container's
    // memory limit it is in the same container as the victim. Its slot was cached when it
    // switched in, which also spares `bpf_get_current_task_btf` (Linux 5.11+).
    let slot = unsafe { (*rec).cur_slot };
    if let Some(cs) = stats(rec, slot) {
        add(unsafe { &raw mut (*cs).oom_kills }, 1);
        mark_dirty(rec, slot);
    }
    0
}
