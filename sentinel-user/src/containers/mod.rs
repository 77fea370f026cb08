//! Per-container signals: the kernel accounts events to a container key; this module says
//! which container (or cgroup) a key is, names it through the runtime that owns it (Docker,
//! podman, containerd; CRI-O by id), lists the running containers the kernel has not seen
//! this interval, and joins each container with its network namespace's traffic and TCP
//! events.
//!
//! A key is trusted only while /proc agrees: the roster (`roster.rs`, a scan off the drain,
//! at once after every runtime event) says which container each live key belongs to now; a
//! cached identity it contradicts is replaced, and one whose key no process has any more is
//! re-resolved from /proc before it names anything again (a recycled mount namespace inode or
//! cgroup id is never attributed to the container that had it before).

pub mod containerd;
pub mod docker;
pub mod layout;
pub mod procfs;
pub mod roster;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use sentinel_common::ContainerKey;

use crate::{
    collect::{
        drain::{ContainerActivity, LatencySummarizer},
        loader::KeyMode,
    },
    model::{ContainerDelta, DockerState, IfaceDelta, Network, RuntimeState},
};
use docker::SharedView;
use layout::{Owner, Runtime};
use procfs::Identity;
use roster::RosterHandle;

/// The labels the kubelet sets on every container of a pod (the sandbox too).
pub const K8S_POD: &str = "io.kubernetes.pod.name";
pub const K8S_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const K8S_CONTAINER: &str = "io.kubernetes.container.name";

/// The runtimes' views naming reads (each refreshed by its own watcher, off the drain).
#[derive(Clone)]
pub struct Runtimes {
    pub docker: SharedView,
    pub podman: Option<SharedView>,
    pub containerd: Option<SharedView>,
}

/// What naming shows of a container.
#[derive(Clone, Debug, Default, PartialEq)]
struct Named {
    id: String,
    name: String,
    image: String,
    runtime: &'static str,
    pod: String,
    namespace: String,
}

impl Runtimes {
    /// Docker only (tests, and hosts where the others are off).
    pub fn docker_only(docker: SharedView) -> Self {
        Self {
            docker,
            podman: None,
            containerd: None,
        }
    }

    fn view(&self, runtime: Runtime) -> Option<&SharedView> {
        match runtime {
            Runtime::Docker => Some(&self.docker),
            Runtime::Podman => self.podman.as_ref(),
            Runtime::Containerd => self.containerd.as_ref(),
            // Debian has no CRI-O and sentinel no client for it: named by id.
            Runtime::Crio => None,
        }
    }

    /// The runtime that knows the container `owner` names, and what it says. A path that
    /// names its runtime is looked up there only; Kubernetes' cgroupfs paths and `ctr`'s
    /// `/<namespace>/<id>` in every runtime (containerd first: the kubelet's usual one).
    fn lookup(&self, owner: &Owner) -> Option<Named> {
        let order: &[Runtime] = match owner.runtime {
            Some(Runtime::Docker) => &[Runtime::Docker],
            Some(Runtime::Podman) => &[Runtime::Podman],
            Some(Runtime::Containerd) => &[Runtime::Containerd],
            Some(Runtime::Crio) => &[],
            None => &[Runtime::Containerd, Runtime::Docker, Runtime::Podman],
        };
        order.iter().find_map(|&rt| {
            let v = self.view(rt)?.read().ok()?;
            let m = v.get(&owner.id)?;
            if owner.scope.as_ref().is_some_and(|s| *s != m.scope) {
                return None;
            }
            Some(Named {
                id: owner.id.clone(),
                name: m.name.clone(),
                image: m.image.clone(),
                runtime: rt.as_str(),
                pod: m.pod.clone(),
                namespace: m.namespace.clone(),
            })
        })
    }

    /// The states of the optional runtimes, for the interval.
    pub fn states(&self) -> BTreeMap<String, RuntimeState> {
        let mut out = BTreeMap::new();
        for (rt, v) in [
            (Runtime::Podman, &self.podman),
            (Runtime::Containerd, &self.containerd),
        ] {
            let Some(v) = v else { continue };
            let state = v
                .read()
                .map_or(RuntimeState::Unreachable, |v| match (v.absent, v.state) {
                    (true, _) | (_, DockerState::Disabled) => RuntimeState::Absent,
                    (_, DockerState::Connecting) => RuntimeState::Connecting,
                    (_, DockerState::Up) => RuntimeState::Up,
                    (_, DockerState::Unreachable) => RuntimeState::Unreachable,
                });
            out.insert(rt.as_str().to_string(), state);
        }
        out
    }

    /// How a key's identity is shown. `None` for a path that only might be a container
    /// (`/<namespace>/<id>`) and that no runtime confirms: it is shown as a cgroup.
    fn named(&self, identity: &Identity) -> Option<Named> {
        let owner = identity.owner.as_ref()?;
        if let Some(named) = self.lookup(owner) {
            return Some(named);
        }
        if owner.candidate {
            return None;
        }
        // No runtime knows it (yet, or any more, or it cannot be asked): its id.
        Some(Named {
            id: owner.id.clone(),
            name: owner.id.chars().take(12).collect(),
            runtime: owner.runtime.map_or("", Runtime::as_str),
            ..Named::default()
        })
    }
}

/// A cached identity: when it was resolved, and whether the roster lost its key since (its
/// container is gone; /proc is asked again before the key is named by it).
#[derive(Clone, Debug)]
struct Cached {
    identity: Identity,
    resolved: Instant,
    stale: bool,
}

/// Key -> identity cache. Bounded: entries exist only for keys in the kernel map (the caller
/// forgets keys it retires), and identities are looked up only for keys seen in a drain.
pub struct Attribution {
    mode: KeyMode,
    identities: HashMap<ContainerKey, Cached>,
    /// Keys no process could be found for (their tasks exited before the drain), with the
    /// number of drains to wait before the next /proc scan for them: without it every drain
    /// would rescan /proc for keys that will never resolve. Bounded like `identities`.
    unresolved: HashMap<ContainerKey, u32>,
    pub runtimes: Runtimes,
    roster: RosterHandle,
    /// Roster generation the cache was last checked against.
    checked: u64,
    /// Keys idle in the kernel map, since when (the first drain that found them idle) and the
    /// last `gone` call that found them idle still. Bounded like `identities`.
    idle_since: HashMap<ContainerKey, (Instant, u64)>,
    /// `gone` calls so far.
    gone_calls: u64,
    /// Cached identities the roster contradicted (a recycled key), since start.
    pub reattributed: u64,
    /// What a runtime last said of each key's container: a gone container's last counts keep
    /// its name and image once the runtimes have forgotten it (after `GONE_NAMES_KEPT`),
    /// instead of a nameless record under its short id. Used only while the key's identity
    /// still names the same container; bounded like `identities` (forgotten with the key).
    names: HashMap<ContainerKey, Named>,
    /// The name each key's record was last given, shared from one interval to the next rather
    /// than built again (at 1000 containers the names' allocations and frees were a tenth of
    /// the daemon's CPU). Bounded like `identities` (forgotten with the key).
    shown: HashMap<ContainerKey, Shown, crate::contention::Hasher>,
    /// When the previous interval was attributed, and when this one began to be: a roster scan
    /// that began after the previous one may name a key whose processes are gone by the drain
    /// (a container that lived less than an interval, OOM-killed at start).
    previous_call: Option<Instant>,
    this_call: Option<Instant>,
    /// The host's network namespace (PID 1's): see `network_of`.
    host_netns: Option<u32>,
}

/// Contenders listed per container (the largest).
pub const CONTENDERS_LISTED: usize = 3;

/// Puts each container's contenders, by name, on its record.
fn name_contenders(
    out: &mut [ContainerDelta],
    waited: &HashMap<ContainerKey, crate::contention::Waited, crate::contention::Hasher>,
) {
    use crate::contention::{Contender, Hasher};
    // Contenders are merged by name (waits nothing of ours explains join the host's own:
    // interrupts, kernel threads and the host's processes are all `host`). Each name gets a
    // number once per interval and contenders are merged by number: comparing the names
    // themselves, up to 16 x 16 cold strings per record, was 7% of the daemon's CPU at 1000
    // containers.
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut number: HashMap<&str, u32, Hasher> =
        HashMap::with_capacity_and_hasher(out.len() + 1, Hasher::default());
    let mut by_record = Vec::with_capacity(out.len());
    for c in out.iter() {
        let next = number.len() as u32;
        by_record.push(*number.entry(&c.name).or_insert(next));
    }
    let next = number.len() as u32;
    let host = *number.entry("host").or_insert(next);
    let known = number.len() as u32;
    let index: HashMap<ContainerKey, usize, Hasher> =
        out.iter().enumerate().map(|(i, c)| (c.key, i)).collect();
    // A contender that is not in this interval's records: a key whose container is gone. Its
    // name (`gone-<key>`) is numbered after the records' (rare: kept in a list).
    let mut gone: Vec<(ContainerKey, u32)> = Vec::new();
    let mut name_of = |who: &Contender| -> u32 {
        match who {
            Contender::Unaccounted => host,
            Contender::Container(k) => match index.get(k) {
                Some(&j) => by_record[j],
                None => {
                    if let Some(&(_, n)) = gone.iter().find(|(g, _)| g == k) {
                        return n;
                    }
                    let name = format!("gone-{k}");
                    let n = number
                        .get(name.as_str())
                        .copied()
                        .unwrap_or(known + names.len() as u32);
                    if n >= known {
                        names.push(name.into());
                    }
                    gone.push((*k, n));
                    n
                }
            },
        }
    };
    let secs = |ns: u64| ns as f64 / 1e9;
    // (record, seconds behind its own tasks, ns behind each contender by name number)
    struct Merged {
        record: usize,
        own: f64,
        by_name: Vec<(u32, u64)>,
    }
    let mut merged: Vec<Merged> = Vec::new();
    for (i, c) in out.iter().enumerate() {
        let Some(w) = waited.get(&c.key) else {
            continue;
        };
        let mut by_name: Vec<(u32, u64)> = Vec::with_capacity(w.behind.len());
        for (who, ns) in &w.behind {
            let n = name_of(who);
            match by_name.iter_mut().find(|(m, _)| *m == n) {
                Some(e) => e.1 += ns,
                None => by_name.push((n, *ns)),
            }
        }
        merged.push(Merged {
            record: i,
            own: secs(w.own),
            by_name,
        });
    }
    // The names, by number, to sort ties and fill in the records (shared, not copied).
    let host_name: Arc<str> = Arc::from("host");
    let mut text: Vec<&Arc<str>> = vec![&host_name; known as usize];
    for (c, &n) in out.iter().zip(&by_record) {
        text[n as usize] = &c.name;
    }
    text.extend(names.iter());
    let listed: Vec<_> = merged
        .into_iter()
        .map(|mut m| {
            let by_name = &mut m.by_name;
            by_name.sort_by(|a, b| {
                b.1.cmp(&a.1)
                    .then_with(|| text[a.0 as usize].cmp(text[b.0 as usize]))
            });
            let listed: Vec<crate::model::ContendedBy> = by_name
                .iter()
                .take(CONTENDERS_LISTED)
                .map(|&(n, ns)| crate::model::ContendedBy {
                    container: text[n as usize].clone(),
                    seconds: secs(ns),
                })
                .collect();
            (m.record, m.own, listed)
        })
        .collect();
    drop(text);
    for (i, own, listed) in listed {
        out[i].contention_self_seconds = own;
        out[i].contention = listed;
    }
}

/// Drains between /proc scans for a key that could not be resolved.
const UNRESOLVED_RETRY: u32 = 10;

impl Attribution {
    pub fn new(mode: KeyMode, runtimes: Runtimes, roster: RosterHandle) -> Self {
        Self {
            mode: mode.resolve(),
            identities: HashMap::new(),
            unresolved: HashMap::new(),
            runtimes,
            roster,
            checked: 0,
            idle_since: HashMap::new(),
            gone_calls: 0,
            reattributed: 0,
            names: HashMap::new(),
            shown: HashMap::default(),
            previous_call: None,
            this_call: None,
            host_netns: crate::collect::netns::host_namespace(),
        }
    }

    /// The roster it reads (the interval bench publishes its scans through it).
    pub fn roster(&self) -> &RosterHandle {
        &self.roster
    }

    pub fn docker_state(&self) -> DockerState {
        self.runtimes
            .docker
            .read()
            .map(|v| v.state)
            .unwrap_or(DockerState::Unreachable)
    }

    /// Builds the interval's container list from the kernel deltas, plus every running
    /// container the kernel saw nothing of (with zeros).
    pub fn containers(
        &mut self,
        deltas: &[ContainerActivity],
        ifaces: &[IfaceDelta],
        netns_tcp: &[(u32, [u64; 2])],
        interval_ns: u64,
        summarizer: &mut LatencySummarizer,
    ) -> Vec<ContainerDelta> {
        self.previous_call = self.this_call.replace(Instant::now());
        self.verify();
        let mut out = self.containers_for(deltas, ifaces, netns_tcp, interval_ns, summarizer);
        self.add_network_only(&mut out, ifaces, netns_tcp, summarizer);
        self.add_listed(&mut out, summarizer);
        distinct_names(&mut out, &mut self.shown);
        name_contenders(&mut out, &crate::contention::attribute(deltas));
        busiest_first(out)
    }

    /// Checks the cached identities against the newest roster scan (a no-op until the roster
    /// scans again): a key the roster shows under another container takes that identity; a
    /// container key no live process has is stale (re-resolved before it names anything).
    fn verify(&mut self) {
        let roster = self.roster.load();
        if roster.generation == self.checked {
            return;
        }
        self.checked = roster.generation;
        for (key, cached) in &mut self.identities {
            if cached.resolved >= roster.started {
                // Resolved from /proc after the scan began: newer than the roster.
                continue;
            }
            match roster.containers.get(key) {
                Some(now) if same_container(&cached.identity, now) => cached.stale = false,
                Some(now) => {
                    tracing::debug!(
                        key,
                        was = ?cached.identity.owner.as_ref().map(|o| &o.id),
                        now = ?now.owner.as_ref().map(|o| &o.id),
                        "container key recycled: re-attributed"
                    );
                    cached.identity = now.clone();
                    cached.resolved = roster.started;
                    cached.stale = false;
                    self.unresolved.remove(key);
                    self.reattributed += 1;
                }
                None if cached.identity.owner.is_some() => cached.stale = true,
                None => {}
            }
        }
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
        let identities = &self.identities;
        let unknown: Vec<ContainerKey> = deltas
            .iter()
            .map(|c| c.key)
            .filter(|k| *k != 0 && identities.get(k).is_none_or(|c| c.stale))
            .filter(|k| match unresolved.get_mut(k) {
                Some(wait) if *wait > 0 => {
                    *wait -= 1;
                    false
                }
                _ => true,
            })
            .collect();
        if !unknown.is_empty() {
            let resolved = Instant::now();
            let mut found = procfs::resolve(self.mode, &unknown);
            // Gone from /proc already: a roster scan that began within this interval saw the
            // key's processes alive (it runs at once on a runtime's start event), so it names
            // the container those counts came from. An older scan is not trusted: the key may
            // have been recycled since.
            let roster = self.roster.load();
            if roster.generation > 0 && self.previous_call.is_none_or(|t| roster.started >= t) {
                for key in &unknown {
                    if !found.contains_key(key)
                        && let Some(identity) = roster.containers.get(key)
                    {
                        found.insert(*key, identity.clone());
                    }
                }
            }
            for key in &unknown {
                if found.contains_key(key) {
                    self.unresolved.remove(key);
                } else {
                    // A stale identity keeps naming the key's last counts (its container's
                    // final exits) until /proc or the roster says who has the key now.
                    self.unresolved.insert(*key, UNRESOLVED_RETRY);
                }
            }
            self.identities
                .extend(found.into_iter().map(|(key, identity)| {
                    (
                        key,
                        Cached {
                            identity,
                            resolved,
                            stale: false,
                        },
                    )
                }));
        }
        let (runtimes, host_netns) = (&self.runtimes, self.host_netns);
        let (names, shown) = (&mut self.names, &mut self.shown);
        deltas
            .iter()
            .map(|activity| {
                let (key, d) = (&activity.key, &activity.stats);
                let identity = self.identities.get(key).map(|c| &c.identity);
                let mut c = record(runtimes, Some((&mut *names, &mut *shown)), *key, identity);
                c.stats = *d;
                c.cpu_percent = if interval_ns > 0 {
                    100.0 * d.cpu_ns as f64 / interval_ns as f64
                } else {
                    0.0
                };
                c.runqueue_latency_us = summarizer.summarize_log2(&d.runq_hist, d.runq_wait_ns);
                let netns = network_of(identity, host_netns);
                c.network = netns.map_or(Network::Unknown, |n| n.1);
                if let Some((netns, Network::Own)) = netns {
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
            .collect()
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
        // A record in the host's namespace does not cover it: the host's own record does.
        let covered: HashSet<u32> = out
            .iter()
            .filter(|c| c.network.measured())
            .filter_map(|c| self.identities.get(&c.key).and_then(|i| i.identity.netns))
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
        let resolved = Instant::now();
        for (_, (key, identity)) in procfs::resolve_by_netns(self.mode, &missing) {
            if out.iter().any(|c| c.key == key) {
                continue;
            }
            self.identities.insert(
                key,
                Cached {
                    identity,
                    resolved,
                    stale: false,
                },
            );
            let zero = ContainerActivity::zero(key);
            let mut extra = self.containers_for(&[zero], ifaces, netns_tcp, 0, summarizer);
            out.append(&mut extra);
        }
    }

    /// Every container the roster found running and the kernel showed nothing of in this
    /// interval: listed with zeros, so an idle container is visibly idle, not missing.
    fn add_listed(&self, out: &mut Vec<ContainerDelta>, summarizer: &mut LatencySummarizer) {
        let roster = self.roster.load();
        if roster.containers.is_empty() {
            return;
        }
        let keys: HashSet<ContainerKey> = out.iter().map(|c| c.key).collect();
        let ids: HashSet<String> = out
            .iter()
            .filter(|c| !c.id.is_empty())
            .map(|c| c.id.clone())
            .collect();
        let zeros = [0u64; sentinel_common::CONTAINER_HIST_BUCKETS];
        for (key, identity) in &roster.containers {
            if keys.contains(key) || self.runtimes.named(identity).is_none() {
                continue;
            }
            let mut c = record(&self.runtimes, None, *key, Some(identity));
            if c.id.is_empty() || ids.contains(&c.id) {
                continue;
            }
            c.network =
                network_of(Some(identity), self.host_netns).map_or(Network::Unknown, |n| n.1);
            c.runqueue_latency_us = summarizer.summarize_log2(&zeros, 0);
            out.push(c);
        }
    }

    /// Keys whose container is gone (no live process has them): their kernel entries may be
    /// removed once idle. Judged by the roster's scan, not one of our own per drain (at 1000
    /// idle containers that was a stat per process every interval): a key goes when a scan
    /// that began after the key was already idle did not find it. Its last events came before
    /// that, so a process that made them and still lives was there to be found; a key whose
    /// first process started during the scan is not judged by it. A gone container leaves
    /// within one roster refresh (or at once after a runtime's event, which asks for a scan).
    pub fn gone(&mut self, idle: impl Iterator<Item = ContainerKey>) -> Vec<ContainerKey> {
        if !self.roster.scans() {
            let idle: Vec<ContainerKey> = idle.collect();
            if idle.is_empty() {
                return idle;
            }
            let live = procfs::live_keys(self.mode);
            return idle.into_iter().filter(|k| !live.contains(k)).collect();
        }
        let roster = self.roster.load();
        let now = Instant::now();
        self.gone_calls += 1;
        let call = self.gone_calls;
        let mut gone = Vec::new();
        for key in idle {
            let since = self.idle_since.entry(key).or_insert((now, call));
            since.1 = call;
            if roster.generation > 0 && since.0 < roster.started && !roster.live.contains_key(&key)
            {
                gone.push(key);
            }
        }
        // A key active again starts a new idle stretch when it next goes idle.
        self.idle_since.retain(|_, (_, last)| *last == call);
        gone
    }

    pub fn forget(&mut self, key: &ContainerKey) {
        self.identities.remove(key);
        self.unresolved.remove(key);
        self.idle_since.remove(key);
        self.names.remove(key);
        self.shown.remove(key);
    }
}

/// A key's network namespace and whose traffic it carries: a container in the host's namespace
/// (`--network host`, or a process that only unshared its mount namespace) would otherwise be
/// given the host's whole traffic and TCP events as its own, one copy per such container, and
/// its detection series and heal triggers would fire on the host's retransmits. The host's own
/// record (identity `host`) keeps them.
fn network_of(identity: Option<&Identity>, host_netns: Option<u32>) -> Option<(u32, Network)> {
    let identity = identity?;
    let netns = identity.netns?;
    let shares_host = Some(netns) == host_netns && *identity.cgroup != *procfs::HOST_CGROUP;
    Some((
        netns,
        if shares_host {
            Network::Host
        } else {
            Network::Own
        },
    ))
}

/// The name a key's record was last given, and its `name#key` form once it needed one.
#[derive(Debug)]
struct Shown {
    base: Arc<str>,
    distinct: Option<Arc<str>>,
}

/// `key`'s name: the one `shown` holds when `same` says it still is (its `name#key` form kept
/// with it), else `make`'s, remembered.
fn remembered_name(
    shown: &mut HashMap<ContainerKey, Shown, crate::contention::Hasher>,
    key: ContainerKey,
    same: impl FnOnce(&Arc<str>) -> bool,
    make: impl FnOnce() -> Arc<str>,
) -> Arc<str> {
    use std::collections::hash_map::Entry;
    match shown.entry(key) {
        Entry::Occupied(e) if same(&e.get().base) => e.get().base.clone(),
        entry => {
            let base = make();
            entry.insert_entry(Shown {
                base: base.clone(),
                distinct: None,
            });
            base
        }
    }
}

/// What `record` remembers per key of the kernel map: what a runtime said, the name given.
type Memory<'a> = (
    &'a mut HashMap<ContainerKey, Named>,
    &'a mut HashMap<ContainerKey, Shown, crate::contention::Hasher>,
);

/// A record with the key's identity and no activity. With `memory` (keys of the kernel map
/// only, so that it stays bounded), what a runtime says is remembered, a container no
/// runtime knows any more is named by what it last said of the same container, and the name
/// is shared with the key's previous record when it did not change.
fn record(
    runtimes: &Runtimes,
    memory: Option<Memory<'_>>,
    key: ContainerKey,
    identity: Option<&Identity>,
) -> ContainerDelta {
    let (names, shown) = match memory {
        Some((names, shown)) => (Some(names), Some(shown)),
        None => (None, None),
    };
    let owner = identity.and_then(|i| i.owner.as_ref());
    let named = match (owner.and_then(|o| runtimes.lookup(o)), names) {
        (Some(now), Some(names)) => {
            if names.get(&key) != Some(&now) {
                names.insert(key, now.clone());
            }
            Some(now)
        }
        (Some(now), None) => Some(now),
        (None, names) => names
            .and_then(|names| names.get(&key))
            .filter(|last| owner.is_some_and(|o| o.id == last.id))
            .cloned()
            .or_else(|| identity.and_then(|i| runtimes.named(i))),
    };
    let gone;
    let name = match (&named, identity, shown) {
        // The identity's own path: the same `Arc` until the identity is resolved again.
        (None, Some(i), Some(shown)) => remembered_name(
            shown,
            key,
            |base| Arc::ptr_eq(base, &i.cgroup),
            || i.cgroup.clone(),
        ),
        (None, Some(i), None) => i.cgroup.clone(),
        (named, _, shown) => {
            let name: &str = match (named, identity) {
                (Some(n), _) => &n.name,
                (None, None) if key == 0 => "unresolved",
                _ => {
                    gone = format!("gone-{key}");
                    &gone
                }
            };
            match shown {
                Some(shown) => {
                    remembered_name(shown, key, |base| **base == *name, || Arc::from(name))
                }
                None => Arc::from(name),
            }
        }
    };
    let n = named.unwrap_or_default();
    ContainerDelta {
        id: n.id,
        name,
        image: n.image,
        runtime: n.runtime.to_string(),
        pod: n.pod,
        namespace: n.namespace,
        key,
        ..Default::default()
    }
}

/// Several keys can carry one name: mount namespaces that share a cgroup (named by its path
/// on a cgroup v1 host), or two runtimes with a container called the same. Each such record
/// gets its key appended (`name#key`), so that detection, contention and the exports never
/// merge different containers into one series. Names that are unique stay as they are.
fn distinct_names(
    out: &mut [ContainerDelta],
    shown: &mut HashMap<ContainerKey, Shown, crate::contention::Hasher>,
) {
    let mut seen: HashMap<&str, u32, crate::contention::Hasher> =
        HashMap::with_capacity_and_hasher(out.len(), Default::default());
    for c in out.iter() {
        *seen.entry(&c.name).or_default() += 1;
    }
    let shared: Vec<bool> = out.iter().map(|c| seen[&*c.name] > 1).collect();
    drop(seen);
    for (c, shared) in out.iter_mut().zip(shared) {
        if !shared {
            continue;
        }
        // The `name#key` made for this very name before, if any (`base` is this name).
        match shown.get_mut(&c.key) {
            Some(s) if Arc::ptr_eq(&s.base, &c.name) => {
                let distinct = s
                    .distinct
                    .get_or_insert_with(|| format!("{}#{}", c.name, c.key).into());
                c.name = distinct.clone();
            }
            _ => c.name = format!("{}#{}", c.name, c.key).into(),
        }
    }
}

/// Busiest first (CPU time, then key). Sorted through a 24-byte index, then put in that
/// order in place, a record moved once: a record is several hundred bytes, and sorting 1000 of
/// them whole moved megabytes per interval; collecting them into a new list grown by doubling
/// copied them again and touched fresh pages (9% of the main thread at 1000 live containers).
fn busiest_first(mut out: Vec<ContainerDelta>) -> Vec<ContainerDelta> {
    let mut order: Vec<(std::cmp::Reverse<u64>, ContainerKey, usize)> = out
        .iter()
        .enumerate()
        .map(|(i, c)| (std::cmp::Reverse(c.stats.cpu_ns), c.key, i))
        .collect();
    order.sort_unstable();
    let mut from: Vec<usize> = order.into_iter().map(|(_, _, i)| i).collect();
    permute(&mut out, &mut from);
    out
}

/// Puts `items` in the order `from` gives (position `p` gets the item at `from[p]`), along
/// the permutation's cycles, a swap per item; `from` (a permutation of the positions) is left
/// as the identity.
fn permute<T>(items: &mut [T], from: &mut [usize]) {
    debug_assert_eq!(items.len(), from.len());
    for start in 0..from.len() {
        // Along the cycle through `start`: `at` holds what `start` held, until the position
        // whose item is that one is reached.
        let mut at = start;
        loop {
            let source = std::mem::replace(&mut from[at], at);
            if source == start {
                break;
            }
            items.swap(at, source);
            at = source;
        }
    }
}

/// Both identities name the same container (or both none).
fn same_container(a: &Identity, b: &Identity) -> bool {
    match (&a.owner, &b.owner) {
        (Some(x), Some(y)) => x.id == y.id && x.runtime == y.runtime,
        (None, None) => a.cgroup == b.cgroup,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::docker::ContainerMeta;
    use proptest::strategy::Strategy as _;

    /// Keys no process on this machine has (mount namespace inodes are far below).
    const K: ContainerKey = u64::MAX - 7;
    const K2: ContainerKey = u64::MAX - 8;

    fn hex(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn identity(id: &str, runtime: Runtime) -> Identity {
        Identity {
            owner: Some(Owner {
                runtime: Some(runtime),
                id: id.to_string(),
                ..Owner::default()
            }),
            cgroup: format!("/docker/{id}").into(),
            netns: None,
        }
    }

    proptest::proptest! {
        /// Putting items in order in place is the copy in that order, and leaves the index as
        /// the identity.
        #[test]
        fn permute_puts_each_item_where_the_order_says(
            order in (0usize..60).prop_flat_map(|n| {
                proptest::strategy::Just((0..n).collect::<Vec<usize>>()).prop_shuffle()
            }),
        ) {
            let items: Vec<String> = (0..order.len()).map(|i| format!("item {i}")).collect();
            let want: Vec<String> = order.iter().map(|&i| items[i].clone()).collect();
            let (mut got, mut from) = (items, order.clone());
            permute(&mut got, &mut from);
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(from.iter().enumerate().all(|(p, &i)| p == i));
        }
    }

    #[test]
    fn containers_are_listed_busiest_first_then_by_key() {
        let delta = |key, cpu_ns| {
            let mut c = ContainerDelta {
                key,
                ..ContainerDelta::default()
            };
            c.stats.cpu_ns = cpu_ns;
            c
        };
        let out = busiest_first(vec![
            delta(5, 10),
            delta(3, 30),
            delta(9, 10),
            delta(1, 0),
            delta(4, 30),
        ]);
        let got: Vec<(u64, u64)> = out.iter().map(|c| (c.key, c.stats.cpu_ns)).collect();
        assert_eq!(got, [(3, 30), (4, 30), (5, 10), (9, 10), (1, 0)]);
    }

    fn docker_with(names: &[(&str, &str)]) -> SharedView {
        let v = docker::view(DockerState::Up);
        v.write().unwrap().replace(
            names
                .iter()
                .map(|(id, name)| {
                    (
                        (*id).to_string(),
                        ContainerMeta {
                            name: (*name).to_string(),
                            image: "img".into(),
                            ..ContainerMeta::default()
                        },
                    )
                })
                .collect(),
        );
        v
    }

    fn busy(key: ContainerKey) -> ContainerActivity {
        let mut activity = ContainerActivity::zero(key);
        activity.stats.cpu_ns = 1_000_000;
        activity
    }

    fn interval(a: &mut Attribution, deltas: &[ContainerActivity]) -> Vec<ContainerDelta> {
        a.containers(
            deltas,
            &[],
            &[],
            1_000_000_000,
            &mut LatencySummarizer::default(),
        )
    }

    /// Mount namespaces that share a cgroup (cgroup v1: each is named by the cgroup's path) are
    /// different containers: each gets its key in its name, so that nothing downstream (one
    /// detection series per name, contention by name) merges them; a unique name is kept.
    #[test]
    fn containers_that_share_a_name_are_told_apart_by_their_keys() {
        const K3: ContainerKey = u64::MAX - 9;
        let roster = RosterHandle::fixed();
        let mut a = Attribution::new(
            KeyMode::Mntns,
            Runtimes::docker_only(docker_with(&[])),
            roster,
        );
        interval(&mut a, &[]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        interval(&mut a, &[]);
        let by_path = |cgroup: &str| Identity {
            owner: None,
            cgroup: cgroup.into(),
            netns: None,
        };
        a.roster.publish(HashMap::from([
            (K, by_path("/user.slice")),
            (K2, by_path("/user.slice")),
            (K3, by_path("/system.slice/cron.service")),
        ]));
        let out = interval(&mut a, &[busy(K), busy(K2), busy(K3)]);
        let mut names: Vec<(ContainerKey, &str)> = out.iter().map(|c| (c.key, &*c.name)).collect();
        names.sort();
        let (k, k2) = (format!("/user.slice#{K}"), format!("/user.slice#{K2}"));
        assert_eq!(
            names,
            vec![
                (K3, "/system.slice/cron.service"),
                (K2, k2.as_str()),
                (K, k.as_str()),
            ]
        );
        // The next interval's records share the names, plain and `name#key`, not copies.
        let again = interval(&mut a, &[busy(K), busy(K2), busy(K3)]);
        assert_eq!(again.len(), 3);
        for c in &again {
            let before = out.iter().find(|b| b.key == c.key).unwrap();
            assert!(Arc::ptr_eq(&c.name, &before.name), "{} copied", c.name);
        }
        // K2 moves to another cgroup: both names change, K's loses its suffix.
        std::thread::sleep(std::time::Duration::from_millis(2));
        a.roster.publish(HashMap::from([
            (K, by_path("/user.slice")),
            (K2, by_path("/other.slice")),
            (K3, by_path("/system.slice/cron.service")),
        ]));
        let moved = interval(&mut a, &[busy(K), busy(K2), busy(K3)]);
        let mut names: Vec<(ContainerKey, &str)> =
            moved.iter().map(|c| (c.key, &*c.name)).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                (K3, "/system.slice/cron.service"),
                (K2, "/other.slice"),
                (K, "/user.slice"),
            ]
        );
    }

    /// A container in the host's network namespace is not given the host's traffic and TCP
    /// events (one copy per such container): its network is `host`, not measured; the host's
    /// own record keeps them, a container with its own namespace gets its own, and one whose
    /// namespace is unknown is `unknown`.
    #[test]
    fn only_a_containers_own_network_namespace_is_its_traffic() {
        const K3: ContainerKey = u64::MAX - 9;
        const K4: ContainerKey = u64::MAX - 10;
        let roster = RosterHandle::fixed();
        let mut a = Attribution::new(
            KeyMode::Mntns,
            Runtimes::docker_only(docker_with(&[])),
            roster,
        );
        let host = a.host_netns.expect("this process has a network namespace");
        let own = host.wrapping_add(1);
        interval(&mut a, &[]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        interval(&mut a, &[]);
        let at = |cgroup: &str, netns: Option<u32>| Identity {
            owner: None,
            cgroup: cgroup.into(),
            netns,
        };
        a.roster.publish(HashMap::from([
            (K, at("/system.slice/sleeper.service", Some(host))),
            (K2, at(procfs::HOST_CGROUP, Some(host))),
            (K3, at("/system.slice/server.service", Some(own))),
            (K4, at("/system.slice/gone.service", None)),
        ]));
        let iface = |netns: u32, rx_packets: u64| IfaceDelta {
            netns,
            ifindex: 1,
            name: "lo".into(),
            rx_packets,
            ..Default::default()
        };
        let out = a.containers(
            &[busy(K), busy(K2), busy(K3), busy(K4)],
            &[iface(host, 5), iface(own, 7)],
            &[(host, [3, 1]), (own, [2, 0])],
            1_000_000_000,
            &mut LatencySummarizer::default(),
        );
        let mut seen: Vec<(ContainerKey, Network, u64, u64, u64)> = out
            .iter()
            .map(|c| {
                (
                    c.key,
                    c.network,
                    c.rx_packets,
                    c.tcp_retransmits,
                    c.tcp_resets,
                )
            })
            .collect();
        seen.sort_by_key(|s| s.0);
        assert_eq!(
            seen,
            vec![
                (K4, Network::Unknown, 0, 0, 0),
                (K3, Network::Own, 7, 2, 0),
                (K2, Network::Own, 5, 3, 1),
                (K, Network::Host, 0, 0, 0),
            ]
        );
    }

    /// Sentinel in a pod with a network namespace of its own (the DaemonSet): the host's is
    /// PID 1's, so a `hostNetwork` pod is not given the node's traffic as its own.
    #[test]
    fn in_a_pod_of_its_own_the_hosts_namespace_is_pid_1s() {
        use crate::collect::netns::host_namespace_of;
        let (node, pod, other) = (10, 20, 30);
        let host = host_namespace_of(Some(node), Some(pod));
        assert_eq!(host, Some(node));
        assert_eq!(
            host_namespace_of(None, Some(pod)),
            Some(pod),
            "PID 1 hidden"
        );
        let at = |netns: u32| Identity {
            owner: None,
            cgroup: "/kubepods.slice/kubepods-pod1.slice".into(),
            netns: Some(netns),
        };
        assert_eq!(
            network_of(Some(&at(node)), host),
            Some((node, Network::Host))
        );
        assert_eq!(
            network_of(Some(&at(other)), host),
            Some((other, Network::Own))
        );
        // Before: the pod's own namespace taken for the host's.
        assert_eq!(
            network_of(Some(&at(node)), Some(pod)),
            Some((node, Network::Own))
        );
    }

    /// A container whose processes are gone before the drain looks for them in /proc (OOM-
    /// killed at start; CI saw its OOM kill unnamed) is named from a roster scan that began
    /// within the interval (the scan a runtime's start event asks for); a scan older than the
    /// previous interval is not trusted for it (the key may have been recycled since).
    #[test]
    fn a_container_gone_before_the_drain_is_named_from_this_intervals_scan() {
        let (hog, earlier) = (hex('c'), hex('d'));
        let view = docker_with(&[(&hog, "hog"), (&earlier, "earlier")]);
        let roster = RosterHandle::fixed();
        let mut a = Attribution::new(KeyMode::Mntns, Runtimes::docker_only(view), roster);
        interval(&mut a, &[]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Within this interval: the start event's scan saw the hog alive; it died before the
        // drain (no process has K or K2 in this test's /proc).
        interval(&mut a, &[]);
        a.roster
            .publish(HashMap::from([(K, identity(&hog, Runtime::Docker))]));
        let out = interval(&mut a, &[busy(K)]);
        assert_eq!((out[0].id.as_str(), &*out[0].name), (hog.as_str(), "hog"));
        let mut a2 = {
            let roster = RosterHandle::fixed();
            roster.publish(HashMap::from([(K2, identity(&earlier, Runtime::Docker))]));
            Attribution::new(
                KeyMode::Mntns,
                Runtimes::docker_only(docker_with(&[(&earlier, "earlier")])),
                roster,
            )
        };
        std::thread::sleep(std::time::Duration::from_millis(2));
        interval(&mut a2, &[]);
        // That scan is older than the previous interval: K2 stays unnamed.
        let out = interval(&mut a2, &[busy(K2)]);
        let k2 = out.iter().find(|c| c.key == K2).expect("K2 is listed");
        assert!(
            k2.id.is_empty() && &*k2.name != "earlier",
            "a scan older than the previous interval does not name it: {k2:?}"
        );
    }

    /// Issue 17.2: a key the kernel hands to the next container (`docker rm -f web; docker
    /// run --name web`) is named after the new container as soon as the roster sees it, and
    /// the gone one's last counts keep its name, never a bare id.
    #[test]
    fn a_recycled_key_follows_the_new_container() {
        let (old, new) = (hex('a'), hex('b'));
        let view = docker_with(&[(&old, "web")]);
        let roster = RosterHandle::fixed();
        roster.publish(HashMap::from([(K, identity(&old, Runtime::Docker))]));
        let mut a = Attribution::new(KeyMode::Mntns, Runtimes::docker_only(view.clone()), roster);
        // Cached the way the drain caches it, before the roster's next scan.
        a.identities.insert(
            K,
            Cached {
                identity: identity(&old, Runtime::Docker),
                resolved: Instant::now()
                    .checked_sub(std::time::Duration::from_secs(5))
                    .expect("uptime over 5 s"),
                stale: false,
            },
        );
        let out = interval(&mut a, &[busy(K)]);
        assert_eq!((out[0].id.as_str(), &*out[0].name), (old.as_str(), "web"));
        // The old container dies: Docker drops it, the roster finds no process with K.
        view.write().unwrap().replace(HashMap::new());
        a.roster.publish(HashMap::new());
        let out = interval(&mut a, &[busy(K)]);
        assert_eq!(out[0].id, old, "the final counts are the old container's");
        assert_eq!(
            &*out[0].name, "web",
            "named from the recently gone, not a bare id"
        );
        // The new `web` starts with the same key: the roster has it under the new id.
        view.write().unwrap().replace(
            docker_with(&[(&new, "web")])
                .read()
                .unwrap()
                .containers
                .clone(),
        );
        a.roster
            .publish(HashMap::from([(K, identity(&new, Runtime::Docker))]));
        let out = interval(&mut a, &[busy(K)]);
        assert_eq!((out[0].id.as_str(), &*out[0].name), (new.as_str(), "web"));
        assert_eq!(out[0].stats.cpu_ns, 1_000_000);
        assert_eq!(a.reattributed, 1);
        assert!(
            !out.iter().any(|c| c.id == old),
            "no ghost of the old container: {out:?}"
        );
    }

    /// Idle keys are retired by the roster's scans (no /proc scan per drain): only by a scan
    /// that began after the key was already idle, never while a scan finds the key, and a key
    /// that was active again starts over.
    #[test]
    fn idle_keys_go_by_a_roster_scan_newer_than_their_idleness() {
        let tick = || std::thread::sleep(std::time::Duration::from_millis(2));
        let view = docker_with(&[]);
        let roster = RosterHandle::fixed();
        let live = HashMap::from([(K, identity(&hex('a'), Runtime::Docker))]);
        let mut a = Attribution::new(KeyMode::Mntns, Runtimes::docker_only(view), roster);
        // No scan published yet: nothing is judged.
        assert!(a.gone([K, K2].into_iter()).is_empty());
        a.roster.publish(live.clone());
        tick();
        // K2 was idle before this scan began, and the scan has no process with it.
        assert_eq!(a.gone([K, K2].into_iter()), vec![K2]);
        // K2 active in this drain (not idle), then idle again: the scan above is older than
        // its new idle stretch, so it is not judged by it.
        assert!(a.gone([K].into_iter()).is_empty());
        tick();
        assert!(a.gone([K, K2].into_iter()).is_empty());
        tick();
        a.roster.publish(live.clone());
        tick();
        assert_eq!(a.gone([K, K2].into_iter()), vec![K2]);
        // K stays as long as the scans find it, however long idle.
        a.roster.publish(live);
        tick();
        assert!(!a.gone([K].into_iter()).contains(&K));
        // Forgotten (its slot given back): no idle stretch is kept for it.
        a.forget(&K2);
        assert!(!a.idle_since.contains_key(&K2));
    }

    /// Issue 17: a gone container whose key still counts after every runtime forgot it (past
    /// `GONE_NAMES_KEPT`) keeps the name and image it was shown with, never a nameless record
    /// under its short id; the remembered name is never lent to another container, and it is
    /// forgotten with the key.
    #[test]
    fn a_gone_container_keeps_its_name_after_the_runtimes_forget_it() {
        let (old, other) = (hex('a'), hex('f'));
        let view = docker_with(&[(&old, "web")]);
        let roster = RosterHandle::fixed();
        let mut a = Attribution::new(KeyMode::Mntns, Runtimes::docker_only(view.clone()), roster);
        a.identities.insert(
            K,
            Cached {
                identity: identity(&old, Runtime::Docker),
                resolved: Instant::now(),
                stale: false,
            },
        );
        let out = interval(&mut a, &[busy(K)]);
        assert_eq!((&*out[0].name, out[0].image.as_str()), ("web", "img"));
        // Removed, and its recently-gone name expired: only the attribution remembers it.
        view.write().unwrap().replace(HashMap::new());
        view.write().unwrap().recently_gone.clear();
        for _ in 0..3 {
            let out = interval(&mut a, &[busy(K)]);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(
                (out[0].id.as_str(), &*out[0].name, out[0].image.as_str()),
                (old.as_str(), "web", "img"),
                "{out:?}"
            );
            assert_eq!(out[0].runtime, "docker");
        }
        // The key re-attributed to another container no runtime knows yet: not named `web`.
        a.identities.get_mut(&K).unwrap().identity = identity(&other, Runtime::Docker);
        let out = interval(&mut a, &[busy(K)]);
        assert_eq!(
            (out[0].id.as_str(), &*out[0].name, out[0].image.as_str()),
            (other.as_str(), &other[..12], "")
        );
        // The key retired: nothing of it is kept.
        a.forget(&K);
        assert!(!a.names.contains_key(&K));
    }

    /// Issue 17.1: a running container the kernel saw nothing of is listed with zeros; a
    /// `ctr`-style candidate path no runtime confirms is not.
    #[test]
    fn idle_containers_are_listed_with_zeros() {
        let (busy_id, idle_id) = (hex('c'), hex('d'));
        let view = docker_with(&[(&busy_id, "spin"), (&idle_id, "sleep")]);
        let roster = RosterHandle::fixed();
        let candidate = Identity {
            owner: layout::parse("/k8s.io/unknown"),
            cgroup: "/k8s.io/unknown".into(),
            netns: None,
        };
        roster.publish(HashMap::from([
            (K, identity(&busy_id, Runtime::Docker)),
            (K2, identity(&idle_id, Runtime::Docker)),
            (K2 - 1, candidate),
        ]));
        let mut a = Attribution::new(KeyMode::Mntns, Runtimes::docker_only(view), roster);
        a.identities.insert(
            K,
            Cached {
                identity: identity(&busy_id, Runtime::Docker),
                resolved: Instant::now(),
                stale: false,
            },
        );
        let out = interval(&mut a, &[busy(K)]);
        let names: Vec<(&str, u64)> = out.iter().map(|c| (&*c.name, c.stats.cpu_ns)).collect();
        assert_eq!(names, vec![("spin", 1_000_000), ("sleep", 0)]);
        assert_eq!(out[1].key, K2);
        assert_eq!(out[1].runtime, "docker");
    }

    #[test]
    fn runtimes_name_by_the_layout_and_report_their_states() {
        let id = hex('e');
        let containerd = docker::view(DockerState::Up);
        containerd.write().unwrap().replace(HashMap::from([
            (
                "bars-k8s".to_string(),
                containerd::describe(
                    "bars-k8s",
                    "k8s.io",
                    "busybox",
                    &HashMap::from([
                        (K8S_POD.to_string(), "bars".to_string()),
                        (K8S_NAMESPACE.to_string(), "team-a".to_string()),
                    ]),
                ),
            ),
            (
                id.clone(),
                containerd::describe(&id, "k8s.io", "nginx", &HashMap::new()),
            ),
        ]));
        let podman = docker::view(DockerState::Disabled);
        podman.write().unwrap().absent = true;
        let r = Runtimes {
            docker: docker::view(DockerState::Up),
            podman: Some(podman),
            containerd: Some(containerd),
        };
        let named = |path: &str| {
            r.named(&Identity {
                owner: layout::parse(path),
                cgroup: path.into(),
                netns: None,
            })
        };
        let ctr = named("/k8s.io/bars-k8s").expect("confirmed by containerd");
        assert_eq!(
            (ctr.runtime, ctr.pod.as_str(), ctr.namespace.as_str()),
            ("containerd", "bars", "team-a")
        );
        // The same id in another containerd namespace is not the same container.
        assert_eq!(named("/default/bars-k8s"), None);
        // Kubernetes' cgroupfs layout: the runtime comes from the lookup.
        let pod = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(
            named(&format!("/kubepods/besteffort/pod{pod}/{id}"))
                .unwrap()
                .runtime,
            "containerd"
        );
        // CRI-O: named by id, runtime from the path.
        let crio = named(&format!("/kubepods.slice/crio-{id}.scope")).unwrap();
        assert_eq!((crio.name.as_str(), crio.runtime), (&id[..12], "crio"));
        // A podman container podman cannot be asked about: its id, runtime podman.
        assert_eq!(
            named(&format!("/libpod_parent/libpod-{id}"))
                .unwrap()
                .runtime,
            "podman"
        );
        let states = r.states();
        assert_eq!(states["podman"], RuntimeState::Absent);
        assert_eq!(states["containerd"], RuntimeState::Up);
    }
}

#[cfg(test)]
mod contender_tests {
    use super::*;
    use crate::contention::{Contender, Hasher, Waited};

    fn rec(key: ContainerKey, name: &str) -> ContainerDelta {
        ContainerDelta {
            key,
            name: name.into(),
            ..Default::default()
        }
    }

    fn listed(c: &ContainerDelta) -> Vec<(&str, f64)> {
        c.contention
            .iter()
            .map(|b| (&*b.container, b.seconds))
            .collect()
    }

    #[test]
    fn contenders_are_merged_by_name_and_the_three_largest_listed() {
        // Record 3 is the host's own (named `host`): waits nothing of ours explains join it.
        // Key 9 has no record (its container is gone); key 8's record is literally named
        // `gone-7`, the name key 7 (gone too) would get: the two merge.
        let mut out = vec![
            rec(1, "web"),
            rec(2, "db"),
            rec(3, "host"),
            rec(8, "gone-7"),
            rec(4, "idle"),
        ];
        let mut waited: HashMap<ContainerKey, Waited, Hasher> = HashMap::default();
        waited.insert(
            1,
            Waited {
                behind: vec![
                    (Contender::Container(2), 4_000_000_000),
                    (Contender::Unaccounted, 1_000_000_000),
                    (Contender::Container(3), 2_000_000_000),
                    (Contender::Container(9), 1_600_000_000),
                    (Contender::Container(7), 500_000_000),
                    (Contender::Container(8), 1_000_000_000),
                ],
                own: 250_000_000,
                spread: 0,
            },
        );
        // Ties are listed by name.
        waited.insert(
            2,
            Waited {
                behind: vec![
                    (Contender::Container(4), 1_000_000_000),
                    (Contender::Container(1), 1_000_000_000),
                ],
                own: 0,
                spread: 0,
            },
        );
        name_contenders(&mut out, &waited);
        assert_eq!(
            listed(&out[0]),
            [("db", 4.0), ("host", 3.0), ("gone-9", 1.6)]
        );
        assert_eq!(out[0].contention_self_seconds, 0.25);
        assert_eq!(listed(&out[1]), [("idle", 1.0), ("web", 1.0)]);
        assert!(out[2].contention.is_empty());
        assert!(out[4].contention.is_empty());

        // Without key 9, `gone-7` (key 7's name and key 8's record) comes third with both.
        waited
            .get_mut(&1)
            .unwrap()
            .behind
            .retain(|(who, _)| *who != Contender::Container(9));
        name_contenders(&mut out, &waited);
        assert_eq!(
            listed(&out[0]),
            [("db", 4.0), ("host", 3.0), ("gone-7", 1.5)]
        );
    }
}
