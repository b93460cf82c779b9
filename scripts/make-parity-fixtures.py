#!/usr/bin/env python3
"""Generate the parity fixtures in tests/fixtures/parity/ with Hugging Face transformers.

Each fixture is a tiny random-weight LLaMA saved with `save_pretrained` plus `reference.json`:
`input_ids` [batch, seq], the f32 `logits` transformers computes for them (flattened, [batch, seq,
vocab]) and `mean_loss` (transformers' `labels=input_ids` loss: token mean over the shifted targets).
The Rust tests (tests/model_parity.rs) load the folders and assert logits and loss within 1e-4.

Fixtures:
  mha_untied     multi-head attention, untied LM head, f32, sharded (model.safetensors.index.json)
  gqa_tied       grouped-query attention (4 heads / 2 groups), tied embeddings, bf16 file
  head_dim       explicit head_dim (6) != hidden/heads (8), llama3 rope scaling, f16 file
  per_layer      per-layer widths (layer 1 narrower, layer 2 without attention) built with
                 src/model/modeling_sheared_llama.py, the module sheared writes next to such configs
  gguf_tiny      a GGUF file (Q8_0, Q4_0, Q4_1, F16, F32 tensors, q/k permuted the llama.cpp way,
                 a small GPT-2 style vocabulary) written with the `gguf` package, and the logits
                 transformers computes from gguf's own dequantisation of it

Not run in CI. Run:  VENV/bin/python scripts/make-parity-fixtures.py  (VENV: torch + transformers)
(needs torch, transformers, safetensors, gguf, numpy)
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity")


def randomize(model, generator, std=0.3):
    """Larger-than-default weights so that the logits are far from uniform (a real test)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(std * torch.randn(parameter.shape, generator=generator))


def reference(model, input_ids):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=input_ids)
    return {
        "input_ids": input_ids.tolist(),
        "logits_shape": list(out.logits.shape),
        "logits": [round(float(v), 7) for v in out.logits.float().flatten()],
        "mean_loss": float(out.loss),
    }


def write_reference(folder, data):
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(data, f)


def make_hf_fixture(name, config_kwargs, dtype, seed, shard=None):
    folder = os.path.join(ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    generator = torch.Generator().manual_seed(seed)
    config = LlamaConfig(**config_kwargs)
    model = LlamaForCausalLM(config).float()
    randomize(model, generator)
    save_kwargs = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(folder, **save_kwargs)
    # The reference is what transformers computes for the folder as saved, loaded in f32. (Casting the
    # in-memory model back with .float() would not do: .to(f16) also rounds the RoPE inv_freq buffer.)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    input_ids = torch.randint(0, config.vocab_size, (2, 7), generator=generator)
    write_reference(folder, reference(model, input_ids))
    print(name, sorted(os.listdir(folder)))


def make_per_layer_fixture(seed):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "model"))
    from modeling_sheared_llama import ShearedLlamaForCausalLM

    folder = os.path.join(ROOT, "per_layer")
    shutil.rmtree(folder, ignore_errors=True)
    generator = torch.Generator().manual_seed(seed)
    widths = [
        {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24},
        {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 10},
        {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 16},
    ]
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, architectures=["ShearedLlamaForCausalLM"],
                         auto_map={"AutoModelForCausalLM": "modeling_sheared_llama.ShearedLlamaForCausalLM"})
    config.sheared_layer_widths = widths
    model = ShearedLlamaForCausalLM(config).float()
    randomize(model, generator)
    model.save_pretrained(folder)
    input_ids = torch.randint(0, config.vocab_size, (2, 7), generator=generator)
    write_reference(folder, reference(model, input_ids))
    print("per_layer", sorted(os.listdir(folder)))


def permute_for_llama_cpp(weights, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def make_gguf_fixture(seed):
    import gguf
    from gguf import GGMLQuantizationType as Q

    folder = os.path.join(ROOT, "gguf_tiny")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    generator = torch.Generator().manual_seed(seed)
    # A vocabulary of single characters, one merge, and two control tokens.
    tokens = ["<|endoftext|>", "<|im_start|>"] + list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", "ab", "Ġa", "."]
    types = [3, 3] + [1] * (len(tokens) - 2)
    merges = ["a b", "Ġ a"]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
                         rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=0)
    model = LlamaForCausalLM(config).float()
    randomize(model, generator)
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}

    writer = gguf.GGUFWriter(os.path.join(folder, "tiny.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(8)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)

    plan = [  # (gguf name, hf name, type, heads to permute by)
        ("token_embd.weight", "model.embed_tokens.weight", Q.Q8_0, None),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", Q.F32, None),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", Q.Q4_0, 4),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", Q.Q4_1, 2),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", Q.Q8_0, None),
        ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight", Q.F16, None),
        ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", Q.F32, None),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", Q.Q4_1, None),
        ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", Q.Q4_0, None),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", Q.Q8_0, None),
        ("output_norm.weight", "model.norm.weight", Q.F32, None),
    ]
    dequantized = {}
    for gguf_name, hf_name, qtype, heads in plan:
        weights = state[hf_name]
        if heads is not None:
            weights = permute_for_llama_cpp(weights, heads)
        data = gguf.quants.quantize(weights, qtype)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        # The reference dequantisation is gguf's own, then un-permuted the way transformers does it.
        back = gguf.quants.dequantize(data, qtype).reshape(weights.shape).astype(np.float32)
        if heads is not None:
            back = back.reshape(heads, back.shape[0] // heads // 2, 2, *back.shape[1:]).swapaxes(1, 2).reshape(back.shape)
        dequantized[hf_name] = torch.from_numpy(np.ascontiguousarray(back))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    model.load_state_dict(dequantized, strict=False)
    model.tie_weights()
    input_ids = torch.randint(0, config.vocab_size, (2, 7), generator=generator)
    data = reference(model, input_ids)
    data["text"] = "ab ab."
    # BPE applies the lower-ranked merge first: "Ġab" is Ġ + (a b), since "a b" outranks "Ġ a".
    data["text_ids"] = [tokens.index("ab"), tokens.index("Ġ"), tokens.index("ab"), tokens.index(".")]
    write_reference(folder, data)
    print("gguf_tiny", sorted(os.listdir(folder)))


def main():
    os.makedirs(ROOT, exist_ok=True)
    make_hf_fixture(
        "mha_untied",
        dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, head_dim=4, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
        torch.float32, seed=1, shard="8KB",
    )
    make_hf_fixture(
        "gqa_tied",
        dict(vocab_size=32, hidden_size=16, intermediate_size=20, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=True),
        torch.bfloat16, seed=2,
    )
    make_hf_fixture(
        "head_dim",
        dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=6, rms_norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        torch.float16, seed=3,
    )
    make_per_layer_fixture(seed=5)
    make_gguf_fixture(seed=4)


if __name__ == "__main__":
    sys.exit(main())
