"""Label scoring speed on real passages, as a share of this machine's ceiling, with every reference measured
in the same run.

    .venv/bin/python benchmarks/scoring_speed.py --run runs/demo --run benchmarks/work/gemma3-speed

For each trained run (its base model plus its LoRA adapter; without --run: both embedded models with a freshly
initialised adapter whose B matrices are set to small random values, for speed only):
1. before    framesft's scorer as it ran before issue 13: fp32, the adapter unmerged (PEFT)
2. after     the scorer as framesft runs it now on CPU: adapter merged, fp32 weights (`model.dtype: auto`
             scores in fp32 on every CPU: see the bf16 agreement below)
3. fp32 / bf16  merged weights in fp32 and in bf16 on all passages: bf16 speed and agreement with fp32
             (identical predictions, F1 macro of each against the annotations, largest probability difference)
4. int8      torch dynamic int8 quantization of the merged fp32 model (speed and agreement)
5. eager attention, token budgets 2048 and 8192 (what else may help; kept only if it does)
6. naive     one full sequence per (passage, label); generate: greedy generation and parsing; floor: the model
             body alone over the prompts (no output projection, no scoring)
Each method also reports prompt tokens/s as a percent of the inference ceiling roof / (2N) (roofline.py), the
roof measured at the start of the run. Passages: half from dev_data.csv, half from train_data.csv
(../shared/data/brexit), all annotated. Writes benchmarks/results/scoring_speed.json.
"""

from __future__ import annotations

import argparse
import copy
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

from framesft.inference import load_classifier, merged_for_scoring
from framesft.metrics import classification_metrics
from framesft.precision import cpu_prefers_bf16, resolve_plan
from framesft.scoring import LabelScorer, naive_label_scores, pad_batch, positions_from_mask, token_budget_batches
from roofline import ceilings, measure_roof, non_embedding_parameters, share

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "scoring_speed.json"
LABELS = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]
EMBEDDED = ["embedded:smollm2-135m-instruct", "embedded:gemma3-270m"]


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


def untrained_classifier(base_model: str):
    """An embedded model with a fresh LoRA adapter (B set to small random values, so merging changes weights)."""
    from framesft.config import FrameSFTConfig
    from framesft.inference import Classifier
    from framesft.methods import build_method
    from framesft.modeling import attach_lora, load_base_model, load_tokenizer, resolve_model_path

    config = FrameSFTConfig.model_validate({"model": {"base_model": base_model, "dtype": "float32"}})
    path = resolve_model_path(base_model)
    tokenizer = load_tokenizer(path, False)
    plan = resolve_plan(config, torch.device("cpu"))
    model = attach_lora(load_base_model(config, path, plan, for_training=False), config)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=1e-3)
    return Classifier(config, LABELS, model.eval(), tokenizer, build_method(config, tokenizer, LABELS))


def score(model, classifier, prompts, **scorer_kwargs):
    """Scores of all prompts with `model` in place of the classifier's, timed, with peak RSS."""
    evaluation = classifier.config.evaluation
    kwargs = dict(token_budget=evaluation.token_budget, max_batch_size=evaluation.batch_size)
    kwargs.update(scorer_kwargs)
    scorer = LabelScorer(model, classifier.method.prompt, **kwargs)
    scorer.score_prompts(prompts[:2])  # warm-up (allocator, kernel selection)
    return timed(lambda: scorer.score_prompts(prompts))


def entry(seconds: float, mib: float, prompts, ceiling: float) -> dict:
    tokens = sum(len(p) for p in prompts)
    return {"passages": len(prompts), "seconds": round(seconds, 1), "peak_rss_mib": mib,
            "passages_per_second": round(len(prompts) / seconds, 2),
            "prompt_tokens_per_second": round(tokens / seconds, 1),
            "percent_of_inference_ceiling": share(tokens / seconds, ceiling)}


def agreement(reference, other, truth, labels) -> dict:
    same = reference.predicted_index == other.predicted_index
    f1 = lambda scores: classification_metrics(truth, scores.predictions, labels)["f1_macro"]  # noqa: E731
    return {"identical_predictions": int(same.sum()), "of": len(same),
            "identical_fraction": round(float(same.mean()), 4),
            "f1_macro_reference": round(f1(reference), 4), "f1_macro": round(f1(other), 4),
            "f1_macro_difference": round(f1(other) - f1(reference), 4),
            "max_probability_difference": round(float(np.abs(reference.probabilities
                                                             - other.probabilities).max()), 4)}


def benchmark_model(target: str, passages: pd.DataFrame, roof: dict, args) -> dict:
    is_run = Path(target).is_dir()
    classifier = (load_classifier(target, merge=False, dtype="float32") if is_run
                  else untrained_classifier(target))
    builder = classifier.method.prompt
    prompts = [builder.encode_prompt(text) for text in passages["chunk_text"]]
    truth = passages["frame_name"].tolist()
    labels = classifier.labels
    subset = prompts[:args.speed_passages]
    model = classifier.model
    n = non_embedding_parameters(model)
    ceiling = ceilings(roof, n)
    inference_ceiling = ceiling["inference_tokens_per_second"]
    methods, agreements = {}, {}
    print(f"{target}: N = {n:,}, inference ceiling {inference_ceiling} tokens/s", flush=True)

    def record(name, result, prompts_used):
        scores, seconds, mib = result
        methods[name] = entry(seconds, mib, prompts_used, inference_ceiling)
        print(name, json.dumps(methods[name]), flush=True)
        return scores

    before = record("before_fp32_unmerged", score(model, classifier, subset), subset)
    fp32_model = merged_for_scoring(model).eval()
    fp32 = record("fp32_merged", score(fp32_model, classifier, prompts), prompts)
    agreements["merged_vs_unmerged_fp32"] = agreement(before, head(fp32, len(subset)), truth[:len(subset)], labels)
    bf16_model = copy.deepcopy(fp32_model).to(torch.bfloat16)
    bf16 = record("bf16_merged", score(bf16_model, classifier, prompts), prompts)
    agreements["bf16_vs_fp32_merged"] = agreement(fp32, bf16, truth, labels)
    del bf16_model
    methods["after"] = dict(methods["fp32_merged"], same_as="fp32_merged")  # what model.dtype: auto scores with

    int8_model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32_model), {torch.nn.Linear},
                                                        dtype=torch.qint8)
    int8 = record("int8_dynamic", score(int8_model, classifier, subset), subset)
    agreements["int8_vs_fp32_merged"] = agreement(head(fp32, len(subset)), int8, truth[:len(subset)], labels)
    del int8_model
    for budget in (2048, 8192):
        record(f"fp32_merged_token_budget_{budget}",
               score(fp32_model, classifier, subset, token_budget=budget, max_batch_size=64), subset)
    fp32_model.set_attn_implementation("eager")
    record("fp32_merged_eager_attention", score(fp32_model, classifier, subset), subset)
    fp32_model.set_attn_implementation("sdpa")

    naive_prompts = prompts[:args.naive_passages]
    naive, seconds, mib = timed(lambda: naive_label_scores(fp32_model, builder, naive_prompts))
    methods["naive"] = entry(seconds, mib, naive_prompts, inference_ceiling)
    (parsed, raw), seconds, mib = timed(lambda: generate_labels(fp32_model, classifier.tokenizer, builder,
                                                                subset, 4096, 16))
    methods["generate"] = dict(entry(seconds, mib, subset, inference_ceiling),
                               unparseable_outputs=sum(p is None for p in parsed),
                               examples_of_unparseable=[r for p, r in zip(parsed, raw) if p is None][:3])
    _, seconds, mib = timed(lambda: floor_pass(fp32_model, subset, classifier.tokenizer.pad_token_id, 4096, 16))
    methods["floor"] = entry(seconds, mib, subset, inference_ceiling)
    naive_match = (fp32.scores[:len(naive_prompts)].argmax(1) == naive.argmax(axis=1))
    per_passage = {name: 1 / m["passages_per_second"] for name, m in methods.items()}
    return {
        "target": target,
        "base_model": classifier.config.model.base_model,
        "trained_run": is_run,
        "ceiling": ceiling,
        "prompt_tokens_per_passage": round(sum(len(p) for p in prompts) / len(prompts), 1),
        "bf16_would_be_faster_here": cpu_prefers_bf16(),
        "methods": methods,
        "agreement": agreements,
        "ratios": {
            "after_over_before": round(per_passage["before_fp32_unmerged"] / per_passage["after"], 2),
            "bf16_over_fp32_speed": round(per_passage["fp32_merged"] / per_passage["bf16_merged"], 2),
            "int8_over_fp32_speed": round(per_passage["fp32_merged"] / per_passage["int8_dynamic"], 2),
            "after_speedup_vs_naive": round(per_passage["naive"] / per_passage["after"], 2),
            "after_speedup_vs_generate": round(per_passage["generate"] / per_passage["after"], 2),
            "after_time_over_floor": round(per_passage["after"] / per_passage["floor"], 3),
        },
        "exactness_vs_naive": {"identical_predictions": int(naive_match.sum()), "of": len(naive_prompts),
                               "max_abs_score_difference": float(np.abs(fp32.scores[:len(naive_prompts)]
                                                                        - naive).max())},
    }


def head(scores, n: int):
    """The first n passages of a LabelScores (to compare with a method run on the speed subset only)."""
    from framesft.scoring import LabelScores

    return LabelScores(scores.labels, scores.scores[:n], scores.temperature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--run", action="append", default=[], help="trained run folder (repeatable); default: "
                                                                   "both embedded models with untrained adapters")
    parser.add_argument("--passages", type=int, default=300, help="passages for fp32/bf16 speed and agreement")
    parser.add_argument("--speed-passages", type=int, default=100, help="passages for the other speed variants")
    parser.add_argument("--naive-passages", type=int, default=12)
    args = parser.parse_args()

    roof = measure_roof()
    print("roof", json.dumps(roof), flush=True)
    passages = load_passages(args.passages)
    models = [benchmark_model(target, passages, roof, args) for target in (args.run or EMBEDDED)]
    report = {
        "benchmark": "label scoring speed against the machine's ceiling",
        "command": "benchmarks/scoring_speed.py " + " ".join(f"--run {r}" for r in args.run),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "roof_at_start": roof,
        "roof_at_end": measure_roof(),
        "models": models,
        "targets": {"after_percent_of_inference_ceiling": ">= 50",
                    "bf16_identical_fraction": ">= 0.99", "bf16_f1_macro_difference": "within 0.01"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps([{m["target"]: {"ratios": m["ratios"], "agreement": m["agreement"]}} for m in models],
                     indent=2))


if __name__ == "__main__":
    main()
