"""Label scoring speed on real passages, against three references measured in the same run.

    .venv/bin/python benchmarks/scoring_speed.py --passages 300

1. scorer   framesft.scoring.LabelScorer (prompt once, shared KV cache for the label continuations)
2. naive    one full sequence per (passage, label), summing the label's log-probabilities
3. generate model.generate (greedy) and parsing the text into a label (unparseable outputs are counted)
4. floor    one batched pass of the model body over the same prompts: hidden states only, no output
            projection, no scoring

Model: the embedded default (SmolLM2-135M-Instruct, fp32, CPU). Passages: half from dev_data.csv, half from
train_data.csv (../shared/data/brexit). Writes benchmarks/results/scoring_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from framesft.config import FrameSFTConfig, load_config
from framesft.modeling import load_base_model, load_tokenizer, pick_device, resolve_model_path
from framesft.prompting import PromptBuilder
from framesft.scoring import LabelScorer, naive_label_scores, pad_batch, positions_from_mask, token_budget_batches

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "scoring_speed.json"


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)


def load_passages(n: int) -> pd.DataFrame:
    read = lambda name: pd.read_csv(SHARED / name, dtype=str, keep_default_na=False, encoding="utf-8-sig")  # noqa: E731
    dev, train = read("dev_data.csv"), read("train_data.csv")
    n_dev = min(len(dev), n // 2)
    return pd.concat([dev.sample(n=n_dev, random_state=0), train.sample(n=n - n_dev, random_state=0)],
                     ignore_index=True)


def floor_pass(model, prompts, pad_id, token_budget, max_batch):
    """The model body over every prompt, batched like the scorer: the cost no scorer can go below."""
    body = model.get_decoder()
    with torch.inference_mode():
        for batch in token_budget_batches([len(p) for p in prompts], token_budget, max_batch):
            ids, mask = pad_batch([prompts[i] for i in batch], pad_id, "left", model.device)
            body(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False)


def generate_labels(model, tokenizer, builder, prompts, token_budget, max_batch):
    """Greedy generation, then parse: exact label, else case-insensitive match; anything else is invalid."""
    max_new = builder.max_answer_tokens + 2
    outputs = [""] * len(prompts)
    with torch.inference_mode():
        for batch in token_budget_batches([len(p) for p in prompts], token_budget, max_batch):
            ids, mask = pad_batch([prompts[i] for i in batch], tokenizer.pad_token_id, "left", model.device)
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
            for row, index in enumerate(batch):
                outputs[index] = tokenizer.decode(generated[row, ids.shape[1]:], skip_special_tokens=True)
    by_casefold = {label.casefold(): label for label in builder.labels}
    parsed = [by_casefold.get(text.strip().strip(".").casefold()) for text in outputs]
    return parsed, outputs


def timed(fn):
    with PeakRSS() as memory:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, memory.mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--passages", type=int, default=300)
    parser.add_argument("--config", default=None, help="config for model/prompt (default: the built-in defaults)")
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()

    config = load_config(args.config) if args.config else FrameSFTConfig()
    device = pick_device()
    model_path = resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, False)
    labels = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]
    builder = PromptBuilder(tokenizer, labels, config.prompt, config.data.max_length)
    model = load_base_model(config, model_path, device, for_training=False).eval()

    passages = load_passages(args.passages)
    prompts = [builder.encode_prompt(text) for text in passages["chunk_text"]]
    prompt_tokens = sum(len(p) for p in prompts)
    scorer = LabelScorer(model, builder, args.token_budget, args.max_batch)
    scorer.score_prompts(prompts[:4])  # warm-up (allocator, kernels)

    results = {}
    scores, seconds, mib = timed(lambda: scorer.score_prompts(prompts))
    results["scorer"] = {"seconds": seconds, "peak_rss_mib": mib}
    naive, seconds, mib = timed(lambda: naive_label_scores(model, builder, prompts))
    results["naive"] = {"seconds": seconds, "peak_rss_mib": mib}
    (parsed, raw), seconds, mib = timed(lambda: generate_labels(model, tokenizer, builder, prompts,
                                                                args.token_budget, args.max_batch))
    results["generate"] = {"seconds": seconds, "peak_rss_mib": mib,
                           "unparseable_outputs": sum(p is None for p in parsed),
                           "examples_of_unparseable": [r for p, r in zip(parsed, raw) if p is None][:5]}
    _, seconds, mib = timed(lambda: floor_pass(model, prompts, tokenizer.pad_token_id, args.token_budget,
                                               args.max_batch))
    results["floor"] = {"seconds": seconds, "peak_rss_mib": mib}

    for entry in results.values():
        entry["texts_per_second"] = round(len(prompts) / entry["seconds"], 2)
        entry["seconds"] = round(entry["seconds"], 1)
    scorer_seconds = results["scorer"]["seconds"]
    fast_predictions = scores.predicted_index
    naive_predictions = naive.argmax(axis=1)
    report = {
        "benchmark": "label scoring speed",
        "model": config.model.base_model,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "passages": len(prompts),
        "prompt_tokens": prompt_tokens,
        "labels": labels,
        "label_tokens": {label: len(ids) for label, ids in builder.label_token_ids.items()},
        "methods": results,
        "ratios": {
            "scorer_speedup_vs_naive": round(results["naive"]["seconds"] / scorer_seconds, 2),
            "scorer_speedup_vs_generate": round(results["generate"]["seconds"] / scorer_seconds, 2),
            "scorer_time_over_floor": round(scorer_seconds / results["floor"]["seconds"], 3),
        },
        "exactness": {
            "predictions_identical_to_naive": int((fast_predictions == naive_predictions).sum()),
            "of": len(prompts),
            "max_abs_score_difference": float(np.abs(scores.scores - naive).max()),
            "scorer_invalid_outputs": 0 if set(scores.predictions) <= set(labels) else -1,
        },
        "targets": {"speedup_vs_naive": ">= 4", "speedup_vs_generate": ">= 4", "time_over_floor": "<= 1.2"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
