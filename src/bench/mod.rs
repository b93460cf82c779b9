//! Benchmarks behind `sheared bench <area>`. Each reports absolute numbers and a ratio against a
//! named peer measured in the same run (speed targets are never asserted in tests).

pub mod data;
pub mod model;
pub mod runner;
pub mod store;
pub mod train;
pub mod prune;
