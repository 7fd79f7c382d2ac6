"""Accuracy on real data: fine-tune on (a balanced sample of) train_data.csv, evaluate on dev_data.csv,
and compute the TF-IDF + logistic regression baseline on the same split in the same run.

    .venv/bin/python benchmarks/real_data_accuracy.py --per-class 100 --epochs 2

Appends one entry per run to benchmarks/results/real_data_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from framesft.baseline import evaluate_baseline
from framesft.config import load_config
from framesft.metrics import headline
from framesft.training import train

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
WORK = REPO / "benchmarks" / "work"
RESULTS = REPO / "benchmarks" / "results" / "real_data_accuracy.json"


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def training_sample(per_class: int) -> tuple[pd.DataFrame, Path]:
    """The whole training file (per_class 0) or a seeded balanced sample of it, written to benchmarks/work."""
    full = read(SHARED / "train_data.csv").drop_duplicates("chunk_text")
    rows = full if per_class == 0 else full.groupby("frame_name", group_keys=False).sample(n=per_class, random_state=0)
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"train_{per_class or 'all'}.csv"
    rows.to_csv(path, index=False)
    return rows, path


def real_data_overrides(subset: Path, run_dir: Path) -> list[str]:
    return [f"data.data_dir={WORK}", f"data.train_csv={subset.name}", f"data.test_csv={SHARED / 'dev_data.csv'}",
            f"training.output_dir={run_dir}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "smollm2-brexit.yaml"))
    parser.add_argument("--per-class", type=int, default=100, help="training rows per label (0: all)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default=None, help="label of this setting in the results table")
    parser.add_argument("--run-dir", default=str(WORK / "run"), help="run folder (replaced)")
    args = parser.parse_args()

    full = read(SHARED / "train_data.csv").drop_duplicates("chunk_text")
    dev = read(SHARED / "dev_data.csv")
    train_rows, subset = training_sample(args.per_class)
    config = load_config(args.config, [*real_data_overrides(subset, Path(args.run_dir)),
                                       f"training.num_epochs={args.epochs}", *args.overrides])
    labels = [k for k, _ in sorted(config.data.label2id.items(), key=lambda kv: kv[1])]
    baseline_same = evaluate_baseline(train_rows.chunk_text, train_rows.frame_name, dev.chunk_text, dev.frame_name,
                                      labels)
    baseline_full = evaluate_baseline(full.chunk_text, full.frame_name, dev.chunk_text, dev.frame_name, labels)

    started = time.perf_counter()
    result = train(config, overwrite=True)
    minutes = (time.perf_counter() - started) / 60
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    entry = {
        "name": args.name or f"{config.model.name} {len(train_rows)} chunks {args.epochs} ep lr {config.training.learning_rate:g}",
        "model": config.model.base_model,
        "method": config.method,
        "train_chunks": len(train_rows),
        "validation": json.loads((result.run_dir / "data_report.json").read_text())["validation_source"]
                      .replace(str(WORK), "benchmarks/work"),
        "epochs": args.epochs,
        "settings": {k: getattr(config.training, k) for k in ("learning_rate", "batch_size",
                     "gradient_accumulation_steps", "lora_r", "lora_alpha", "bf16")}
                    | {"max_length": config.data.max_length, "label_definitions": bool(config.prompt.label_definitions)},
        "total_minutes": round(minutes, 1),
        "train_minutes": round(result.train_seconds / 60, 1),
        "global_step": result.global_step,
        "train_tokens_per_epoch": summary["train_tokens_per_epoch"],
        "validation_f1_macro": round(result.metrics["validation"]["f1_macro"], 4),
        "dev": {k: round(v, 4) for k, v in headline(result.metrics["test"]).items()},
        "dev_per_class_f1": {k: round(v["f1"], 3) for k, v in result.metrics["test"]["per_class"].items()},
        "tfidf_baseline_same_rows_dev_f1_macro": round(baseline_same["f1_macro"], 4),
        "tfidf_baseline_full_train_dev_f1_macro": round(baseline_full["f1_macro"], 4),
    }
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    runs.append(entry)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(runs, indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
