"""`report.html`: one self-contained page per run (images embedded, no network), for people who read
results as tables and pictures.

Sections: headline metrics with bootstrap 95% confidence intervals, per-class table, confusion matrix,
learning curves (training loss, validation F1 macro per evaluation), label distribution per split, and the
most confident mistakes with their texts.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import CALIBRATION_FILE
from .metrics import HEADLINE
from .plots import confusion_matrix_figure, learning_curves_figure, png_data_uri, reliability_diagram_figure
from .runfolder import LABEL_DISTRIBUTION_FILE, REPORT_FILE, SUMMARY_FILE, TRAINER_STATE_FILE
from .files import read_json, write_text
from .statistics import bootstrap_intervals


def _table(table: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for _, row in table.iterrows():
        cells = "".join(
            f"<td>{float_format.format(v) if isinstance(v, float) else html.escape(str(v))}</td>" for v in row
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def calibration_section(metrics: dict, split: str, fitted: dict) -> str:
    """Reliability diagram and ECE / Brier / log loss, raw and calibrated (runs before calibration: none)."""
    calibration = metrics.get("calibration")
    if not calibration:
        return ""
    t = calibration["temperature"]
    if fitted.get("not_fitted"):
        how = f"Temperature scaling was not fitted ({html.escape(fitted['not_fitted'])}): T = 1, raw probabilities."
    else:
        reading = ("the raw probabilities were over-confident" if t > 1.02 else
                   "the raw probabilities were under-confident" if t < 0.98 else "about as confident as right")
        how = (f"Temperature scaling fitted on the {html.escape(str(fitted.get('fitted_on', 'validation split')))}: "
               f"T = {t:.2f} ({reading}).")
    rows = pd.DataFrame([{"measure": name, "raw": calibration["before"][key], "calibrated": calibration["after"][key]}
                         for key, name in (("ece", "expected calibration error"), ("brier", "Brier score"),
                                           ("log_loss", "log loss"))])
    figure = reliability_diagram_figure(calibration["before"]["reliability"], calibration["after"]["reliability"],
                                        f"reliability ({split})")
    return (f'<h2>Calibration</h2><p class="facts">{how} Predicted labels are unchanged.</p>'
            f'<div id="calibration-table">{_table(rows)}</div>'
            f'<img alt="reliability diagram" src="{png_data_uri(figure)}">')


def agreement_section(metrics: dict) -> str:
    """Krippendorff's alpha and Cohen's kappa of the model against the gold labels, with 95% intervals."""
    agreement = metrics.get("agreement", {}).get("model_vs_gold")
    if not agreement:
        return ""
    rows = pd.DataFrame([
        {"statistic": "Krippendorff's alpha (nominal)", "value": agreement["krippendorff_alpha"],
         "95% CI": "{:.3f} – {:.3f}".format(*agreement["alpha_ci95"])},
        {"statistic": "Cohen's kappa", "value": agreement["cohen_kappa"],
         "95% CI": "{:.3f} – {:.3f}".format(*agreement["kappa_ci95"])}])
    return (f'<h2>The model as a coder</h2><div id="agreement-table">{_table(rows)}</div>'
            '<p class="facts">Agreement of the model with the gold labels, as reported for human coders (bootstrap '
            'over passages). `framesft evaluate --coder-columns` compares it with human-human agreement.</p>')


def render_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write `<run>/report.html` from the files of a finished run (test split if there is one)."""
    run_dir = Path(run_dir)
    split = "test" if (run_dir / "metrics_test.json").is_file() else "validation"
    metrics = read_json(run_dir / f"metrics_{split}.json")
    predictions = pd.read_csv(run_dir / f"predictions_{split}.csv", keep_default_na=False)
    labels = metrics["labels"]
    intervals = bootstrap_intervals(predictions["label"], predictions["predicted"], labels)
    headline = pd.DataFrame([{
        "metric": key,
        "value": metrics[key],
        "95% CI": (f"{intervals[key][0]:.3f} – {intervals[key][1]:.3f}" if key in intervals else "—"),
    } for key in HEADLINE])
    per_class = pd.DataFrame([{"label": label, **scores} for label, scores in metrics["per_class"].items()])

    counts = read_json(run_dir / LABEL_DISTRIBUTION_FILE)
    distribution = ""
    if counts:
        by_split = pd.DataFrame({name: pd.Series(c) for name, c in counts.items()}).reindex(labels).fillna(0)
        distribution = _table(by_split.astype(int).rename_axis("label").reset_index())

    mistakes = predictions[predictions["label"] != predictions["predicted"]].copy()
    if len(mistakes):
        mistakes["confidence"] = [row[f"p_{row['predicted']}"] for _, row in mistakes.iterrows()]
        mistakes = mistakes.sort_values("confidence", ascending=False).head(10)
        mistakes_table = _table(mistakes[["label", "predicted", "confidence", "text"]])
    else:
        mistakes_table = "<p>No mistakes.</p>"

    images = {"confusion": png_data_uri(confusion_matrix_figure(np.array(metrics["confusion_matrix"]), labels,
                                                                f"confusion matrix ({split})"))}
    history = read_json(run_dir / TRAINER_STATE_FILE).get("log_history")
    if history is not None:
        images["curves"] = png_data_uri(learning_curves_figure(history))
    summary = read_json(run_dir / SUMMARY_FILE)
    facts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()
                      if k in ("train_seconds", "global_step", "trainable_parameters", "train_examples", "processes"))
    calibration = calibration_section(metrics, split, read_json(run_dir / CALIBRATION_FILE))
    agreement = agreement_section(metrics)
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
{calibration}
{agreement}
<h2>Label distribution</h2>{distribution or '<p>not recorded</p>'}
<h2>Most confident mistakes</h2>{mistakes_table}
</body></html>
"""
    target = run_dir / REPORT_FILE
    write_text(target, page)
    return target
