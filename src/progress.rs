//! Progress reporting and cooperative cancellation: what long loops (tokenising, training,
//! scoring, a stage's `run`) report to and check, with no knowledge of who listens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where a stage reports progress and metrics; the runner draws bars or prints lines from it.
pub trait Reporter: Send + Sync {
    /// `done` of `total` units (`unit` like "steps", "tokens") are finished.
    fn progress(&self, done: u64, total: u64, unit: &str);
    /// A short human-readable status line.
    fn message(&self, text: &str);
    /// One structured record (e.g. a training step's metrics); also logged.
    fn metrics(&self, record: &serde_json::Value);
}

/// A reporter that drops everything (tests, library use).
pub struct NullReporter;
impl Reporter for NullReporter {
    fn progress(&self, _: u64, _: u64, _: &str) {}
    fn message(&self, _: &str) {}
    fn metrics(&self, _: &serde_json::Value) {}
}

/// Cooperative cancellation: long loops call [`CancelFlag::check`] between steps.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);
impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once [`CancelFlag::cancel`] was called; `?` turns it into the caller's
    /// error (a stage's `StageError::Cancelled`).
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

/// The error of [`CancelFlag::check`] after the flag was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// Test helpers shared by the stage tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{CancelFlag, Reporter};

    /// A cooperative "kill" between two steps: cancels `flag` when the stage reports `step` steps
    /// done (the training driver reports a step after writing its metrics line, so the run stops
    /// with exactly `step` steps behind it). `seen` is the last progress count reported.
    pub(crate) struct CancelAtStep {
        pub(crate) step: u64,
        pub(crate) flag: CancelFlag,
        pub(crate) seen: AtomicU64,
    }

    impl CancelAtStep {
        pub(crate) fn new(step: u64, flag: &CancelFlag) -> Self {
            CancelAtStep {
                step,
                flag: flag.clone(),
                seen: AtomicU64::new(0),
            }
        }
    }

    impl Reporter for CancelAtStep {
        fn progress(&self, done: u64, _: u64, _: &str) {
            self.seen.store(done, Ordering::SeqCst);
            if done == self.step {
                self.flag.cancel();
            }
        }
        fn message(&self, _: &str) {}
        fn metrics(&self, _: &serde_json::Value) {}
    }
}
