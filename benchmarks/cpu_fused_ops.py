"""transformers' RMSNorm and rotary embedding against framesft's fused ones (cpu_fused.py), forward + backward,
at the embedded models' shapes, in the same run.

    .venv/bin/python benchmarks/cpu_fused_ops.py

A batch of 8 x 300 tokens in float32, as in CPU training: the residual-stream norm ([8, 300, hidden]), the
query and key norms where the model has them (Gemma 3: [8, 300, heads, head_dim]), and the rotary embedding of
queries and keys ([8, heads, 300, head_dim], transposed from the projections as the attention layer passes them).
Stock and fused alternate, one forward + backward each per round; the median of --rounds rounds after two warm-up
rounds. Writes benchmarks/results/cpu_fused_ops.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu_fused_ops.json"
BATCH, TOKENS = 8, 300
# hidden size, query heads, key/value heads, head dim, transformers class of the norm
SHAPES = {"embedded:smollm2-135m-instruct": (576, 9, 3, 64, "llama"),
          "embedded:gemma3-270m": (640, 4, 1, 256, "gemma3")}


def modeling(family: str):
    if family == "llama":
        from transformers.models.llama import modeling_llama as module

        return module, module.LlamaRMSNorm
    from transformers.models.gemma3 import modeling_gemma3 as module

    return module, module.Gemma3RMSNorm


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def compare(stock, fused, rounds: int) -> dict:
    """Milliseconds per forward + backward, stock and fused in turn, and the largest output difference."""
    for step in (stock, fused, stock, fused):  # warm-up
        step()
    times = {"stock": [], "fused": []}
    for _ in range(rounds):
        times["stock"].append(timed(stock))
        times["fused"].append(timed(fused))
    largest = max((a - b).abs().max().item() for a, b in zip(stock(), fused()))
    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"stock_ms": round(median["stock"], 2), "fused_ms": round(median["fused"], 2),
            "speedup": round(median["stock"] / median["fused"], 2), "largest_difference": largest}


def forward_backward(function, *inputs):
    """A step that runs function(*inputs) forward and backward and returns its outputs and input gradients."""
    generator = torch.Generator().manual_seed(1)

    def step():
        leaves = [x.detach().requires_grad_() for x in inputs]
        outputs = function(*leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        torch.autograd.backward(outputs, weights)
        return [o.detach() for o in outputs] + [x.grad for x in leaves]

    probe = function(*inputs)
    probe = probe if isinstance(probe, tuple) else (probe,)
    weights = [torch.randn(o.shape, generator=generator) for o in probe]
    return step


def measure(base_model: str, rounds: int) -> dict:
    from framesft.cpu_fused import _fused_rotary, use_fused_norms

    hidden, heads, kv_heads, head_dim, family = SHAPES[base_model]
    module, norm_class = modeling(family)
    rotary = getattr(module.apply_rotary_pos_emb, "fused_original", module.apply_rotary_pos_emb)
    generator = torch.Generator().manual_seed(0)
    results = {}
    norms = {"residual_stream_norm": (hidden, (BATCH, TOKENS, hidden))}
    if family == "gemma3":
        norms.update(query_norm=(head_dim, (BATCH, TOKENS, heads, head_dim)),
                     key_norm=(head_dim, (BATCH, TOKENS, kv_heads, head_dim)))
    for name, (size, shape) in norms.items():
        stock, fused = norm_class(size, eps=1e-6), norm_class(size, eps=1e-6)
        with torch.no_grad():
            stock.weight.normal_(generator=generator)
            fused.weight.copy_(stock.weight)
        stock.requires_grad_(False)  # LoRA training: frozen norm weights
        fused.requires_grad_(False)
        assert use_fused_norms(torch.nn.Sequential(fused)) == 1
        x = torch.randn(shape, generator=generator)
        results[name] = compare(forward_backward(stock, x), forward_backward(fused, x), rounds)
    q = torch.randn(BATCH, TOKENS, heads, head_dim, generator=generator).transpose(1, 2)
    k = torch.randn(BATCH, TOKENS, kv_heads, head_dim, generator=generator).transpose(1, 2)
    angles = torch.arange(TOKENS).float()[:, None] * torch.rand(head_dim // 2, generator=generator)
    emb = torch.cat([angles, angles], -1).expand(BATCH, TOKENS, head_dim)
    cos, sin = emb.cos(), emb.sin()
    results["rotary_q_and_k"] = compare(forward_backward(lambda q, k: rotary(q, k, cos, sin), q, k),
                                        forward_backward(lambda q, k: _fused_rotary(rotary)(q, k, cos, sin), q, k),
                                        rounds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    args = parser.parse_args()
    report = {"benchmark": "fused RMSNorm and rotary embedding vs transformers', forward + backward, float32",
              "command": "benchmarks/cpu_fused_ops.py" + (f" --rounds {args.rounds}" if args.rounds != 20 else ""),
              "batch": [BATCH, TOKENS], "cores": os.cpu_count(), "rounds": args.rounds,
              "models": {model: measure(model, args.rounds) for model in SHAPES}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
