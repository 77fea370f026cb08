//! Noisy neighbours: who held the CPU while a container waited for one.
//!
//! The kernel counts, per container and per CPU, the time its tasks ran and the time they waited
//! on that CPU's run queue (exact sums, see sentinel-ebpf's sched.rs). A container that waited
//! on CPU `c` waited behind whatever ran on `c` meanwhile; without a per-event record of who
//! ran during each wait (which would cost the hot path), the interval's estimate splits each
//! CPU's waits among the containers that ran on that CPU, in proportion to their on-CPU time
//! there. The share of a container's own tasks is reported as `self`, apart from the others.
//!
//! What it cannot see: time in interrupts and softirqs is charged to whichever task was running
//! (it is in that task's on-CPU time), kernel threads run in the host's namespaces and count as
//! `host`, and a wait on a CPU where nothing of ours ran (only the idle task, or only programs
//! past their exit) is put on `host`. Within one interval the split is by CPU time, not by the
//! exact overlap: a container that ran only while nobody waited still gets a share.

use std::collections::HashMap;

use sentinel_common::ContainerKey;

use crate::collect::drain::ContainerActivity;

/// Waiting time of one container, split by whom it waited behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Waited {
    /// ns behind each other container (and `host`), largest first.
    pub behind: Vec<(Contender, u64)>,
    /// ns behind its own tasks.
    pub own: u64,
}

/// Who a container waited behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    Container(ContainerKey),
    /// Nothing of ours ran on that CPU during the interval (interrupts, the idle task).
    Unaccounted,
}

/// Splits every container's per-CPU waits among the containers that ran on the same CPU.
pub fn attribute(activity: &[ContainerActivity]) -> HashMap<ContainerKey, Waited> {
    // On-CPU time per CPU: total, and per container.
    let mut ran: HashMap<u32, Vec<(ContainerKey, u64)>> = HashMap::new();
    for c in activity {
        for &(cpu, cpu_ns, _) in &c.per_cpu {
            if cpu_ns > 0 {
                ran.entry(cpu).or_default().push((c.key, cpu_ns));
            }
        }
    }
    let mut out = HashMap::new();
    for c in activity {
        let mut waited = Waited::default();
        let mut behind: HashMap<Contender, u128> = HashMap::new();
        for &(cpu, _, wait_ns) in &c.per_cpu {
            if wait_ns == 0 {
                continue;
            }
            let runners = ran.get(&cpu).map_or(&[][..], Vec::as_slice);
            let total: u128 = runners.iter().map(|(_, ns)| u128::from(*ns)).sum();
            if total == 0 {
                *behind.entry(Contender::Unaccounted).or_default() += u128::from(wait_ns);
                continue;
            }
            for &(key, ns) in runners {
                let share = u128::from(wait_ns) * u128::from(ns) / total;
                if key == c.key {
                    waited.own += share as u64;
                } else {
                    *behind.entry(Contender::Container(key)).or_default() += share;
                }
            }
        }
        if waited.own == 0 && behind.is_empty() {
            continue;
        }
        waited.behind = behind
            .into_iter()
            .filter(|(_, ns)| *ns > 0)
            .map(|(k, ns)| (k, ns as u64))
            .collect();
        // Largest first; ties by contender, so the order is deterministic.
        waited
            .behind
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out.insert(c.key, waited);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(key: ContainerKey, per_cpu: &[(u32, u64, u64)]) -> ContainerActivity {
        ContainerActivity {
            per_cpu: per_cpu.to_vec(),
            ..ContainerActivity::zero(key)
        }
    }

    #[test]
    fn a_wait_goes_to_who_ran_on_that_cpu_in_proportion_to_their_time() {
        // CPU 0: the aggressor (2) ran 900, the victim (1) 100; the victim waited 1000 there.
        // CPU 1: a bystander (3) ran 1000; nobody waited there.
        let a = attribute(&[
            act(1, &[(0, 100, 1000)]),
            act(2, &[(0, 900, 0)]),
            act(3, &[(1, 1000, 0)]),
        ]);
        let victim = &a[&1];
        assert_eq!(victim.behind, vec![(Contender::Container(2), 900)]);
        assert_eq!(victim.own, 100);
        assert!(
            !a.contains_key(&2) && !a.contains_key(&3),
            "they never waited"
        );
    }

    #[test]
    fn waits_on_several_cpus_add_up_and_unaccounted_time_is_named() {
        let a = attribute(&[
            act(1, &[(0, 0, 600), (1, 0, 300), (2, 0, 50)]),
            act(2, &[(0, 300, 0), (1, 100, 0)]),
            act(3, &[(0, 300, 0), (1, 300, 0)]),
        ]);
        let w = &a[&1];
        // CPU 0: 600 split 300/300 -> 300 each; CPU 1: 300 split 100/300 -> 75 and 225.
        assert_eq!(
            w.behind,
            vec![
                (Contender::Container(3), 525),
                (Contender::Container(2), 375),
                (Contender::Unaccounted, 50),
            ]
        );
        assert_eq!(w.own, 0);
        let total: u64 = w.behind.iter().map(|(_, ns)| ns).sum::<u64>() + w.own;
        assert_eq!(total, 950, "every ns of waiting is given to someone");
    }
}
