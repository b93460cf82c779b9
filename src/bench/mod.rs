//! Benchmarks behind `sheared bench <area>`. Each reports ratios against a named peer measured in
//! the same run (speed targets are never asserted in tests).

pub mod prune;
