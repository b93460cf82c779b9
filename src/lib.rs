//! sheared: Sheared LLaMA (Xia et al., 2023) as a declarative, content-addressed experiment pipeline.
//!
//! The crate is split the way DVC splits "what a stage is" from "how the cache stores it":
//!
//! - [`recipe`]: parse TOML recipes, resolve `extends`, apply `--set`, validate, expand sweeps.
//! - [`plan`]: the stage DAG, cache keys, and why a stage is stale.
//! - [`store`]: content-addressed objects, the sled index, leases, gc and verify.
//! - [`exec`]: running a plan (parallelism, resume, events).
//! - [`stage`]: the stage contract ([`stage::Stage`], its context, errors, settings, inputs, previews).
//! - [`stages`]: one file per stage kind, all implementing [`stage::Stage`]; [`stages::builtin`].
//! - [`model`], [`data`], [`train`], [`eval`]: the ML the stages are built from.
//! - [`report`]: comparing runs side by side, plots.
//! - [`progress`], [`util`]: leaves (progress reporting and cancellation; formatting, globs).
//!
//! The runner (`recipe`, `plan`, `store`, `exec`, `report`) never depends on a stage kind: it sees
//! only the [`stage::Stage`] trait and a [`stage::Registry`], which `main.rs` fills with
//! [`stages::builtin`]. `tests/architecture.rs` holds the layer order and fails on an import that
//! goes up or round.

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
