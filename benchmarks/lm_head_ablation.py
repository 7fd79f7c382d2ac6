"""What computing the LM head only at the answer positions saves in training, per embedded model.

    .venv/bin/python benchmarks/lm_head_ablation.py --batches 3

Same real batches (8 prompts of train_data.csv with their answers, left-padded as our collator does), same
LoRA model, bf16 autocast only where framesft would train under it on this CPU: one forward + backward with our
answer-only loss (hidden states projected onto the vocabulary at the last K+1 positions only) against the usual
loss (logits at every position, cross-entropy on the answer tokens), alternating batch by batch so drift hits
both alike; and the
answer-only loss as it was first written, asking for the last K+1 logits by their count (`logits_to_keep=K+1`,
a strided slice, which torch multiplies by the head one batch row at a time) instead of by their positions.
The issue's estimate: the projection is ~1/5 of SmolLM2-135M's per-token cost (49k vocabulary) and over
half of Gemma 3 270M's (262k). Writes benchmarks/results/lm_head_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

from framesft.config import load_config
from framesft.modeling import attach_lora, load_base_model, load_tokenizer, resolve_model_path
from framesft.prompting import PromptBuilder
from framesft.methods.sft import AnswerOnlyCollator, answer_only_loss, full_sequence_loss
from framesft.precision import resolve_plan

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "lm_head_ablation.json"
MODELS = ["embedded:smollm2-135m-instruct", "embedded:gemma3-270m"]



def real_batches(builder: PromptBuilder, pad_id: int, n_batches: int, batch_size: int) -> list[dict]:
    rows = pd.read_csv(SHARED / "train_data.csv", dtype=str, keep_default_na=False).sample(
        n=n_batches * batch_size, random_state=0)
    examples = [builder.encode_example(text, label) for text, label in zip(rows.chunk_text, rows.frame_name)]
    collate = AnswerOnlyCollator(pad_id)
    return [collate([{"input_ids": e.input_ids, "labels": e.labels}
                     for e in examples[i:i + batch_size]]) for i in range(0, len(examples), batch_size)]


def answer_only_loss_by_count(model, batch: dict) -> torch.Tensor:
    """answer_only_loss with `logits_to_keep` given as a count, as framesft did before it passed positions."""
    with mock.patch("framesft.methods.sft.last_positions", lambda ids, count: count):
        return answer_only_loss(model, batch)


def measure(base_model: str, n_batches: int, batch_size: int) -> dict:
    config = load_config(REPO / "configs" / "smollm2-brexit.yaml", [f"model.base_model={base_model}"])
    path = resolve_model_path(base_model)
    tokenizer = load_tokenizer(path, False)
    builder = PromptBuilder(tokenizer, list(config.data.label2id), config.prompt, config.data.max_length)
    plan = resolve_plan(config, torch.device("cpu"))  # as framesft trains on this CPU
    model = attach_lora(load_base_model(config, path, plan, for_training=True), config)
    model.eval()  # dropout off, so both losses see the same network; gradients still flow
    batches = real_batches(builder, tokenizer.pad_token_id, n_batches, batch_size)
    bf16 = plan.autocast == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    losses = {"answer_only": answer_only_loss, "full_sequence": full_sequence_loss,
              "answer_only_by_count": answer_only_loss_by_count}
    seconds: dict[str, list[float]] = {name: [] for name in losses}
    values: dict[str, list[float]] = {name: [] for name in losses}
    with autocast:
        full_sequence_loss(model, batches[0]).backward()  # warm-up
        for batch in batches:
            for name, loss_fn in losses.items():
                model.zero_grad(set_to_none=True)
                started = time.perf_counter()
                loss = loss_fn(model, batch)
                loss.backward()
                seconds[name].append(time.perf_counter() - started)
                values[name].append(float(loss.detach()))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    result = {
        "model": base_model,
        "vocab_size": model.config.vocab_size if hasattr(model.config, "vocab_size") else None,
        "batches": n_batches, "batch_size": batch_size, "real_tokens": tokens,
        "bf16_autocast": bf16,
        **{f"{name}_seconds_per_batch": round(statistics.mean(seconds[name]), 2) for name in losses},
        "tokens_per_second": {name: round(tokens / sum(seconds[name]), 1) for name in losses},
        "speedup": round(sum(seconds["full_sequence"]) / sum(seconds["answer_only"]), 2),
        "speedup_of_positions_over_count": round(sum(seconds["answer_only_by_count"]) / sum(seconds["answer_only"]), 2),
        "time_saved_fraction": round(1 - sum(seconds["answer_only"]) / sum(seconds["full_sequence"]), 3),
        # the same loss, computed two ways: a check that the shortcut changes nothing but the cost
        "max_loss_difference": round(max(abs(a - b) for a, b in zip(values["answer_only"], values["full_sequence"])), 5),
        "max_loss_difference_positions_vs_count": round(max(abs(a - b) for a, b in zip(
            values["answer_only"], values["answer_only_by_count"])), 6),
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    results = [measure(model, args.batches, args.batch_size) for model in args.models]
    args.output.write_text(json.dumps({"benchmark": "LM head at answer positions only vs at every position",
                                   "cores": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
