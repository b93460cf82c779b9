//! Benchmarks behind `sheared bench <area>`. Each reports a ratio against a named peer measured in
//! the same run, on the same machine.

pub mod model;
pub mod prune;
