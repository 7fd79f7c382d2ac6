"""The demo: the embedded model on the bundled sample data, before and after fine-tuning."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from .config import FrameSFTConfig, load_config
from .dataset import load_run_data
from .evaluation import evaluate_texts
from .inference import load_classifier, load_zero_shot, predict_texts
from .metrics import headline
from .runfolder import write_json
from .terminal import console, metrics_table, per_class_table
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
    write_json(Path(result.run_dir) / "demo_summary.json", summary)
    console.print(per_class_table(after, "fine-tuned: per-class scores on the test split"))
    for row in summary["examples"]:
        console.print(f"[bold]{row['predicted']}[/bold] <- {row['text']}")
    console.print(metrics_table({"before (zero-shot)": before, "after (fine-tuned)": after},
                                f"test split ({len(data.test)} passages): before vs after fine-tuning"))
    console.print(f"run folder: {result.run_dir}   total time: {summary['total_seconds']:.0f} s")
    return summary
