"""Comparing runs (and the TF-IDF baseline) on the same labelled data, fairly and with uncertainty.

For every pair: a paired bootstrap 95% interval of the F1-macro difference (both models scored on the same
resampled passages) and McNemar's exact test on which passages each gets right.
"""

from __future__ import annotations

import html
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from .baseline import tfidf_baseline
from .config import load_config
from .data import check_frame, read_table
from .errors import DataError
from .inference import CONFIG_FILE, load_classifier
from .metrics import classification_metrics
from .report import resample_indices, resampled_metrics
from .reporting import write_json, write_text
from .rundata import load_run_data


def paired_comparison(y_true, pred_a, pred_b, labels, n_resamples: int = 2000, seed: int = 0) -> dict:
    samples = resample_indices(len(y_true), n_resamples, seed)
    diff = (resampled_metrics(y_true, pred_a, labels, samples)["f1_macro"]
            - resampled_metrics(y_true, pred_b, labels, samples)["f1_macro"])
    truth = np.array(y_true)
    right_a, right_b = np.array(pred_a) == truth, np.array(pred_b) == truth
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p_value = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    point = (classification_metrics(y_true, pred_a, labels)["f1_macro"]
             - classification_metrics(y_true, pred_b, labels)["f1_macro"])
    return {"f1_macro_difference": point,
            "ci95": (float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))),
            "only_a_correct": only_a, "only_b_correct": only_b, "mcnemar_p": float(p_value)}


def run_facts(run_dir: Path) -> dict:
    summary_path = run_dir / "run_summary.json"
    if not summary_path.is_file():
        return {}
    summary = json.loads(summary_path.read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text()) if (run_dir / "trainer_state.json").is_file() else {}
    epochs = state.get("epoch") or 0
    tokens = summary.get("train_tokens_per_epoch", 0) * epochs
    seconds = summary.get("train_seconds") or 0
    return {"train_minutes": round(seconds / 60, 1), "train_tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "trainable_parameters": summary.get("trainable_parameters")}


def compare_runs(run_dirs: list[str | Path], data_path: str | Path, output_dir: str | Path,
                 baseline: bool = False, show_progress: bool = True) -> dict:
    run_dirs = [Path(r) for r in run_dirs]
    first_config = load_config(run_dirs[0] / CONFIG_FILE)
    text_col, label_col = first_config.data.text_column, first_config.data.label_column
    frame = read_table(data_path, [text_col, label_col])
    texts, truth = frame[text_col].tolist(), None
    predictions: dict[str, list[str]] = {}
    facts: dict[str, dict] = {}
    labels = None
    for run_dir in run_dirs:
        classifier = load_classifier(run_dir)
        if labels is None:
            labels = classifier.labels
            report = check_frame(frame, str(data_path), text_col, label_col, labels)
            if report.errors:
                raise DataError("\n".join(f"{report.path}: {f.message}" for f in report.errors))
            truth = frame[label_col].tolist()
        elif classifier.labels != labels and sorted(classifier.labels) != sorted(labels):
            raise DataError(f"{run_dir} was trained on labels {classifier.labels}, {run_dirs[0]} on {labels}; "
                            "runs must share a label set to be compared")
        name = run_dir.name if run_dir.name not in predictions else str(run_dir)
        predictions[name] = classifier.score(texts, f"scoring {name}", show_progress).predictions
        facts[name] = {"method": classifier.config.method, **run_facts(run_dir)}
        del classifier
    if baseline:
        data = load_run_data(first_config)
        predictions["tfidf-baseline"], _ = tfidf_baseline(data.train[text_col], data.train[label_col], texts, labels)
        facts["tfidf-baseline"] = {"method": "tfidf+logreg", "train_rows": len(data.train)}

    metrics = {name: classification_metrics(truth, pred, labels) for name, pred in predictions.items()}
    pairs = {f"{a} vs {b}": paired_comparison(truth, predictions[a], predictions[b], labels)
             for a, b in itertools.combinations(predictions, 2)}
    result = {"data": str(data_path), "n": len(truth), "labels": labels, "facts": facts,
              "metrics": metrics, "pairs": pairs}
    output_dir = Path(output_dir)
    write_json(output_dir / "comparison.json", result)
    markdown = comparison_markdown(result)
    write_text(output_dir / "comparison.md", markdown)
    write_text(output_dir / "comparison.html", comparison_html(result))
    result["markdown"] = markdown
    return result


def _rows(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["run", "method", "F1 macro", "F1 micro", "F1 weighted", "accuracy", "precision", "recall",
              *[f"F1 {label}" for label in result["labels"]], "train min", "train tok/s", "trainable params"]
    rows = []
    for name, m in result["metrics"].items():
        f = result["facts"].get(name, {})
        rows.append([name, f.get("method", ""), *(f"{m[k]:.3f}" for k in ("f1_macro", "f1_micro", "f1_weighted",
                     "accuracy", "precision", "recall")), *(f"{m['per_class'][l]['f1']:.3f}" for l in result["labels"]),
                     str(f.get("train_minutes", "—")), str(f.get("train_tokens_per_second", "—")),
                     f"{f['trainable_parameters']:,}" if f.get("trainable_parameters") else "—"])
    return header, rows


def _pair_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["pair (A vs B)", "F1 macro A−B", "95% CI (paired bootstrap)", "only A right", "only B right",
              "McNemar p"]
    rows = [[pair, f"{p['f1_macro_difference']:+.3f}", f"{p['ci95'][0]:+.3f} … {p['ci95'][1]:+.3f}",
             str(p["only_a_correct"]), str(p["only_b_correct"]), f"{p['mcnemar_p']:.3g}"]
            for pair, p in result["pairs"].items()]
    return header, rows


def comparison_markdown(result: dict) -> str:
    def table(header, rows):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

    return (f"# Comparison on {result['data']} ({result['n']} passages)\n\n" + table(*_rows(result))
            + "\n\n## Pairwise\n\n" + table(*_pair_rows(result)) + "\n")


def comparison_html(result: dict) -> str:
    def table(header, rows):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>framesft comparison</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3rem .6rem}th{background:#f0f3f7}</style></head><body>"
            f"<h1>Comparison on {html.escape(result['data'])} ({result['n']} passages)</h1>"
            + table(*_rows(result)) + "<h2>Pairwise</h2>" + table(*_pair_rows(result)) + "</body></html>\n")
