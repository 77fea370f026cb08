//! Which container runtime owns a cgroup, from the cgroup path alone (the samples in the tests
//! are copied from real hosts and the runtimes' sources). The path names the runtime and the
//! container id for Docker (cgroupfs `/docker/<id>`, systemd `docker-<id>.scope`), podman
//! (`libpod-<id>`, with or without `.scope`), containerd under Kubernetes' systemd driver
//! (`cri-containerd-<id>.scope`) and CRI-O (`crio-<id>`, with or without `.scope`). Kubernetes'
//! cgroupfs driver (`kubepods/<qos>/pod<uid>/<id>`) names the pod and the container but not the
//! runtime, and `ctr` puts a container at `/<namespace>/<id>`, which looks like any two-level
//! path: a runtime's own list settles those (a `candidate`). The same path appears on cgroup
//! v1 (every controller, `name=systemd` included), hybrid and v2 hosts.

use serde::{Deserialize, Serialize};

/// A container runtime sentinel can name containers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    Crio,
}

impl Runtime {
    pub const ALL: [Runtime; 4] = [
        Runtime::Docker,
        Runtime::Podman,
        Runtime::Containerd,
        Runtime::Crio,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The container a cgroup path belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// The runtime the path names; `None` when only a runtime's list can tell (Kubernetes'
    /// cgroupfs layout, `ctr`'s `/<namespace>/<id>`).
    pub runtime: Option<Runtime>,
    /// The runtime's container id (64 hex for every runtime's own ids; `ctr` takes any name).
    pub id: String,
    /// Kubernetes pod UID (dashes, as the API shows it), from `pod<uid>` or a systemd
    /// `kubepods-...-pod<uid>.slice`.
    pub pod_uid: Option<String>,
    /// The first path segment of a `/<namespace>/<id>` path: containerd's namespace if a
    /// runtime confirms the id.
    pub scope: Option<String>,
    /// Only a runtime's list can confirm this is a container (`/<namespace>/<id>`): such a
    /// cgroup is never listed as a container on the path's word alone.
    pub candidate: bool,
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `prefix<64 hex>` or `prefix<64 hex>.scope`.
fn prefixed_id<'a>(segment: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = segment.strip_prefix(prefix)?;
    let id = rest.strip_suffix(".scope").unwrap_or(rest);
    is_hex_id(id).then_some(id)
}

/// Pod UID from `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd, which cannot have dashes in a unit name component).
fn pod_uid(segment: &str) -> Option<String> {
    let uid = if let Some(slice) = segment.strip_suffix(".slice") {
        slice.rsplit_once("-pod")?.1.replace('_', "-")
    } else {
        segment.strip_prefix("pod")?.to_string()
    };
    let ok = uid.len() >= 32
        && uid.len() <= 36
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// A systemd unit or slice name (`.slice`, `.service`, `.scope`, `.mount`, ...): never a bare
/// container id.
fn is_unit(segment: &str) -> bool {
    [
        ".slice", ".service", ".scope", ".mount", ".socket", ".swap", ".target",
    ]
    .iter()
    .any(|s| segment.ends_with(s))
}

/// The container that owns a cgroup at `path` (a `/proc/PID/cgroup` path), if any.
pub fn parse(path: &str) -> Option<Owner> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let in_kubepods = segments.iter().any(|s| s.starts_with("kubepods"));
    let pod = segments.iter().rev().find_map(|s| pod_uid(s));
    let pod = pod.filter(|_| in_kubepods);
    // The innermost container wins (a cgroup nested inside a container's, e.g. systemd's
    // `init.scope` in a systemd container, still belongs to it).
    for (i, seg) in segments.iter().enumerate().rev() {
        let found = if seg.starts_with("libpod-conmon-") || seg.starts_with("crio-conmon-") {
            // The runtimes' monitor processes run beside the container, on the host's behalf.
            return None;
        } else if let Some(id) = prefixed_id(seg, "docker-") {
            Some((Some(Runtime::Docker), id))
        } else if let Some(id) = prefixed_id(seg, "libpod-") {
            Some((Some(Runtime::Podman), id))
        } else if let Some(id) = prefixed_id(seg, "cri-containerd-") {
            Some((Some(Runtime::Containerd), id))
        } else if let Some(id) = prefixed_id(seg, "crio-") {
            Some((Some(Runtime::Crio), id))
        } else if is_hex_id(seg) && i > 0 && segments[i - 1] == "docker" {
            Some((Some(Runtime::Docker), *seg))
        } else if i > 0 && pod_uid(segments[i - 1]).is_some() && in_kubepods && !is_unit(seg) {
            // Kubernetes' cgroupfs driver: `kubepods/<qos>/pod<uid>/<container id>`.
            Some((None, *seg))
        } else {
            None
        };
        if let Some((runtime, id)) = found {
            return Some(Owner {
                runtime,
                id: id.to_string(),
                pod_uid: pod,
                scope: None,
                candidate: false,
            });
        }
    }
    // `ctr run` and other plain containerd clients: `/<namespace>/<id>`.
    if let [scope, id] = segments[..]
        && !is_unit(scope)
        && !is_unit(id)
        && !scope.starts_with("kubepods")
    {
        return Some(Owner {
            runtime: None,
            id: id.to_string(),
            pod_uid: None,
            scope: Some(scope.to_string()),
            candidate: true,
        });
    }
    None
}

/// The owner named by a whole `/proc/PID/cgroup` file: the v2 line, then `name=systemd`,
/// then `cpu`, then any other controller (a v1 host may move a task in one controller only).
/// A `candidate` owner is taken only from the first three: a single controller's odd path is
/// no evidence.
pub fn owner_of(cgroups: &str) -> Option<Owner> {
    let mut lines: Vec<(u8, &str)> = cgroups
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = if controllers.is_empty() {
                0
            } else if controllers == "name=systemd" {
                1
            } else if controllers.split(',').any(|c| c == "cpu") {
                2
            } else {
                3
            };
            (path != "/").then_some((rank, path))
        })
        .collect();
    lines.sort_by_key(|(rank, _)| *rank);
    lines
        .iter()
        .filter_map(|(rank, path)| parse(path).filter(|o| !o.candidate || *rank < 3))
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f3d755988785b343fbda30f0d03263e3f3d755988785b343fbda30f0d03263e";
    const POD: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn owner(path: &str) -> (Option<Runtime>, String, Option<String>) {
        let o = parse(path).unwrap_or_else(|| panic!("not recognised: {path}"));
        assert!(!o.candidate, "{path}");
        (o.runtime, o.id, o.pod_uid)
    }

    #[test]
    fn docker_cgroupfs_and_systemd_drivers() {
        // cgroupfs driver, v1 controllers and v2 alike (this project's CI host).
        assert_eq!(
            owner(&format!("/docker/{ID}")),
            (Some(Runtime::Docker), ID.into(), None)
        );
        // systemd driver.
        assert_eq!(
            owner(&format!("/system.slice/docker-{ID}.scope")),
            (Some(Runtime::Docker), ID.into(), None)
        );
        // A systemd container's own units nest under the container's cgroup.
        assert_eq!(
            owner(&format!("/system.slice/docker-{ID}.scope/init.scope")).1,
            ID
        );
        assert_eq!(
            owner(&format!("/docker/{ID}/system.slice/cron.service")).1,
            ID
        );
    }

    #[test]
    fn podman_cgroupfs_systemd_rootless_and_its_monitor() {
        // Rootful, cgroupfs manager (seen on this host: podman 4.3.1, cgroup v1).
        assert_eq!(
            owner(&format!("/libpod_parent/libpod-{ID}")),
            (Some(Runtime::Podman), ID.into(), None)
        );
        // Rootful, systemd manager; and rootless under the user's manager.
        assert_eq!(
            owner(&format!("/machine.slice/libpod-{ID}.scope")).0,
            Some(Runtime::Podman)
        );
        assert_eq!(
            owner(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            ))
            .1,
            ID
        );
        // conmon watches the container from the host side: not the container.
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn kubernetes_systemd_driver_containerd_and_crio() {
        let uid = POD.replace('-', "_");
        let base =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice");
        assert_eq!(
            owner(&format!("{base}/cri-containerd-{ID}.scope")),
            (Some(Runtime::Containerd), ID.into(), Some(POD.into()))
        );
        assert_eq!(
            owner(&format!("{base}/crio-{ID}.scope")),
            (Some(Runtime::Crio), ID.into(), Some(POD.into()))
        );
        // Guaranteed pods sit right under kubepods.slice.
        assert_eq!(
            owner(&format!(
                "/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope"
            ))
            .2
            .as_deref(),
            Some(POD)
        );
        // Docker as the kubelet's runtime (dockershim, cri-dockerd).
        assert_eq!(
            owner(&format!("{base}/docker-{ID}.scope")).0,
            Some(Runtime::Docker)
        );
        assert_eq!(parse(&format!("{base}/crio-conmon-{ID}.scope")), None);
        // The pod's own slice is no container.
        assert_eq!(parse(&base), None);
    }

    #[test]
    fn kubernetes_cgroupfs_driver_names_pod_and_container_not_the_runtime() {
        for qos in ["besteffort/", "burstable/", ""] {
            assert_eq!(
                owner(&format!("/kubepods/{qos}pod{POD}/{ID}")),
                (None, ID.into(), Some(POD.into())),
                "{qos}"
            );
        }
        // CRI-O's cgroupfs form keeps its prefix.
        assert_eq!(
            owner(&format!("/kubepods/besteffort/pod{POD}/crio-{ID}")),
            (Some(Runtime::Crio), ID.into(), Some(POD.into()))
        );
        // `ctr run --cgroup` with a kubelet-style path (the integration test's form).
        assert_eq!(
            owner(&format!("/kubepods/besteffort/pod{POD}/web-1")),
            (None, "web-1".into(), Some(POD.into()))
        );
        assert_eq!(parse(&format!("/kubepods/besteffort/pod{POD}")), None);
        assert_eq!(parse("/kubepods/besteffort"), None);
    }

    #[test]
    fn ctr_namespace_paths_are_only_candidates() {
        // What `ctr -n k8s.io run ... bars-k8s` gives (seen on this host).
        let o = parse("/k8s.io/bars-k8s").unwrap();
        assert!(o.candidate);
        assert_eq!((o.runtime, o.id.as_str()), (None, "bars-k8s"));
        assert_eq!(o.scope.as_deref(), Some("k8s.io"));
        // Systemd units are never candidates; nor is the root or a one-level path.
        for path in [
            "/system.slice/cron.service",
            "/user.slice/user-1000.slice",
            "/",
            "/init.scope",
            "/system.slice/docker.service",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn a_whole_cgroup_file_on_v1_hybrid_and_v2_hosts() {
        // v1 (and hybrid: the unified line at `/`), cgroupfs driver.
        let v1 = format!(
            "12:pids:/docker/{ID}\n9:name=systemd:/docker/{ID}\n1:cpu,cpuacct:/docker/{ID}\n0::/\n"
        );
        assert_eq!(owner_of(&v1).unwrap().id, ID);
        // Hybrid with the container in the unified hierarchy too.
        let hybrid = format!(
            "9:name=systemd:/system.slice/docker-{ID}.scope\n0::/system.slice/docker-{ID}.scope\n"
        );
        assert_eq!(owner_of(&hybrid).unwrap().runtime, Some(Runtime::Docker));
        // v2 only.
        assert_eq!(
            owner_of(&format!("0::/machine.slice/libpod-{ID}.scope\n"))
                .unwrap()
                .runtime,
            Some(Runtime::Podman)
        );
        // A host process in a sandbox's memory cgroup (seen on this host): no container,
        // and a single controller's two-level path is not even a candidate.
        let host = "9:name=systemd:/\n4:memory:/process_api/069ea7929bce85d6512ef2b113132df0\n1:cpu:/\n0::/\n";
        assert_eq!(owner_of(host), None);
        assert_eq!(owner_of("0::/system.slice/ssh.service\n"), None);
        // A task moved in one v1 controller only is still found by its runtime's prefix.
        assert_eq!(
            owner_of(&format!("9:name=systemd:/\n4:memory:/docker/{ID}\n"))
                .unwrap()
                .id,
            ID
        );
        // containerd's `ctr`, v1: a candidate from the name=systemd line.
        let ctr = "9:name=systemd:/k8s.io/bars-k8s\n1:cpu:/k8s.io/bars-k8s\n0::/\n";
        assert!(owner_of(ctr).unwrap().candidate);
    }

    #[test]
    fn hostile_paths_never_panic() {
        for path in [
            "",
            "//",
            "/pod",
            "/kubepods/pod/",
            "/kubepods.slice/kubepods-pod.slice/x",
            "/docker/",
            "/\u{1b}[2J/\u{1b}[2J",
            &"/a".repeat(10_000),
        ] {
            let _ = parse(path);
            let _ = owner_of(path);
        }
        // A 63-digit id is no Docker id: at most a candidate a runtime would have to confirm.
        assert!(parse(&format!("/docker/{}", &ID[..63])).is_some_and(|o| o.candidate));
    }
}
