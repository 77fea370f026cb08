//! Who is behind a kernel container key, from procfs alone: a process with that key, its
//! cgroup path (which names the runtime and the container on cgroup v1, hybrid and v2 hosts,
//! see `layout.rs`) and its network namespace. Works without any runtime's API, so hosts
//! without one still get per-cgroup accounting.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::Path};

use sentinel_common::ContainerKey;

use super::layout::{self, Owner};
use crate::collect::loader::KeyMode;

/// The `cgroup` of the host's own identity (a real cgroup path starts with `/`).
pub const HOST_CGROUP: &str = "host";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The container the cgroup path names (runtime, id, pod), if any.
    pub owner: Option<Owner>,
    /// cgroup path (v2 path, or the v1 `name=systemd`/`cpu` path), or `host`.
    pub cgroup: String,
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
fn pids() -> impl Iterator<Item = u32> {
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
        HOST_CGROUP.to_string()
    } else {
        cgroup_path(cgroups, mode.resolve() == KeyMode::Cgroup).unwrap_or_default()
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

/// Scans /proc once: every key of a live process (`live`, the host's too, each with the
/// process it was found by: the first in /proc's order), and those that belong to a container
/// (a recognised cgroup layout), each with the identity of one of its processes. For the
/// roster, off the drain.
///
/// With `previous` (the last scan), a key found by the same process as
/// last time keeps last time's verdict without reading that process's cgroup again (most of a
/// scan's cost at 1000 keys); a recycled key is found by another process and read afresh.
pub fn containers(
    mode: KeyMode,
    previous: Option<&super::roster::Roster>,
) -> (HashMap<ContainerKey, u32>, HashMap<ContainerKey, Identity>) {
    scan(mode, previous, key_of_pid(mode, std::process::id()))
}

/// [`containers`], with the host's key given (unit tests treat the host's like any other).
fn scan(
    mode: KeyMode,
    previous: Option<&super::roster::Roster>,
    host_key: Option<ContainerKey>,
) -> (HashMap<ContainerKey, u32>, HashMap<ContainerKey, Identity>) {
    let mut live = HashMap::new();
    let mut found = HashMap::new();
    for pid in pids() {
        let Some(key) = key_of_pid(mode, pid) else {
            continue;
        };
        if live.contains_key(&key) {
            continue;
        }
        live.insert(key, pid);
        if Some(key) == host_key {
            continue;
        }
        if let Some(last) = previous
            && last.live.get(&key) == Some(&pid)
        {
            if let Some(identity) = last.containers.get(&key) {
                found.insert(key, identity.clone());
            }
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
        let (live, _) = containers(mode, None);
        assert!(
            live.contains_key(&me),
            "the roster's live keys include the host's"
        );
    }

    /// A key found by the same process as in the last scan keeps that scan's verdict (its
    /// cgroup is not read again); found by another process, it is read afresh.
    #[test]
    fn a_key_found_by_the_same_process_keeps_the_last_verdict() {
        let mode = KeyMode::Mntns;
        let me = key_of_pid(mode, std::process::id()).expect("own key");
        // This process's key as if it were a container's (no host key).
        let (live, _) = scan(mode, None, None);
        let by = live[&me];
        let marked = Identity {
            owner: layout::parse(&format!("/docker/{}", "f".repeat(64))),
            cgroup: "marked".into(),
            netns: None,
        };
        assert!(marked.owner.is_some());
        let mut last = super::super::roster::Roster::empty();
        last.live = HashMap::from([(me, by)]);
        last.containers = HashMap::from([(me, marked.clone())]);
        let (_, found) = scan(mode, Some(&last), None);
        assert_eq!(found.get(&me), Some(&marked), "kept without a read");
        last.live = HashMap::from([(me, u32::MAX)]);
        let (_, found) = scan(mode, Some(&last), None);
        assert_ne!(
            found.get(&me),
            Some(&marked),
            "another process: read afresh"
        );
    }
}
