"""Training throughput on real passages, as a share of this machine's LoRA training ceiling, before and after
issue 13, against a plain TRL SFTTrainer, all in the same run.

    .venv/bin/python benchmarks/training_throughput.py --steps 8

For each embedded model (SmolLM2-135M-Instruct, Gemma 3 270M): LoRA r16/alpha32/dropout 0.05 on all
projections, the same real training chunks (train_data.csv), the same prompt and answer tokens, batch 8,
lr 2e-4, the same number of optimizer steps:
- before:    framesft's trainer as it ran before issue 13: fp32 weights under bf16 autocast where the CPU has
             native bf16 (every frozen weight re-cast at every step), PEFT's stock dropout
- after:     framesft's trainer now (training.trainable_model, precision.resolve_plan): base weights in bf16
             under autocast only where a matmul probe finds bf16 faster than fp32 (else fp32, no autocast),
             dropout that draws only the dropped positions, the fused LoRA layer (cpu_lora.py; in bf16 too),
             fused RMSNorm and rotary embedding (cpu_fused.py; fp32 only)
- bf16_base: the bf16 path forced (model.dtype: bfloat16, autocast, LoRA fp32): what `auto` picks on AMX CPUs
- trl:       SFTTrainer with its default collation (right padding, random batches), full LM head, fp32,
             loss on the completion tokens only
and three ways to trade speed for memory with `after`:
- checkpointing:         training.gradient_checkpointing: true (every decoder layer recomputed)
- checkpointing_every_2: the same with training.checkpoint_every_n_layers: 2
- malloc_mmap_8mb:       `after` under MALLOC_MMAP_THRESHOLD_=8388608 (glibc: blocks of 8 MB and more are
                         mapped and unmapped, so freed activations go back to the system instead of staying in
                         the heap; costs page faults)
framesft's methods use length-grouped batches, left padding and the LM head on the answer positions only. Each
method runs in its own process through the Trainer, for --steps optimizer steps (`--methods` picks which besides
before and after): its time includes the first steps' allocator growth, and its peak RSS is its own.

Steady state, interleaved: this VM's speed drifts by 20-30% over minutes, so runs one after another compare
badly. One more process holds before, after, after_unfused (after with PEFT's own LoRA forward: what the fused
layer adds), after_stock_norms (after with transformers' RMSNorm and rotary embedding: what cpu_fused.py adds),
checkpointing_every_2 and fp32_fused (model.dtype float32: the fp32 path with every fused operation, what the
plan picks where bf16 is not faster; where it is, `after` over fp32_fused is what choosing bf16 buys) and runs
one optimizer step of each in turn on the same batch, 2 warm-up rounds then
--rounds counted ones; it reports each method's real tokens/s and the per-round ratios to before.

The roof (fp32 and bf16 matmul GFLOP/s) is measured at the start and the end; the ceiling is roof / (4N)
tokens/s (roofline.py) with the higher of the two roofs. Writes benchmarks/results/training_throughput.json
(--output to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from roofline import ceilings, measure_roof, non_embedding_parameters, share

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "training_throughput.json"
LABELS = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]


MODELS = ["embedded:smollm2-135m-instruct", "embedded:gemma3-270m"]
METHODS = ["before", "after", "bf16_base", "trl", "checkpointing", "checkpointing_every_2", "malloc_mmap_8mb"]
INTERLEAVED = ["before", "after", "after_unfused", "after_stock_norms", "checkpointing_every_2", "fp32_fused"]
# framesft training settings and the environment of each method's process, where they differ from `after`
TRAINING = {"checkpointing": {"gradient_checkpointing": True},
            "checkpointing_every_2": {"gradient_checkpointing": True, "checkpoint_every_n_layers": 2}}
ENVIRONMENT = {"malloc_mmap_8mb": {"MALLOC_MMAP_THRESHOLD_": str(8 << 20)}}


def encoded_examples(n: int, base_model: str, dtype: str = "auto", training: dict | None = None):
    import pandas as pd

    from framesft.config import FrameSFTConfig
    from framesft.modeling import load_tokenizer, resolve_model_path
    from framesft.prompting import PromptBuilder

    config = FrameSFTConfig.model_validate({"model": {"base_model": base_model, "dtype": dtype},
                                            "training": {"bf16": True, **(training or {})}})
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


def framesft_setup(method: str, n: int, base_model: str):
    """The model, training method, autocast flag and encoded examples of one of framesft's methods."""
    import torch

    from framesft.methods import build_method
    from framesft.modeling import attach_lora, load_base_model, resolve_model_path
    from framesft.precision import cpu_supports_bf16, resolve_plan
    from framesft.training import trainable_model

    dtype = {"before": "float32", "bf16_base": "bfloat16", "fp32_fused": "float32"}.get(method, "auto")
    config, tokenizer, examples = encoded_examples(n, base_model, dtype, TRAINING.get(method))
    cpu = torch.device("cpu")
    method_ = build_method(config, tokenizer, LABELS)
    if method == "before":  # fp32 weights, stock dropout, autocast wherever the CPU has native bf16
        plan = resolve_plan(config, cpu)
        model = attach_lora(load_base_model(config, resolve_model_path(base_model), plan, for_training=True), config)
        bf16 = cpu_supports_bf16()
    else:
        model = trainable_model(config, resolve_model_path(base_model), method_, LABELS,
                                resolve_plan(config, cpu))
        if method == "after_unfused":  # PEFT's LoRA forward with the new dropout mask: the fused layer's share
            from peft.tuners.lora.layer import Linear as LoraLinear

            for module in model.modules():
                if isinstance(module, LoraLinear):
                    module.__dict__.pop("forward")
        if method == "after_stock_norms":  # transformers' RMSNorm (the rotary: see stock_rotary)
            for module in model.modules():
                if "fused_norm_offset" in module.__dict__:
                    del module.forward
        bf16 = resolve_plan(config, cpu).autocast == "bf16"
    return model, method_, bf16, tokenizer, examples


def run_framesft(method: str, steps: int, n: int, base_model: str, out: Path) -> dict:
    from transformers import TrainingArguments

    from framesft.methods.sft import AnswerOnlyCollator
    from framesft.training import LabelTrainer

    model, method_, bf16, tokenizer, examples = framesft_setup(method, n, base_model)
    counter = TokenCounter(AnswerOnlyCollator(tokenizer.pad_token_id))
    args = TrainingArguments(**common_args(steps, out), bf16=bf16, remove_unused_columns=False,
                             train_sampling_strategy="group_by_length")
    trainer = LabelTrainer(model=model, args=args, data_collator=counter,
                           train_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in examples],
                           method=method_, validate=lambda model: {})
    result = timed_train(trainer, counter, bf16)
    result["base_weights_dtype"] = str(next(p for n_, p in model.named_parameters() if "lora_" not in n_).dtype)
    return result


@contextmanager
def stock_rotary(model, stock: bool):
    """transformers' own apply_rotary_pos_emb for the duration, where `stock`: cpu_fused replaces it module-wide,
    so the methods of one process share it."""
    modules = [sys.modules[name] for name in {type(m).__module__ for m in model.modules()}
               if hasattr(getattr(sys.modules[name], "apply_rotary_pos_emb", None), "fused_original")] if stock else []
    fused = [module.apply_rotary_pos_emb for module in modules]
    for module, function in zip(modules, fused):
        module.apply_rotary_pos_emb = function.fused_original
    try:
        yield
    finally:
        for module, function in zip(modules, fused):
            module.apply_rotary_pos_emb = function


def run_interleaved(methods: list[str], rounds: int, warmup: int, n: int, base_model: str) -> dict:
    """Steady-state speed of several methods in one process, one optimizer step of each in turn on the same
    batch, so that they share the machine's state (this VM's speed drifts by 20-30% over minutes). The first
    `warmup` rounds (allocator growth: several GB of page faults per method) are not counted."""
    import statistics

    import torch

    from framesft.methods.sft import AnswerOnlyCollator

    setups = {m: framesft_setup(m, n, base_model) for m in methods}
    _, _, _, tokenizer, examples = setups[methods[0]]
    collate = AnswerOnlyCollator(tokenizer.pad_token_id)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    batches = []  # like group_by_length: groups of 8 batches sorted by length, then shuffled
    for start in range(0, len(order) - 63, 64):
        group = sorted(order[start:start + 64], key=lambda i: len(examples[i].input_ids))
        chunk = [collate([{"input_ids": examples[i].input_ids, "labels": examples[i].labels}
                          for i in group[k:k + 8]]) for k in range(0, 64, 8)]
        batches += [chunk[i] for i in torch.randperm(8, generator=torch.Generator().manual_seed(start)).tolist()]
    optimizers = {m: torch.optim.AdamW([p for p in setups[m][0].parameters() if p.requires_grad], lr=2e-4)
                  for m in methods}
    seconds = {m: [] for m in methods}
    tokens = []
    for round_ in range(warmup + rounds):
        batch = batches[round_ % len(batches)]
        for m in methods:
            model, method_, bf16, _, _ = setups[m]
            model.train()
            torch.manual_seed(round_)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), \
                    stock_rotary(model, stock=m in ("before", "after_stock_norms")):
                loss = method_.loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizers[m].step()
            optimizers[m].zero_grad(set_to_none=True)
            if round_ >= warmup:
                seconds[m].append(time.perf_counter() - start)
        if round_ >= warmup:
            tokens.append(int(batch["attention_mask"].sum()))
        print(f"round {round_}", {m: round(seconds[m][-1], 2) for m in methods if seconds[m]}, file=sys.stderr,
              flush=True)
    result = {"methods": methods, "rounds_counted": rounds, "warmup_rounds": warmup,
              "real_tokens": sum(tokens), "step_seconds": {m: [round(x, 3) for x in v] for m, v in seconds.items()},
              "real_tokens_per_second": {m: round(sum(tokens) / sum(v), 1) for m, v in seconds.items()},
              "base_weights_dtype": {m: str(next(p for n_, p in setups[m][0].named_parameters()
                                                 if "lora_" not in n_).dtype) for m in methods},
              "bf16_autocast": {m: setups[m][2] for m in methods}}
    result["paired_ratios_over_before"] = {
        m: {"median": round(statistics.median(b / a for a, b in zip(seconds[m], seconds["before"])), 3),
            "min": round(min(b / a for a, b in zip(seconds[m], seconds["before"])), 3),
            "max": round(max(b / a for a, b in zip(seconds[m], seconds["before"])), 3)}
        for m in methods if m != "before"} if "before" in methods else {}
    return result


def add_shares(entry: dict, roof_at_start: dict, roof_at_end: dict) -> None:
    """Each method's percent of the LoRA training ceiling, against the higher of the two roofs measured: a passing
    slowdown during one roof measurement (seen: 186 instead of ~300 GFLOP/s) must not inflate the shares."""
    roof = max(roof_at_start, roof_at_end, key=lambda r: r["best_gflops"])
    entry["ceiling"] = ceilings(roof, entry["ceiling"]["non_embedding_parameters"])
    entry["ceiling"]["roof_used"] = "start" if roof is roof_at_start else "end"
    training_ceiling = entry["ceiling"]["lora_training_tokens_per_second"]
    for result in entry["methods"].values():
        result["percent_of_training_ceiling"] = share(result["real_tokens_per_second"], training_ceiling)
        result["padded_percent_of_training_ceiling"] = share(result["padded_tokens"] / result["seconds"],
                                                             training_ceiling)
    steady = entry["steady_state_interleaved"]
    steady["percent_of_training_ceiling"] = {m: share(v, training_ceiling)
                                             for m, v in steady["real_tokens_per_second"].items()}


def run_trl(steps: int, n: int, base_model: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from framesft.modeling import load_base_model, resolve_model_path
    from framesft.precision import resolve_plan
    from framesft.prompting import IGNORE_INDEX

    config, tokenizer, examples = encoded_examples(n, base_model, "float32")
    plan = resolve_plan(config, torch.device("cpu"))
    model = load_base_model(config, resolve_model_path(base_model), plan, for_training=True)
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


def run_method(method: str, base_model: str, args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--method", method, "--model", base_model, "--examples",
                           str(args.examples), "--steps", str(args.steps), "--rounds", str(args.rounds)],
                          capture_output=True, text=True, env={**os.environ, **ENVIRONMENT.get(method, {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{method} on {base_model} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def cpu_description() -> dict:
    from dataclasses import asdict

    from framesft.precision import cpu_facts

    facts = cpu_facts(measured=False)
    return {**asdict(facts), "kind": facts.kind}


def plan_line() -> str:
    """The compute plan `after` trains under (the shipped Gemma config's settings) on this CPU."""
    import torch

    from framesft.config import FrameSFTConfig
    from framesft.precision import resolve_plan

    config = FrameSFTConfig.model_validate({"training": {"bf16": True}})
    return resolve_plan(config, torch.device("cpu")).line()


def model_parameters(base_model: str) -> int:
    import torch

    from framesft.config import FrameSFTConfig
    from framesft.modeling import load_base_model, resolve_model_path
    from framesft.precision import resolve_plan

    config = FrameSFTConfig.model_validate({"model": {"base_model": base_model, "dtype": "float32"}})
    plan = resolve_plan(config, torch.device("cpu"))
    model = load_base_model(config, resolve_model_path(base_model), plan, for_training=False)
    return non_embedding_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                        help="methods run in their own process (peak RSS, Trainer); 'before' and 'after' always")
    parser.add_argument("--rounds", type=int, default=8,
                        help="counted rounds of the interleaved steady-state measurement (after 2 warm-up rounds)")
    parser.add_argument("--method", choices=METHODS + ["interleaved"], help=argparse.SUPPRESS)  # child process
    parser.add_argument("--model", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.method:
        out = REPO / "benchmarks" / "work" / "throughput" / args.method
        if args.method == "interleaved":
            result = run_interleaved(INTERLEAVED, args.rounds, 2, args.examples, args.model)
        elif args.method == "trl":
            result = run_trl(args.steps, args.examples, args.model, out)
        else:
            result = run_framesft(args.method, args.steps, args.examples, args.model, out)
        print("RESULT " + json.dumps(result))
        return

    roof_at_start = measure_roof()
    print("roof", json.dumps(roof_at_start), flush=True)
    models = {}
    for base_model in args.models:
        results = {}
        methods = [m for m in METHODS if m in {"before", "after", *args.methods}]
        for method in methods:
            results[method] = run_method(method, base_model, args)
            print(base_model, method, json.dumps(results[method]), flush=True)
        steady = run_method("interleaved", base_model, args)
        print(base_model, "interleaved", json.dumps(steady), flush=True)
        speed = lambda m: results[m]["real_tokens_per_second"]  # noqa: E731
        steady_speed = steady["real_tokens_per_second"]
        before, after = results["before"]["loss_curve"], results["after"]["loss_curve"]
        models[base_model] = {
            "ceiling": {"non_embedding_parameters": model_parameters(base_model)},
            "methods": results,
            "steady_state_interleaved": steady,
            "ratios": {
                "steady_state_after_over_before": round(steady_speed["after"] / steady_speed["before"], 2),
                "steady_state_after_unfused_over_before": round(steady_speed["after_unfused"]
                                                                / steady_speed["before"], 2),
                "steady_state_after_stock_norms_over_before": round(steady_speed["after_stock_norms"]
                                                                    / steady_speed["before"], 2),
                "steady_state_checkpointing_every_2_over_before": round(steady_speed["checkpointing_every_2"]
                                                                        / steady_speed["before"], 2),
                "steady_state_after_over_fp32_fused": round(steady_speed["after"] / steady_speed["fp32_fused"], 2),
                "steady_state_after_over_after_unfused": round(steady_speed["after"] / steady_speed["after_unfused"],
                                                               2),
                "after_over_before_real_tokens_per_second": round(speed("after") / speed("before"), 2),
                **({"after_over_trl_real_tokens_per_second": round(speed("after") / speed("trl"), 2)}
                   if "trl" in results else {}),
                **({"bf16_base_over_before": round(speed("bf16_base") / speed("before"), 2)}
                   if "bf16_base" in results else {}),
                **{f"peak_rss_{m}_over_before": round(results[m]["peak_rss_mib"] / results["before"]["peak_rss_mib"],
                                                      2) for m in ["after", *TRAINING, *ENVIRONMENT] if m in results},
                **{f"{m}_over_before_real_tokens_per_second": round(speed(m) / speed("before"), 2)
                   for m in [*TRAINING, *ENVIRONMENT] if m in results},
                "max_abs_loss_difference_after_vs_before": round(max(abs(a - b) for a, b in zip(before, after)), 4),
                "mean_loss_after_minus_before": round(sum(after) / len(after) - sum(before) / len(before), 4),
            },
        }
    from framesft.runfolder import software_versions

    roof_at_end = measure_roof()
    for entry in models.values():
        add_shares(entry, roof_at_start, roof_at_end)
    report = {
        "benchmark": "LoRA training throughput against the machine's ceiling: before/after issue 13, TRL",
        "command": " ".join(["benchmarks/training_throughput.py", "--steps", str(args.steps)]
                            + (["--models", *args.models] if args.models != MODELS else [])
                            + (["--methods", *args.methods] if args.methods != METHODS else [])
                            + (["--rounds", str(args.rounds)] if args.rounds != 8 else [])
                            + (["--output", str(args.output)] if args.output != RESULTS else [])),
        "examples_in_dataset": args.examples,
        "batch_size": 8,
        "optimizer_steps": args.steps,
        "cores": os.cpu_count(),
        "cpu": cpu_description(),
        "compute_plan": plan_line(),
        # the versions it was measured with (the lock's, after `make install`), for every model benchmarked
        "software": {model: software_versions(model) for model in args.models},
        "roof_at_start": roof_at_start,
        "roof_at_end": roof_at_end,
        "models": models,
        "interleaved_methods": INTERLEAVED,
        "targets": {"after_over_before": ">= 2", "peak_rss_after_over_before": "<= 1",
                    "loss": "within tolerance of before (different dropout draws; fp32 instead of bf16 autocast)"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({m: r["ratios"] for m, r in models.items()}, indent=2))


if __name__ == "__main__":
    main()
