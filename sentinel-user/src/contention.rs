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
//! exact overlap: a container that ran only while nobody waited still gets a share. Per CPU only
//! the `RUNNERS_NAMED` longest runners are named; the shares of the others are summed as
//! `spread` (a contender's share on a CPU where it is not among them is in that sum), which
//! keeps the cost linear in the containers rather than quadratic.

use std::collections::HashMap;

use sentinel_common::ContainerKey;
use smallvec::SmallVec;

/// Keyed by kernel integers: foldhash, not SipHash (every container, every interval).
pub type Hasher = foldhash::fast::RandomState;

use crate::collect::drain::ContainerActivity;

/// Waiting time of one container, split by whom it waited behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Waited {
    /// ns behind each other container (and `host`), largest first.
    pub behind: Vec<(Contender, u64)>,
    /// ns behind its own tasks.
    pub own: u64,
    /// ns behind containers that were not among the `RUNNERS_NAMED` longest runners of the
    /// CPU it waited on: shares too small to name, kept so every ns is accounted for.
    pub spread: u64,
}

/// Who a container waited behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    Container(ContainerKey),
    /// Nothing of ours ran on that CPU during the interval (interrupts, the idle task).
    Unaccounted,
}

/// Runners named per CPU, the longest first. Naming every runner for every waiter costs
/// (waiters x runners) per CPU: a million shares at 1000 busy containers. The top three
/// contenders a record lists come from the longest runners, so the rest are summed instead.
pub const RUNNERS_NAMED: usize = 8;

/// One CPU's runners: the longest by name, the total of all.
#[derive(Default)]
struct CpuRunners {
    /// At most `RUNNERS_NAMED`, longest first; ties by key, so the names kept are
    /// deterministic (a key runs once per CPU in an interval's activity).
    longest: SmallVec<[(ContainerKey, u64); RUNNERS_NAMED]>,
    total: u128,
}

impl CpuRunners {
    /// Keeps `runner` if it is among the longest so far: a list of every runner of the CPU
    /// (1000 at 1000 containers, grown as it went) cost more than the shares themselves.
    fn keep(&mut self, runner: (ContainerKey, u64)) {
        let longer =
            |a: &(ContainerKey, u64)| a.1 > runner.1 || (a.1 == runner.1 && a.0 < runner.0);
        let at = self.longest.partition_point(longer);
        if at < RUNNERS_NAMED {
            self.longest.truncate(RUNNERS_NAMED - 1);
            self.longest.insert(at, runner);
        }
    }
}

/// Splits every container's per-CPU waits among the containers that ran on the same CPU.
pub fn attribute(activity: &[ContainerActivity]) -> HashMap<ContainerKey, Waited, Hasher> {
    let mut ran: HashMap<u32, CpuRunners, Hasher> = HashMap::default();
    for c in activity {
        for &(cpu, cpu_ns, _) in &c.per_cpu {
            if cpu_ns > 0 {
                let r = ran.entry(cpu).or_default();
                r.keep((c.key, cpu_ns));
                r.total += u128::from(cpu_ns);
            }
        }
    }
    let mut out = HashMap::with_capacity_and_hasher(activity.len(), Hasher::default());
    // One list for every container's contenders (each container's are moved out).
    let mut behind: Vec<(Contender, u128)> = Vec::new();
    for c in activity {
        let mut waited = Waited::default();
        behind.clear();
        let mut give = |who: Contender, ns: u128| match behind.iter_mut().find(|e| e.0 == who) {
            Some(e) => e.1 += ns,
            None => behind.push((who, ns)),
        };
        for &(cpu, own_ns, wait_ns) in &c.per_cpu {
            if wait_ns == 0 {
                continue;
            }
            let wait = u128::from(wait_ns);
            let Some(runners) = ran.get(&cpu).filter(|r| r.total > 0) else {
                give(Contender::Unaccounted, wait);
                continue;
            };
            let own = wait * u128::from(own_ns) / runners.total;
            let mut named = own;
            for &(key, ns) in &runners.longest {
                if key != c.key {
                    let share = wait * u128::from(ns) / runners.total;
                    give(Contender::Container(key), share);
                    named += share;
                }
            }
            waited.own += own as u64;
            // What the unnamed runners' shares come to (rounding included).
            waited.spread += wait.saturating_sub(named) as u64;
        }
        if waited.own == 0 && waited.spread == 0 && behind.is_empty() {
            continue;
        }
        waited.behind = Vec::with_capacity(behind.len());
        waited.behind.extend(
            behind
                .drain(..)
                .filter(|(_, ns)| *ns > 0)
                .map(|(k, ns)| (k, ns as u64)),
        );
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

    proptest::proptest! {
        /// The runners kept as they come are the longest of all of them, in order: the
        /// first `RUNNERS_NAMED` of the whole list sorted longest first, ties by key.
        #[test]
        fn the_runners_kept_are_the_longest_of_all(
            times in proptest::collection::vec(0u64..20, 0..40),
        ) {
            let runners: Vec<(ContainerKey, u64)> =
                times.iter().enumerate().map(|(k, &ns)| (1000 - k as u64, ns)).collect();
            let mut r = CpuRunners::default();
            for &runner in &runners {
                r.keep(runner);
            }
            let mut want = runners.clone();
            want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(RUNNERS_NAMED);
            proptest::prop_assert_eq!(r.longest.to_vec(), want);
        }
    }

    fn act(key: ContainerKey, per_cpu: &[(u32, u64, u64)]) -> ContainerActivity {
        ContainerActivity {
            per_cpu: per_cpu.into(),
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
        let total: u64 = w.behind.iter().map(|(_, ns)| ns).sum::<u64>() + w.own + w.spread;
        assert_eq!(total, 950, "every ns of waiting is given to someone");
    }

    #[test]
    fn only_the_longest_runners_are_named_and_the_rest_is_summed() {
        // The victim (1) waited 10 000 ns on CPU 0 behind 30 other containers: keys 100..130
        // ran 1000, 2000, ... 30 000 ns there; the victim itself ran 5000.
        let mut activity = vec![act(1, &[(0, 5000, 10_000)])];
        for i in 0..30u64 {
            activity.push(act(100 + i, &[(0, 1000 * (i + 1), 0)]));
        }
        let total_ran: u64 = 5000 + (1..=30).map(|i| 1000 * i).sum::<u64>();
        let w = &attribute(&activity)[&1];
        assert_eq!(w.behind.len(), RUNNERS_NAMED);
        assert_eq!(
            w.behind[0],
            (Contender::Container(129), 10_000 * 30_000 / total_ran),
            "the longest runner's share is exact"
        );
        assert!(
            w.behind
                .iter()
                .all(|(c, _)| *c >= Contender::Container(122)),
            "the eight longest are named: {:?}",
            w.behind
        );
        assert_eq!(
            w.own,
            10_000 * 5000 / total_ran,
            "its own share is exact though it is not named"
        );
        assert!(w.spread > 0);
        let total: u64 = w.behind.iter().map(|(_, ns)| ns).sum::<u64>() + w.own + w.spread;
        assert_eq!(total, 10_000, "every ns of waiting is given to someone");
    }
}
