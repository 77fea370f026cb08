//! Sentinel userspace: collector, detection, healing and exporters.

pub mod detect;
pub mod model;
pub mod replay;
