"""Figures (matplotlib, no display needed): confusion matrix, learning curves, reliability diagram, frame shares.

The share figures come in two sizes: the screen version (PNG, in the HTML page) and a journal-column version
(3.5 in wide, 7 pt type, legend below) written as PDF with TrueType fonts embedded and as SVG with the glyphs as
paths, so that neither depends on fonts installed where it is opened."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import atomic_path


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


def png_bytes(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


COLUMN_WIDTH_INCHES = 3.5  # one column of a two-column journal page (about 89 mm)
JOURNAL_STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "legend.fontsize": 6.5,
                 "xtick.labelsize": 6.5, "ytick.labelsize": 6.5, "lines.markersize": 3, "lines.linewidth": 1.0,
                 "pdf.fonttype": 42, "svg.fonttype": "path"}  # 42: TrueType, embedded whole (journals ask for it)


def save_vector_figures(make_figure, stem: Path) -> list[Path]:
    """The figure that make_figure() draws, in the journal style, as stem.pdf and stem.svg."""
    import matplotlib

    plt = _pyplot()
    with matplotlib.rc_context(JOURNAL_STYLE):
        fig = make_figure()
        paths = []
        for suffix in (".pdf", ".svg"):
            path = stem.with_suffix(suffix)
            fig.savefig(path, format=suffix[1:], bbox_inches="tight")
            paths.append(path)
    plt.close(fig)
    return paths


def png_data_uri(fig_or_png, dpi: int = 110) -> str:
    """A figure (or PNG bytes) as an inline image for a self-contained HTML page."""
    data = fig_or_png if isinstance(fig_or_png, bytes) else png_bytes(fig_or_png, dpi)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _share_columns(table) -> tuple[str, str]:
    """The best estimate the table has: PPI when there was an audit, else the calibrated PCC."""
    return ("ppi", "PPI (model + audit)") if "ppi" in table.columns else ("pcc", "PCC (sampling noise only)")


def shares_over_time_figure(table, group_column: str | None = None, column: bool = False):
    """One panel per group (or one panel), a line per label over the periods, with its 95% interval as a band.
    column=True: sized for a journal column (COLUMN_WIDTH_INCHES wide, legend below)."""
    plt = _pyplot()
    estimate, description = _share_columns(table)
    rows = table[table["period"] != "(all)"]
    groups = ["(all)"] + ([] if group_column is None else sorted(v for v in rows[group_column].unique()
                                                                 if v != "(all)"))
    width, panel = (COLUMN_WIDTH_INCHES, 1.9) if column else (10, 3.2)
    fig, axes = plt.subplots(len(groups), 1, figsize=(width, panel * len(groups)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        part = rows if group_column is None else rows[rows[group_column] == group]
        for label, line in part.groupby("label", sort=False):
            line = line.sort_values("period")
            ax.plot(line["period"], line[estimate], marker="o", label=label)
            ax.fill_between(line["period"], line[f"{estimate}_low"], line[f"{estimate}_high"], alpha=0.2)
        ax.set(ylabel="share", ylim=(0, None), title=f"{group_column} = {group}" if group != "(all)" else
               f"frame shares over time: {description}, 95% intervals")
        ax.tick_params(axis="x", rotation=45)
    _legend(fig, axes[0, 0], column)
    return fig


def _legend(fig, ax, column: bool) -> None:
    """Beside the plot on a screen; under the whole figure in a journal column, where the width is taken (added
    after the layout, so it takes no room from the axes; the tight bounding box of the saved file takes it in)."""
    if column:
        fig.tight_layout()
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        fig.tight_layout()


def shares_by_group_figure(table, group_column: str | None = None, column: bool = False):
    """Grouped bars: a bar per label for each group (or overall), with 95% interval whiskers.
    column=True: sized for a journal column (COLUMN_WIDTH_INCHES wide, legend below)."""
    plt = _pyplot()
    estimate, description = _share_columns(table)
    if group_column is None:
        rows = table
        groups = ["(all)"]
    else:
        rows = table[table[group_column] != "(all)"]
        groups = sorted(rows[group_column].unique())
    labels = list(dict.fromkeys(table["label"]))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_INCHES, 2.6) if column else (max(6, 1.6 * len(groups) + 3), 4))
    for j, label in enumerate(labels):
        part = rows[rows["label"] == label]
        values = [part[part[group_column] == g] if group_column else part for g in groups]
        centre = [float(v[estimate].iloc[0]) if len(v) else np.nan for v in values]
        low = [c - float(v[f"{estimate}_low"].iloc[0]) if len(v) else 0 for c, v in zip(centre, values)]
        high = [float(v[f"{estimate}_high"].iloc[0]) - c if len(v) else 0 for c, v in zip(centre, values)]
        ax.bar(np.arange(len(groups)) + j * width, centre, width, yerr=[low, high], capsize=2, label=label)
    ax.set_xticks(np.arange(len(groups)) + width * (len(labels) - 1) / 2, groups,
                  rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set(ylabel="share", title=f"frame shares: {description}, 95% intervals")
    _legend(fig, ax, column)
    return fig


def reliability_diagram_figure(before: list[dict], after: list[dict], title: str):
    """Mean confidence against accuracy per confidence bin, raw and calibrated (point size: passages)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for bins, name, colour in ((before, "raw", "tab:red"), (after, "calibrated", "tab:blue")):
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour,
                    label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig
