//! tracefs: sentinel's BTF tracepoints do not need it, but `check` and the reasons given for a
//! missing hook do. A fresh host may not have it mounted.

use std::path::PathBuf;

use tracing::{info, warn};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns the tracefs root, mounting it at /sys/kernel/tracing if no candidate is mounted.
/// "Mounted" means it has an `events/` directory: an empty directory is not tracefs.
pub fn ensure_mounted() -> Option<PathBuf> {
    if let Some(root) = find() {
        return Some(root);
    }
    let target = CANDIDATES[0];
    match nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => {
            let found = find();
            if found.is_some() {
                info!("mounted tracefs at {target}");
            } else {
                // Seen under `lockdown=confidentiality`: the mount succeeds, its files stay
                // unreadable. BTF tracepoints still attach; only diagnostics lose precision.
                warn!(
                    "mounted tracefs at {target} but its events/ is not readable \
                     (kernel lockdown? see /sys/kernel/security/lockdown); hook diagnostics will be less precise"
                );
            }
            found
        }
        Err(e) => {
            warn!(
                "tracefs is not mounted and mounting it failed ({e}): run `mount -t tracefs nodev {target}` \
                 (needs CAP_SYS_ADMIN); hook diagnostics will be less precise"
            );
            None
        }
    }
}

pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}
