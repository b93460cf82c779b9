//! sheared: Sheared LLaMA (Xia et al., 2023) as a declarative, content-addressed experiment pipeline.
//!
//! The crate is split the way DVC splits "what a stage is" from "how the cache stores it":
//!
//! - [`recipe`]: parse TOML recipes, resolve `extends`, apply `--set`, validate, expand sweeps.
//! - [`plan`]: the stage DAG, cache keys, and why a stage is stale.
//! - [`store`]: content-addressed objects, the sled index, leases, gc and verify.
//! - [`exec`]: running a plan (parallelism, resume, events).
//! - [`stages`]: one file per stage kind, all implementing [`stages::Stage`].
//! - [`model`], [`data`], [`train`]: the ML the stages are built from.
//! - [`report`]: comparing runs side by side, plots.
//!
//! The runner (`recipe`, `plan`, `store`, `exec`) never depends on a stage's internals: it sees only
//! the [`stages::Stage`] trait and a [`stages::Registry`].

pub mod bench;
pub mod data;
pub mod eval;
pub mod exec;
pub mod model;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod report;
pub mod stage;
pub mod stages;
pub mod store;
pub mod train;
pub mod util;
