//! AdamW with every hyper-parameter explicit, and no weight decay on norms and embeddings.
//!
//! [`AdamWSettings`] always sets every value (burn's `AdamWConfig` defaults differ from PyTorch's:
//! eps 1e-5 vs 1e-8, weight decay 1e-4 vs 1e-2), so a recipe means the same thing as the
//! equivalent PyTorch run, and puts the parameters whose path contains one of `no_decay` (by
//! default norms and embeddings, the usual LLM practice) into a second group with weight decay 0.
//! The update ([`super::adamw`]) is PyTorch's `torch.optim.AdamW`:
//!
//! ```text
//! m ← β1·m + (1−β1)·g            v ← β2·v + (1−β2)·g²
//! p ← p·(1 − lr·wd) − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)
//! ```

use burn::module::ParamGroup;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::adamw::AdamW;

/// A hyper-parameter value that cannot work; `key` is relative to the settings table (`betas`).
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidSettings {
    pub key: String,
    pub message: String,
}

/// AdamW hyper-parameters. The defaults are Sheared LLaMA's (pruning and continued pre-training):
/// betas (0.9, 0.95), eps 1e-8, weight decay 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWSettings {
    /// (β1, β2): decay rates of the first and second moment estimates.
    pub betas: [f64; 2],
    /// Added to the denominator `sqrt(v̂) + eps`.
    pub eps: f64,
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)`) for every parameter not matched by `no_decay`.
    pub weight_decay: f64,
    /// Parameters whose module path (e.g. `layers.0.input_layernorm.weight`) contains any of these
    /// substrings get weight decay 0.
    pub no_decay: Vec<String>,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        AdamWSettings {
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.0,
            no_decay: vec!["norm".into(), "embed".into(), "bias".into()],
        }
    }
}

impl AdamWSettings {
    /// Rejects values for which AdamW is undefined or surely unintended.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let invalid = |key: &str, message: String| {
            Err(InvalidSettings {
                key: key.into(),
                message,
            })
        };
        for (index, beta) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(beta) {
                return invalid(
                    "betas",
                    format!(
                        "beta{} = {beta} must be in [0, 1) (PyTorch default: [0.9, 0.999])",
                        index + 1
                    ),
                );
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return invalid(
                "eps",
                format!("{} must be a positive number (typical: 1e-8)", self.eps),
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return invalid(
                "weight_decay",
                format!(
                    "{} must be >= 0 (0 disables weight decay)",
                    self.weight_decay
                ),
            );
        }
        if self.no_decay.iter().any(String::is_empty) {
            return invalid(
                "no_decay",
                "an empty pattern would match every parameter; remove it".into(),
            );
        }
        Ok(())
    }

    /// A bare AdamW with these betas/eps and the given weight decay, for extra parameter groups
    /// (e.g. the pruning stage's mask logits and Lagrange multipliers) via `ModuleOptimizer::with_group`.
    /// No clipping: clip the global norm with [`crate::train::clip`].
    pub fn adamw(&self, weight_decay: f64) -> AdamW {
        AdamW {
            beta_1: self.betas[0],
            beta_2: self.betas[1],
            eps: self.eps,
            weight_decay,
        }
    }

    /// The parameters that get no weight decay, or `None` when `no_decay` is empty.
    pub fn no_decay_group(&self) -> Option<ParamGroup> {
        (!self.no_decay.is_empty()).then(|| ParamGroup::from_any_predicates(self.no_decay.clone()))
    }

    /// The optimiser for a whole module: `weight_decay` for every parameter, 0 for the `no_decay`
    /// group. Groups added later with `with_group` take precedence over these two.
    pub fn build(&self) -> ModuleOptimizer {
        let optimizer = ModuleOptimizer::from(self.adamw(self.weight_decay));
        match self.no_decay_group() {
            Some(group) => optimizer.with_group(group, self.adamw(0.0), None),
            None => optimizer,
        }
    }
}

/// Moves every AdamW moment of `optimizer` to host memory (`optimizer_offload = true`).
///
/// AdamW's two fp32 moments are twice the size of the weights (50 GiB for LLaMA2-7B), and a step needs
/// them only inside the optimiser update, not during forward and backward, where the activations and
/// gradients peak. Between steps they wait on the host: burn's `ModuleOptimizer::to_record` copies
/// them out, and `load_record` materialises them on burn's default device, which is a host device in
/// every build of sheared (`cpu` = flex; with `tch`, libtorch's CPU; see [`check_host_default`]).
/// The next step moves each parameter's moments back to its gradient's device just before its own
/// update, so the device holds the moments only while the update runs, and the step computes
/// exactly what it computes without offloading (the moments are copied, never converted):
/// offloading changes where the bytes wait, not a single bit of the result.
pub fn offload_to_host(optimizer: ModuleOptimizer) -> ModuleOptimizer {
    let record = optimizer.to_record(); // device → host copies of every moment
    optimizer.load_record(record) // replaces the device tensors, which are freed here
}

/// Fails when burn's default device, where [`offload_to_host`] puts the moments, is not a host
/// device (only possible when the environment variable `BURN_DEVICE` names a GPU backend).
pub fn check_host_default() -> Result<(), String> {
    let default = Device::default();
    let flex = Device::flex();
    #[cfg(feature = "tch")]
    #[allow(deprecated)]
    let host = default == flex || default == Device::libtorch();
    #[cfg(not(feature = "tch"))]
    let host = default == flex;
    if host {
        Ok(())
    } else {
        Err(format!(
            "optimizer_offload keeps AdamW's moments on burn's default device, which is {default:?} \
             here, not host memory; unset the environment variable BURN_DEVICE"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor, TensorData};

    #[derive(Module, Debug)]
    struct Tiny {
        proj: Param<Tensor<1>>,
        input_layernorm: Param<Tensor<1>>,
    }

    fn tiny(device: &Device) -> Tiny {
        let data = || TensorData::new(vec![1.0f32, -2.0, 0.5], [3]);
        Tiny {
            proj: Param::from_tensor(Tensor::from_data(data(), device)),
            input_layernorm: Param::from_tensor(Tensor::from_data(data(), device)),
        }
    }

    /// Gradients exactly `g` for both parameters: loss = Σ proj ⊙ g + Σ norm ⊙ g.
    fn grads_of(model: &Tiny, g: [f32; 3], device: &Device) -> GradientsParams {
        let g = Tensor::<1>::from_data(TensorData::new(g.to_vec(), [3]), device);
        let loss = (model.proj.val() * g.clone()).sum() + (model.input_layernorm.val() * g).sum();
        GradientsParams::from_grads(loss.backward(), model)
    }

    fn values(param: &Param<Tensor<1>>) -> Vec<f64> {
        param
            .val()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// PyTorch AdamW by hand, in f64.
    fn by_hand(
        settings: &AdamWSettings,
        lr: f64,
        weight_decay: f64,
        grads: &[[f32; 3]],
    ) -> Vec<f64> {
        by_hand_with_rates(settings, &vec![lr; grads.len()], weight_decay, grads)
    }

    /// [`by_hand`] with a learning rate per step.
    fn by_hand_with_rates(
        settings: &AdamWSettings,
        rates: &[f64],
        weight_decay: f64,
        grads: &[[f32; 3]],
    ) -> Vec<f64> {
        let [beta1, beta2] = settings.betas;
        let mut p = vec![1.0f64, -2.0, 0.5];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        for (t, (g, &lr)) in grads.iter().zip(rates).enumerate() {
            let t = t as i32 + 1;
            for i in 0..3 {
                let g = g[i] as f64;
                m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                let m_hat = m[i] / (1.0 - beta1.powi(t));
                let v_hat = v[i] / (1.0 - beta2.powi(t));
                p[i] =
                    p[i] * (1.0 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + settings.eps);
            }
        }
        p
    }

    #[test]
    fn two_adamw_steps_equal_the_hand_computation_and_norms_are_not_decayed() {
        let device = crate::model::device::for_tests().autodiff();
        let settings = AdamWSettings {
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut optimizer = settings.build();
        let lr = 0.01;
        let steps = [[0.1f32, -0.3, 2.0], [-0.2f32, 0.4, 1.0]];
        let mut model = tiny(&device);
        for g in steps {
            let grads = grads_of(&model, g, &device);
            model = optimizer.step(lr, model, grads);
        }
        let decayed = by_hand(&settings, lr, 0.1, &steps);
        let not_decayed = by_hand(&settings, lr, 0.0, &steps);
        assert_ne!(decayed, not_decayed);
        for (got, want) in values(&model.proj).iter().zip(&decayed) {
            assert!((got - want).abs() < 1e-6, "proj {got} vs {want}");
        }
        for (got, want) in values(&model.input_layernorm).iter().zip(&not_decayed) {
            assert!((got - want).abs() < 1e-6, "norm {got} vs {want}");
        }
    }

    /// A warm-up starts at lr 0: that step moves nothing, but its moments count.
    #[test]
    fn a_zero_learning_rate_step_updates_the_moments_only() {
        let device = crate::model::device::for_tests().autodiff();
        let settings = AdamWSettings {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut optimizer = settings.build();
        let rates = [0.0, 0.01, 0.02];
        // A zero gradient at lr 0 is where dividing by the step size gives 0 · ∞.
        let steps = [[0.0f32, -0.3, 2.0], [-0.2f32, 0.4, 1.0], [0.0f32, 0.0, 0.5]];
        let mut model = tiny(&device);
        for (g, lr) in steps.into_iter().zip(rates) {
            let grads = grads_of(&model, g, &device);
            model = optimizer.step(lr, model, grads);
            if lr == 0.0 {
                assert_eq!(values(&model.proj), vec![1.0, -2.0, 0.5]);
            }
        }
        let want = by_hand_with_rates(&settings, &rates, 0.1, &steps);
        for (got, want) in values(&model.proj).iter().zip(&want) {
            assert!((got - want).abs() < 1e-6, "proj {got} vs {want}");
        }
    }

    /// The libtorch update works in place only on tensors nothing else holds: a parameter value
    /// someone kept (a checkpoint being written, a teacher) keeps its values through later steps.
    #[test]
    fn a_step_never_changes_tensors_others_hold() {
        let device = crate::model::device::for_tests().autodiff();
        let settings = AdamWSettings::default();
        let mut optimizer = settings.build();
        let mut model = tiny(&device);
        let grads = grads_of(&model, [0.1, -0.3, 2.0], &device);
        model = optimizer.step(0.01, model, grads);
        let kept = model.proj.clone(); // shares the parameter's storage
        let kept_values = values(&kept);
        for g in [[-0.2f32, 0.4, 1.0], [0.7, 0.0, -1.5]] {
            let grads = grads_of(&model, g, &device);
            model = optimizer.step(0.01, model, grads);
        }
        assert_ne!(
            values(&model.proj),
            kept_values,
            "the steps moved the parameter"
        );
        assert_eq!(values(&kept), kept_values);
    }

    #[test]
    fn offloaded_moments_give_the_same_bits() {
        let device = crate::model::device::for_tests().autodiff();
        check_host_default().unwrap();
        let settings = AdamWSettings {
            weight_decay: 0.1,
            ..Default::default()
        };
        let steps = [
            [0.1f32, -0.3, 2.0],
            [-0.2f32, 0.4, 1.0],
            [0.7f32, 0.0, -1.5],
        ];
        let train = |offload: bool| {
            let mut optimizer = settings.build();
            let mut model = tiny(&device);
            for g in steps {
                let grads = grads_of(&model, g, &device);
                model = optimizer.step(0.01, model, grads);
                if offload {
                    optimizer = offload_to_host(optimizer);
                }
            }
            (values(&model.proj), values(&model.input_layernorm))
        };
        let plain = train(false);
        let offloaded = train(true);
        assert_eq!(plain, offloaded);
        // The groups survive the round trip: the norm is still not decayed.
        assert_ne!(plain.0, plain.1);
    }

    #[test]
    fn bad_values_are_rejected_with_their_key() {
        let bad = AdamWSettings {
            betas: [0.9, 1.0],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "betas");
        let bad = AdamWSettings {
            eps: 0.0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "eps");
        let bad = AdamWSettings {
            weight_decay: -0.1,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "weight_decay");
        let bad = AdamWSettings {
            no_decay: vec![String::new()],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "no_decay");
        assert!(AdamWSettings::default().validate().is_ok());
    }
}
