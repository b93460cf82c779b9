//! Benchmarks behind `sheared bench <area>`: each reports absolute numbers and a ratio against a named peer
//! measured in the same run, on the same machine (speed targets are never asserted in tests).

pub mod data;
pub mod model;
pub mod runner;
pub mod store;
pub mod train;
