#!/usr/bin/env python3
"""Write tests/fixtures/chain/tiny.gguf: the tiny LLaMA of tests/fixtures/eval/tiny_model (vocab 300,
hidden 16, 2 layers, GQA 4/2 heads) with its byte-level BPE tokenizer, as a llama.cpp GGUF file, so
that tests/smollm2_chain.rs runs recipes/smollm2-cpu.toml's whole chain (GGUF → convert → tokenize with
the model's tokenizer → the task suite → prune → ...) in seconds. F32 tensors, q/k permuted the
llama.cpp way (convert_hf_to_gguf.py's LlamaModel.permute).

Needs: pip install gguf==0.17.1 safetensors numpy
"""
import json
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")


def permute(weights, heads):
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def main():
    source = os.path.join(ROOT, "eval", "tiny_model")
    config = json.load(open(os.path.join(source, "config.json")))
    tokenizer = json.load(open(os.path.join(source, "tokenizer.json")))
    state = load_file(os.path.join(source, "model.safetensors"))
    vocab = tokenizer["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {added["content"] for added in tokenizer["added_tokens"] if added.get("special")}
    types = [3 if token in special else 1 for token in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    out = os.path.join(ROOT, "chain", "tiny.gguf")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)

    names = {"token_embd.weight": ("model.embed_tokens.weight", None), "output_norm.weight": ("model.norm.weight", None)}
    for layer in range(config["num_hidden_layers"]):
        hf = f"model.layers.{layer}."
        names.update({
            f"blk.{layer}.attn_norm.weight": (hf + "input_layernorm.weight", None),
            f"blk.{layer}.attn_q.weight": (hf + "self_attn.q_proj.weight", heads),
            f"blk.{layer}.attn_k.weight": (hf + "self_attn.k_proj.weight", kv_heads),
            f"blk.{layer}.attn_v.weight": (hf + "self_attn.v_proj.weight", None),
            f"blk.{layer}.attn_output.weight": (hf + "self_attn.o_proj.weight", None),
            f"blk.{layer}.ffn_norm.weight": (hf + "post_attention_layernorm.weight", None),
            f"blk.{layer}.ffn_gate.weight": (hf + "mlp.gate_proj.weight", None),
            f"blk.{layer}.ffn_up.weight": (hf + "mlp.up_proj.weight", None),
            f"blk.{layer}.ffn_down.weight": (hf + "mlp.down_proj.weight", None),
        })
    for gguf_name, (hf_name, permute_heads) in names.items():
        weights = state[hf_name].astype(np.float32)
        if permute_heads is not None:
            weights = permute(weights, permute_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(weights))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
