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
//! A layer's attention is computed block by block in both directions ([`blockwise_attention`]), so
//! no pass holds its `[batch, heads, seq, seq]` scores (see [`Llama::layer_backward`]).
//! The pruning masks enter every pass as leaves of their own; their gradients add up over the
//! passes and go back to the caller, who pushes them into whatever made the masks (the L0 module)
//! with [`Masks::surrogate`]. The result equals the plain backward up to the order of floating-point
//! sums (tested).

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Int, Tensor};

use super::blockwise_attention;
use super::llama::{HiddenMask, Llama, Masks, Rope};

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
            let context = layer
                .attention_inputs(x.clone(), &inner_rope, &layer_masks, precision)
                .map(|(query, key, value)| {
                    blockwise_attention::forward(&query, &key, &value, precision)
                }); // [batch, heads, seq, head_dim]
            x = layer.forward_from_context(x, context, layer_masks, precision); // [batch, seq, hidden]
        }
        drop(inner_model);

        // Every pass below sees the masks as fresh leaves of its own (two passes of one layer are
        // alive at once); anything computed from them (the hidden mask's broadcast shape, a layer's
        // rows) is rebuilt per pass, since a backward consumes its graph.
        let mut gradients = Gradients::new(self, inner_masks.as_ref());

        // 2. Head and loss, from the last layer's output.
        let pass = gradients.pass();
        let last = Tensor::from_inner(x).require_grad(); // [batch, seq, hidden]
        let loss = loss_of_logits(self.head(last.clone(), pass.hidden.as_ref())); // [1]
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let mut backward = loss.backward();
        let mut upstream = last.grad(&backward).expect("the head depends on its input"); // [batch, seq, hidden]
        gradients.collect(&pass, &mut backward);

        // 3. Each layer from the last: recompute with a graph, back-propagate ∂loss/∂output.
        let rope = self.rope(seq, &device);
        for index in (0..self.layers.len()).rev() {
            let input = layer_inputs.pop().expect("one input per layer"); // [batch, seq, hidden]
            upstream = self.layer_backward(index, input, upstream, &rope, &mut gradients);
        }

        // 4. The embedding.
        let pass = gradients.pass();
        let embedded = self.embed_tokens.forward(input_ids); // [batch, seq, hidden]
        let mut backward = (embedded * Tensor::from_inner(upstream)).sum().backward();
        gradients.collect(&pass, &mut backward);

        CheckpointedBackward {
            loss: loss_value,
            gradients: gradients.parameters.grads(),
            mask_gradients: gradients.masks.into_masks(),
        }
    }

    /// Layer `index`'s backward pass, recomputed from its `input: [batch, seq, hidden]` (inner):
    /// `∂loss/∂output` → `∂loss/∂input` (inner), its parameters' and masks' gradients into
    /// `gradients`.
    ///
    /// A layer with heads runs in two graphs so that its attention never holds `[batch, heads,
    /// seq, seq]`: the first from the input to the attention's queries, keys and values; the
    /// context is computed from their values block by block ([`blockwise_attention`]); the second
    /// graph runs from leaves of the input and of the context through `o_proj` and the MLP. The
    /// second's backward gives `∂loss/∂context`, [`blockwise_attention::backward`] turns it into
    /// `∂loss/∂query`, `∂loss/∂key`, `∂loss/∂value`, and the surrogate `Σ sum(t ⊙ ∂loss/∂t)` over
    /// the three back-propagates them through the first graph. The input's gradient is the sum of
    /// the two graphs' (the residual path and the attention path).
    fn layer_backward(
        &self,
        index: usize,
        input: Tensor<3>,
        upstream: Tensor<3>,
        rope: &Rope,
        gradients: &mut Gradients<'_>,
    ) -> Tensor<3> {
        let layer = &self.layers[index];
        let precision = self.precision();

        // The attention's inputs, with a graph from a leaf of the layer input.
        let first = gradients.pass();
        let first_input = Tensor::from_inner(input.clone()).require_grad(); // [batch, seq, hidden]
        let first_masks = self.layer_masks(first.masks.as_ref(), first.hidden.as_ref(), index);
        let attention_inputs =
            layer.attention_inputs(first_input.clone(), rope, &first_masks, precision);
        let values = attention_inputs.as_ref().map(|(query, key, value)| {
            [query, key, value].map(|t| t.clone().inner()) // [batch, heads, seq, head_dim] each
        });
        let context = values.as_ref().map(|[query, key, value]| {
            Tensor::from_inner(blockwise_attention::forward(query, key, value, precision))
                .require_grad() // [batch, heads, seq, head_dim]
        });

        // The rest of the layer, from leaves of its input and of the context.
        let second = gradients.pass();
        let second_input = Tensor::from_inner(input).require_grad(); // [batch, seq, hidden]
        let second_masks = self.layer_masks(second.masks.as_ref(), second.hidden.as_ref(), index);
        let output = layer.forward_from_context(
            second_input.clone(),
            context.clone(),
            second_masks,
            precision,
        );
        let mut backward = (output * Tensor::from_inner(upstream)).sum().backward();
        let mut d_input = second_input
            .grad(&backward)
            .expect("a layer's output depends on its input"); // [batch, seq, hidden]
        let d_context = context.and_then(|context| context.grad(&backward));
        gradients.collect(&second, &mut backward);

        // Back through the attention to its inputs, and through the first graph.
        if let (Some((query, key, value)), Some([query_value, key_value, value_value])) =
            (attention_inputs, values)
        {
            let d_context = d_context.unwrap_or_else(|| query_value.zeros_like()); // [batch, heads, seq, head_dim]
            let (d_query, d_key, d_value) = blockwise_attention::backward(
                &query_value,
                &key_value,
                &value_value,
                &d_context,
                precision,
            );
            let surrogate = (query * Tensor::from_inner(d_query)).sum()
                + (key * Tensor::from_inner(d_key)).sum()
                + (value * Tensor::from_inner(d_value)).sum(); // [1]
            let mut backward = surrogate.backward();
            if let Some(d_first_input) = first_input.grad(&backward) {
                d_input = d_input + d_first_input;
            }
            gradients.collect(&first, &mut backward);
        }
        d_input
    }
}

/// The gradients of a checkpointed backward, summed over its passes.
struct Gradients<'a> {
    model: &'a Llama,
    /// The masks on the inner backend, of which each pass makes leaves.
    inner_masks: Option<&'a Masks>,
    parameters: GradientsAccumulator<Llama>,
    masks: MaskGradients,
}

/// One pass's mask leaves and the hidden mask built from them.
struct Pass {
    masks: Option<Masks>,
    hidden: Option<HiddenMask>,
}

impl<'a> Gradients<'a> {
    fn new(model: &'a Llama, inner_masks: Option<&'a Masks>) -> Self {
        Gradients {
            model,
            inner_masks,
            parameters: GradientsAccumulator::new(),
            masks: MaskGradients::default(),
        }
    }

    /// Fresh mask leaves for one pass.
    fn pass(&self) -> Pass {
        let masks = self.inner_masks.map(Masks::leaves);
        let hidden = masks
            .as_ref()
            .and_then(|m| m.hidden_z.as_ref())
            .map(HiddenMask::new);
        Pass { masks, hidden }
    }

    /// Adds what `backward` (of a graph built with `pass`'s leaves) gives the parameters and masks.
    fn collect(&mut self, pass: &Pass, backward: &mut burn::tensor::Gradients) {
        self.parameters.accumulate(
            self.model,
            GradientsParams::from_module(backward, self.model),
        );
        if let Some(leaves) = &pass.masks {
            self.masks.add(leaves, backward);
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
    fn add(&mut self, leaves: &Masks, gradients: &burn::tensor::Gradients) {
        fn add_one<const D: usize>(
            sum: &mut Option<Tensor<D>>,
            leaf: &Option<Tensor<D>>,
            gradients: &burn::tensor::Gradients,
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
    /// MHA and GQA, tied and untied heads, with and without masks, fp32 and bf16, within one block
    /// of query rows and over several (the checkpointed attention is blockwise).
    #[test]
    fn checkpointed_gradients_equal_the_plain_backward() {
        let long = blockwise_attention::QUERY_BLOCK + 9;
        for (tied, key_value_heads, with_masks, precision, [batch, seq]) in [
            (false, 4, true, Precision::Fp32, [2, 7]),
            (true, 2, true, Precision::Fp32, [2, 7]),
            (true, 2, false, Precision::Fp32, [2, 7]),
            (false, 2, true, Precision::Bf16, [2, 7]),
            (false, 2, true, Precision::Fp32, [1, long]),
            (true, 4, true, Precision::Bf16, [1, long]),
        ] {
            let device = crate::model::device::for_tests().autodiff();
            device.seed(5);
            let mut config = LlamaConfig::new(24, 16, 12, 3, 4, key_value_heads);
            config.head_dim = 4;
            config.tie_word_embeddings = tied;
            config.initializer_range = 0.3;
            let model = Llama::new(&config, &device).with_precision(precision);
            let ids: Vec<i64> = (0..batch * seq).map(|i| (i as i64 * 5 + 3) % 24).collect();
            let input_ids =
                Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), &device);
            let targets = Tensor::<2, Int>::from_data(
                TensorData::new(
                    ids.iter().map(|i| (i + 1) % 24).collect::<Vec<_>>(),
                    [batch, seq],
                ),
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

            // Over several blocks in bf16 the context and the key and value gradients are sums of per-block bf16
            // products (in fp32) where the whole-sequence attention makes one bf16 product: they agree to
            // bf16's resolution (2⁻⁸ ≈ 4e-3), not to fp32 rounding.
            let tolerance = if precision == Precision::Bf16 && seq > 7 {
                1e-2
            } else {
                1e-5
            };
            let checkpointed = model.backward_checkpointed(input_ids, masks.as_ref(), |logits| {
                cross_entropy(logits, targets)
            });
            assert!(
                (checkpointed.loss - plain_loss).abs() < tolerance * plain_loss.abs().max(1.0),
                "{tied} {key_value_heads} {with_masks} {precision}: loss {} vs plain {plain_loss}",
                checkpointed.loss
            );
            let mut gradients = checkpointed.gradients;
            let case = format!(
                "tied {tied}, groups {key_value_heads}, masks {with_masks}, {precision}, seq {seq}"
            );
            let mut compared = 0;
            let mut check = |name: &str, id, rank: usize| {
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
                    difference < tolerance as f32,
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
                    assert!(
                        difference < tolerance as f32,
                        "{case}: {name} differs by {difference}"
                    );
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
