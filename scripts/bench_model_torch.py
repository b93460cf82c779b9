#!/usr/bin/env python3
"""PyTorch side of `sheared-bench model`: the same LLaMA training step in transformers' LlamaForCausalLM.

Prints one JSON object: per measured step the forward, backward and optimiser seconds, and the
process's peak RSS. Called by the Rust benchmark with identical config, batch, sequence length and
thread count; can be run alone:
    python scripts/bench_model_torch.py --vocab 8192 --hidden 384 --intermediate 1024 --layers 8 \
        --heads 6 --batch 4 --seq 256 --threads 2 --steps 3 --warmup 1
"""

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM


MATMUL_WARMUP = 3
MATMUL_REPEATS = 20


def main():
    parser = argparse.ArgumentParser()
    for name in ["vocab", "hidden", "intermediate", "layers", "heads", "batch", "seq", "threads", "steps", "warmup"]:
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--tied", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: torch.autocast(bfloat16) over fp32 parameters, as sheared's bf16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)

    torch.set_num_threads(args.threads)
    # AdamW's second moment decays into denormal floats within a few steps at small gradients; x86
    # handles those ~100x slower (an earlier peer measured a 2.8 s AdamW step for 20M parameters from
    # this). Flush them, as GPUs and sheared's kernels effectively do, so the peer is not handicapped.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads or args.heads, head_dim=args.hidden // args.heads,
                         max_position_embeddings=max(2048, args.seq), tie_word_embeddings=args.tied)
    config._attn_implementation = "sdpa"  # torch's fused scaled_dot_product_attention
    model = LlamaForCausalLM(config).float().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    steps = []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        with autocast:
            logits = model(input_ids=inputs, use_cache=False).logits  # [batch, seq, vocab]
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), targets.reshape(-1))
        loss_value = loss.item()
        forward_done = time.perf_counter()
        loss.backward()
        sync()
        backward_done = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        optimizer_done = time.perf_counter()
        if step >= args.warmup:
            steps.append({"forward_s": forward_done - start, "backward_s": backward_done - forward_done,
                          "optimizer_s": optimizer_done - backward_done, "loss": loss_value})
    # One matmul of the MLP's shape, [batch·seq, hidden] × [hidden, intermediate], in fp32: what the
    # step's largest products cost on their own, to tell the matmul kernels from the rest.
    a = torch.randn(args.batch * args.seq, args.hidden, device=device)
    b = torch.randn(args.hidden, args.intermediate, device=device)
    for _ in range(MATMUL_WARMUP):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(MATMUL_REPEATS):
        a @ b
    sync()
    matmul_s = (time.perf_counter() - start) / MATMUL_REPEATS
    parameters = sum(p.numel() for p in model.parameters())
    peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_device_bytes = torch.cuda.max_memory_allocated(device) if on_gpu else None
    print(json.dumps({"torch_version": torch.__version__, "parameters": parameters, "steps": steps,
                      "peak_rss_bytes": peak_rss_bytes, "peak_device_bytes": peak_device_bytes,
                      "matmul_s": matmul_s}))


if __name__ == "__main__":
    main()
