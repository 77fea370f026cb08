//! Which network namespaces and host interfaces still exist, so the drain can retire the
//! per-interface entries of gone ones (once they have been drained and stayed idle).

use std::{collections::HashSet, fs, os::unix::fs::MetadataExt};

/// Inodes of every network namespace held by a process or by a bind mount in the usual places
/// (`ip netns`, Docker). A namespace held only by some other file descriptor or mount is not
/// seen: its entry is retired only after an idle interval, and recreated by its next packet.
pub fn live_namespaces() -> HashSet<u32> {
    let mut live = HashSet::new();
    if let Ok(procs) = fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let name = entry.file_name();
            if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
                continue;
            }
            if let Ok(meta) = fs::metadata(entry.path().join("ns/net")) {
                live.insert(meta.ino() as u32);
            }
        }
    }
    for dir in ["/run/netns", "/var/run/docker/netns", "/run/docker/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if let Ok(meta) = fs::metadata(entry.path()) {
                    live.insert(meta.ino() as u32);
                }
            }
        }
    }
    live
}

/// This process's own network namespace (the one whose interfaces it sees in /sys).
pub fn own_namespace() -> Option<u32> {
    namespace_of("self")
}

/// PID 1's network namespace, if it can be read.
fn pid1_namespace() -> Option<u32> {
    namespace_of("1")
}

fn namespace_of(pid: &str) -> Option<u32> {
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino() as u32)
}

/// The host's network namespace: PID 1's. Sentinel shares the host's PID namespace (it runs
/// as a service, or with `--pid=host` / `hostPID`) but not always its network: the shipped
/// DaemonSet's pod has a namespace of its own, and taking that for the host's would give every
/// `hostNetwork` pod the node's whole traffic as its own. This process's own namespace when
/// PID 1's cannot be read (a sandbox that hides it, or no host PID namespace: then PID 1 is
/// in sentinel's own container, and its namespace is the best guess there is).
pub fn host_namespace() -> Option<u32> {
    let pid1 = pid1_namespace();
    let own = own_namespace();
    if pid1.is_some() && pid1 != own {
        tracing::info!(
            host = pid1,
            own,
            "sentinel has a network namespace of its own: the host's is PID 1's"
        );
    }
    host_namespace_of(pid1, own)
}

/// PID 1's namespace, else this process's own.
pub fn host_namespace_of(pid1: Option<u32>, own: Option<u32>) -> Option<u32> {
    pid1.or(own)
}

/// Interface indexes present in this process's namespace.
pub fn own_ifindexes() -> HashSet<u32> {
    let mut set = HashSet::new();
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            if let Ok(text) = fs::read_to_string(entry.path().join("ifindex"))
                && let Ok(idx) = text.trim().parse()
            {
                set.insert(idx);
            }
        }
    }
    set
}

/// The namespaces that outlast any of their entries: this process's own and PID 1's (the
/// host's). Read quietly: `host_namespace` logs.
pub fn lasting_namespaces() -> [Option<u32>; 2] {
    [own_namespace(), pid1_namespace()]
}

/// Which of `candidates` (namespaces of idle entries) are gone. `live` (`live_namespaces`: a
/// stat per process) is called only when a candidate may be gone: the lasting namespaces'
/// entries are idle whenever the host is quiet, and scanning for them every few intervals was
/// a tenth of the daemon's CPU at 1000 containers.
pub fn gone_namespaces(
    candidates: impl IntoIterator<Item = u32>,
    lasting: &[Option<u32>],
    live: impl FnOnce() -> HashSet<u32>,
) -> HashSet<u32> {
    let may_be_gone: HashSet<u32> = candidates
        .into_iter()
        .filter(|n| !lasting.contains(&Some(*n)))
        .collect();
    if may_be_gone.is_empty() {
        return may_be_gone;
    }
    let live = live();
    may_be_gone
        .into_iter()
        .filter(|n| !live.contains(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_entries_of_lasting_namespaces_need_no_scan() {
        let host = 4026531840;
        let lasting = [Some(host), Some(host)];
        let gone = gone_namespaces([host, host], &lasting, || panic!("/proc scanned"));
        assert!(gone.is_empty());
    }

    #[test]
    fn an_idle_entry_of_another_namespace_is_gone_unless_live() {
        let (host, alive, dead) = (4026531840, 4026532001, 4026532002);
        let lasting = [Some(host), None];
        let mut scans = 0;
        let gone = gone_namespaces([host, alive, dead], &lasting, || {
            scans += 1;
            HashSet::from([host, alive])
        });
        assert_eq!(gone, HashSet::from([dead]));
        assert_eq!(scans, 1);
    }
}
