"""fp32 linear layers through ATen's BLAS (Intel MKL in torch's x86 builds) and through oneDNN's own fp32 kernels,
on the shapes of the embedded models' scoring layers, in one session; bf16 alongside for the cascade's choice.

    .venv/bin/python benchmarks/fp32_linear_routes.py

For each layer shape (a scoring batch of --rows token positions through Gemma 3 270M's and SmolLM2-135M's
projections and output layers): GFLOP/s through ATen (`F.linear`, what nn.Linear runs), through oneDNN
(`precision.onednn_linear`, what the compute plan installs where it measures faster) and in bf16 (bf16 inputs and
weights, the cascade's fast pass), the best of --rounds measurements taken in turns; the largest difference of
each fp32 route from a float64 product, relative to the largest output (a true fp32 result stays near 1e-6;
bf16-rounded inputs give about 1e-3). Then the plan's own probe (`cpu_fp32_linear_rates`) and its choice. Records
the CPU (model, flags) and appends to benchmarks/results/fp32_linear_routes.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fp32_linear_routes.json"

# (model, layer, in features, out features); the output layer runs over the few answer positions of a batch.
SHAPES = [
    ("gemma3-270m", "q_proj", 640, 1024), ("gemma3-270m", "k_proj/v_proj", 640, 256),
    ("gemma3-270m", "o_proj", 1024, 640), ("gemma3-270m", "gate_proj/up_proj", 640, 2048),
    ("gemma3-270m", "down_proj", 2048, 640), ("gemma3-270m", "lm_head (1/8 of 262,144)", 640, 32768),
    ("smollm2-135m", "q_proj/o_proj", 576, 576), ("smollm2-135m", "k_proj/v_proj", 576, 192),
    ("smollm2-135m", "gate_proj/up_proj", 576, 1536), ("smollm2-135m", "down_proj", 1536, 576),
]


def rate(linear, x, weight, repeats: int) -> float:
    linear(x, weight)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        linear(x, weight)
    return 2 * x.shape[0] * x.shape[1] * weight.shape[0] * repeats / (time.perf_counter() - start) / 1e9


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result.double() - reference).abs().max() / reference.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="token positions per product (a scoring batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from framesft.precision import cpu_facts, cpu_fp32_linear_rates, cpu_prefers_onednn_fp32, onednn_linear

    routes = {"aten": F.linear, "onednn": onednn_linear, "bf16": F.linear}  # bf16: inputs and weights in bf16
    generator = torch.Generator().manual_seed(0)
    shapes = []
    for model, layer, n_in, n_out in SHAPES:
        x = torch.randn(args.rows, n_in, generator=generator)
        weight = torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5
        weights = {"aten": weight, "onednn": weight, "bf16": weight.to(torch.bfloat16)}
        inputs = {"aten": x, "onednn": x, "bf16": x.to(torch.bfloat16)}  # a bf16 model's activations are bf16
        best = dict.fromkeys(routes, 0.0)
        for _ in range(args.rounds):
            for route, linear in routes.items():
                best[route] = max(best[route], rate(linear, inputs[route], weights[route], args.repeats))
        reference = x.double() @ weight.double().T
        entry = {"model": model, "layer": layer, "shape": [args.rows, n_in, n_out],
                 "gflops": {route: round(value, 1) for route, value in best.items()},
                 "onednn_over_aten": round(best["onednn"] / best["aten"], 2),
                 "bf16_over_best_fp32": round(best["bf16"] / max(best["aten"], best["onednn"]), 2),
                 "relative_error": {"aten": relative_error(F.linear(x, weight), reference),
                                    "onednn": relative_error(onednn_linear(x, weight), reference),
                                    "bf16": relative_error(F.linear(inputs["bf16"], weights["bf16"]), reference)}}
        shapes.append(entry)
        print(f"{model:13} {layer:26} ATen {best['aten']:6.1f}  oneDNN {best['onednn']:6.1f} "
              f"({entry['onednn_over_aten']:.2f}x)  bf16 {best['bf16']:6.1f} GFLOP/s;  error ATen "
              f"{entry['relative_error']['aten']:.1e}, oneDNN {entry['relative_error']['onednn']:.1e}, bf16 "
              f"{entry['relative_error']['bf16']:.1e}", flush=True)

    cpu = cpu_facts(measured=True, linear_routes=True)
    probe = cpu_fp32_linear_rates()
    record = {"rows": args.rows, "rounds": args.rounds, "threads": torch.get_num_threads(), "shapes": shapes,
              "plan_probe_gflops": {k: round(v, 1) for k, v in probe.items()},
              "plan_routes_through_onednn": cpu_prefers_onednn_fp32(),
              "cpu": {"model": cpu.model, "kind": cpu.kind, "fp32_gflops": cpu.fp32_gflops,
                      "bf16_gflops": cpu.bf16_gflops},
              "date": time.strftime("%Y-%m-%d")}
    print(f"plan probe: ATen {probe['aten']:.0f} / oneDNN {probe['onednn']:.0f} GFLOP/s -> "
          f"{'oneDNN' if record['plan_routes_through_onednn'] else 'ATen'}; CPU {cpu.model} ({cpu.kind}, matmul "
          f"fp32 {cpu.fp32_gflops} / bf16 {cpu.bf16_gflops} GFLOP/s)")
    document = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": __doc__.split("\n\n")[0],
                                                                          "entries": []}
    document["entries"].append(record)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
