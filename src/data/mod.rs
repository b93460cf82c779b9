//! Data: tokenized shards, domain mixtures and loading policies.
//!
//! (Minimal module file created on the `train` branch; the data helper's version replaces it —
//! keep its `pub mod loading;` line when merging.)

pub mod loading;
