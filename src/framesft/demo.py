"""The demo: the embedded model on the bundled sample data, before and after fine-tuning."""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path

from .audit import draw_audit_sample
from .config import FrameSFTConfig, load_config
from .dataset import load_run_data
from .evaluation import evaluate_texts
from .findings import estimate_findings
from .inference import load_classifier, load_zero_shot, predict_texts
from .metrics import headline
from .files import write_json
from .terminal import agreement_table, calibration_table, console, metrics_table, per_class_table, shares_table
from .training import train

DEMO_CONFIG = Path(__file__).parent / "resources" / "demo.yaml"

EXAMPLES = [
    "The Chancellor must explain how exporters will cope with tariffs and customs costs that could wipe out their margins.",
    "A constituent who has cared for elderly patients in our hospice for ten years told me she fears being sent away.",
]


def demo_config(overrides: list[str] | None = None) -> FrameSFTConfig:
    return load_config(DEMO_CONFIG, overrides)


def run_demo(run_dir: str | Path | None = None, overwrite: bool = False, overrides: list[str] | None = None,
             show_progress: bool = True) -> dict:
    """Zero-shot metrics, fine-tuning, fine-tuned metrics on the same test split, and two example predictions."""
    started = time.perf_counter()
    config = demo_config(overrides)
    data = load_run_data(config)
    text_col, label_col = config.data.text_column, config.data.label_column

    console.rule("[bold]1/3 zero-shot: the base model before fine-tuning")
    zero_shot = load_zero_shot(config, data.labels)
    before, _ = evaluate_texts(zero_shot, data.test[text_col].tolist(), data.test[label_col].tolist(),
                               "zero-shot test", show_progress)
    del zero_shot
    gc.collect()

    console.rule("[bold]2/3 fine-tuning with LoRA")
    result = train(config, run_dir, overwrite=overwrite, show_progress=show_progress)
    after = result.metrics["test"]

    console.rule("[bold]3/3 results")
    examples = predict_texts(load_classifier(result.run_dir), EXAMPLES)
    summary = {
        "run_dir": str(result.run_dir),
        "test_rows": len(data.test),
        "before": headline(before),
        "after": headline(after),
        "train_seconds": round(result.train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "examples": examples[["text", "predicted"]].to_dict(orient="records"),
    }
    shares = shares_from_test_split(Path(result.run_dir), data.labels, text_col)
    summary["krippendorff_alpha"] = after["agreement"]["model_vs_gold"]["krippendorff_alpha"]
    summary["ece"] = {"raw": after["calibration"]["before"]["ece"], "calibrated": after["calibration"]["after"]["ece"]}
    write_json(Path(result.run_dir) / "demo_summary.json", summary)
    console.print(per_class_table(after, "fine-tuned: per-class scores on the test split"))
    for row in summary["examples"]:
        console.print(f"[bold]{row['predicted']}[/bold] <- {row['text']}")
    console.print(metrics_table({"before (zero-shot)": before, "after (fine-tuned)": after},
                                f"test split ({len(data.test)} passages): before vs after fine-tuning"))
    console.print(calibration_table(after, "calibration on the test split (temperature fitted on validation)"))
    console.print(agreement_table(after, "the fine-tuned model as a coder (test split, bootstrap 95% intervals)"))
    console.print(shares_table(shares, []))
    console.print("shares of the test split: a random half of it plays the human-coded audit sample "
                  f"(framesft sample + estimate); written to {Path(result.run_dir) / 'shares'}")
    console.print(f"run folder: {result.run_dir}   total time: {summary['total_seconds']:.0f} s")
    return summary


def shares_from_test_split(run_dir: Path, labels: list[str], text_column: str):
    """The findings path on the demo's test split: its predictions as a corpus, a random half of it drawn as the
    audit sample and 'coded' with the gold labels, then frame shares with intervals (framesft estimate)."""
    import pandas as pd

    predictions = pd.read_csv(run_dir / "predictions_test.csv", keep_default_na=False, dtype=str)
    work = run_dir / "findings_input"
    shutil.rmtree(work, ignore_errors=True)  # a fresh sheet each time (sample never overwrites one)
    work.mkdir()
    corpus = predictions.drop(columns=["label"]).rename(columns={"text": text_column})
    corpus.insert(0, "id", [f"test-{i}" for i in range(len(corpus))])
    corpus.to_csv(work / "test_predictions.csv", index=False)
    sheet = draw_audit_sample(work / "test_predictions.csv", len(corpus) // 2, work / "coding_sheet.csv",
                              text_column=text_column, seed=0)
    gold = dict(zip(corpus["id"], predictions["label"]))
    sheet["label"] = [gold[i] for i in sheet["id"]]  # a human coder would fill this column in
    sheet.to_csv(work / "coding_sheet_coded.csv", index=False)
    shutil.rmtree(run_dir / "shares", ignore_errors=True)
    shares, _ = estimate_findings(work / "test_predictions.csv", run_dir / "shares", work / "coding_sheet_coded.csv",
                                  labels=labels)
    return shares
