"""The machine's ceiling for a model, measured in the benchmark's own run (these machines are noisy and differ).

- roof: matmul GFLOP/s of a 2048x2048 product in fp32 and in bf16, and of an fp32 linear layer of that size
  through oneDNN's own kernels (2.1-2.4x ATen's MKL on an AMD Zen 5), measured now; the ceiling uses the fastest
  (on a CPU with AVX512-BF16 but no AMX, bf16 is the slower one);
- N: the model's non-embedding parameters (every weight except the token embedding and the output projection;
  LoRA adapters not counted);
- inference ceiling: roof / (2N) tokens/s (one multiply-add per weight per token);
- LoRA training ceiling on a frozen base: roof / (4N) tokens/s (forward 2N, backward to the activations 2N; no
  weight gradients for frozen weights, LoRA's own FLOPs ignored). Attention score FLOPs are not counted either:
  for these 300-token prompts they add about 5% to 2N, so the shares below slightly understate the real use.
"""

from __future__ import annotations

import torch


def measure_roof(size: int = 2048, repeats: int = 5, rounds: int = 3) -> dict:
    """The best of `rounds` measurements per dtype, taken in turns: this VM's speed dips for seconds at a time,
    and a roof measured in a dip would inflate every share computed against it."""
    from framesft.precision import measure_linear_gflops, measure_matmul_gflops

    fp32 = bf16 = onednn = 0.0
    for _ in range(rounds):
        fp32 = max(fp32, measure_matmul_gflops(torch.float32, size, repeats))
        bf16 = max(bf16, measure_matmul_gflops(torch.bfloat16, size, repeats))
        onednn = max(onednn, measure_linear_gflops("onednn", size, repeats))
    best = max(("fp32", fp32), ("bf16", bf16), ("fp32 oneDNN", onednn), key=lambda pair: pair[1])
    return {"matmul_size": size, "fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1),
            "onednn_fp32_gflops": round(onednn, 1), "best_gflops": round(best[1], 1), "best_dtype": best[0]}


def non_embedding_parameters(model) -> int:
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    skip = {id(embedding)} | ({id(output.weight)} if output is not None else set())
    seen, total = set(), 0
    for name, parameter in model.named_parameters():
        if id(parameter) in skip or id(parameter) in seen or "lora_" in name:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def ceilings(roof: dict, n: int) -> dict:
    gflops = roof["best_gflops"] * 1e9
    return {"non_embedding_parameters": n,
            "inference_tokens_per_second": round(gflops / (2 * n), 1),
            "lora_training_tokens_per_second": round(gflops / (4 * n), 1),
            "inference_tokens_per_second_bf16_roof": round(roof["bf16_gflops"] * 1e9 / (2 * n), 1),
            "lora_training_tokens_per_second_bf16_roof": round(roof["bf16_gflops"] * 1e9 / (4 * n), 1)}


def share(tokens_per_second: float, ceiling: float) -> float:
    """Percent of the ceiling."""
    return round(100 * tokens_per_second / ceiling, 1)
