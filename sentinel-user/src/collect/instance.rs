//! One collector per host (fault matrix row K15): a second `sentinel run` would load a second
//! set of programs and double the kernel-side cost while both report the same events. The
//! first instance holds an exclusive `flock` on `<runtime dir>/collector.lock`, which holds its
//! PID; the kernel releases the lock when the process dies, even by SIGKILL, so a stale file
//! never blocks a restart.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::PathBuf,
};

use anyhow::{Result, bail};
use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

/// Default runtime directory (systemd `RuntimeDirectory=sentinel`).
pub const RUNTIME_DIR: &str = "/run/sentinel";

/// `SENTINEL_RUNTIME_DIR` overrides the directory, e.g. for tests that run instances side by side.
pub fn lock_path() -> PathBuf {
    std::env::var_os("SENTINEL_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(RUNTIME_DIR))
        .join("collector.lock")
}

/// Held for the collector's lifetime.
pub struct InstanceLock {
    _lock: Option<Flock<File>>,
}

/// Takes the lock or fails with one line naming the running instance's PID. A runtime
/// directory that cannot be used (e.g. an unprivileged run without it) only costs the check:
/// one warning, no failure.
pub fn acquire() -> Result<InstanceLock> {
    acquire_at(lock_path())
}

fn acquire_at(path: PathBuf) -> Result<InstanceLock> {
    let open = || -> std::io::Result<File> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
    };
    let file = match open() {
        Ok(file) => file,
        Err(e) => {
            warn!(
                "cannot open {} ({e}): not checking for a second running instance",
                path.display()
            );
            return Ok(InstanceLock { _lock: None });
        }
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let pid = std::process::id();
            let written = lock
                .set_len(0)
                .and_then(|()| lock.rewind())
                .and_then(|()| writeln!(&mut *lock, "{pid}"));
            if let Err(e) = written {
                warn!("cannot write the PID to {}: {e}", path.display());
            }
            Ok(InstanceLock { _lock: Some(lock) })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            bail!(
                "another sentinel is already running (PID {}; lock {} held): stop it first",
                if pid.is_empty() { "unknown" } else { pid },
                path.display()
            )
        }
        Err((_, e)) => {
            warn!(
                "cannot lock {} ({e}): not checking for a second running instance",
                path.display()
            );
            Ok(InstanceLock { _lock: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid_and_release_frees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/collector.lock");
        let first = acquire_at(path.clone()).expect("first instance");
        assert!(first._lock.is_some());
        // flock belongs to the open file description: a second open conflicts even in-process.
        let err = acquire_at(path.clone()).err().expect("second refused");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("PID {}", std::process::id()))
                && text.contains("already running"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        drop(first);
        assert!(acquire_at(path).is_ok(), "released with its holder");
    }
}
