//! Shared set-up for the privileged integration tests (`tests/*.rs` pull it in with
//! `mod support;`). Each capability keeps its helpers in its own file.

#![allow(dead_code)] // each test binary uses a different subset of the helpers

pub mod docker;

/// Root and the tools are required: fail under `CI=true`, skip loudly elsewhere.
/// Returns false when the caller should return early (skip).
pub fn require(what: &str, ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {what} is unavailable: {why}");
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED: {what} unavailable: {why}");
    eprintln!("!!! (set CI=true to make this a failure)");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
