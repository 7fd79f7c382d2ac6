"""Figures (matplotlib, no display needed): the confusion matrix and the learning curves."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .runfolder import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: figures are only written to files
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_figure(matrix: np.ndarray, labels: Sequence[str], title: str):
    """Counts in a blue heat map, true labels down, predicted across."""
    plt = _pyplot()
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
    return fig


def learning_curves_figure(log_history: list[dict]):
    """Training loss and validation F1 macro against the optimizer step (the trainer's log history)."""
    plt = _pyplot()
    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    f1s = [(e["step"], e["eval_f1_macro"]) for e in log_history if "eval_f1_macro" in e]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    if losses:
        left.plot(*zip(*losses), marker=".")
    left.set(title="training loss (answer tokens)", xlabel="optimizer step")
    if f1s:
        right.plot(*zip(*f1s), marker="o", color="tab:green")
    right.set(title="validation F1 macro", xlabel="optimizer step", ylim=(0, 1))
    return fig


def save_png(fig, path: str | Path, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(fig)


def png_data_uri(fig, dpi: int = 110) -> str:
    """The figure as an inline image for a self-contained HTML page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
