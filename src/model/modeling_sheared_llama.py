"""LLaMA with per-layer widths, as written by sheared for pruned models whose layers differ.

Load with:
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

config.json is a stock LlamaConfig (model_type "llama") whose num_attention_heads /
num_key_value_heads / intermediate_size hold the largest layer's widths, plus
`sheared_layer_widths`: one {num_attention_heads, num_key_value_heads, intermediate_size} per layer.
A width of 0 means that sub-block was pruned away entirely and is the identity.
"""

import copy

import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP


class _ZeroAttention(nn.Module):
    """An attention block with no heads: contributes nothing to the residual stream."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class _ZeroMLP(nn.Module):
    """An MLP with no intermediate units: contributes nothing to the residual stream."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


class ShearedLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        widths = getattr(config, "sheared_layer_widths", None) or []
        if len(widths) != config.num_hidden_layers:
            raise ValueError(
                f"sheared_layer_widths has {len(widths)} entries, num_hidden_layers is {config.num_hidden_layers}"
            )
        for index, (layer, width) in enumerate(zip(self.model.layers, widths)):
            layer_config = copy.deepcopy(config)
            layer_config.num_attention_heads = width["num_attention_heads"]
            layer_config.num_key_value_heads = width["num_key_value_heads"]
            layer_config.intermediate_size = width["intermediate_size"]
            if width["num_attention_heads"] > 0:
                layer.self_attn = LlamaAttention(layer_config, layer_idx=index)
            else:
                layer.self_attn = _ZeroAttention()
            if width["intermediate_size"] > 0:
                layer.mlp = LlamaMLP(layer_config)
            else:
                layer.mlp = _ZeroMLP()
        self.post_init()
