"""`report.html`: one self-contained page per run (images embedded, no network), for people who read
results as tables and pictures.

Sections: headline metrics with bootstrap 95% confidence intervals, per-class table, confusion matrix,
learning curves (training loss, validation F1 macro per evaluation), label distribution per split, and the
most confident mistakes with their texts.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import HEADLINE
from .reporting import write_text


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def resampled_metrics(y_true, y_pred, labels, samples: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and F1 macro/micro/weighted for each row of resampled passage indices (vectorised)."""
    index = {label: i for i, label in enumerate(labels)}
    true = np.array([index[y] for y in y_true])
    pred = np.array([index.get(y, -1) for y in y_pred])
    t, p = true[samples], pred[samples]
    correct = t == p
    k, n = len(labels), samples.shape[1]
    tp = np.stack([((t == c) & correct).sum(1) for c in range(k)], 1)
    support = np.stack([(t == c).sum(1) for c in range(k)], 1)
    predicted = np.stack([(p == c).sum(1) for c in range(k)], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    return {
        "accuracy": correct.mean(1),
        "f1_micro": correct.mean(1),
        "f1_macro": f1.mean(1),
        "f1_weighted": (f1 * support).sum(1) / n,
    }


def bootstrap_intervals(y_true, y_pred, labels, n_resamples: int = 1000, seed: int = 0) -> dict[str, tuple]:
    """Percentile 95% intervals of accuracy and F1 macro/micro/weighted over resampled passages."""
    values = resampled_metrics(y_true, y_pred, labels, resample_indices(len(y_true), n_resamples, seed))
    return {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for name, v in values.items()}


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figures(run_dir: Path, metrics: dict, split: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {}
    matrix = np.array(metrics["confusion_matrix"])
    labels = metrics["labels"]
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 2, 0.9 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(f"confusion matrix ({split})")
    images["confusion"] = _png(fig)

    state_path = run_dir / "trainer_state.json"
    if state_path.is_file():
        history = json.loads(state_path.read_text())["log_history"]
        losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
        f1s = [(e["step"], e["eval_f1_macro"]) for e in history if "eval_f1_macro" in e]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
        if losses:
            left.plot(*zip(*losses), marker=".")
        left.set(title="training loss (answer tokens)", xlabel="optimizer step")
        if f1s:
            right.plot(*zip(*f1s), marker="o", color="tab:green")
        right.set(title="validation F1 macro", xlabel="optimizer step", ylim=(0, 1))
        images["curves"] = _png(fig)
    return images


def _table(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(
            f"<td>{float_format.format(v) if isinstance(v, float) else html.escape(str(v))}</td>" for v in row
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write `<run>/report.html` from the files of a finished run (test split if there is one)."""
    run_dir = Path(run_dir)
    split = "test" if (run_dir / "metrics_test.json").is_file() else "validation"
    metrics = json.loads((run_dir / f"metrics_{split}.json").read_text())
    predictions = pd.read_csv(run_dir / f"predictions_{split}.csv", keep_default_na=False)
    labels = metrics["labels"]
    intervals = bootstrap_intervals(predictions["label"], predictions["predicted"], labels)
    headline = pd.DataFrame([{
        "metric": key,
        "value": metrics[key],
        "95% CI": (f"{intervals[key][0]:.3f} – {intervals[key][1]:.3f}" if key in intervals else "—"),
    } for key in HEADLINE])
    per_class = pd.DataFrame([{"label": label, **scores} for label, scores in metrics["per_class"].items()])

    distribution_path = run_dir / "label_distribution.json"
    distribution = ""
    if distribution_path.is_file():
        counts = json.loads(distribution_path.read_text())
        frame = pd.DataFrame({name: pd.Series(c) for name, c in counts.items()}).reindex(labels).fillna(0).astype(int)
        distribution = _table(frame.rename_axis("label").reset_index())

    mistakes = predictions[predictions["label"] != predictions["predicted"]].copy()
    if len(mistakes):
        mistakes["confidence"] = [row[f"p_{row['predicted']}"] for _, row in mistakes.iterrows()]
        mistakes = mistakes.sort_values("confidence", ascending=False).head(10)
        mistakes_table = _table(mistakes[["label", "predicted", "confidence", "text"]])
    else:
        mistakes_table = "<p>No mistakes.</p>"

    images = _figures(run_dir, metrics, split)
    summary = json.loads((run_dir / "run_summary.json").read_text()) if (run_dir / "run_summary.json").is_file() else {}
    facts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()
                      if k in ("train_seconds", "global_step", "trainable_parameters", "train_examples", "processes"))
    title = title or f"framesft run {run_dir.name}"
    curves = f'<h2>Learning curves</h2><img alt="learning curves" src="{images["curves"]}">' if "curves" in images else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }}
th {{ background: #f0f3f7; }} td:nth-child(n+2) {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; }} .facts {{ color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="facts">Evaluated on the {split} split ({metrics['n']} passages). {html.escape(facts)}</p>
<h2>Headline metrics</h2>
<div id="metrics-table">{_table(headline)}</div>
<p class="facts">95% intervals: percentile bootstrap over passages (1000 resamples).</p>
<h2>Per class</h2>{_table(per_class)}
<h2>Confusion matrix</h2><img alt="confusion matrix" src="{images['confusion']}">
{curves}
<h2>Label distribution</h2>{distribution or '<p>not recorded</p>'}
<h2>Most confident mistakes</h2>{mistakes_table}
</body></html>
"""
    target = run_dir / "report.html"
    write_text(target, page)
    return target
