//! Reports over finished runs: [`compare`] puts recipes or sweep variants side by side, [`plots`]
//! draws their training curves, [`html`] puts both, the stage graph and each stage's status on one
//! page (`sheared report`). (Benchmarks are not part of the product: see the `sheared-bench`
//! binary, `src/bin/sheared-bench/`.)

pub mod cli;
pub mod compare;
pub mod html;
pub mod plots;

pub use compare::{Comparison, Format, StageInput, VariantInput, compare, flatten_toml, render};
pub use plots::{SeriesSource, write_plots};
