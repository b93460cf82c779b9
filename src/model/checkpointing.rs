//! Activation checkpointing per decoder layer: one forward and backward pass of a [`Llama`] that
//! keeps only each layer's input between the two, and recomputes one layer at a time while going
//! back.
//!
//! Why: under autodiff every layer keeps its activations until the backward pass reaches it,
//! attention scores `[batch, heads, seq, seq]` included, so activation memory grows with
//! `layers × batch × seq²`. Checkpointed, it is `layers × batch × seq × hidden` for the saved
//! inputs plus one layer's activations: what lets a long-sequence step fit on one device
//! (see [`super::memory`], `activation_checkpointing`).
//!
//! How, with burn's public API only (no custom backward op): the gradient of a composition is
//! stitched by hand. The forward runs without a graph (`valid()`: the inner backend), keeping
//! `x_l` = the input of layer `l`. Then the head and the loss run with a graph from a fresh leaf
//! `x_L`, whose backward gives `∂loss/∂x_L`; each layer, from the last, reruns with a graph from a
//! leaf `x_l` and back-propagates the surrogate `sum(layer(x_l) ⊙ ∂loss/∂x_{l+1})`, whose gradient
//! with respect to `x_l` and to the layer's weights is exactly the chain rule's; the embedding last.
//! The pruning masks enter every pass as leaves of their own; their gradients add up over the
//! passes and go back to the caller, who pushes them into whatever made the masks (the L0 module)
//! with [`Masks::surrogate`]. The result equals the plain backward up to the order of floating-point
//! sums (tested).

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Gradients, Int, Tensor};

use super::llama::{HiddenMask, Llama, Masks};

/// What one checkpointed forward + backward pass gives.
pub struct CheckpointedBackward {
    /// The value of the loss the caller's function returned.
    pub loss: f64,
    /// ∂loss/∂parameter for every parameter of the model (fp32, as a plain backward gives them).
    pub gradients: GradientsParams,
    /// ∂loss/∂z for each mask given, same shapes, on the inner (non-autodiff) backend; `None`
    /// masks stay `None`.
    pub mask_gradients: Masks,
}

impl Llama {
    /// `loss_of_logits(logits: [batch, seq, vocab]) -> [1]` on `input_ids: [batch, seq]`, with the
    /// gradients of the loss computed by per-layer activation checkpointing (module docs). `self`
    /// and `masks` live on an autodiff device.
    pub fn backward_checkpointed(
        &self,
        input_ids: Tensor<2, Int>,
        masks: Option<&Masks>,
        loss_of_logits: impl FnOnce(Tensor<3>) -> Tensor<1>,
    ) -> CheckpointedBackward {
        let [_, seq] = input_ids.dims();
        let device = input_ids.device();
        let precision = self.precision();

        // 1. Forward without a graph, keeping each layer's input.
        let inner_model = self.valid();
        let inner_masks = masks.map(Masks::inner);
        let inner_ids = input_ids.clone().inner();
        let inner_rope = inner_model.rope(seq, &inner_ids.device());
        let inner_hidden = inner_masks
            .as_ref()
            .and_then(|m| m.hidden_z.as_ref())
            .map(HiddenMask::new);
        let mut x = inner_model.embed_tokens.forward(inner_ids); // [batch, seq, hidden]
        let mut layer_inputs = Vec::with_capacity(self.layers.len());
        for (index, layer) in inner_model.layers.iter().enumerate() {
            layer_inputs.push(x.clone());
            let layer_masks =
                inner_model.layer_masks(inner_masks.as_ref(), inner_hidden.as_ref(), index);
            x = layer.forward(x, &inner_rope, layer_masks, precision); // [batch, seq, hidden]
        }
        drop(inner_model);

        // Every pass below sees the masks as leaves; anything computed from them (the hidden mask's
        // broadcast shape, a layer's rows) is rebuilt per pass, since a backward consumes its graph.
        let leaves = inner_masks.as_ref().map(Masks::leaves);
        let leaf_hidden = || {
            leaves
                .as_ref()
                .and_then(|m| m.hidden_z.as_ref())
                .map(HiddenMask::new)
        };
        let mut parameters = GradientsAccumulator::<Llama>::new();
        let mut mask_gradients = MaskGradients::default();
        let mut collect = |gradients: &mut Gradients| {
            parameters.accumulate(self, GradientsParams::from_module(gradients, self));
            if let Some(leaves) = &leaves {
                mask_gradients.add(leaves, gradients);
            }
        };

        // 2. Head and loss, from the last layer's output.
        let last = Tensor::from_inner(x).require_grad(); // [batch, seq, hidden]
        let loss = loss_of_logits(self.head(last.clone(), leaf_hidden().as_ref())); // [1]
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let mut gradients = loss.backward();
        let mut upstream = last
            .grad(&gradients)
            .expect("the head depends on its input"); // [batch, seq, hidden]
        collect(&mut gradients);

        // 3. Each layer from the last: recompute with a graph, back-propagate ∂loss/∂output.
        let rope = self.rope(seq, &device);
        for index in (0..self.layers.len()).rev() {
            let input =
                Tensor::from_inner(layer_inputs.pop().expect("one input per layer")).require_grad(); // [batch, seq, hidden]
            let hidden = leaf_hidden();
            let layer_masks = self.layer_masks(leaves.as_ref(), hidden.as_ref(), index);
            let output = self.layers[index].forward(input.clone(), &rope, layer_masks, precision);
            let surrogate = (output * Tensor::from_inner(upstream)).sum(); // [1]
            let mut gradients = surrogate.backward();
            upstream = input
                .grad(&gradients)
                .expect("a layer's output depends on its input");
            collect(&mut gradients);
        }

        // 4. The embedding.
        let embedded = self.embed_tokens.forward(input_ids); // [batch, seq, hidden]
        let mut gradients = (embedded * Tensor::from_inner(upstream)).sum().backward();
        collect(&mut gradients);

        CheckpointedBackward {
            loss: loss_value,
            gradients: parameters.grads(),
            mask_gradients: mask_gradients.into_masks(),
        }
    }
}

impl Masks {
    /// The same masks on the inner (non-autodiff) backend, detached from any graph.
    fn inner(&self) -> Masks {
        Masks {
            layer_z: self.layer_z.clone().map(Tensor::inner),
            head_z: self.head_z.clone().map(Tensor::inner),
            intermediate_z: self.intermediate_z.clone().map(Tensor::inner),
            hidden_z: self.hidden_z.clone().map(Tensor::inner),
        }
    }

    /// Inner masks as fresh autodiff leaves that require gradients.
    fn leaves(&self) -> Masks {
        Masks {
            layer_z: self
                .layer_z
                .clone()
                .map(|z| Tensor::from_inner(z).require_grad()),
            head_z: self
                .head_z
                .clone()
                .map(|z| Tensor::from_inner(z).require_grad()),
            intermediate_z: self
                .intermediate_z
                .clone()
                .map(|z| Tensor::from_inner(z).require_grad()),
            hidden_z: self
                .hidden_z
                .clone()
                .map(|z| Tensor::from_inner(z).require_grad()),
        }
    }

    /// `Σ sum(z ⊙ ∂loss/∂z)` over the masks: its backward sends `gradients` (from
    /// [`CheckpointedBackward::mask_gradients`]) into whatever computed these masks.
    pub fn surrogate(&self, gradients: &Masks) -> Option<Tensor<1>> {
        fn term<const D: usize>(z: &Option<Tensor<D>>, g: &Option<Tensor<D>>) -> Option<Tensor<1>> {
            Some((z.clone()? * Tensor::from_inner(g.clone()?)).sum())
        }
        [
            term(&self.layer_z, &gradients.layer_z),
            term(&self.head_z, &gradients.head_z),
            term(&self.intermediate_z, &gradients.intermediate_z),
            term(&self.hidden_z, &gradients.hidden_z),
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b)
    }
}

/// Running sums of ∂loss/∂z over the passes.
#[derive(Default)]
struct MaskGradients {
    layer_z: Option<Tensor<1>>,
    head_z: Option<Tensor<2>>,
    intermediate_z: Option<Tensor<2>>,
    hidden_z: Option<Tensor<1>>,
}

impl MaskGradients {
    fn add(&mut self, leaves: &Masks, gradients: &Gradients) {
        fn add_one<const D: usize>(
            sum: &mut Option<Tensor<D>>,
            leaf: &Option<Tensor<D>>,
            gradients: &Gradients,
        ) {
            if let Some(gradient) = leaf.as_ref().and_then(|leaf| leaf.grad(gradients)) {
                *sum = Some(match sum.take() {
                    Some(sum) => sum + gradient,
                    None => gradient,
                });
            }
        }
        add_one(&mut self.layer_z, &leaves.layer_z, gradients);
        add_one(&mut self.head_z, &leaves.head_z, gradients);
        add_one(&mut self.intermediate_z, &leaves.intermediate_z, gradients);
        add_one(&mut self.hidden_z, &leaves.hidden_z, gradients);
    }

    fn into_masks(self) -> Masks {
        Masks {
            layer_z: self.layer_z,
            head_z: self.head_z,
            intermediate_z: self.intermediate_z,
            hidden_z: self.hidden_z,
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::tensor::{Distribution, TensorData};

    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::loss::cross_entropy;
    use crate::model::precision::Precision;

    fn max_relative_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = a.clone().abs().max().into_scalar::<f32>().max(1e-12);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Checkpointed gradients equal the plain backward's: every parameter and every mask, for
    /// MHA and GQA, tied and untied heads, with and without masks, fp32 and bf16.
    #[test]
    fn checkpointed_gradients_equal_the_plain_backward() {
        for (tied, key_value_heads, with_masks, precision) in [
            (false, 4, true, Precision::Fp32),
            (true, 2, true, Precision::Fp32),
            (true, 2, false, Precision::Fp32),
            (false, 2, true, Precision::Bf16),
        ] {
            let device = crate::model::device::for_tests().autodiff();
            device.seed(5);
            let mut config = LlamaConfig::new(24, 16, 12, 3, 4, key_value_heads);
            config.head_dim = 4;
            config.tie_word_embeddings = tied;
            config.initializer_range = 0.3;
            let model = Llama::new(&config, &device).with_precision(precision);
            let ids: Vec<i64> = (0..2 * 7).map(|i| (i * 5 + 3) % 24).collect();
            let input_ids =
                Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 7]), &device);
            let targets = Tensor::<2, Int>::from_data(
                TensorData::new(ids.iter().map(|i| (i + 1) % 24).collect::<Vec<_>>(), [2, 7]),
                &device,
            );
            let masks = with_masks.then(|| Masks {
                layer_z: Some(
                    Tensor::<1>::random([3], Distribution::Uniform(0.3, 1.0), &device)
                        .require_grad(),
                ),
                head_z: Some(
                    Tensor::<2>::random(
                        [3, key_value_heads],
                        Distribution::Uniform(0.3, 1.0),
                        &device,
                    )
                    .require_grad(),
                ),
                intermediate_z: Some(
                    Tensor::<2>::random([3, 12], Distribution::Uniform(0.3, 1.0), &device)
                        .require_grad(),
                ),
                hidden_z: Some(
                    Tensor::<1>::random([16], Distribution::Uniform(0.3, 1.0), &device)
                        .require_grad(),
                ),
            });

            let loss = cross_entropy(
                model.forward(input_ids.clone(), masks.as_ref()),
                targets.clone(),
            );
            let plain_loss = loss.clone().into_scalar::<f32>() as f64;
            let mut plain = loss.backward();
            let plain_masks = masks.as_ref().map(|m| {
                (
                    m.layer_z.as_ref().unwrap().grad(&plain).unwrap(),
                    m.head_z.as_ref().unwrap().grad(&plain).unwrap(),
                    m.intermediate_z.as_ref().unwrap().grad(&plain).unwrap(),
                    m.hidden_z.as_ref().unwrap().grad(&plain).unwrap(),
                )
            });
            let mut plain_parameters = GradientsParams::from_module(&mut plain, &model);

            let checkpointed = model.backward_checkpointed(input_ids, masks.as_ref(), |logits| {
                cross_entropy(logits, targets)
            });
            assert!(
                (checkpointed.loss - plain_loss).abs() < 1e-5 * plain_loss.abs().max(1.0),
                "{tied} {key_value_heads} {with_masks} {precision}: loss {} vs plain {plain_loss}",
                checkpointed.loss
            );
            let mut gradients = checkpointed.gradients;
            let case =
                format!("tied {tied}, groups {key_value_heads}, masks {with_masks}, {precision}");
            let mut compared = 0;
            let mut check = |name: &str, id, rank: usize| {
                let tolerance = 1e-5;
                let difference = if rank == 2 {
                    max_relative_difference(
                        plain_parameters.remove::<2>(id).unwrap(),
                        gradients.remove::<2>(id).unwrap(),
                    )
                } else {
                    max_relative_difference(
                        plain_parameters.remove::<1>(id).unwrap(),
                        gradients.remove::<1>(id).unwrap(),
                    )
                };
                assert!(
                    difference < tolerance,
                    "{case}: {name} differs by {difference}"
                );
                compared += 1;
            };
            let id2 = |p: &Param<Tensor<2>>| p.id;
            check("embed_tokens", id2(&model.embed_tokens.weight), 2);
            if let Some(head) = &model.lm_head {
                check("lm_head", id2(&head.weight), 2);
            }
            check("norm", model.norm.weight.id, 1);
            for layer in &model.layers {
                let attention = layer.self_attn.as_ref().unwrap();
                for linear in [
                    &attention.q_proj,
                    &attention.k_proj,
                    &attention.v_proj,
                    &attention.o_proj,
                ] {
                    check("attention", id2(&linear.weight), 2);
                }
                let mlp = layer.mlp.as_ref().unwrap();
                for linear in [&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj] {
                    check("mlp", id2(&linear.weight), 2);
                }
                check("input_layernorm", layer.input_layernorm.weight.id, 1);
                check(
                    "post_attention_layernorm",
                    layer.post_attention_layernorm.weight.id,
                    1,
                );
            }
            assert_eq!(compared, 2 + usize::from(!tied) + 3 * 9, "{case}");
            assert!(
                gradients.is_empty(),
                "{case}: gradients for parameters the model lacks"
            );

            if let Some((layer_z, head_z, intermediate_z, hidden_z)) = plain_masks {
                let ours = checkpointed.mask_gradients;
                for (name, difference) in [
                    (
                        "layer_z",
                        max_relative_difference(layer_z, ours.layer_z.unwrap()),
                    ),
                    (
                        "head_z",
                        max_relative_difference(head_z, ours.head_z.unwrap()),
                    ),
                    (
                        "intermediate_z",
                        max_relative_difference(intermediate_z, ours.intermediate_z.unwrap()),
                    ),
                    (
                        "hidden_z",
                        max_relative_difference(hidden_z, ours.hidden_z.unwrap()),
                    ),
                ] {
                    assert!(difference < 1e-5, "{case}: {name} differs by {difference}");
                }
            }
        }
    }

    /// The mask gradients reach what made the masks through [`Masks::surrogate`].
    #[test]
    fn the_surrogate_carries_mask_gradients_upstream() {
        let device = crate::model::device::for_tests().autodiff();
        let logits =
            Tensor::<1>::from_data(TensorData::from([0.5f32, -1.0, 2.0]), &device).require_grad();
        let masks = Masks {
            layer_z: Some(logits.clone().exp()),
            ..Masks::default()
        };
        let upstream = Masks {
            layer_z: Some(
                Tensor::<1>::from_data(TensorData::from([1.0f32, 2.0, 3.0]), &device).inner(),
            ),
            ..Masks::default()
        };
        let gradients = masks.surrogate(&upstream).unwrap().backward();
        let gradient: Vec<f32> = logits
            .grad(&gradients)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let expected = [0.5f32.exp(), 2.0 * (-1.0f32).exp(), 3.0 * 2.0f32.exp()];
        for (got, want) in gradient.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5 * want, "{gradient:?}");
        }
    }
}
