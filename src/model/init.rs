//! Seeded initialisation of a model's weights, independent of burn's process-global device RNG.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};

/// Re-draws every weight matrix (every float parameter of rank ≥ 2) of `model` from
/// Normal(0, `std`) with a ChaCha8 stream seeded by `seed`, in module order; rank-1 parameters (norm
/// weights) keep their values. burn's device RNG is process-global, so `device.seed(s)` followed by
/// `Llama::new` is not reproducible when anything else draws random numbers concurrently (another
/// stage, another test thread); this init is, whatever runs beside it.
pub fn seeded_normal_init<M: Module>(model: M, seed: u64, std: f64) -> M {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    struct Init {
        rng: rand_chacha::ChaCha8Rng,
        normal: rand_distr::Normal<f32>,
    }
    impl burn::module::ModuleMapper for Init {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D < 2 {
                return param;
            }
            param.map(|tensor| {
                let shape = tensor.shape();
                let device = tensor.device();
                let tracked = tensor.is_require_grad();
                let values: Vec<f32> = (0..shape.num_elements())
                    .map(|_| self.normal.sample(&mut self.rng))
                    .collect();
                let fresh = Tensor::from_data(TensorData::new(values, shape), &device);
                // A new leaf does not track gradients by itself; keep the parameter trainable.
                if tracked { fresh.require_grad() } else { fresh }
            })
        }
    }
    // A non-finite or negative `std` (rejected by the stage before this point) falls back to HF's 0.02.
    let normal = rand_distr::Normal::new(0.0f32, std as f32)
        .or_else(|_| rand_distr::Normal::new(0.0f32, 0.02))
        .unwrap_or_else(|_| unreachable!("Normal(0, 0.02) is valid"));
    model.map(&mut Init {
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        normal,
    })
}
