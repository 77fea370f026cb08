//! Healing engine (API documented once the engine lands).

pub mod backoff;
pub mod breaker;
pub mod config;
pub mod gate;
