//! Who is behind a kernel container key, from procfs alone: a process with that key, its
//! cgroup path (which names the runtime and the container on cgroup v1, hybrid and v2 hosts,
//! see `layout.rs`) and its network namespace. Works without any runtime's API, so hosts
//! without one still get per-cgroup accounting.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use sentinel_common::ContainerKey;

use super::layout::{self, Owner};
use crate::collect::loader::KeyMode;

/// The `cgroup` of the host's own identity (a real cgroup path starts with `/`).
pub const HOST_CGROUP: &str = "host";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The container the cgroup path names (runtime, id, pod), if any.
    pub owner: Option<Owner>,
    /// cgroup path (v2 path, or the v1 `name=systemd`/`cpu` path), or `host`. Shared: it
    /// names the records of a container no runtime knows, every interval.
    pub cgroup: std::sync::Arc<str>,
    /// Network namespace inode of a process with this key.
    pub netns: Option<u32>,
}

/// The container key of a process, computed the way the kernel side computes it.
pub fn key_of_pid(mode: KeyMode, pid: u32) -> Option<ContainerKey> {
    match mode.resolve() {
        KeyMode::Cgroup => {
            let path = cgroup_path(
                &fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
                true,
            )?;
            // The cgroup id is the inode of the cgroup's directory in the v2 hierarchy.
            fs::metadata(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
                .ok()
                .map(|m| m.ino())
        }
        _ => ns_inode(pid, "mnt"),
    }
}

/// The inode of a namespace of `pid`, from the name of its `/proc/PID/ns/` link (`mnt:[N]`):
/// the inode a stat of the link would give, at about half the cost (a stat makes the kernel
/// set up an nsfs inode and free it again), which matters at 1000 processes per scan.
fn ns_inode(pid: u32, ns: &str) -> Option<ContainerKey> {
    let target = fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()?;
    parse_ns_link(target.to_str()?, ns)
}

fn parse_ns_link(target: &str, ns: &str) -> Option<ContainerKey> {
    target
        .strip_prefix(ns)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The PIDs under /proc (empty if /proc cannot be read).
pub fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
}

fn netns_of_pid(pid: u32) -> Option<u32> {
    ns_inode(pid, "net").map(|ino| ino as u32)
}

/// Identity of the container whose key `pid` has; the host's own key is named `host`.
fn identity_of(
    mode: KeyMode,
    pid: u32,
    key: ContainerKey,
    host_key: Option<ContainerKey>,
) -> Identity {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let host = Some(key) == host_key;
    let owner = (!host).then(|| layout::owner_of(&cgroups)).flatten();
    identity_from(mode, pid, host, &cgroups, owner)
}

/// The identity of `pid`, whose `/proc/PID/cgroup` is `cgroups` and whose container is `owner`.
fn identity_from(
    mode: KeyMode,
    pid: u32,
    host: bool,
    cgroups: &str,
    owner: Option<Owner>,
) -> Identity {
    let cgroup = if host {
        HOST_CGROUP.into()
    } else {
        cgroup_path(cgroups, mode.resolve() == KeyMode::Cgroup)
            .unwrap_or_default()
            .into()
    };
    Identity {
        owner,
        cgroup,
        netns: netns_of_pid(pid),
    }
}

/// Scans /proc once and resolves every key in `wanted` that some process still has.
pub fn resolve(mode: KeyMode, wanted: &[ContainerKey]) -> HashMap<ContainerKey, Identity> {
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    // Sentinel runs in the host's namespaces: its own key is the host's.
    let host_key = key_of_pid(mode, std::process::id());
    for pid in pids() {
        let Some(key) = key_of_pid(mode, pid) else {
            continue;
        };
        if found.contains_key(&key) || !wanted.contains(&key) {
            continue;
        }
        found.insert(key, identity_of(mode, pid, key, host_key));
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

/// Scans /proc once and finds, for each network namespace in `wanted`, a process in it: its
/// container key and identity. For traffic of containers that had no scheduler activity.
pub fn resolve_by_netns(mode: KeyMode, wanted: &[u32]) -> HashMap<u32, (ContainerKey, Identity)> {
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let host_key = key_of_pid(mode, std::process::id());
    for pid in pids() {
        let Some(netns) = netns_of_pid(pid) else {
            continue;
        };
        if found.contains_key(&netns) || !wanted.contains(&netns) {
            continue;
        }
        let Some(key) = key_of_pid(mode, pid) else {
            continue;
        };
        found.insert(netns, (key, identity_of(mode, pid, key, host_key)));
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

/// When a process was first seen with its key, and when its verdict (container or not, from
/// its cgroup) was last read. See [`keeps_verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub pid: u32,
    pub since: Instant,
    pub read: Instant,
}

/// A verdict read this soon after its process was first seen with the key is read again: a
/// runtime puts a container's first process into the container's cgroup just after giving
/// it its namespaces (runc: clone, then the cgroup), so a scan in between finds the runtime's
/// cgroup.
pub const SETTLE: Duration = Duration::from_secs(5);

/// A verdict this old is read again, whoever has the key: a process moved to another cgroup
/// long after it started (which changes no key where the key is the mount namespace; where it
/// is the cgroup id, the key changes and the move is seen at once) is seen within this. At
/// 1000 containers, reading every cgroup again costs about 29 ms: 0.25 ms a second.
pub const REREAD_AFTER: Duration = Duration::from_secs(120);

/// Whether the last scan's verdict on a key that `pid` has again still holds.
fn keeps_verdict(last: &Seen, pid: u32, now: Instant) -> bool {
    last.pid == pid
        && last.read.duration_since(last.since) >= SETTLE
        && now.duration_since(last.read) < REREAD_AFTER
}

/// Every key of a live process (`live`, the host's too, each with the process it was found
/// by: the first in PID order), and those that belong to a container (a recognised cgroup
/// layout), each with the identity of one of its processes. For the roster, off the drain.
/// `processes` are (PID, key) pairs in PID order, from the kernel's task iterator or from
/// [`proc_processes`].
///
/// With `previous` (the last scan), a key found by the same process as last time keeps last
/// time's verdict without reading that process's cgroup again (most of a scan's cost at 1000
/// keys), unless the verdict is young or old ([`keeps_verdict`]); a recycled key is found by
/// another process and read afresh.
pub fn containers(
    mode: KeyMode,
    processes: impl Iterator<Item = (u32, ContainerKey)>,
    previous: Option<&super::roster::Roster>,
) -> (HashMap<ContainerKey, Seen>, HashMap<ContainerKey, Identity>) {
    scan(
        mode,
        processes,
        previous,
        key_of_pid(mode, std::process::id()),
        Instant::now(),
    )
}

/// Every process under /proc with its key, in /proc's (PID) order: a readlink or a cgroup read
/// per process.
pub fn proc_processes(mode: KeyMode) -> impl Iterator<Item = (u32, ContainerKey)> {
    pids().filter_map(move |pid| Some((pid, key_of_pid(mode, pid)?)))
}

/// [`containers`], with the host's key and the time given (unit tests treat the host's like
/// any other).
fn scan(
    mode: KeyMode,
    processes: impl Iterator<Item = (u32, ContainerKey)>,
    previous: Option<&super::roster::Roster>,
    host_key: Option<ContainerKey>,
    now: Instant,
) -> (HashMap<ContainerKey, Seen>, HashMap<ContainerKey, Identity>) {
    let mut live = HashMap::new();
    let mut found = HashMap::new();
    for (pid, key) in processes {
        if live.contains_key(&key) {
            continue;
        }
        let last = previous.and_then(|p| Some((p.live.get(&key)?, p)));
        let since = match last {
            Some((seen, _)) if seen.pid == pid => seen.since,
            _ => now,
        };
        if let Some((seen, last)) = last
            && keeps_verdict(seen, pid, now)
        {
            live.insert(key, *seen);
            if let Some(identity) = last.containers.get(&key) {
                found.insert(key, identity.clone());
            }
            continue;
        }
        live.insert(
            key,
            Seen {
                pid,
                since,
                read: now,
            },
        );
        if Some(key) == host_key {
            continue;
        }
        // Most keys of a busy host are no container's: their cgroup says so, and the rest of
        // the identity (the network namespace, a stat) is read only for containers.
        let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if let Some(owner) = layout::owner_of(&cgroups) {
            found.insert(key, identity_from(mode, pid, false, &cgroups, Some(owner)));
        }
    }
    (live, found)
}

/// Keys some live process has right now (for retiring gone containers' kernel entries when no
/// roster scans).
pub fn live_keys(mode: KeyMode) -> std::collections::HashSet<ContainerKey> {
    pids().filter_map(|pid| key_of_pid(mode, pid)).collect()
}

/// The v2 path (`0::/...`) when `v2`, else the v1 path of `name=systemd` or `cpu`.
pub fn cgroup_path(text: &str, v2: bool) -> Option<String> {
    let mut fallback = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if v2 && controllers.is_empty() {
            return Some(path.to_string());
        }
        if !v2 && (controllers == "name=systemd" || controllers.split(',').any(|c| c == "cpu")) {
            if controllers == "name=systemd" && path != "/" {
                return Some(path.to_string());
            }
            fallback.get_or_insert_with(|| path.to_string());
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_cgroup_path_for_the_mode() {
        let text = "9:name=systemd:/system.slice/cron.service\n1:cpu:/\n0::/unified/x\n";
        assert_eq!(cgroup_path(text, true).as_deref(), Some("/unified/x"));
        assert_eq!(
            cgroup_path(text, false).as_deref(),
            Some("/system.slice/cron.service")
        );
        assert_eq!(cgroup_path("1:cpu:/a\n", false).as_deref(), Some("/a"));
    }

    /// The link's name gives the inode a stat of the link gives (the kernel side's key).
    #[test]
    fn a_namespace_links_name_is_its_inode() {
        let me = std::process::id();
        for ns in ["mnt", "net"] {
            let stat = fs::metadata(format!("/proc/{me}/ns/{ns}"))
                .expect("stat own namespace")
                .ino();
            assert_eq!(ns_inode(me, ns), Some(stat), "{ns}");
        }
        assert_eq!(parse_ns_link("mnt:[4026531841]", "mnt"), Some(4026531841));
        for bad in ["net:[1]", "mnt:[]", "mnt:[12", "mnt:[x]", "mnt[1]", ""] {
            assert_eq!(parse_ns_link(bad, "mnt"), None, "{bad:?}");
        }
    }

    #[test]
    fn resolves_this_process() {
        let mode = KeyMode::Mntns;
        let me = key_of_pid(mode, std::process::id()).expect("own key");
        let ids = resolve(mode, &[me]);
        assert!(ids[&me].netns.is_some());
        assert!(live_keys(mode).contains(&me));
        let (live, _) = containers(mode, proc_processes(mode), None);
        assert!(
            live.contains_key(&me),
            "the roster's live keys include the host's"
        );
    }

    /// A key found by the same process as in the last scan keeps that scan's verdict (its
    /// cgroup is not read again) once the verdict has settled, until it is old; found by
    /// another process, or young, or old, it is read afresh.
    #[test]
    fn a_key_found_by_the_same_process_keeps_a_settled_verdict() {
        let mode = KeyMode::Mntns;
        let pid = std::process::id();
        let me = key_of_pid(mode, pid).expect("own key");
        let processes = || std::iter::once((pid, me));
        // This process's key as if it were a container's (no host key).
        let marked = Identity {
            owner: layout::parse(&format!("/docker/{}", "f".repeat(64))),
            cgroup: "marked".into(),
            netns: None,
        };
        assert!(marked.owner.is_some());
        let t0 = Instant::now();
        let now = t0 + SETTLE * 4;
        let last_with = |seen: Seen| {
            let mut last = super::super::roster::Roster::empty();
            last.live = HashMap::from([(me, seen)]);
            last.containers = HashMap::from([(me, marked.clone())]);
            last
        };
        let settled = Seen {
            pid,
            since: t0,
            read: t0 + SETTLE,
        };
        let last = last_with(settled);
        let (live, found) = scan(mode, processes(), Some(&last), None, now);
        assert_eq!(found.get(&me), Some(&marked), "kept without a read");
        assert_eq!(live[&me], settled, "the verdict's times are kept too");

        let last = last_with(Seen {
            pid: u32::MAX,
            ..settled
        });
        let (live, found) = scan(mode, processes(), Some(&last), None, now);
        assert_ne!(
            found.get(&me),
            Some(&marked),
            "another process: read afresh"
        );
        assert_eq!(live[&me].since, now, "a new process is seen from now");

        let young = Seen {
            pid,
            since: t0,
            read: t0 + SETTLE / 2,
        };
        let (live, found) = scan(mode, processes(), Some(&last_with(young)), None, now);
        assert_ne!(found.get(&me), Some(&marked), "young verdict: read again");
        assert_eq!(
            live[&me],
            Seen {
                pid,
                since: t0,
                read: now
            },
            "read now, first seen as before"
        );

        let old = t0 + SETTLE + REREAD_AFTER;
        let (_, found) = scan(mode, processes(), Some(&last_with(settled)), None, old);
        assert_ne!(found.get(&me), Some(&marked), "old verdict: read again");
    }
}
