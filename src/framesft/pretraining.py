"""Task-adaptive pretraining (Gururangan et al. 2020, "Don't Stop Pretraining"): before SFT, a causal-LM pass of
a new LoRA adapter over unlabelled passages of the task (the training texts, or the corpus to be labelled).

    framesft pretrain configs/gemma3-brexit.yaml --run-dir runs/tapt             # the config's training texts
                                                                    # (those SFT trains on: drop_near_duplicates)
    framesft train configs/gemma3-brexit.yaml --set training.init_adapter=runs/tapt

The pass uses the config's model, LoRA settings, batch size, learning rate, schedule, warm-up and seed, with its
own number of epochs; the loss is next-token cross-entropy over every passage token (no prompt, no labels, so the
labels of the texts are never read). A share of the passages is held out, and the folder records their
perplexity before and after the pass: whether the pass changed the model on text it did not see.

The folder appears only when the pass has finished (it is written under a temporary name and renamed), so an
interrupted pass leaves nothing behind and nothing to resume: start it again.

    config.yaml              the resolved config the pass ran with
    adapter/                 the LoRA adapter (what training.init_adapter reads) and the tokenizer
    pretrain_summary.json    texts read, tokens, steps, minutes, held-out perplexity before and after
    train.log                the log of the pass
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from .checks import near_duplicate_groups
from .config import FrameSFTConfig
from .dataset import read_data_file
from .errors import ConfigError, DataError, RunFolderError
from .files import atomic_directory, write_json, write_text
from .modeling import attach_lora, load_base_model, load_tokenizer, resolve_model_path
from .precision import process_state, resolve_plan
from .runfolder import CONFIG_FILE, attach_log_file, detach_log_file, save_trained_weights
from .scoring import pad_batch, positions_from_mask
from .training import install_fused_cpu_ops

log = logging.getLogger(__name__)

SUMMARY_FILE = "pretrain_summary.json"
HELD_OUT_FRACTION = 0.05  # of the passages, at least one: their perplexity before and after the pass
MIN_TOKENS = 2  # a passage needs two tokens for one next-token target


@dataclass
class PretrainResult:
    run_dir: Path
    summary: dict


def pretrain(config: FrameSFTConfig, run_dir: str | Path, texts: Sequence[str | Path] = (),
             epochs: float = 1.0, overwrite: bool = False, show_progress: bool = True) -> PretrainResult:
    """Train a LoRA adapter as a causal LM on the passages of `texts` (files with the config's text column;
    none: the config's training file) and write it, with its provenance, into `run_dir`."""
    if config.method != "sft":
        raise ConfigError("framesft pretrain adapts a causal LM for generative SFT (method: sft); the "
                          "classification head's adapter is of another kind, so set method: sft")
    if not config.training.use_lora:
        raise ConfigError("framesft pretrain trains a LoRA adapter for training.init_adapter, but training.use_lora "
                          "is false (full fine-tuning) in this config; pretrain with training.use_lora: true")
    if epochs <= 0:
        raise ConfigError(f"--epochs must be above 0, not {epochs}")
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunFolderError(f"{run_dir} already exists; pass --overwrite to replace it or choose another --run-dir")
    state = process_state(config)
    if state.num_processes > 1:
        raise ConfigError("framesft pretrain runs in one process; start it without torchrun/accelerate launch")

    files = [Path(f) for f in texts] or [config.data.path("train_csv")]
    passages = read_passages(files, config)
    if not texts and config.data.drop_near_duplicates:  # the training file's passages that SFT will train on
        passages = first_of_each_group(passages, config.data.near_duplicate_threshold)
    model_path = resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
    encoded = encode_passages(passages, tokenizer, config.data.max_length)
    training_rows, held_out = split_held_out(encoded, config.training.seed)

    with atomic_directory(run_dir) as staging:
        log_file = attach_log_file(staging)
        try:
            set_seed(config.training.seed)
            write_text(staging / CONFIG_FILE, config.to_yaml())
            plan = resolve_plan(config, state.device)
            log.info(plan.line())
            log.info("task-adaptive pretraining on %d passages (%d held out) from %s", len(training_rows),
                     len(held_out), ", ".join(map(str, files)))
            base = load_base_model(config, model_path, plan, for_training=True)
            model = attach_lora(base, config)
            install_fused_cpu_ops(model, plan)
            collate = CausalLMCollator(tokenizer.pad_token_id)
            before = held_out_perplexity(model, held_out, collate, config.training.batch_size, plan)
            arguments = pretraining_arguments(config, staging / "trainer", epochs, plan)
            trainer = PretrainTrainer(model=model, args=arguments, data_collator=collate, processing_class=tokenizer,
                                      train_dataset=[{"input_ids": ids} for ids in training_rows])
            if not show_progress:
                trainer.remove_callback(ProgressCallback)
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            after = held_out_perplexity(model, held_out, collate, config.training.batch_size, plan)
            save_trained_weights(model, tokenizer, staging)
            summary = {
                "texts": [str(f) for f in files],
                "text_column": config.data.text_column,
                "passages": len(passages),
                "training_passages": len(training_rows),
                "held_out_passages": len(held_out),
                "training_tokens_per_epoch": sum(len(ids) for ids in training_rows),
                "epochs": epochs,
                "global_step": trainer.state.global_step,
                "train_seconds": round(seconds, 1),
                "training_loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
                "held_out_perplexity": {"before": before, "after": after},
                "compute_plan": plan.to_dict(),
                "use_with": f"--set training.init_adapter={run_dir}",
            }
            write_json(staging / SUMMARY_FILE, summary)
            log.info("held-out perplexity %.2f before, %.2f after the pass (%d passages)", before, after,
                     len(held_out))
        finally:
            detach_log_file(log_file)
        shutil.rmtree(staging / "trainer", ignore_errors=True)  # no checkpoints are saved: nothing to keep
    return PretrainResult(run_dir, summary)


def read_passages(files: Sequence[Path], config: FrameSFTConfig) -> list[str]:
    """The text column of every file, blank cells dropped and each distinct passage once (in file order)."""
    column = config.data.text_column
    passages: dict[str, None] = {}
    for path in files:
        table = read_data_file(path, config.data, columns=[column])
        for text in table[column].fillna("").astype(str):
            if text.strip():
                passages.setdefault(text.strip())
    if len(passages) < 2:
        raise DataError(f"{', '.join(map(str, files))}: column {column!r} holds {len(passages)} non-empty passage(s); "
                        "pretraining needs at least two (one is held out)")
    return list(passages)


def first_of_each_group(passages: list[str], threshold: float) -> list[str]:
    """One passage per near-duplicate group (the first), as data.drop_near_duplicates keeps for SFT."""
    groups = near_duplicate_groups(passages, threshold)
    first = {}
    for passage, group in zip(passages, groups):
        first.setdefault(group, passage)
    return list(first.values())


def encode_passages(passages: Sequence[str], tokenizer, max_length: int) -> list[list[int]]:
    """Token ids of each passage (with the tokenizer's own special tokens), cut to data.max_length."""
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"][:max_length] for text in passages]
    return [ids for ids in encoded if len(ids) >= MIN_TOKENS]


def split_held_out(encoded: list[list[int]], seed: int) -> tuple[list[list[int]], list[list[int]]]:
    order = np.random.default_rng(seed).permutation(len(encoded))
    n_held = max(1, round(HELD_OUT_FRACTION * len(encoded)))
    held = set(order[:n_held].tolist())
    return ([ids for i, ids in enumerate(encoded) if i not in held],
            [ids for i, ids in enumerate(encoded) if i in held])


class CausalLMCollator:
    """Right-pads a batch; the targets are the next tokens of each passage (padding ignored)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, "right")
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask)}


def causal_lm_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of every next token of every passage (position t predicts token t+1, padding excluded)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction=reduction)


class PretrainTrainer(Trainer):
    """The stock Trainer with the causal-LM loss above (a per-micro-batch token mean)."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = causal_lm_loss(model, inputs)
        return (loss, None) if return_outputs else loss


def pretraining_arguments(config: FrameSFTConfig, output_dir: Path, epochs: float, plan) -> TrainingArguments:
    t = config.training
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm, lr_scheduler_type=t.lr_scheduler, optim=t.optimizer,
        logging_steps=t.logging_steps, save_strategy="no", eval_strategy="no", seed=t.seed, data_seed=t.seed,
        bf16=plan.autocast == "bf16", fp16=plan.autocast == "fp16", report_to="none",
        remove_unused_columns=False, train_sampling_strategy="group_by_length", dataloader_num_workers=0,
        use_cpu=not plan.on_gpu,
    )


@torch.no_grad()
def held_out_perplexity(model, passages: list[list[int]], collate: CausalLMCollator, batch_size: int,
                        plan) -> float:
    """exp(mean next-token cross-entropy) over the held-out passages' tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    autocast = torch.autocast(plan.torch_device.type, dtype=torch.bfloat16, enabled=plan.autocast == "bf16")
    with autocast:
        for start in range(0, len(passages), batch_size):
            batch = {k: v.to(plan.torch_device) for k, v in collate(
                [{"input_ids": ids} for ids in passages[start:start + batch_size]]).items()}
            total += float(causal_lm_loss(model, batch, reduction="sum"))
            count += int(batch["attention_mask"][:, 1:].sum())
    model.train(was_training)
    return round(math.exp(total / count), 4)

