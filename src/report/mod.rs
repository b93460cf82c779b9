//! Reports over finished runs: [`compare`] puts recipes or sweep variants side by side, [`plots`]
//! draws their training curves. (Benchmarks are not part of the product: see the `sheared-bench`
//! binary, `src/bin/sheared-bench/`.)

pub mod cli;
pub mod compare;
pub mod plots;

pub use compare::{Comparison, Format, StageInput, VariantInput, compare, flatten_toml, render};
pub use plots::{SeriesSource, write_plots};
