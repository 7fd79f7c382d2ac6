"""Writing results: atomic files, evaluation artefacts, and terminal tables.

Every file is written to a temporary name in the same folder and renamed into place, so an interrupted run
never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from .metrics import HEADLINE, per_class_rows
from .scoring import LabelScores

console = Console(stderr=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_table(path: str | Path, frame: pd.DataFrame) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def predictions_frame(texts: Sequence[str], scores: LabelScores, y_true: Sequence[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"text": list(texts)})
    if y_true is not None:
        frame["label"] = list(y_true)
    frame["predicted"] = scores.predictions
    probabilities = scores.probabilities
    for j, label in enumerate(scores.labels):
        frame[f"p_{label}"] = probabilities[:, j]
    frame["margin"] = scores.margins
    return frame


def save_confusion_matrix_png(matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size and matrix.max() else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_evaluation(folder: Path, split: str, metrics: dict, predictions: pd.DataFrame) -> None:
    """metrics_<split>.json, per_class_<split>.csv, confusion_matrix_<split>.csv/.png, predictions_<split>.csv."""
    labels = metrics["labels"]
    matrix = np.array(metrics["confusion_matrix"])
    write_table(folder / f"predictions_{split}.csv", predictions)
    write_table(folder / f"per_class_{split}.csv", pd.DataFrame(per_class_rows(metrics)))
    write_table(folder / f"confusion_matrix_{split}.csv", pd.DataFrame(matrix, index=labels, columns=labels)
                .rename_axis("true \\ predicted").reset_index())
    save_confusion_matrix_png(matrix, labels, folder / f"confusion_matrix_{split}.png", f"{split}: confusion matrix")
    write_json(folder / f"metrics_{split}.json", metrics)  # last: its presence marks a complete evaluation


def metrics_table(columns: dict[str, dict], title: str) -> Table:
    """Headline metrics side by side, one column per model/run."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for key in HEADLINE:
        table.add_row(key, *(f"{m[key]:.3f}" for m in columns.values()))
    return table


def per_class_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in per_class_rows(metrics):
        table.add_row(row["label"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    return table
