//! The collector: load and attach the eBPF programs, drain their maps into `Interval`s.

pub mod bpf_sys;
pub mod btf;
pub mod drain;
pub mod host;
pub mod instance;
pub mod loader;
pub mod netns;
pub mod offsets;
pub mod slots;
pub mod tasks;
pub mod tracefs;
