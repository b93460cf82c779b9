//! The `train` stage's step for the [driver](super::driver): dense next-token cross-entropy of a
//! [`Llama`], one AdamW group set (decay / `no_decay`) at the cosine-with-warm-up learning rate.
//!
//! ```text
//! micro-batch: forward → token-mean CE / grad_accum → backward        (the driver accumulates, clips, steps)
//! ```
//!
//! The step has no state of its own: the lr schedule is a pure function of the step and a dense
//! forward pass draws no random numbers.
//!
//! With a [`Teacher`] (`train.distill`), the micro-batch loss is Minitron's logit distillation,
//! `(1 − α)·CE + α·T²·KL(teacher ‖ student)`, the teacher run on the same batch without autodiff.

use std::cell::Cell;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::data::EvalWindows;
use crate::model::loss::distillation_kl;
use crate::model::{Llama, cross_entropy, cross_entropy_per_sequence};
use crate::train::driver::{
    Backward, MicroBatch, MicroBatchLoss, StepRates, TrainStep, domain_losses, per_micro_batch,
};
use crate::train::schedule::LrSchedule;

/// A frozen teacher for logit distillation.
pub struct Teacher {
    /// Lives on the plain (non-autodiff) device, so its forward pass records no graph.
    pub model: Llama,
    /// Weight of the soft loss: `(1 − alpha)·CE + alpha·KL`.
    pub alpha: f64,
    pub temperature: f64,
}

impl Teacher {
    /// The teacher's logits for `input_ids` `[batch, seq]`, as a constant on `device` (the student's
    /// autodiff device) → `[batch, seq, vocab]`.
    fn logits(&self, input_ids: &Tensor<2, Int>, device: &Device) -> Tensor<3> {
        let own_device = self.model.embed_tokens.weight.val().device();
        let ids = Tensor::<2, Int>::from_data(input_ids.to_data(), &own_device); // [batch, seq]
        self.model.forward(ids, None).to_device(device) // [batch, seq, vocab]
    }
}

/// Continued pre-training of a dense model.
pub struct LmStep {
    pub schedule: LrSchedule,
    /// Per-layer activation checkpointing ([`Llama::backward_checkpointed`]).
    pub activation_checkpointing: bool,
    /// Distil from this teacher (`train.distill`); plain next-token training without.
    pub teacher: Option<Teacher>,
}

impl LmStep {
    /// The micro-batch objective from the student's logits: CE, or with a teacher the distillation
    /// loss; `parts` receives (CE, KL) values for the metrics.
    fn objective(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        teacher_logits: Option<Tensor<3>>,
        parts: &Cell<Option<(f64, f64)>>,
    ) -> Tensor<1> {
        let ce = cross_entropy(logits.clone(), labels); // [1]
        let (Some(teacher), Some(teacher_logits)) = (&self.teacher, teacher_logits) else {
            return ce;
        };
        let kl = distillation_kl(logits, teacher_logits, teacher.temperature); // [1]
        parts.set(Some((
            ce.clone().into_scalar::<f32>() as f64,
            kl.clone().into_scalar::<f32>() as f64,
        )));
        ce.mul_scalar(1.0 - teacher.alpha) + kl.mul_scalar(teacher.alpha)
    }
}

impl TrainStep for LmStep {
    type Model = Llama;
    type State = ();

    fn begin_step(&mut self, model: Llama, _step: u64) -> Llama {
        model
    }

    fn micro_batch_loss(&mut self, model: &Llama, batch: MicroBatch, _step: u64) -> MicroBatchLoss {
        let device = self.device(model);
        let teacher_logits = self
            .teacher
            .as_ref()
            .map(|teacher| teacher.logits(&batch.input_ids, &device)); // [micro_batch, seq_len, vocab]
        let parts = Cell::new(None);
        let count = batch.count;
        let named = |parts: Option<(f64, f64)>| match parts {
            Some((ce, kl)) => vec![
                ("ce_loss", ce / count as f64),
                ("kl_loss", kl / count as f64),
            ],
            None => Vec::new(),
        };
        if self.activation_checkpointing {
            let labels = batch.labels;
            let result = model.backward_checkpointed(batch.input_ids, None, |logits| {
                per_micro_batch(
                    self.objective(logits, labels, teacher_logits, &parts),
                    count,
                ) // [1]
            });
            return MicroBatchLoss {
                backward: Backward::Gradients(result.gradients),
                value: result.loss,
                parts: named(parts.get()),
            };
        }
        let logits = model.forward(batch.input_ids, None); // [micro_batch, seq_len, vocab]
        let loss = per_micro_batch(
            self.objective(logits, batch.labels, teacher_logits, &parts),
            count,
        ); // [1]
        let value = loss.clone().into_scalar::<f32>() as f64;
        MicroBatchLoss {
            backward: Backward::Objective(Box::new(loss)),
            value,
            parts: named(parts.get()),
        }
    }

    fn learning_rates(&self, step: u64) -> StepRates {
        let lr = self.schedule.lr(step);
        StepRates {
            rates: lr.into(),
            logged: vec![("lr", lr)],
        }
    }

    fn evaluate(&self, model: &Llama, eval: &[EvalWindows], micro_batch: usize) -> Vec<f64> {
        let model = model.valid();
        let device = self.device(&model);
        domain_losses(eval, micro_batch, &device, |input_ids, labels| {
            cross_entropy_per_sequence(model.forward(input_ids, None), labels) // [rows]
        })
    }

    fn device(&self, model: &Llama) -> Device {
        model.embed_tokens.weight.val().device()
    }

    fn state(&self) {}

    fn restore(&mut self, _state: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::init::seeded_normal_init;

    fn bits(model: &Llama) -> Vec<u32> {
        let weight = model.layers[0]
            .mlp
            .as_ref()
            .map(|mlp| mlp.gate_proj.weight.val())
            .unwrap();
        weight
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    #[test]
    fn seeded_init_keeps_parameters_trainable() {
        let config = LlamaConfig::new(32, 16, 32, 1, 2, 2);
        let model = seeded_normal_init(
            Llama::new(&config, &crate::model::device::for_tests().autodiff()),
            7,
            0.02,
        );
        let gate = model.layers[0]
            .mlp
            .as_ref()
            .map(|mlp| mlp.gate_proj.weight.val())
            .unwrap();
        assert!(gate.is_require_grad());
    }

    #[test]
    fn seeded_init_ignores_the_global_device_rng() {
        let config = LlamaConfig::new(32, 16, 32, 1, 2, 2);
        let device = crate::model::device::for_tests();
        device.seed(1);
        let first = seeded_normal_init(Llama::new(&config, &device), 7, 0.02);
        device.seed(99);
        let second = seeded_normal_init(Llama::new(&config, &device), 7, 0.02);
        let other_seed = seeded_normal_init(Llama::new(&config, &device), 8, 0.02);
        assert_eq!(bits(&first), bits(&second));
        assert_ne!(bits(&first), bits(&other_seed));
        let values: Vec<f32> = bits(&first).iter().map(|b| f32::from_bits(*b)).collect();
        let std = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
        assert!((0.015..0.025).contains(&std), "{std}");
    }
}
