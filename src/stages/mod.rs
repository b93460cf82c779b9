//! The stage kinds built into sheared, one module each, all implementing the contract in
//! [`crate::stage`]. `main.rs` hands [`builtin`] to the runner; nothing in the runner names a kind.

use crate::stage::Registry;

pub mod command;
pub mod consolidate;
pub mod convert;
pub mod eval;
pub mod prune;
pub mod tokenize;
pub mod train;

/// Every stage kind built into sheared. Each stage-kind module adds itself here.
pub fn builtin() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    registry.register(Box::new(convert::ConvertStage));
    registry.register(Box::new(eval::EvalStage));
    registry.register(Box::new(prune::PruneStage));
    registry.register(Box::new(consolidate::ConsolidateStage));
    registry.register(Box::new(tokenize::TokenizeStage));
    registry.register(Box::new(command::CommandStage));
    registry.register(Box::new(train::TrainStage));
    registry
}
