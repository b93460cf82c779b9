//! Reference losses from a scaling law: fit `L(N) = a / N^b + c` per domain and evaluate it at the
//! target model's parameter count (Sheared LLaMA §6.3, `scaling_law/reference_loss_estimation.ipynb`).
//!
//! The reference notebook calls `scipy.optimize.curve_fit(p0 = [406.4, 0.336, 0.69], maxfev = 20000)`
//! on the three LLaMA2 sizes, i.e. unbounded Levenberg–Marquardt least squares (MINPACK). This is the
//! same method: LM with Marquardt's diagonal scaling and an analytic Jacobian, from the same start.

use serde::{Deserialize, Serialize};

/// `scipy.optimize.curve_fit`'s start point in the reference notebook.
pub const INITIAL_GUESS: [f64; 3] = [406.4, 0.336, 0.69];

/// The fitted curve `loss(N) = a / N^b + c`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalingLaw {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl ScalingLaw {
    /// Predicted loss of a model with `parameters` parameters (total count, embeddings included).
    pub fn loss(&self, parameters: f64) -> f64 {
        self.a * parameters.powf(-self.b) + self.c
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FitError {
    #[error("{sizes} model sizes but {losses} losses; give one loss per size")]
    LengthMismatch { sizes: usize, losses: usize },
    #[error("a fit of a/N^b + c has 3 unknowns and needs at least 3 (size, loss) points, got {0}")]
    TooFewPoints(usize),
    #[error("sizes must be positive parameter counts and losses finite numbers (got size {size}, loss {loss})")]
    BadPoint { size: f64, loss: f64 },
    #[error("the fit did not converge (residual sum of squares {0:e}); check that losses fall as size grows")]
    NoConvergence(f64),
}

fn sum_of_squares(law: &ScalingLaw, sizes: &[f64], losses: &[f64]) -> f64 {
    sizes.iter().zip(losses).map(|(&n, &l)| (l - law.loss(n)).powi(2)).sum()
}

/// Solves the 3×3 system `m · x = v` by Gaussian elimination with partial pivoting.
fn solve3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        v.swap(col, pivot);
        for row in col + 1..3 {
            let factor = m[row][col] / m[col][col];
            for k in col..3 {
                m[row][k] -= factor * m[col][k];
            }
            v[row] -= factor * v[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| m[row][k] * x[k]).sum();
        x[row] = (v[row] - tail) / m[row][row];
    }
    x.iter().all(|value| value.is_finite()).then_some(x)
}

/// Least-squares fit of `a / N^b + c` to (`sizes`, `losses`) by Levenberg–Marquardt from [`INITIAL_GUESS`].
pub fn fit(sizes: &[f64], losses: &[f64]) -> Result<ScalingLaw, FitError> {
    if sizes.len() != losses.len() {
        return Err(FitError::LengthMismatch { sizes: sizes.len(), losses: losses.len() });
    }
    if sizes.len() < 3 {
        return Err(FitError::TooFewPoints(sizes.len()));
    }
    if let Some((&size, &loss)) = sizes.iter().zip(losses).find(|(n, l)| !(**n > 0.0 && n.is_finite() && l.is_finite())) {
        return Err(FitError::BadPoint { size, loss });
    }
    let [a, b, c] = INITIAL_GUESS;
    let mut law = ScalingLaw { a, b, c };
    let mut error = sum_of_squares(&law, sizes, losses);
    let mut damping = 1e-3;
    let scale: f64 = losses.iter().map(|l| l * l).sum::<f64>().max(1e-300);
    for _ in 0..20_000 {
        // Normal equations Jᵀ J δ = Jᵀ r, J = ∂model/∂(a, b, c)
        let mut jtj = [[0.0; 3]; 3];
        let mut jtr = [0.0; 3];
        for (&n, &l) in sizes.iter().zip(losses) {
            let power = n.powf(-law.b); // N^-b
            let jacobian = [power, -law.a * n.ln() * power, 1.0];
            let residual = l - law.loss(n);
            for i in 0..3 {
                jtr[i] += jacobian[i] * residual;
                for j in 0..3 {
                    jtj[i][j] += jacobian[i] * jacobian[j];
                }
            }
        }
        let mut improved = false;
        while damping < 1e20 {
            let mut damped = jtj;
            for (i, row) in damped.iter_mut().enumerate() {
                row[i] += damping * jtj[i][i].max(1e-300);
            }
            if let Some(step) = solve3(damped, jtr) {
                let candidate = ScalingLaw { a: law.a + step[0], b: law.b + step[1], c: law.c + step[2] };
                let candidate_error = sum_of_squares(&candidate, sizes, losses);
                if candidate_error.is_finite() && candidate_error < error {
                    let relative_change = (error - candidate_error) / error.max(1e-300);
                    law = candidate;
                    error = candidate_error;
                    damping = (damping / 10.0).max(1e-15);
                    improved = relative_change > 1e-15;
                    break;
                }
            }
            damping *= 10.0;
        }
        if !improved || error <= 1e-30 * scale {
            break;
        }
    }
    // Converged when the residual is small relative to the losses (an exact fit for 3 points).
    let rms = (error / sizes.len() as f64).sqrt();
    let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;
    if !(law.a.is_finite() && law.b.is_finite() && law.c.is_finite()) || rms > 0.05 * mean_loss.abs().max(1e-12) {
        return Err(FitError::NoConvergence(error));
    }
    Ok(law)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA2_SIZES: [f64; 3] = [6_738_415_616.0, 13_015_864_320.0, 68_976_648_192.0];
    // Spec §6.3, domain order [cc, github, book, stackexchange, wiki, arxiv, c4-rp].
    const LLAMA2_7B: [f64; 7] = [1.7520, 0.6216, 1.9063, 1.4482, 1.4844, 1.2637, 1.9219];
    const LLAMA2_13B: [f64; 7] = [1.6680, 0.5791, 1.8242, 1.3936, 1.3945, 1.2109, 1.8486];
    const LLAMA2_70B: [f64; 7] = [1.4621, 0.4890, 1.6450, 1.2805, 1.2118, 1.1148, 1.6848];
    const REFERENCE_2_7B: [f64; 7] = [1.8712, 0.6883, 2.0325, 1.5353, 1.6297, 1.3560, 2.0328];
    const REFERENCE_1_3B: [f64; 7] = [1.9643, 0.7459, 2.1393, 1.6117, 1.7590, 1.4449, 2.1251];
    const REFERENCE_370M: [f64; 7] = [2.1401, 0.8694, 2.3625, 1.7791, 2.0470, 1.6637, 2.3139];

    fn predicted_row(target_params: f64) -> Vec<f64> {
        (0..7)
            .map(|domain| {
                let losses = [LLAMA2_7B[domain], LLAMA2_13B[domain], LLAMA2_70B[domain]];
                fit(&LLAMA2_SIZES, &losses).unwrap().loss(target_params)
            })
            .collect()
    }

    #[test]
    fn reproduces_the_papers_reference_losses() {
        for (target, expected) in
            [(2_701_560_320.0, REFERENCE_2_7B), (1_345_423_360.0, REFERENCE_1_3B), (373_867_520.0, REFERENCE_370M)]
        {
            for (got, want) in predicted_row(target).iter().zip(expected) {
                assert!((got - want).abs() < 5e-4, "target {target}: {got:.5} vs {want}");
            }
        }
    }

    #[test]
    fn the_fit_passes_through_its_points() {
        let losses = [LLAMA2_7B[0], LLAMA2_13B[0], LLAMA2_70B[0]];
        let law = fit(&LLAMA2_SIZES, &losses).unwrap();
        for (n, l) in LLAMA2_SIZES.iter().zip(losses) {
            assert!((law.loss(*n) - l).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(fit(&[1.0, 2.0], &[1.0, 2.0]), Err(FitError::TooFewPoints(2)));
        assert_eq!(fit(&[1.0, 2.0, 3.0], &[1.0, 2.0]), Err(FitError::LengthMismatch { sizes: 3, losses: 2 }));
        assert!(matches!(fit(&[1.0, -2.0, 3.0], &[1.0, 2.0, 3.0]), Err(FitError::BadPoint { .. })));
    }
}
