"""The shared prompt prefix computed once (scoring.LabelScorer, evaluation.reuse_prompt_prefix) against whole
prompts, side by side in one process, on real dev passages and the Brexit config's prompt, for both embedded
models (their base weights: the cost of scoring does not depend on the adapter).

    .venv/bin/python benchmarks/prefix_cache.py --passages 48 --rounds 2

Per model: prompt tokens and the shared prefix's share of them, passages/s with and without the cache (rounds
taken in turns, each the best of its passes), the ratio, and agreement (labels, largest score and probability
difference). Records the CPU (flags, fp32 matmul roof measured in the same run) in
benchmarks/results/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from framesft.config import load_config
from framesft.modeling import load_tokenizer, resolve_model_path
from framesft.precision import cpu_facts, measure_matmul_gflops, settle_cpu_math_kernels
from framesft.prompting import PromptBuilder
from framesft.scoring import LabelScorer

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "brexit" / "dev_data.csv"
RESULTS = REPO / "benchmarks" / "results" / "prefix_cache.json"
MODELS = ("embedded:smollm2-135m-instruct", "embedded:gemma3-270m")


def measure(base_model: str, texts: list[str], rounds: int) -> dict:
    from transformers import AutoModelForCausalLM

    config = load_config(REPO / "configs" / "gemma3-brexit.yaml", [f"model.base_model={base_model}"])
    path = resolve_model_path(base_model)
    builder = PromptBuilder(load_tokenizer(path, False), config.data.labels_in_order(), config.prompt,
                            config.data.max_length)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [builder.encode_prompt(t) for t in texts]
    evaluation = config.evaluation
    scorers = {reuse: LabelScorer(model, builder, evaluation.token_budget, evaluation.batch_size,
                                  reuse_prefix=reuse) for reuse in (False, True)}
    scorers[True].score_prompts(prompts[:2])  # warm-up
    seconds = {False: [], True: []}
    scores = {}
    for _ in range(rounds):
        for reuse, scorer in scorers.items():
            start = time.perf_counter()
            scores[reuse] = scorer.score_prompts(prompts)
            seconds[reuse].append(time.perf_counter() - start)
    rate = {reuse: len(prompts) / min(s) for reuse, s in seconds.items()}
    prefix = len(scorers[True].prefix)
    return {
        "model": base_model,
        "passages": len(prompts),
        "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1),
        "shared_prefix_tokens": prefix,
        "prefix_share_of_prompt_tokens": round(prefix * len(prompts) / sum(len(p) for p in prompts), 3),
        "passages_per_second_whole_prompts": round(rate[False], 3),
        "passages_per_second_shared_prefix": round(rate[True], 3),
        "speedup": round(rate[True] / rate[False], 3),
        "seconds_per_round": {"whole": [round(s, 2) for s in seconds[False]],
                              "shared_prefix": [round(s, 2) for s in seconds[True]]},
        "same_labels": int(sum(a == b for a, b in zip(scores[True].predictions, scores[False].predictions))),
        "largest_score_difference": float(np.abs(scores[True].scores - scores[False].scores).max()),
        "largest_probability_difference": float(np.abs(scores[True].probabilities
                                                       - scores[False].probabilities).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=48, help="first N passages of dev_data.csv")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    settle_cpu_math_kernels()
    texts = pd.read_csv(DEV, dtype=str, keep_default_na=False)["chunk_text"].tolist()[:args.passages]
    roof = max(measure_matmul_gflops(torch.float32) for _ in range(3))
    results = [measure(model, texts, args.rounds) for model in args.models]
    for r in results:
        print(f"{r['model']}: prefix {r['shared_prefix_tokens']} of {r['mean_prompt_tokens']} tokens "
              f"({r['prefix_share_of_prompt_tokens']:.0%}), {r['passages_per_second_whole_prompts']:.2f} -> "
              f"{r['passages_per_second_shared_prefix']:.2f} passages/s ({r['speedup']:.2f}x), same labels "
              f"{r['same_labels']}/{r['passages']}, largest probability difference "
              f"{r['largest_probability_difference']:.1e}")
    cpu = cpu_facts(measured=False)
    entry = {"command": f"benchmarks/prefix_cache.py --passages {args.passages} --rounds {args.rounds}",
             "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
             "cpu": {**cpu.__dict__, "kind": cpu.kind, "fp32_roof_gflops_this_run": round(roof, 1)},
             "results": results}
    document = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {
        "benchmark": "shared prompt prefix computed once vs whole prompts (scoring)", "runs": []}
    document["runs"].append(entry)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
