//! Struct member offsets resolved from the running kernel's BTF. Rust eBPF has no CO-RE
//! relocations, so the loader hands these to the programs as read-only globals; the verifier
//! then checks every access made with them against the same BTF.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::btf::{Btf, Kind, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of the members the programs read. See sentinel-common's `global` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub task_pid: u32,
    pub task_state: u32,
    pub skb_len: u32,
    pub skb_dev: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    /// `net_device.nd_net.net` (a `struct net *`).
    pub dev_nd_net: u32,
    /// `net.ns.inum`.
    pub net_ns_inum: u32,
    pub has_netns: bool,
    pub task_tgid: u32,
    pub task_exit_code: u32,
    /// `task->cgroups->dfl_cgrp->kn->id` chain.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task->nsproxy->mnt_ns->ns.inum` chain.
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    /// `sock.__sk_common.skc_net.net`.
    pub sock_net: u32,
    /// What the `sched_info` run-queue source reads, or why this kernel's BTF lacks it.
    pub sched_info: Result<SchedInfoOffsets, String>,
}

/// `task->sched_info.last_queued` and the run queue's clock `task->se.cfs_rq->rq->clock`
/// (the `rq` back pointer exists with CONFIG_FAIR_GROUP_SCHED).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedInfoOffsets {
    pub task_last_queued: u32,
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    pub rq_clock_task: u32,
}

impl SchedInfoOffsets {
    fn from_btf(btf: &Btf) -> Result<Self> {
        Ok(Self {
            task_last_queued: member_offset(btf, "task_struct", &["sched_info", "last_queued"])?,
            task_cfs_rq: member_offset(btf, "task_struct", &["se", "cfs_rq"])
                .context("no CONFIG_FAIR_GROUP_SCHED")?,
            cfs_rq_rq: member_offset(btf, "cfs_rq", &["rq"])
                .context("no CONFIG_FAIR_GROUP_SCHED")?,
            rq_clock: member_offset(btf, "rq", &["clock"])?,
            rq_clock_task: member_offset(btf, "rq", &["clock_task"])?,
        })
    }
}

impl Offsets {
    pub fn from_file(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| {
            format!(
                "cannot read kernel BTF at {}: sentinel needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF (Linux 5.5+; every mainstream distribution kernel has it)",
                path.display()
            )
        })?;
        Self::from_btf(&btf)
    }

    pub fn from_btf(btf: &Btf) -> Result<Self> {
        // Kernels before 5.14 call the task state `state` (a long), later ones `__state`.
        let task_state = member_offset(btf, "task_struct", &["__state"])
            .or_else(|_| member_offset(btf, "task_struct", &["state"]))
            .context("task_struct has neither __state nor state")?;
        // Without CONFIG_NET_NS, possible_net_t has no `net` member: everything is netns 0.
        let (dev_nd_net, net_ns_inum, has_netns) =
            match member_offset(btf, "net_device", &["nd_net", "net"]) {
                Ok(nd_net) => (nd_net, member_offset(btf, "net", &["ns", "inum"])?, true),
                Err(_) => (0, 0, false),
            };
        Ok(Self {
            task_pid: member_offset(btf, "task_struct", &["pid"])?,
            task_state,
            skb_len: member_offset(btf, "sk_buff", &["len"])?,
            skb_dev: member_offset(btf, "sk_buff", &["dev"])?,
            dev_ifindex: member_offset(btf, "net_device", &["ifindex"])?,
            dev_name: member_offset(btf, "net_device", &["name"])?,
            dev_nd_net,
            net_ns_inum,
            has_netns,
            task_tgid: member_offset(btf, "task_struct", &["tgid"])?,
            task_exit_code: member_offset(btf, "task_struct", &["exit_code"])?,
            task_cgroups: member_offset(btf, "task_struct", &["cgroups"])?,
            css_set_dfl_cgrp: member_offset(btf, "css_set", &["dfl_cgrp"])?,
            cgroup_kn: member_offset(btf, "cgroup", &["kn"])?,
            kernfs_node_id: member_offset(btf, "kernfs_node", &["id"])?,
            task_nsproxy: member_offset(btf, "task_struct", &["nsproxy"])?,
            nsproxy_mnt_ns: member_offset(btf, "nsproxy", &["mnt_ns"])?,
            mnt_ns_inum: member_offset(btf, "mnt_namespace", &["ns", "inum"])?,
            sock_net: if has_netns {
                member_offset(btf, "sock", &["__sk_common", "skc_net", "net"])?
            } else {
                0
            },
            sched_info: SchedInfoOffsets::from_btf(btf).map_err(|e| format!("{e:#}")),
        })
    }
}

/// Byte offset of `path` (a chain of member names, each in the previous member's type) inside
/// struct `root`. Anonymous structs and unions are searched through, as C does.
pub fn member_offset(btf: &Btf, root: &str, path: &[&str]) -> Result<u32> {
    let mut ty = find_struct(btf, root)?;
    let mut bits = 0u32;
    for (depth, name) in path.iter().enumerate() {
        let (off, member_ty) = find_member(btf, &ty, name)?.ok_or_else(|| {
            anyhow!(
                "BTF: {root}.{} has no member {name}",
                path[..depth].join(".")
            )
        })?;
        bits = bits
            .checked_add(off)
            .ok_or_else(|| anyhow!("BTF: offset of {root}.{} overflows", path.join(".")))?;
        ty = member_ty;
    }
    if !bits.is_multiple_of(8) {
        bail!(
            "BTF: {root}.{} is a bitfield, which the programs cannot read",
            path.join(".")
        );
    }
    Ok(bits / 8)
}

fn find_struct(btf: &Btf, name: &str) -> Result<Type> {
    let candidates = btf.types_by_name(name)?;
    if candidates.is_empty() {
        bail!("BTF: no type named {name}");
    }
    for ty in candidates {
        if ty.kind == Kind::Struct && !btf.members(&ty)?.is_empty() {
            return Ok(ty);
        }
    }
    Err(anyhow!("BTF: {name} is not a struct with members"))
}

/// Finds `name` among the members of a struct or union, descending into anonymous members.
/// Returns the member's bit offset from the start of `ty` and the member's type, with
/// typedefs and qualifiers stripped so it can be searched in turn.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>> {
    find_member_within(btf, ty, name, 0)
}

/// Anonymous members nested deeper than this are taken for a cycle in malformed BTF.
const MAX_ANON_DEPTH: usize = 64;

fn find_member_within(
    btf: &Btf,
    ty: &Type,
    name: &str,
    depth: usize,
) -> Result<Option<(u32, Type)>> {
    if !matches!(ty.kind, Kind::Struct | Kind::Union) {
        return Ok(None);
    }
    if depth > MAX_ANON_DEPTH {
        bail!(
            "BTF: anonymous members of type {} nested too deep (a cycle?)",
            ty.id
        );
    }
    for member in btf.members(ty)? {
        let member_ty = btf.resolve(member.type_id)?;
        if member.name == name {
            if member.bitfield_size.is_some_and(|size| size != 0) {
                bail!("BTF: member {name} is a bitfield");
            }
            return Ok(Some((member.bit_offset, member_ty)));
        }
        if member.name.is_empty()
            && let Some((inner, found)) = find_member_within(btf, &member_ty, name, depth + 1)?
        {
            let bits = member
                .bit_offset
                .checked_add(inner)
                .ok_or_else(|| anyhow!("BTF: offset of member {name} overflows"))?;
            return Ok(Some((bits, found)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the host's BTF; every kernel sentinel supports has it, and so do CI machines.
    #[test]
    fn resolves_known_members_on_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI host lacks {VMLINUX_BTF}"
            );
            eprintln!("SKIPPED: no {VMLINUX_BTF} on this host");
            return;
        }
        let offsets = Offsets::from_file(path).expect("offsets resolve");
        // Plausibility, not hard-coded values: offsets differ between kernels.
        assert!(offsets.task_pid > 0 && offsets.task_pid < 8192);
        assert!(
            offsets.skb_dev < offsets.skb_len,
            "sk_buff.dev comes before len"
        );
        assert!(offsets.dev_name < offsets.dev_ifindex || offsets.dev_ifindex > 0);
        assert!(offsets.has_netns);
        let si = offsets
            .sched_info
            .expect("this kernel has sched_info and a cfs_rq->rq pointer");
        assert!(si.task_last_queued > 0 && si.task_cfs_rq > 0 && si.rq_clock > 0);
        let missing = member_offset(
            &Btf::from_file(path).unwrap(),
            "task_struct",
            &["no_such_member_x"],
        );
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("no member no_such_member_x")
        );
    }
}
