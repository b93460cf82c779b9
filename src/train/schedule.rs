//! Learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio` of the peak.
//!
//! This is Composer's `cosine_with_warmup` (the scheduler the Sheared LLaMA runs use, `alpha_f` =
//! `min_lr_ratio`): during warm-up the multiplier is `step / warmup_steps` (so step 0 trains at lr 0,
//! exactly like Composer and Hugging Face's `get_cosine_schedule_with_warmup`), afterwards
//! `min + (1 − min)·½·(1 + cos(π·progress))` with `progress = (step − warmup) / (total − warmup)`.
//! The schedule is a pure function of the step, so resuming needs only the step counter.

use serde::{Deserialize, Serialize};

/// The lr multiplier in `[min_lr_ratio, 1]` (or `[0, 1]` during warm-up) for the 0-based `step`.
///
/// `warmup_steps = 0` starts at the peak. Steps at or past `total_steps` return `min_lr_ratio`.
pub fn cosine_with_warmup(step: u64, warmup_steps: u64, total_steps: u64, min_lr_ratio: f64) -> f64 {
    if step < warmup_steps {
        return step as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps);
    if decay_steps == 0 || step >= total_steps {
        return if step >= total_steps && decay_steps > 0 { min_lr_ratio } else { 1.0 };
    }
    let progress = (step - warmup_steps) as f64 / decay_steps as f64; // in [0, 1)
    min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// How long the warm-up lasts: a step count, or a fraction of all steps (the paper: 3% for continued
/// pre-training, 10% for pruning).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    Steps(u64),
    Fraction(f64),
}

impl Warmup {
    /// The warm-up length in steps for a run of `total_steps` (fractions round to the nearest step).
    pub fn steps(self, total_steps: u64) -> u64 {
        match self {
            Warmup::Steps(steps) => steps,
            Warmup::Fraction(fraction) => (fraction * total_steps as f64).round() as u64,
        }
    }
}

/// A complete learning-rate schedule: peak lr, warm-up and cosine decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// The learning rate used for the update of the 0-based `step`.
    pub fn lr(&self, step: u64) -> f64 {
        self.peak_lr * cosine_with_warmup(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_from_zero() {
        assert!(close(cosine_with_warmup(0, 10, 100, 0.1), 0.0));
        assert!(close(cosine_with_warmup(5, 10, 100, 0.1), 0.5));
        assert!(close(cosine_with_warmup(9, 10, 100, 0.1), 0.9));
    }

    #[test]
    fn cosine_hits_peak_midpoint_and_floor() {
        // peak right after warm-up
        assert!(close(cosine_with_warmup(10, 10, 110, 0.1), 1.0));
        // half-way through the decay: min + (1-min)/2
        assert!(close(cosine_with_warmup(60, 10, 110, 0.1), 0.55));
        // a quarter of the way: 0.1 + 0.9 * 0.5 * (1 + cos(pi/4))
        let expected = 0.1 + 0.9 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(cosine_with_warmup(35, 10, 110, 0.1), expected));
        // the end and beyond stay at the floor
        assert!(close(cosine_with_warmup(110, 10, 110, 0.1), 0.1));
        assert!(close(cosine_with_warmup(500, 10, 110, 0.1), 0.1));
    }

    #[test]
    fn no_warmup_starts_at_peak_and_is_monotone() {
        assert!(close(cosine_with_warmup(0, 0, 50, 0.0), 1.0));
        let values: Vec<f64> = (0..50).map(|step| cosine_with_warmup(step, 0, 50, 0.0)).collect();
        assert!(values.windows(2).all(|pair| pair[1] < pair[0]));
        assert!(values[49] > 0.0);
    }

    #[test]
    fn paper_continued_pretraining_schedule() {
        // 48,000 steps, 3% warm-up (1440), lr 1e-4 decaying to 1e-5 (alpha_f 0.1).
        let schedule =
            LrSchedule { peak_lr: 1e-4, warmup_steps: Warmup::Fraction(0.03).steps(48_000), total_steps: 48_000, min_lr_ratio: 0.1 };
        assert_eq!(schedule.warmup_steps, 1440);
        assert!((schedule.lr(720) - 5e-5).abs() < 1e-18);
        assert!((schedule.lr(1440) - 1e-4).abs() < 1e-18);
        assert!((schedule.lr(48_000) - 1e-5).abs() < 1e-18);
    }

    #[test]
    fn warmup_longer_than_run_never_divides_by_zero() {
        assert!(close(cosine_with_warmup(3, 10, 5, 0.1), 0.3));
        assert!(close(cosine_with_warmup(12, 10, 10, 0.1), 1.0));
    }
}
