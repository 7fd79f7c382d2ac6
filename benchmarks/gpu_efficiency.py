"""GPU efficiency at Mistral-7B's shape: LoRA training and label scoring as a share of the matmul ceiling.

    python benchmarks/gpu_efficiency.py --tokenizer DIR --passages CSV [--output benchmarks/results/gpu_efficiency.json]

Measured in one run, on one GPU:
1. the ceiling: a large bf16 matrix product (8192^3), in TFLOP/s;
2. bf16 LoRA training (r16 on all projections, bf16 autocast as the Trainer runs it, answer-only loss, fused
   AdamW on the LoRA weights) at the seed's effective batch of 32 sequences x 512 tokens, for each micro-batch
   (4, 8, 16, 32, accumulating to 32), gradient checkpointing on and off, and the attention implementations
   sdpa and eager: one optimizer step timed after one warm-up step. FLOPs per token are counted as 4 N (N:
   non-embedding parameters; LoRA on a frozen base needs the forward pass and the gradients of the
   activations, not of the frozen weights; recomputation under checkpointing is not counted as useful work);
3. QLoRA (nf4, the seed config) at the fastest setting that fits, when bitsandbytes is there;
4. label scoring of real passages (--passages: a CSV with chunk_text, e.g. the Brexit dev file) with the
   framesft scorer against greedy `generate()` (4 new tokens), same batches; inference FLOPs per prompt token
   2 N.
The weights are random (none can be downloaded on these machines): speed and memory do not depend on their
values. The vocabulary is the SmolLM2 tokenizer's (49,152, so real prompts can be scored); everything else is
Mistral-7B-v0.1's published shape.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu_efficiency.json"
FRAMES = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0, rms_norm_eps=1e-5,
                  sliding_window=4096, tie_word_embeddings=False)
SMALL = dict(MISTRAL_7B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    release()
    return 2 * size ** 3 / seconds / 1e12


def build_model(shape: dict, vocab: int, device: torch.device):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = MistralForCausalLM(MistralConfig(vocab_size=vocab, **shape))
    finally:
        torch.set_default_dtype(previous)
    return model


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if "embed_tokens" not in name and "lm_head" not in name and "lora_" not in name)


def set_attention(model, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def training_batch(vocab: int, batch: int, length: int, device: torch.device) -> dict:
    from framesft.prompting import IGNORE_INDEX

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (batch, length), generator=generator)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -3:] = ids[:, -3:]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "position_ids": torch.arange(length).expand(batch, -1).contiguous().to(device), "labels": labels.to(device)}


def time_optimizer_step(model, optimizer, batch: dict, accumulation: int, device: torch.device) -> float:
    from framesft.methods.sft import answer_only_loss

    sync(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        for _ in range(accumulation):
            (answer_only_loss(model, batch) / accumulation).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def training_grid(model, vocab: int, device: torch.device, n: int, ceiling: float, effective: int,
                  length: int, micro_batches: list[int], attentions: list[str],
                  checkpointing_modes: tuple[bool, ...] = (True, False)) -> list[dict]:
    model.train()  # from_pretrained returns eval mode, where checkpointing (and dropout) are off
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=5e-5, fused=device.type == "cuda")
    rows = []
    for attention in attentions:
        set_attention(model, attention)
        for checkpointing in checkpointing_modes:
            if checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.enable_input_require_grads()
            else:
                model.gradient_checkpointing_disable()
            for micro in micro_batches:
                row = {"attention": attention, "gradient_checkpointing": checkpointing, "micro_batch": micro,
                       "accumulation": effective // micro}
                batch = training_batch(vocab, micro, length, device)
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    time_optimizer_step(model, optimizer, batch, effective // micro, device)  # warm-up
                    seconds = time_optimizer_step(model, optimizer, batch, effective // micro, device)
                    tokens_per_second = effective * length / seconds
                    row.update(optimizer_step_seconds=round(seconds, 3), tokens_per_second=round(tokens_per_second),
                               share_of_matmul_ceiling=round(4 * n * tokens_per_second / (ceiling * 1e12), 4))
                    if device.type == "cuda":
                        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                except torch.cuda.OutOfMemoryError:
                    row["out_of_memory"] = True
                optimizer.zero_grad(set_to_none=True)
                del batch
                release()
                rows.append(row)
                print(json.dumps(row), flush=True)
    model.gradient_checkpointing_disable()
    del optimizer
    release()
    return rows


def scoring(model, tokenizer_dir: str, passages: list[str], device: torch.device, n: int, ceiling: float) -> dict:
    """Passages/s of the framesft label scorer and of greedy generate() on the same prompts and batches."""
    from framesft.config import PromptSection
    from framesft.modeling import load_tokenizer
    from framesft.prompting import PromptBuilder
    from framesft.scoring import LabelScorer, pad_batch, token_budget_batches

    tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=False)
    builder = PromptBuilder(tokenizer, FRAMES, PromptSection(), max_length=512)
    prompts = [builder.encode_prompt(text) for text in passages]
    prompt_tokens = sum(len(p) for p in prompts)
    model.eval()
    scorer = LabelScorer(model, builder, token_budget=32 * 512, max_batch_size=32)
    scorer.score_prompts(prompts[:32])  # warm-up
    sync(device)
    start = time.perf_counter()
    scorer.score_prompts(prompts)
    sync(device)
    scorer_seconds = time.perf_counter() - start

    def generate_all():
        with torch.inference_mode():
            for batch in token_budget_batches([len(p) for p in prompts], 32 * 512, 32):
                ids, mask = pad_batch([prompts[i] for i in batch], tokenizer.pad_token_id, "left", device)
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)

    generate_all()  # warm-up
    sync(device)
    start = time.perf_counter()
    generate_all()
    sync(device)
    generate_seconds = time.perf_counter() - start
    return {"passages": len(prompts), "mean_prompt_tokens": round(prompt_tokens / len(prompts), 1),
            "scorer_passages_per_second": round(len(prompts) / scorer_seconds, 1),
            "generate_passages_per_second": round(len(prompts) / generate_seconds, 1),
            "scorer_over_generate": round(generate_seconds / scorer_seconds, 2),
            "scorer_prompt_tokens_per_second": round(prompt_tokens / scorer_seconds),
            "scorer_share_of_matmul_ceiling": round(2 * n * prompt_tokens / scorer_seconds / (ceiling * 1e12), 4)}


def qlora(shape: dict, vocab: int, work: Path, micro_batches: list[int], checkpointing: bool, n: int,
          ceiling: float, effective: int, length: int, device: torch.device) -> list[dict]:
    """The seed config (nf4 QLoRA) through framesft's own loader, checkpointing as loaded (the 4-bit model is
    prepared for it at load time, so it is not switched afterwards)."""
    from framesft.config import load_config
    from framesft.modeling import attach_lora, load_base_model
    from framesft.precision import resolve_plan

    model = build_model(shape, vocab, device)
    folder = work / "mistral-shape"
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    release()
    config = load_config(REPO / "configs" / "mistral-7b-sft.yaml",
                         [f"model.base_model={folder}", f"training.gradient_checkpointing={str(checkpointing).lower()}"])
    model = attach_lora(load_base_model(config, str(folder), resolve_plan(config, device), for_training=True), config)
    rows = training_grid(model, vocab, device, n, ceiling, effective, length, micro_batches, ["sdpa"],
                         (checkpointing,))
    del model
    release()
    return [{"config": "configs/mistral-7b-sft.yaml (nf4, double quantization)", **row} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="folder with the SmolLM2 tokenizer files")
    parser.add_argument("--passages", required=True, help="CSV with a chunk_text column (real passages)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--small", action="store_true", help="a 2-layer shape on any device (checks the script)")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--attention", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--skip-qlora", action="store_true")
    parser.add_argument("--only-qlora", action="store_true", help="QLoRA rows only (24 GB GPUs)")
    parser.add_argument("--qlora-checkpointing", choices=["on", "off"], default="on",
                        help="gradient checkpointing for --only-qlora (default: on)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/framesft-gpu-efficiency"))
    args = parser.parse_args()
    import pandas as pd
    from peft import LoraConfig, get_peft_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape, vocab, effective, length = (SMALL, 49152, 8, 64) if args.small else (MISTRAL_7B, 49152, 32, 512)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    import transformers

    report["transformers"] = transformers.__version__
    ceiling = matmul_tflops(device, 1024 if args.small else 8192)
    report["bf16_matmul_tflops"] = round(ceiling, 1)
    print("ceiling", report["bf16_matmul_tflops"], flush=True)

    if args.only_qlora:
        n = non_embedding_parameters(build_model(shape, vocab, torch.device("meta")))
        checkpointing = args.qlora_checkpointing == "on"
        key = "qlora_gradient_checkpointing" if checkpointing else "qlora_without_checkpointing"
        report[key] = qlora(shape, vocab, args.work, args.micro_batches, checkpointing, n, ceiling, effective, length,
                            device)
        save(report, args.output)
        return
    model = build_model(shape, vocab, device)
    n = non_embedding_parameters(model)
    report.update(shape=shape, vocab=vocab, non_embedding_parameters=n, effective_batch=effective,
                  sequence_tokens=length)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets,
                                            task_type="CAUSAL_LM"))
    report["training_bf16_lora"] = training_grid(lora, vocab, device, n, ceiling, effective, length,
                                                 args.micro_batches, args.attention)
    save(report, args.output)  # after each part, so a run cut short still leaves what it measured
    passages = pd.read_csv(args.passages, dtype=str, keep_default_na=False)["chunk_text"].tolist()
    report["scoring"] = scoring(lora.merge_and_unload(), args.tokenizer, passages, device, n, ceiling)
    print(json.dumps(report["scoring"]), flush=True)
    save(report, args.output)
    del lora, model
    release()
    fitting = [r for r in report["training_bf16_lora"] if "tokens_per_second" in r]
    best = max(fitting, key=lambda r: r["tokens_per_second"])
    report["best_bf16_lora"] = best
    if not args.skip_qlora and device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            report["qlora"] = qlora(shape, vocab, args.work, [best["micro_batch"]], best["gradient_checkpointing"],
                                    n, ceiling, effective, length, device)
        except ImportError:
            report["qlora"] = "bitsandbytes is not installed here"
    save(report, args.output)
    print(json.dumps({k: v for k, v in report.items() if k != "training_bf16_lora"}, indent=1))


def save(report: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
