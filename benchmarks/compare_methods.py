"""Generative SFT vs the classification head on the same base model and the same real data.

    .venv/bin/python benchmarks/compare_methods.py            # trains what is missing, then compares

Both runs use the embedded default model and the same balanced sample of ../shared/data/brexit/train_data.csv
(the one benchmarks/real_data_accuracy.py uses, with the same seeded validation split); each keeps its own
method's settings (SFT: configs/smollm2-brexit.yaml; classification head: the seed's lr 2e-4, 3 epochs,
batch 2, gradient accumulation 16). `framesft compare` then scores both on dev_data.csv next to the TF-IDF
baseline, with paired bootstrap intervals and McNemar's test, into benchmarks/results/method_comparison/.
Existing run folders are reused; pass --retrain to train them again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from real_data_accuracy import REPO, SHARED, WORK, real_data_overrides, training_sample

from framesft.compare import compare_runs
from framesft.config import load_config
from framesft.training import train

CLASSIFICATION_SEED = ["method=classification", "training.num_epochs=3", "training.batch_size=2",
                       "training.gradient_accumulation_steps=16", "training.learning_rate=2e-4",
                       "training.warmup_steps=0.1", "tracking.run_name=smollm2-classification-{learning_rate}"]
SFT_SETTINGS = ["training.num_epochs=2"]


def ensure_run(run_dir: Path, subset: Path, settings: list[str], retrain: bool) -> None:
    if (run_dir / "adapter").is_dir() and not retrain:
        print(f"reusing {run_dir}")
        return
    config = load_config(REPO / "configs" / "smollm2-brexit.yaml", [*real_data_overrides(subset, run_dir), *settings])
    train(config, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help="training rows per label (0: all)")
    parser.add_argument("--retrain", action="store_true", help="train both runs again even if they exist")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results" / "method_comparison"))
    args = parser.parse_args()

    _, subset = training_sample(args.per_class)
    sft_run, head_run = WORK / "smollm2-sft", WORK / "smollm2-classification-head"
    ensure_run(sft_run, subset, SFT_SETTINGS, args.retrain)
    ensure_run(head_run, subset, CLASSIFICATION_SEED, args.retrain)
    result = compare_runs([sft_run, head_run], SHARED / "dev_data.csv", args.output_dir, baseline=True)
    print(result["markdown"])


if __name__ == "__main__":
    main()
