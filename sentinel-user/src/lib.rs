//! Sentinel userspace: collector, detection, healing and exporters.

pub mod analysis;
pub mod check;
pub mod collect;
pub mod config;
pub mod containers;
pub mod daemon;
pub mod detect;
pub mod export;
pub mod heal;
pub mod model;
pub mod privilege;
pub mod replay;
pub mod service;
