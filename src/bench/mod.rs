//! Benchmarks behind `sheared bench <area>`. Each reports ratios against a named peer measured in
//! the same run on the same machine; none asserts a speed.

pub mod runner;
pub mod store;
