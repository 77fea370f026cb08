//! Per-container signals: the kernel accounts events to a container key; this module says
//! which container (or cgroup) a key is, and joins each container with its network namespace's
//! traffic and TCP events.

pub mod docker;
pub mod procfs;

use std::collections::HashMap;

use sentinel_common::ContainerKey;

use crate::{
    collect::{
        drain::{ContainerActivity, LatencySummarizer},
        loader::KeyMode,
    },
    model::{ContainerDelta, IfaceDelta},
};
use docker::SharedView;
use procfs::Identity;

/// Key -> identity cache. Bounded: entries exist only for keys in the kernel map (the caller
/// forgets keys it retires), and identities are looked up only for keys seen in a drain.
pub struct Attribution {
    mode: KeyMode,
    identities: HashMap<ContainerKey, Identity>,
    /// Keys no process could be found for (their tasks exited before the drain), with the
    /// number of drains to wait before the next /proc scan for them: without it every drain
    /// would rescan /proc for keys that will never resolve. Bounded like `identities`.
    unresolved: HashMap<ContainerKey, u32>,
    pub docker: SharedView,
}

/// Contenders listed per container (the largest).
pub const CONTENDERS_LISTED: usize = 3;

/// Puts each container's contenders, by name, on its record.
fn name_contenders(
    out: &mut [ContainerDelta],
    waited: &HashMap<ContainerKey, crate::contention::Waited>,
) {
    use crate::contention::Contender;
    let index: HashMap<ContainerKey, usize> =
        out.iter().enumerate().map(|(i, c)| (c.key, i)).collect();
    let secs = |ns: u64| ns as f64 / 1e9;
    // Named in a first pass (names borrowed), put on the records in a second.
    let mut named: Vec<(usize, f64, Vec<crate::model::ContendedBy>)> = Vec::new();
    for (i, c) in out.iter().enumerate() {
        let Some(w) = waited.get(&c.key) else {
            continue;
        };
        // By name: waits nothing of ours explains join the host's own (interrupts, kernel
        // threads and the host's processes are all `host`).
        let mut by_name: Vec<(std::borrow::Cow<str>, u64)> = Vec::new();
        for (who, ns) in &w.behind {
            let name = match who {
                Contender::Container(k) => match index.get(k) {
                    Some(&j) => std::borrow::Cow::Borrowed(out[j].name.as_str()),
                    None => std::borrow::Cow::Owned(format!("gone-{k}")),
                },
                Contender::Unaccounted => std::borrow::Cow::Borrowed("host"),
            };
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 += ns,
                None => by_name.push((name, *ns)),
            }
        }
        by_name.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let listed = by_name
            .into_iter()
            .take(CONTENDERS_LISTED)
            .map(|(container, ns)| crate::model::ContendedBy {
                container: container.into_owned(),
                seconds: secs(ns),
            })
            .collect();
        named.push((i, secs(w.own), listed));
    }
    for (i, own, listed) in named {
        out[i].contention_self_seconds = own;
        out[i].contention = listed;
    }
}

/// Drains between /proc scans for a key that could not be resolved.
const UNRESOLVED_RETRY: u32 = 10;

impl Attribution {
    pub fn new(mode: KeyMode, docker: SharedView) -> Self {
        Self {
            mode: mode.resolve(),
            identities: HashMap::new(),
            unresolved: HashMap::new(),
            docker,
        }
    }

    pub fn docker_state(&self) -> crate::model::DockerState {
        self.docker
            .read()
            .map(|v| v.state)
            .unwrap_or(crate::model::DockerState::Unreachable)
    }

    /// Builds the interval's container list from the kernel deltas.
    pub fn containers(
        &mut self,
        deltas: &[ContainerActivity],
        ifaces: &[IfaceDelta],
        netns_tcp: &[(u32, [u64; 2])],
        interval_ns: u64,
        summarizer: &mut LatencySummarizer,
    ) -> Vec<ContainerDelta> {
        let mut out = self.containers_for(deltas, ifaces, netns_tcp, interval_ns, summarizer);
        self.add_network_only(&mut out, ifaces, netns_tcp, summarizer);
        name_contenders(&mut out, &crate::contention::attribute(deltas));
        out.sort_by(|a, b| b.cpu_ns.cmp(&a.cpu_ns).then(a.key.cmp(&b.key)));
        out
    }

    fn containers_for(
        &mut self,
        deltas: &[ContainerActivity],
        ifaces: &[IfaceDelta],
        netns_tcp: &[(u32, [u64; 2])],
        interval_ns: u64,
        summarizer: &mut LatencySummarizer,
    ) -> Vec<ContainerDelta> {
        let unresolved = &mut self.unresolved;
        let unknown: Vec<ContainerKey> = deltas
            .iter()
            .map(|c| c.key)
            .filter(|k| *k != 0 && !self.identities.contains_key(k))
            .filter(|k| match unresolved.get_mut(k) {
                Some(wait) if *wait > 0 => {
                    *wait -= 1;
                    false
                }
                _ => true,
            })
            .collect();
        if !unknown.is_empty() {
            let found = procfs::resolve(self.mode, &unknown);
            for key in &unknown {
                if found.contains_key(key) {
                    self.unresolved.remove(key);
                } else {
                    self.unresolved.insert(*key, UNRESOLVED_RETRY);
                }
            }
            self.identities.extend(found);
        }
        let view = self.docker.read().ok();
        let out: Vec<ContainerDelta> = deltas
            .iter()
            .map(|activity| {
                let (key, d) = (&activity.key, &activity.stats);
                let identity = self.identities.get(key);
                let id = identity
                    .and_then(|i| i.docker_id.clone())
                    .unwrap_or_default();
                let meta = view.as_ref().and_then(|v| v.containers.get(&id));
                let name = match (meta, identity) {
                    (Some(m), _) => m.name.clone(),
                    (None, Some(_)) if !id.is_empty() => id[..12].to_string(),
                    (None, Some(i)) => i.cgroup.clone(),
                    (None, None) if *key == 0 => "unresolved".to_string(),
                    (None, None) => format!("gone-{key}"),
                };
                let mut c = ContainerDelta {
                    id,
                    name,
                    image: meta.map(|m| m.image.clone()).unwrap_or_default(),
                    key: *key,
                    cpu_ns: d.cpu_ns,
                    cpu_percent: if interval_ns > 0 {
                        100.0 * d.cpu_ns as f64 / interval_ns as f64
                    } else {
                        0.0
                    },
                    ctx_switches: d.switches,
                    runqueue_latency_us: summarizer.summarize_log2(&d.runq_hist, d.runq_wait_ns),
                    forks: d.forks,
                    execs: d.execs,
                    exits: d.exits,
                    abnormal_exits: d.abnormal_exits,
                    oom_kills: d.oom_kills,
                    ..Default::default()
                };
                if let Some(netns) = identity.and_then(|i| i.netns) {
                    for i in ifaces.iter().filter(|i| i.netns == netns) {
                        c.rx_packets += i.rx_packets;
                        c.rx_bytes += i.rx_bytes;
                        c.tx_packets += i.tx_packets;
                        c.tx_bytes += i.tx_bytes;
                    }
                    if let Some((_, tcp)) = netns_tcp.iter().find(|(n, _)| *n == netns) {
                        c.tcp_retransmits = tcp[0];
                        c.tcp_resets = tcp[1];
                    }
                }
                c
            })
            .collect();
        out
    }

    /// A container can have traffic in an interval without any scheduler event of its own (a
    /// sleeping server's loopback, traffic injected from outside): add those too.
    fn add_network_only(
        &mut self,
        out: &mut Vec<ContainerDelta>,
        ifaces: &[IfaceDelta],
        netns_tcp: &[(u32, [u64; 2])],
        summarizer: &mut LatencySummarizer,
    ) {
        let covered: std::collections::HashSet<u32> = out
            .iter()
            .filter_map(|c| self.identities.get(&c.key).and_then(|i| i.netns))
            .collect();
        let mut missing: Vec<u32> = ifaces
            .iter()
            .map(|i| i.netns)
            .chain(netns_tcp.iter().map(|(n, _)| *n))
            .filter(|n| *n != 0 && !covered.contains(n))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        for (_, (key, identity)) in procfs::resolve_by_netns(self.mode, &missing) {
            if out.iter().any(|c| c.key == key) {
                continue;
            }
            self.identities.insert(key, identity);
            let zero = ContainerActivity::zero(key);
            let mut extra = self.containers_for(&[zero], ifaces, netns_tcp, 0, summarizer);
            out.append(&mut extra);
        }
    }

    /// Keys whose container is gone (no live process has them): their kernel entries may be
    /// removed once idle.
    pub fn gone(&self, idle: impl Iterator<Item = ContainerKey>) -> Vec<ContainerKey> {
        let idle: Vec<ContainerKey> = idle.collect();
        if idle.is_empty() {
            return idle;
        }
        let live = procfs::live_keys(self.mode);
        idle.into_iter().filter(|k| !live.contains(k)).collect()
    }

    pub fn forget(&mut self, key: &ContainerKey) {
        self.identities.remove(key);
        self.unresolved.remove(key);
    }
}
