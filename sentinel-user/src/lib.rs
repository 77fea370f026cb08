//! Sentinel userspace: collector, detection, healing and exporters.

pub mod model;

pub mod heal;
