"""CUDA paths on a GPU machine: what the CPU test suite cannot reach.

    python benchmarks/gpu_check.py --tokenizer DIR [--output benchmarks/results/gpu_check.json]

Part 1 (correctness, a tiny random Llama with the real SmolLM2 tokenizer from DIR): `train()` end to end on
CUDA for generative SFT in bf16 with gradient checkpointing, for the classification head, and for 4-bit
QLoRA; then the label scorer against naive scoring (one full sequence per label) on CUDA in bf16 and fp32.

Part 2 (measurement, the seed settings on a model of Mistral-7B's exact shape): the weights are random
(no weights can be downloaded on these machines) but memory and speed do not depend on their values.
The model is saved once and loaded through framesft's own loader with the seed config
(configs/mistral-7b-sft.yaml: QLoRA nf4 + double quantization, LoRA r16 on all projections, gradient
checkpointing, paged 8-bit AdamW), then timed for training micro-steps of batch 4 x 512 tokens, with our
answer-only loss (LM head at the answer positions only) and with the usual full-sequence loss, alternating
step by step. The same for plain bf16 LoRA (no quantization), and for the classification head with its seed
config (configs/mistral-7b-classification.yaml: QLoRA, batch 2 x 512). Peak GPU memory is torch's
max_memory_allocated (the weights included).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from framesft.config import load_config
from framesft.inference import load_classifier
from framesft.modeling import attach_lora, load_base_model
from framesft.precision import resolve_plan
from framesft.scoring import naive_label_scores
from framesft.prompting import IGNORE_INDEX
from framesft.methods.classification import head_loss
from framesft.methods.sft import answer_only_loss, full_sequence_loss
from framesft.training import train

REPO = Path(__file__).resolve().parents[1]
FRAMES = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]

# Mistral-7B-v0.1's published architecture (config.json of mistralai/Mistral-7B-v0.1).
MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=4096, tie_word_embeddings=False)
SMALL_MISTRAL = dict(MISTRAL_7B, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2)


# ----------------------------------------------------------------------------- part 1: correctness


def build_tiny_llama(tokenizer_dir: str, folder: Path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)  # room to learn (see tests/conftest.py)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_run(model_dir: str, run_dir: Path, *overrides: str) -> dict:
    config = load_config(None, [
        f"model.base_model={model_dir}", "model.name=tiny-llama", "data.data_dir=framesft:sample_data",
        "data.test_csv=test.csv", "data.max_length=256", "data.validation_fraction=0.2",
        "training.batch_size=4", "training.gradient_accumulation_steps=1", "training.learning_rate=5e-3",
        "training.num_epochs=3", "training.warmup_steps=0", "training.logging_steps=2", "training.lora_r=8",
        "training.lora_alpha=16", "training.bf16=true", "training.gradient_checkpointing=true",
        "tracking.report_to=none", *overrides,
    ])
    started = time.perf_counter()
    result = train(config, run_dir, overwrite=True, show_progress=False)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "overrides": list(overrides),
        "seconds": round(time.perf_counter() - started, 1),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "loss_fell": losses[-1] < losses[0],
        "test_f1_macro": round(result.metrics["test"]["f1_macro"], 4),
        "run_folder_complete": all((run_dir / name).exists() for name in
                                   ("adapter", "config.yaml", "label_map.json", "metrics_test.json",
                                    "predictions_test.csv", "report.html")),
    }


def scorer_matches_naive(run_dir: Path, dtype: str) -> dict:
    import pandas as pd

    classifier = load_classifier(run_dir)
    classifier.model.to(getattr(torch, dtype))
    texts = pd.read_csv(REPO / "src/framesft/resources/sample_data/test.csv", dtype=str,
                        keep_default_na=False)["chunk_text"].tolist()
    prompts = [classifier.method.prompt.encode_prompt(text) for text in texts]
    scorer = classifier.scorer()
    fast = scorer.score_prompts(prompts).scores
    naive = naive_label_scores(classifier.model, classifier.method.prompt, prompts)
    return {
        "dtype": dtype,
        "device": str(scorer.device),
        "passages": len(prompts),
        "identical_predictions": int((fast.argmax(1) == naive.argmax(1)).sum()),
        "max_abs_score_diff": float(abs(fast - naive).max()),
    }


def part1(tokenizer_dir: str, work: Path) -> dict:
    model_dir = build_tiny_llama(tokenizer_dir, work / "tiny-llama")
    runs = {
        "sft_bf16_gradient_checkpointing": tiny_run(model_dir, work / "sft"),
        "classification_head_bf16": tiny_run(model_dir, work / "cls", "method=classification"),
        "sft_qlora_4bit": tiny_run(model_dir, work / "qlora", "model.load_in_4bit=true"),
    }
    scorer = [scorer_matches_naive(work / "sft", dtype) for dtype in ("bfloat16", "float32")]
    return {"training_runs": runs, "scorer_vs_naive": scorer}


# ----------------------------------------------------------------------------- part 2: Mistral-7B shape


def save_random_mistral(folder: Path, shape: dict) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = MistralForCausalLM(MistralConfig(**shape))
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    release()


def release() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def seed_batch(vocab_size: int, batch: int, length: int, answer_tokens: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(100, vocab_size, (batch, length), generator=generator)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -answer_tokens:] = input_ids[:, -answer_tokens:]
    return {"input_ids": input_ids.cuda(), "attention_mask": torch.ones_like(input_ids).cuda(),
            "position_ids": torch.arange(length).expand(batch, -1).contiguous().cuda(), "labels": labels.cuda()}



def time_interleaved(model, optimizer, batch, loss_fns: dict, steps: int) -> dict:
    """Alternate the losses step by step (after a warm-up of each), so allocator growth, kernel selection
    and the paged optimizer's first allocations do not favour whichever is timed second."""
    durations = {name: [] for name in loss_fns}
    peaks = {name: 0 for name in loss_fns}
    for step in range(steps + 2):
        for name, loss_fn in loss_fns.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            loss_fn(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step >= 2:
                durations[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    tokens = batch["input_ids"].numel()
    return {name: {"micro_step_seconds": round(statistics.median(durations[name]), 4),
                   "tokens_per_second": round(tokens / statistics.median(durations[name]), 1),
                   "peak_allocated_gib": round(peaks[name] / 2**30, 2)}
            for name in loss_fns}


def load_for_training(folder: Path, config_name: str, quantized: bool):
    config = load_config(REPO / "configs" / config_name, [
        f"model.base_model={folder}", f"model.load_in_4bit={str(quantized).lower()}"])
    release()
    started = time.perf_counter()
    model = load_base_model(config, str(folder), resolve_plan(config, torch.device("cuda")), for_training=True,
                            labels=FRAMES, pad_token_id=0)
    model = attach_lora(model, config)
    model.train()
    facts = {
        "config": f"configs/{config_name}",
        "load_in_4bit": quantized,
        "load_seconds": round(time.perf_counter() - started, 1),
        "weights_and_adapter_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "batch_size": config.training.batch_size,
        "max_length": config.data.max_length,
        "gradient_accumulation_steps": config.training.gradient_accumulation_steps,
        "gradient_checkpointing": config.training.gradient_checkpointing,
    }
    return config, model, facts


def paged_adamw_8bit(model, config):
    import bitsandbytes as bnb

    return bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad],
                                    lr=config.training.learning_rate)


def measure_sft(folder: Path, shape: dict, quantized: bool, steps: int) -> dict:
    config, model, facts = load_for_training(folder, "mistral-7b-sft.yaml", quantized)
    optimizer = paged_adamw_8bit(model, config)
    batch = seed_batch(shape["vocab_size"], config.training.batch_size, config.data.max_length, answer_tokens=3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        timings = time_interleaved(model, optimizer, batch, {"answer_only_loss": answer_only_loss,
                                                             "full_sequence_loss": full_sequence_loss}, steps)
    accumulation = config.training.gradient_accumulation_steps
    facts.update(timings, optimizer_step_seconds=round(
        accumulation * timings["answer_only_loss"]["micro_step_seconds"], 2))
    del model, optimizer
    release()
    return facts


def measure_classification_head(folder: Path, shape: dict, steps: int) -> dict:
    config, model, facts = load_for_training(folder, "mistral-7b-classification.yaml", quantized=True)
    optimizer = paged_adamw_8bit(model, config)
    batch = seed_batch(shape["vocab_size"], config.training.batch_size, config.data.max_length, answer_tokens=1)
    batch["labels"] = torch.arange(config.training.batch_size, device="cuda") % len(FRAMES)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        timings = time_interleaved(model, optimizer, batch, {"head_loss": head_loss}, steps)
    accumulation = config.training.gradient_accumulation_steps
    facts.update(timings, optimizer_step_seconds=round(accumulation * timings["head_loss"]["micro_step_seconds"], 2))
    del model, optimizer
    release()
    return facts


def part2(work: Path, shape: dict, steps: int) -> dict:
    folder = work / "mistral-7b-shape"
    started = time.perf_counter()
    save_random_mistral(folder, shape)
    save_seconds = time.perf_counter() - started
    modes = [measure_sft(folder, shape, quantized, steps) for quantized in (True, False)]
    modes.append(measure_classification_head(folder, shape, steps))
    return {"shape": shape, "save_seconds": round(save_seconds, 1), "modes": modes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="folder with the SmolLM2 tokenizer files")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=8, help="timed micro-steps per loss")
    parser.add_argument("--small", action="store_true", help="a 2-layer Mistral shape (quick check of this script)")
    parser.add_argument("--skip-part1", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU")

    work = Path(args.work or tempfile.mkdtemp(prefix="framesft-gpu-"))
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import bitsandbytes
    import peft
    import transformers

    report.update(transformers=transformers.__version__, peft=peft.__version__,
                  bitsandbytes=bitsandbytes.__version__)
    if not args.skip_part1:
        report["part1"] = part1(args.tokenizer, work)
        print(json.dumps(report["part1"], indent=1), flush=True)
    report["part2"] = part2(work, SMALL_MISTRAL if args.small else MISTRAL_7B, args.steps)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["part2"], indent=1))


if __name__ == "__main__":
    main()
