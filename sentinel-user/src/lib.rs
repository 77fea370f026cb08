//! Sentinel userspace: collector, detection, healing and exporters.

pub mod collect;
pub mod containers;
pub mod daemon;
pub mod export;
pub mod model;

pub mod heal;
