//! Small leaf helpers that several layers share; nothing here imports the rest of the crate.

pub mod differ;
pub mod fmt;
pub mod glob;
