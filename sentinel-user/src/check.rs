//! `sentinel check`: a preflight of the host. Every item is read-only except that nothing is
//! mounted or loaded: the point is to tell an SRE, before deploying, whether `sentinel run`
//! will work here and what to change if not. One line per item:
//! `ok|warn|fail  <item>: <detail> [— what to do]`. `fail` means sentinel cannot run.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{
    collect::{
        btf::Btf,
        loader::{self, HOOKS},
        offsets::{Offsets, VMLINUX_BTF},
        tasks::TaskIterator,
        tracefs,
    },
    containers::docker,
    privilege::{self, Cap, has as has_cap},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub status: Status,
    pub item: String,
    pub detail: String,
    /// What to do about a warn/fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Item {
    fn new(status: Status, item: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            item: item.into(),
            detail: detail.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<4}  {}: {}",
            self.status.as_str(),
            self.item,
            self.detail
        );
        if let Some(h) = &self.hint {
            s.push_str(" — ");
            s.push_str(h);
        }
        s
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// False iff any item failed: sentinel could not run on this host.
    pub ok: bool,
    pub items: Vec<Item>,
}

/// Where the checks look. Defaults are the real host paths; tests point them elsewhere.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub btf_path: PathBuf,
    /// The Docker connection `sentinel run` would use (`[docker] host` of the config).
    pub docker: docker::Settings,
    pub docker_timeout: Duration,
}

impl CheckOptions {
    /// The checks of the host for this configuration.
    pub fn for_config(cfg: &crate::config::Config) -> Self {
        Self {
            docker: docker::Settings::from_config(cfg),
            ..Self::default()
        }
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            btf_path: PathBuf::from(VMLINUX_BTF),
            docker: docker::Settings::default(),
            docker_timeout: Duration::from_secs(2),
        }
    }
}

pub fn run(opts: &CheckOptions) -> Report {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let version = parse_kernel_version(&release);
    let caps = privilege::effective().unwrap_or(0);
    let mut items = vec![
        check_object(),
        check_kernel(&release, version),
        check_btf(&opts.btf_path),
        check_tracefs(caps),
    ];
    items.extend(check_tracepoints(&opts.btf_path));
    items.push(check_privileges(caps));
    items.push(check_memlock(version, caps));
    items.push(check_docker(&opts.docker, opts.docker_timeout));
    items.push(check_podman(&opts.docker, opts.docker_timeout));
    items.push(check_containerd());
    items.push(check_cgroup());
    items.push(check_lockdown());
    items.push(check_offsets(&opts.btf_path));
    items.push(check_runq_source(&opts.btf_path));
    items.push(check_roster(&opts.btf_path));
    Report {
        ok: items.iter().all(|i| i.status != Status::Fail),
        items,
    }
}

fn check_object() -> Item {
    if loader::ebpf_object_embedded() {
        Item::new(Status::Ok, "ebpf object", "embedded in this binary")
    } else {
        Item::new(
            Status::Fail,
            "ebpf object",
            "this binary was built without its eBPF object",
        )
        .hint("run `cargo xtask build-ebpf --release` and rebuild sentinel")
    }
}

/// (major, minor) of a `uname -r` string such as `6.1.0-18-amd64`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_kernel(release: &str, version: Option<(u32, u32)>) -> Item {
    match version {
        // BTF tracepoints (tp_btf) exist since 5.5; 5.8 brought CAP_BPF/CAP_PERFMON and the
        // ring buffer the kernel-side logger uses.
        Some(v) if v >= (5, 8) => Item::new(Status::Ok, "kernel", format!("Linux {release}")),
        Some(_) => Item::new(
            Status::Fail,
            "kernel",
            format!("Linux {release} is older than 5.8"),
        )
        .hint("upgrade to a 5.8+ kernel (every current distribution kernel qualifies)"),
        None => Item::new(
            Status::Warn,
            "kernel",
            format!("cannot parse the kernel release {release:?}"),
        ),
    }
}

fn check_btf(path: &Path) -> Item {
    match std::fs::metadata(path) {
        Ok(m) => Item::new(
            Status::Ok,
            "btf",
            format!("{} ({} KiB)", path.display(), m.len() / 1024),
        ),
        Err(e) => Item::new(Status::Fail, "btf", format!("{}: {e}", path.display()))
            .hint("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
    }
}

fn check_tracefs(caps: u64) -> Item {
    if let Some(root) = tracefs::find() {
        return Item::new(
            Status::Ok,
            "tracefs",
            format!("mounted at {}", root.display()),
        );
    }
    // Not needed to attach (BTF tracepoints), only for precise diagnostics of missing hooks.
    if has_cap(caps, CAP_SYS_ADMIN) {
        Item::new(
            Status::Warn,
            "tracefs",
            "not mounted; sentinel run mounts it at /sys/kernel/tracing",
        )
    } else {
        Item::new(
            Status::Warn,
            "tracefs",
            "not mounted and not mountable without CAP_SYS_ADMIN; only diagnostics suffer",
        )
        .hint("mount -t tracefs nodev /sys/kernel/tracing")
    }
}

/// One item per hook. A BTF tracepoint needs the `btf_trace_<name>` typedef in the kernel's
/// BTF; tracefs `events/<category>/<name>` is reported alongside when tracefs is mounted.
fn check_tracepoints(btf_path: &Path) -> Vec<Item> {
    let btf = Btf::from_file(btf_path).ok();
    let tracefs = tracefs::find();
    let mut items = Vec::with_capacity(HOOKS.len() + 1);
    let mut present = 0;
    for hook in HOOKS {
        let name = format!("tracepoint {}:{}", hook.category, hook.tracepoint);
        let in_btf = btf.as_ref().map(|b| {
            !b.ids_by_name(&format!("btf_trace_{}", hook.tracepoint))
                .is_empty()
        });
        let in_tracefs = tracefs.as_ref().map(|root| {
            root.join("events")
                .join(hook.category)
                .join(hook.tracepoint)
                .is_dir()
        });
        let where_ = match (in_btf, in_tracefs) {
            (Some(b), Some(t)) => format!(
                "BTF btf_trace_{} {}, tracefs {}",
                hook.tracepoint,
                yes_no(b),
                yes_no(t)
            ),
            (Some(b), None) => format!("BTF btf_trace_{} {}", hook.tracepoint, yes_no(b)),
            (None, Some(t)) => format!("tracefs {} (no BTF to check)", yes_no(t)),
            (None, None) => "cannot tell: neither BTF nor tracefs".to_string(),
        };
        let usable = in_btf.unwrap_or(false);
        if usable {
            present += 1;
            items.push(Item::new(Status::Ok, name, where_));
        } else {
            items.push(Item::new(Status::Warn, name, where_).hint(format!(
                    "sentinel runs without {} (program {} stays detached)",
                    hook.counters()
                        .map(|i| sentinel_common::counter::NAMES[i])
                        .collect::<Vec<_>>()
                        .join(", "),
                    hook.program
                )));
        }
    }
    if present == 0 {
        // The daemon refuses to run when no hook attaches.
        items.push(
            Item::new(
                Status::Fail,
                "tracepoints",
                "none of sentinel's tracepoints is usable",
            )
            .hint("use a kernel with BTF tracepoints (5.5+, CONFIG_DEBUG_INFO_BTF=y)"),
        );
    }
    items
}

fn yes_no(b: bool) -> &'static str {
    if b { "present" } else { "missing" }
}

const CAP_SYS_ADMIN: Cap = Cap::CAP_SYS_ADMIN;
const CAP_SYS_RESOURCE: Cap = Cap::CAP_SYS_RESOURCE;
const CAP_PERFMON: Cap = Cap::CAP_PERFMON;
const CAP_BPF: Cap = Cap::CAP_BPF;

fn check_privileges(caps: u64) -> Item {
    let names: Vec<String> = [CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_RESOURCE]
        .into_iter()
        .filter(|c| has_cap(caps, *c))
        .map(|c| c.to_string())
        .collect();
    let have = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(" ")
    };
    if has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) {
        Item::new(
            Status::Ok,
            "bpf permission",
            format!("effective capabilities: {have}"),
        )
    } else {
        Item::new(
            Status::Fail,
            "bpf permission",
            format!("effective capabilities: {have}"),
        )
        .hint("run as root or with CAP_BPF and CAP_PERFMON (see deploy/sentinel.service)")
    }
}

fn check_memlock(version: Option<(u32, u32)>, caps: u64) -> Item {
    // Since 5.11 BPF memory is charged to the memory cgroup, not RLIMIT_MEMLOCK.
    if version.is_some_and(|v| v >= (5, 11)) {
        return Item::new(
            Status::Ok,
            "memlock limit",
            "not used for BPF memory on Linux 5.11+",
        );
    }
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else {
        return Item::new(Status::Warn, "memlock limit", "cannot read RLIMIT_MEMLOCK");
    };
    let show = |v: u64| {
        if v == nix::libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    let detail = format!("soft {} hard {}", show(soft), show(hard));
    if hard == nix::libc::RLIM_INFINITY || has_cap(caps, CAP_SYS_RESOURCE) {
        Item::new(
            Status::Ok,
            "memlock limit",
            format!("{detail}; sentinel raises it to unlimited at start"),
        )
    } else if hard >= 64 << 20 {
        Item::new(Status::Ok, "memlock limit", detail)
    } else {
        Item::new(
            Status::Warn,
            "memlock limit",
            format!("{detail} (kernel before 5.11)"),
        )
        .hint("give CAP_SYS_RESOURCE or LimitMEMLOCK=infinity (the service unit does)")
    }
}

fn check_docker(settings: &docker::Settings, timeout: Duration) -> Item {
    let item = "docker";
    let endpoint = settings.endpoint();
    let hint = "healing needs the Docker daemon: start it, or set [docker] host in the config";
    match docker::probe_version(settings, timeout) {
        Ok((version, api)) => Item::new(
            Status::Ok,
            item,
            format!("{endpoint} reachable, Docker {version}, API {api}"),
        ),
        // Sentinel collects without Docker; only healing needs it.
        Err(e) => {
            let e = e.to_string();
            let detail = if e.contains(&endpoint) {
                e
            } else {
                format!("{endpoint}: {e}")
            };
            Item::new(Status::Warn, item, crate::sanitize::for_log(&detail)).hint(hint)
        }
    }
}

/// Podman is optional: no socket is fine (its containers are named by id), a socket that does
/// not answer is a warning.
fn check_podman(settings: &docker::Settings, timeout: Duration) -> Item {
    let item = "podman";
    let endpoint = docker::podman_endpoint();
    if docker::unix_socket(&endpoint).is_some_and(|p| !p.exists()) {
        return Item::new(
            Status::Ok,
            item,
            format!("no API socket at {endpoint}: podman containers, if any, are named by id"),
        )
        .hint("start podman.socket (or `podman system service`), or set CONTAINER_HOST");
    }
    let settings = docker::Settings {
        host: Some(endpoint.clone()),
        ..settings.clone()
    };
    match docker::probe_version(&settings, timeout) {
        Ok((version, api)) => Item::new(
            Status::Ok,
            item,
            format!(
                "{endpoint} reachable, Docker-compatible API {api} ({version}): podman containers are named"
            ),
        ),
        Err(e) => Item::new(
            Status::Warn,
            item,
            crate::sanitize::for_log(&format!("{endpoint}: {e}")),
        )
        .hint("podman containers are named by id until its API answers"),
    }
}

/// containerd is optional like podman (every namespace but Docker's `moby` is named).
fn check_containerd() -> Item {
    let item = "containerd";
    let path = crate::containers::containerd::address();
    match crate::containers::containerd::probe(&path) {
        Ok(None) => Item::new(
            Status::Ok,
            item,
            format!(
                "no API socket at {}: containerd containers, if any, are named by id",
                path.display()
            ),
        )
        .hint("set CONTAINERD_ADDRESS if containerd listens elsewhere"),
        Ok(Some(version)) => Item::new(
            Status::Ok,
            item,
            format!(
                "{} reachable, containerd {}: its containers and Kubernetes pods are named",
                path.display(),
                crate::sanitize::for_log(&version)
            ),
        ),
        Err(e) => Item::new(
            Status::Warn,
            item,
            crate::sanitize::for_log(&format!("{}: {e}", path.display())),
        )
        .hint("containerd containers are named by id until its API answers"),
    }
}

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, FsType, TMPFS_MAGIC};

/// The file system type, compared through nix's constants: the raw field is i64 with glibc and
/// u64 with musl (the static build vmtest boots).
fn fs_magic(path: &str) -> Option<FsType> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type())
}

fn check_cgroup() -> Item {
    let item = "cgroup";
    match fs_magic("/sys/fs/cgroup") {
        Some(CGROUP2_SUPER_MAGIC) => Item::new(Status::Ok, item, "v2 (unified)"),
        Some(TMPFS_MAGIC) => {
            let hybrid = fs_magic("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC);
            let detail = if hybrid { "hybrid (v1 + v2)" } else { "v1" };
            Item::new(Status::Warn, item, detail).hint(
                "per-container attribution prefers cgroup v2 (systemd.unified_cgroup_hierarchy=1)",
            )
        }
        Some(other) => Item::new(
            Status::Warn,
            item,
            format!(
                "/sys/fs/cgroup has unexpected filesystem type {:#x}",
                other.0
            ),
        ),
        None => Item::new(Status::Warn, item, "/sys/fs/cgroup is not mounted"),
    }
}

/// The active mode of `/sys/kernel/security/lockdown` ("none [integrity] confidentiality").
pub fn parse_lockdown(text: &str) -> Option<&str> {
    let start = text.find('[')?;
    let end = start + text[start..].find(']')?;
    Some(&text[start + 1..end])
}

fn check_lockdown() -> Item {
    let item = "lockdown";
    match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(text) => match parse_lockdown(&text) {
            Some("none") => Item::new(Status::Ok, item, "none"),
            // integrity forbids writing kernel memory, which sentinel never does.
            Some("integrity") => Item::new(Status::Ok, item, "integrity (BPF reads allowed)"),
            // confidentiality forbids bpf_probe_read_kernel, which every program uses.
            Some("confidentiality") => Item::new(
                Status::Fail,
                item,
                "confidentiality: BPF programs may not read kernel memory",
            )
            .hint("boot with lockdown=integrity or none"),
            _ => Item::new(
                Status::Warn,
                item,
                format!("unknown mode {:?}", text.trim()),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if Path::new("/sys/kernel/security")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some())
            {
                Item::new(Status::Ok, item, "no lockdown LSM in this kernel")
            } else {
                Item::new(Status::Warn, item, "securityfs not mounted, mode unknown")
                    .hint("mount -t securityfs securityfs /sys/kernel/security")
            }
        }
        Err(e) => Item::new(Status::Warn, item, format!("cannot read: {e}")),
    }
}

fn check_offsets(btf_path: &Path) -> Item {
    match Offsets::from_file(btf_path) {
        Ok(o) => Item::new(
            Status::Ok,
            "btf offsets",
            format!(
                "task_struct.pid={} task_struct.state={} sk_buff.len={} sk_buff.dev={} \
                 net_device.ifindex={} net_device.name={} net_device.nd_net={} net.ns.inum={} netns={}",
                o.task_pid,
                o.task_state,
                o.skb_len,
                o.skb_dev,
                o.dev_ifindex,
                o.dev_name,
                o.dev_nd_net,
                o.net_ns_inum,
                o.has_netns
            ),
        ),
        Err(e) => Item::new(Status::Fail, "btf offsets", format!("{e:#}"))
            .hint("report this kernel's version: its BTF lacks a member sentinel reads"),
    }
}

/// Which run-queue source `auto` picks here, and why not the kernel's own stamps when not.
fn check_runq_source(btf_path: &Path) -> Item {
    const ITEM: &str = "run-queue source";
    let Ok(offsets) = Offsets::from_file(btf_path) else {
        return Item::new(
            Status::Warn,
            ITEM,
            "unknown: the kernel's BTF cannot be read",
        );
    };
    match loader::sched_info_missing(&offsets) {
        None => Item::new(
            Status::Ok,
            ITEM,
            "sched_info: waits from the kernel's own enqueue stamps, no map operation per event",
        ),
        Some(why) => Item::new(
            Status::Warn,
            ITEM,
            format!(
                "hash: waits from a wakeup timestamp map (about 2 hash operations per wait); \
                 sched_info unavailable: {why}"
            ),
        ),
    }
}

/// How the container roster will find every process (see `containers::roster`).
fn check_roster(btf_path: &Path) -> Item {
    const ITEM: &str = "container roster";
    let in_btf = Btf::from_file(btf_path)
        .ok()
        .map(|b| !b.ids_by_name("bpf_iter_task").is_empty());
    let why_not = match (in_btf, TaskIterator::unusable_here()) {
        (Some(true), None) => None,
        (Some(false), _) => Some("the kernel has no task iterator (Linux 5.8+)".to_string()),
        (None, _) => Some("the kernel's BTF cannot be read".to_string()),
        (_, Some(why)) => Some(why),
    };
    match why_not {
        None => Item::new(
            Status::Ok,
            ITEM,
            "task iterator: every process and its key in one pass",
        ),
        Some(why) => Item::new(
            Status::Warn,
            ITEM,
            format!(
                "/proc scan: a readlink or cgroup read per process, so scans are rarer on a \
                 busy host; task iterator unavailable: {why}"
            ),
        ),
    }
}

/// Prints the report; returns whether sentinel can run.
pub fn print(report: &Report, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out)?;
    } else {
        for item in &report.items {
            writeln!(out, "{}", item.line())?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("5.10.209"), Some((5, 10)));
        assert_eq!(parse_kernel_version("6.18.0"), Some((6, 18)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert_eq!(check_kernel("4.19.0", Some((4, 19))).status, Status::Fail);
        assert_eq!(check_kernel("5.8.0", Some((5, 8))).status, Status::Ok);
    }

    #[test]
    fn lockdown_modes() {
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n"),
            Some("none")
        );
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]"),
            Some("confidentiality")
        );
        assert_eq!(parse_lockdown("none"), None);
    }

    /// `sentinel check` asks the endpoint the config names, not only `$DOCKER_HOST`.
    #[test]
    fn docker_item_names_the_configured_endpoint() {
        let cfg = crate::config::parse(
            "[docker]\nhost = \"unix:///nonexistent/sentinel-check.sock\"\n",
            "t.toml",
        )
        .unwrap();
        let opts = CheckOptions::for_config(&cfg);
        let item = check_docker(&opts.docker, Duration::from_millis(500));
        assert_eq!(item.status, Status::Warn);
        assert!(
            item.detail
                .contains("unix:///nonexistent/sentinel-check.sock"),
            "{}",
            item.line()
        );
        assert!(!item.line().contains('\n'));
    }

    #[test]
    fn lines_follow_the_format() {
        let item =
            Item::new(Status::Warn, "docker", "/var/run/docker.sock: refused").hint("start it");
        assert_eq!(
            item.line(),
            "warn  docker: /var/run/docker.sock: refused — start it"
        );
        assert_eq!(Item::new(Status::Ok, "btf", "x").line(), "ok    btf: x");
    }
}
