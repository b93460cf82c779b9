//! Per-domain language-model loss with an error bar.
//!
//! The eval split of every domain is cut into fixed windows (the same windows for every model, so
//! numbers are comparable across runs). A window is the unit of sampling: tokens inside one window are
//! strongly correlated, windows far apart much less, so the error bar is the standard error of the
//! token-weighted mean over windows (the ratio-estimator formula; with equal windows it is the sample
//! standard deviation of the window losses over √n).

use serde::{Deserialize, Serialize};

/// Loss of one domain. `loss` is the mean next-token cross-entropy in nats per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainLoss {
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Standard error of `loss` over windows (`null` with fewer than 2 windows).
    pub stderr: Option<f64>,
    /// Predicted tokens the loss averages over.
    pub tokens: u64,
    /// Windows (sequences) evaluated.
    pub sequences: usize,
}

/// Aggregate `(mean loss of the window, predicted tokens in the window)` pairs. `None` without tokens.
pub fn domain_loss(windows: &[(f64, u64)]) -> Option<DomainLoss> {
    let tokens: u64 = windows.iter().map(|(_, count)| count).sum();
    if tokens == 0 {
        return None;
    }
    let total = tokens as f64;
    let loss = windows
        .iter()
        .map(|(loss, count)| loss * *count as f64)
        .sum::<f64>()
        / total;
    let n = windows.iter().filter(|(_, count)| *count > 0).count();
    let stderr = (n >= 2).then(|| {
        let weighted_squares: f64 = windows
            .iter()
            .map(|(x, count)| (*count as f64 * (x - loss)).powi(2))
            .sum();
        (weighted_squares / (total * total) * n as f64 / (n - 1) as f64).sqrt()
    });
    Some(DomainLoss {
        loss,
        perplexity: loss.exp(),
        stderr,
        tokens,
        sequences: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_windows_give_the_plain_standard_error() {
        let windows = [(2.0, 128), (3.0, 128), (4.0, 128)];
        let result = domain_loss(&windows).unwrap();
        assert!((result.loss - 3.0).abs() < 1e-12);
        assert!((result.perplexity - 3f64.exp()).abs() < 1e-9);
        // sample std = 1, n = 3 → 1/√3
        assert!((result.stderr.unwrap() - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!((result.tokens, result.sequences), (384, 3));
    }

    #[test]
    fn token_weighting_and_degenerate_inputs() {
        let result = domain_loss(&[(1.0, 300), (4.0, 100)]).unwrap();
        assert!((result.loss - 1.75).abs() < 1e-12);
        assert_eq!(domain_loss(&[(5.0, 10)]).unwrap().stderr, None);
        assert_eq!(domain_loss(&[]), None);
        assert_eq!(domain_loss(&[(1.0, 0)]), None);
    }
}
