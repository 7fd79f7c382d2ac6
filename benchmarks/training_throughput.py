"""Training throughput: framesft's trainer against a plain TRL SFTTrainer, same model, data and steps.

    .venv/bin/python benchmarks/training_throughput.py --examples 512 --steps 12

Both runs use the embedded SmolLM2-135M-Instruct, LoRA r16/alpha32 on all projections, the same 512 real
training chunks (train_data.csv), the same prompt and answer tokens (input ids and completion mask built by
framesft's prompt builder), batch 8, lr 2e-4, the same number of optimizer steps:
- ours: length-grouped batches, left padding, LM head on the answer positions only, bf16 autocast where the CPU
  has native bf16 (LoRA weights and optimizer state stay fp32);
- trl:  SFTTrainer with its default collation (right padding to the longest in random batches), full LM head,
  fp32, loss on the completion tokens only.
Each method runs in its own process (clean peak RSS). Writes benchmarks/results/training_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "training_throughput.json"
LABELS = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]


def encoded_examples(n: int):
    import pandas as pd

    from framesft.config import FrameSFTConfig
    from framesft.modeling import load_tokenizer, resolve_model_path
    from framesft.prompting import PromptBuilder

    config = FrameSFTConfig()
    tokenizer = load_tokenizer(resolve_model_path(config.model.base_model), False)
    builder = PromptBuilder(tokenizer, LABELS, config.prompt, 512)
    frame = pd.read_csv(SHARED / "train_data.csv", dtype=str, keep_default_na=False).sample(n=n, random_state=0)
    examples = [builder.encode_example(t, l) for t, l in zip(frame.chunk_text, frame.frame_name)]
    return config, tokenizer, examples


class TokenCounter:
    """Wraps a collator and counts the real (non-pad) tokens it hands to the model."""

    def __init__(self, collator):
        self.collator = collator
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += int(batch["attention_mask"].numel())
        return batch


def common_args(steps: int, out: Path) -> dict:
    return dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no",
                eval_strategy="no", report_to="none", seed=0, data_seed=0, use_cpu=True, disable_tqdm=True)


def run_ours(steps: int, n: int, out: Path) -> dict:
    from transformers import TrainingArguments

    from framesft.methods import build_method
    from framesft.methods.sft import AnswerOnlyCollator
    from framesft.modeling import attach_lora, cpu_supports_bf16, load_base_model, resolve_model_path
    from framesft.training import LabelTrainer

    config, tokenizer, examples = encoded_examples(n)
    import torch

    model = attach_lora(load_base_model(config, resolve_model_path(config.model.base_model), torch.device("cpu"),
                                        for_training=True), config)
    counter = TokenCounter(AnswerOnlyCollator(tokenizer.pad_token_id))
    args = TrainingArguments(**common_args(steps, out), bf16=cpu_supports_bf16(), remove_unused_columns=False,
                             train_sampling_strategy="group_by_length")
    trainer = LabelTrainer(model=model, args=args, data_collator=counter,
                           train_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in examples],
                           method=build_method(config, tokenizer, LABELS), validate=lambda model: {})
    return timed_train(trainer, counter, args.bf16)


def run_trl(steps: int, n: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from framesft.modeling import load_base_model, resolve_model_path
    from framesft.prompting import IGNORE_INDEX

    config, tokenizer, examples = encoded_examples(n)
    model = load_base_model(config, resolve_model_path(config.model.base_model), torch.device("cpu"),
                            for_training=True)
    dataset = Dataset.from_list([{"input_ids": e.input_ids,
                                  "completion_mask": [int(t != IGNORE_INDEX) for t in e.labels]} for e in examples])
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=config.training.lora_target_modules)
    args = SFTConfig(**common_args(steps, out), bf16=False, max_length=512, packing=False, padding_free=False,
                     completion_only_loss=True, dataset_kwargs={"skip_prepare_dataset": False})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    return timed_train(trainer, counter, False)


def timed_train(trainer, counter: TokenCounter, bf16: bool) -> dict:
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "seconds": round(seconds, 1),
        "optimizer_steps": trainer.state.global_step,
        "real_tokens": counter.real_tokens,
        "padded_tokens": counter.padded_tokens,
        "padding_fraction": round(1 - counter.real_tokens / counter.padded_tokens, 3),
        "real_tokens_per_second": round(counter.real_tokens / seconds, 1),
        "final_loss_mean_last_4_steps": round(sum(losses[-4:]) / len(losses[-4:]), 4),
        "loss_curve": [round(x, 4) for x in losses],
        "bf16_autocast": bf16,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--method", choices=["ours", "trl"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    work = REPO / "benchmarks" / "work" / "throughput"
    if args.method:
        result = (run_ours if args.method == "ours" else run_trl)(args.steps, args.examples, work / args.method)
        print("RESULT " + json.dumps(result))
        return

    results = {}
    for method in ("ours", "trl"):
        done = subprocess.run([sys.executable, __file__, "--method", method, "--examples", str(args.examples),
                               "--steps", str(args.steps)], capture_output=True, text=True, env=os.environ)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"{method} failed:\n{done.stderr[-4000:]}")
        results[method] = json.loads(lines[-1][len("RESULT "):])
        print(method, json.dumps(results[method]))
    report = {
        "benchmark": "training throughput, framesft trainer vs plain TRL SFTTrainer",
        "model": "embedded:smollm2-135m-instruct",
        "examples_in_dataset": args.examples,
        "batch_size": 8,
        "optimizer_steps": args.steps,
        "cores": os.cpu_count(),
        "methods": results,
        "ratios": {
            "real_tokens_per_second_ours_over_trl": round(results["ours"]["real_tokens_per_second"]
                                                          / results["trl"]["real_tokens_per_second"], 2),
            "final_loss_ours_minus_trl": round(results["ours"]["final_loss_mean_last_4_steps"]
                                               - results["trl"]["final_loss_mean_last_4_steps"], 4),
            "peak_rss_ours_over_trl": round(results["ours"]["peak_rss_mib"] / results["trl"]["peak_rss_mib"], 2),
        },
        "target": "real tokens/s >= 2x TRL, final loss equal or lower at the same number of optimizer steps",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
