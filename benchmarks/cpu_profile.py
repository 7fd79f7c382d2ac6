"""Where CPU time goes: torch profiler breakdowns of label scoring (fp32 vs bf16 weights) and of a LoRA training
step (PEFT's stock LoRA layer vs framesft's CPU default: cpu_lora.SparseDropout and the fused LoRA layer), on
real passages, in one run.

    .venv/bin/python benchmarks/cpu_profile.py

Scoring: each embedded model (fresh LoRA adapter merged in), --score-passages dev passages, weights in fp32 and
in bf16. Training: each embedded model, LoRA r16 on all projections, fp32, batch 8 of train_data.csv,
--train-steps optimizer steps (answer-only loss, AdamW). For each profile: total seconds and the operators with
the most self time (percent of the total). The matmul roof is measured first, as in the other benchmarks.
Writes benchmarks/results/cpu_profile.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from roofline import measure_roof

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "cpu_profile.json"
LABELS = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]
MODELS = ["embedded:smollm2-135m-instruct", "embedded:gemma3-270m"]


def top_operators(prof, seconds: float, n: int = 10) -> list[dict]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "calls": e.count, "self_seconds": round(e.self_cpu_time_total / 1e6, 2),
             "percent": round(100 * e.self_cpu_time_total / 1e6 / seconds, 1)} for e in events]


def profiled(fn, warm_up) -> dict:
    warm_up()  # allocator, kernel selection
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "top_operators": top_operators(prof, seconds)}


def config_for(base_model: str):
    from framesft.config import FrameSFTConfig

    return FrameSFTConfig.model_validate({"model": {"base_model": base_model, "dtype": "float32"}})


def scoring_profiles(base_model: str, passages: int) -> dict:
    from framesft.modeling import attach_lora, load_base_model, load_tokenizer, resolve_model_path
    from framesft.precision import resolve_plan
    from framesft.prompting import PromptBuilder
    from framesft.scoring import LabelScorer

    config = config_for(base_model)
    path = resolve_model_path(base_model)
    tokenizer = load_tokenizer(path, False)
    builder = PromptBuilder(tokenizer, LABELS, config.prompt, 512)
    texts = pd.read_csv(SHARED / "dev_data.csv", dtype=str, keep_default_na=False)["chunk_text"][:passages]
    prompts = [builder.encode_prompt(t) for t in texts]
    plan = resolve_plan(config, torch.device("cpu"))
    model = attach_lora(load_base_model(config, path, plan, for_training=False), config)
    model = model.merge_and_unload().eval()
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        scorer = LabelScorer(model, builder, 4096, 16)
        result[str(dtype).removeprefix("torch.")] = profiled(lambda: scorer.score_prompts(prompts),
                                                             lambda: scorer.score_prompts(prompts[:2]))
    return result


def training_profiles(base_model: str, steps: int) -> dict:
    from framesft.cpu_lora import use_fused_lora, use_sparse_dropout
    from framesft.methods.sft import AnswerOnlyCollator, answer_only_loss
    from framesft.modeling import attach_lora, load_base_model, load_tokenizer, resolve_model_path
    from framesft.precision import resolve_plan
    from framesft.prompting import PromptBuilder

    config = config_for(base_model)
    path = resolve_model_path(base_model)
    tokenizer = load_tokenizer(path, False)
    builder = PromptBuilder(tokenizer, LABELS, config.prompt, 512)
    frame = pd.read_csv(SHARED / "train_data.csv", dtype=str, keep_default_na=False).sample(n=8 * (steps + 1),
                                                                                           random_state=0)
    examples = [builder.encode_example(t, label) for t, label in zip(frame.chunk_text, frame.frame_name)]
    collate = AnswerOnlyCollator(tokenizer.pad_token_id)
    batches = [collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples[i:i + 8]])
               for i in range(0, len(examples), 8)]
    warm_up, batches = batches[:1], batches[1:]
    result = {}
    for variant in ("stock_peft", "framesft_default"):
        torch.manual_seed(0)
        plan = resolve_plan(config, torch.device("cpu"))
        model = attach_lora(load_base_model(config, path, plan, for_training=True), config)
        if variant == "framesft_default":  # what training.lora_model does on CPU
            use_sparse_dropout(model)
            use_fused_lora(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        model.train()

        def run_steps(batches=batches):
            for batch in batches:
                answer_only_loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad()

        result[variant] = profiled(run_steps, lambda: run_steps(warm_up))
        result[variant]["real_tokens_per_second"] = round(sum(int(b["attention_mask"].sum()) for b in batches)
                                                          / result[variant]["seconds"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--score-passages", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()
    report = {"benchmark": "CPU profile of scoring and training", "roof": measure_roof(),
              "scoring": {m: scoring_profiles(m, args.score_passages) for m in MODELS},
              "training": {m: training_profiles(m, args.train_steps) for m in MODELS}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1)[:6000])


if __name__ == "__main__":
    main()
