//! Shared set-up for the privileged integration tests: privilege checks that fail under CI
//! instead of skipping, a running `sentinel` process, network namespaces that clean up.
#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod chaos;
pub mod docker;
pub mod netns;
pub mod nspawn;
pub mod runtimes;
pub mod sentinel;

/// Names of the loaded BPF programs that are sentinel's.
pub fn sentinel_programs() -> Vec<String> {
    ::sentinel::collect::loader::loaded_sentinel_programs()
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// The sentinel programs still loaded after waiting up to 5 s for them to go. A tracepoint
/// link puts its program after an RCU grace period, so a program can outlive its last fd
/// (and the process that held it) by some milliseconds: a check made at once can race it.
pub fn sentinel_programs_left() -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = sentinel_programs();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// True when the environment can run privileged tests. Under `CI=true` a missing requirement is
/// a failure, never a skip; elsewhere the test is skipped with a loud message.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    let why = if !root {
        "not running as root"
    } else {
        "no kernel BTF at /sys/kernel/btf/vmlinux"
    };
    if in_ci() {
        panic!("{test}: {why}, and CI=true: privileged tests must run in CI");
    }
    eprintln!("\n*** SKIPPED {test}: {why} (privileged test; it runs in CI) ***\n");
    false
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Root and the tools are required: fail under `CI=true`, skip loudly elsewhere.
/// Returns false when the caller should return early (skip).
pub fn require(what: &str, ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("CI=true and {what} is unavailable: {why}");
    }
    eprintln!(
        "\n*** SKIPPED: {what} unavailable: {why} (set CI=true to make this a failure) ***\n"
    );
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// VmRSS of a process in KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
