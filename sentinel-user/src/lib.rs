//! Sentinel userspace: collector, detection, healing and exporters.

// Every unsafe block says why it is sound (`// SAFETY: ...`). Not yet workspace-wide:
// sentinel-common's `aya::Pod` impls and one block in xtask's bench lack the comment.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod analysis;
pub mod check;
pub mod collect;
pub mod config;
pub mod containers;
pub mod contention;
pub mod daemon;
pub mod detect;
pub mod export;
pub mod heal;
mod heap;
pub mod model;
pub mod privilege;
pub mod replay;
pub mod sanitize;
pub mod service;
