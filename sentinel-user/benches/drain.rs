//! Userspace half of one drain on C CPUs with N containers and 4096 interfaces, a fraction of
//! the (CPU, container) entries and every (CPU, interface) entry changed since the previous
//! drain: the scan of the dirty bitmaps and the read of the changed entries
//! (`ContainerArrays::read`, `IfaceArrays::read`, here over anonymous memory laid out like the
//! kernel's memory-mapped arrays), then `Drain::apply`. The system calls (the records, the TCP
//! map) are measured on the real daemon by `cargo xtask bench`.
//!
//! `cargo bench -p sentinel-user --bench drain`; the time is the thread's CPU time per drain,
//! not wall time, so a busy machine (other jobs preempting the bench) does not inflate it.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sentinel::collect::{
    bpf_sys::MappedArray,
    drain::{Drain, RawSnapshot},
    slots::{ContainerArrays, IfaceArrays},
};
use sentinel_common::{CONTAINER_FIELDS, CpuRecord, IFACE_FIELDS, IfaceKey, NO_SLOT, dirty_words};

const IFACES: u32 = 4096;

struct Fixture {
    arrays: ContainerArrays,
    ifaces: IfaceArrays,
    drain: Drain,
    snap: RawSnapshot,
    ncpu: usize,
    containers: u32,
    /// Every `stride`-th (CPU, container) entry changes between drains.
    stride: usize,
    round: u64,
}

impl Fixture {
    fn new(ncpu: usize, containers: u32, changed_percent: usize) -> Self {
        let layout = ContainerArrays::layout(ncpu, containers);
        let map = |bytes| MappedArray::anonymous(bytes).expect("anonymous memory");
        let arrays = ContainerArrays::new(
            ncpu,
            containers,
            map(layout.keys_bytes),
            map(layout.stats_bytes),
            map(layout.dirty_bytes),
        );
        let [keys, _, _] = arrays.memory();
        for slot in 0..containers as usize {
            keys.store_word(slot, 1_000 + slot as u64);
        }
        let (ilayout, names) = IfaceArrays::layout(ncpu, IFACES);
        let ifaces = IfaceArrays::new(
            ncpu,
            IFACES,
            [
                map(ilayout.keys_bytes),
                map(ilayout.stats_bytes),
                map(ilayout.dirty_bytes),
                map(names),
            ],
        );
        let [ikeys, _, _] = ifaces.arrays().memory();
        for slot in 0..IFACES {
            let key = IfaceKey {
                netns: 4_026_531_840 + slot,
                ifindex: 2,
            };
            ikeys.store_word(slot as usize, key.packed());
            ifaces
                .names()
                .store_word(slot as usize * 2, u64::from_le_bytes(*b"veth\0\0\0\0"));
        }
        let mut cpu: CpuRecord = bytemuck::Zeroable::zeroed();
        cpu.cur_slot = NO_SLOT;
        cpu.last_slot = NO_SLOT;
        cpu.iface_last_slot = NO_SLOT;
        let snap = RawSnapshot {
            cpus: vec![cpu; ncpu],
            ..Default::default()
        };
        let mut f = Self {
            arrays,
            ifaces,
            drain: Drain::new(),
            snap,
            ncpu,
            containers,
            stride: 100 / changed_percent,
            round: 0,
        };
        // First drain: every entry once, so every slot is known.
        f.change(1);
        f.drain_once();
        f
    }

    /// Plays the kernel: bumps every `stride`-th entry and marks it dirty; every interface.
    fn change(&mut self, stride: usize) {
        self.round += 1;
        let [_, stats, dirty] = self.arrays.memory();
        let words = dirty_words(self.containers) as usize;
        let entries = self.ncpu * self.containers as usize;
        for entry in (0..entries).step_by(stride) {
            let (cpu, slot) = (
                entry / self.containers as usize,
                entry % self.containers as usize,
            );
            stats.store_word(entry * CONTAINER_FIELDS, self.round * 1000);
            stats.store_word(entry * CONTAINER_FIELDS + 1, self.round);
            let w = cpu * words + slot / 64;
            dirty.store_word(w, dirty.word(w) | 1 << (slot % 64));
        }
        let round = self.round;
        let a = self.ifaces.arrays();
        let [_, istats, idirty] = a.memory();
        for cpu in 0..self.ncpu {
            for slot in 0..IFACES {
                let at = (cpu * IFACES as usize + slot as usize) * IFACE_FIELDS;
                for (f, v) in [round, round * 64, round, round * 64]
                    .into_iter()
                    .enumerate()
                {
                    istats.store_word(at + f, v);
                }
                for set in 0..IfaceArrays::SETS {
                    let w = a.dirty_word(cpu, set, slot);
                    idirty.store_word(w, idirty.word(w) | 1 << (slot % 64));
                }
            }
        }
    }

    fn drain_once(&mut self) -> usize {
        let freed = self.arrays.read(&mut self.snap).len() + self.ifaces.read(&mut self.snap).len();
        let delta = self.drain.apply(&self.snap);
        freed + delta.containers.len() + delta.ifaces.len()
    }
}

fn drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("drain");
    for cpus in [2usize, 16, 128] {
        for containers in [1024u32, 10_000] {
            for percent in [10usize, 100] {
                let id = BenchmarkId::new(
                    format!("{cpus}cpus"),
                    format!("{containers}containers_{percent}pct_changed"),
                );
                group.bench_function(id, |b| {
                    let mut f = Fixture::new(cpus, containers, percent);
                    b.iter_custom(|iters| {
                        let mut spent = Duration::ZERO;
                        for _ in 0..iters {
                            let stride = f.stride;
                            f.change(stride);
                            let start = thread_cpu_time();
                            std::hint::black_box(f.drain_once());
                            spent += thread_cpu_time().saturating_sub(start);
                        }
                        spent
                    });
                });
            }
        }
    }
    group.finish();
}

fn thread_cpu_time() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = drain
}
criterion_main!(benches);
