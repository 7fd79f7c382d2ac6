"""Comparing runs (and the TF-IDF baseline) on the same labelled data, fairly and with uncertainty.

For every pair: a paired bootstrap 95% interval of the F1-macro difference (both models scored on the same
resampled passages) and McNemar's exact test on which passages each gets right.
"""

from __future__ import annotations

import html
import itertools
from pathlib import Path

from .baseline import tfidf_baseline
from .calibration import calibration_report
from .dataset import load_run_data, read_labelled_file
from .errors import DataError
from .inference import load_classifier
from .metrics import classification_metrics
from .reliability import agreement
from .runfolder import SUMMARY_FILE, TRAINER_STATE_FILE, read_label_map, read_run_config
from .files import read_json, write_json, write_text
from .statistics import paired_comparison


def run_facts(run_dir: Path) -> dict:
    summary = read_json(run_dir / SUMMARY_FILE)
    if not summary:
        return {}
    state = read_json(run_dir / TRAINER_STATE_FILE)
    epochs = state.get("epoch") or 0
    tokens = summary.get("train_tokens_per_epoch", 0) * epochs
    seconds = summary.get("train_seconds") or 0
    return {"train_minutes": round(seconds / 60, 1), "train_tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "trainable_parameters": summary.get("trainable_parameters")}


def compare_runs(run_dirs: list[str | Path], data_path: str | Path, output_dir: str | Path,
                 baseline: bool = False, show_progress: bool = True, encoding: str | None = None,
                 delimiter: str | None = None, sheet: str | None = None) -> dict:
    """Score every run (and, with `baseline`, TF-IDF trained on the first run's data) on one labelled file;
    write comparison.{json,md,html} with metrics per run and paired statistics per pair."""
    run_dirs = [Path(r) for r in run_dirs]
    first_config = read_run_config(run_dirs[0])
    labels = read_label_map(run_dirs[0])
    data = first_config.data.with_format(encoding, delimiter, sheet)
    table = read_labelled_file(data_path, data, labels)
    texts, truth = table[data.text_column].tolist(), table[data.label_column].tolist()
    predictions: dict[str, list[str]] = {}
    facts: dict[str, dict] = {}
    calibration: dict[str, dict] = {}
    truth_index = [labels.index(label) for label in truth]
    for run_dir in run_dirs:
        classifier = load_classifier(run_dir)
        if sorted(classifier.labels) != sorted(labels):
            raise DataError(f"{run_dir} was trained on labels {classifier.labels}, {run_dirs[0]} on {labels}; "
                            "runs must share a label set to be compared")
        name = run_dir.name if run_dir.name not in predictions else str(run_dir)
        raw = classifier.score(texts, f"scoring {name}", show_progress, calibrated=False)
        scores = classifier.calibrated(raw)
        # the run's own label order may differ: map its predictions and score columns onto the first run's
        predictions[name] = scores.predictions
        order = [classifier.labels.index(label) for label in labels]
        bias = None if classifier.label_bias is None else classifier.label_bias[order]
        calibration[name] = calibration_report(raw.scores[:, order], truth_index, classifier.temperature, bias)
        facts[name] = {"method": classifier.config.method, **run_facts(run_dir)}
        del classifier
    if baseline:
        train = load_run_data(first_config).train
        predictions["tfidf-baseline"], _ = tfidf_baseline(train[data.text_column], train[data.label_column], texts,
                                                          labels)
        facts["tfidf-baseline"] = {"method": "tfidf+logreg", "train_rows": len(train)}

    metrics = {name: classification_metrics(truth, pred, labels) for name, pred in predictions.items()}
    for name, pred in predictions.items():
        metrics[name]["agreement"] = agreement([truth, pred], labels)
        if name in calibration:
            metrics[name]["calibration"] = calibration[name]
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
              *[f"F1 {label}" for label in result["labels"]], "alpha (95% CI)", "kappa", "ECE raw → calibrated",
              "train min", "train tok/s", "trainable params"]
    rows = []
    for name, m in result["metrics"].items():
        f = result["facts"].get(name, {})
        rows.append([name, f.get("method", ""), *(f"{m[k]:.3f}" for k in ("f1_macro", "f1_micro", "f1_weighted",
                     "accuracy", "precision", "recall")), *(f"{m['per_class'][l]['f1']:.3f}" for l in result["labels"]),
                     *agreement_cells(m), str(f.get("train_minutes", "—")), str(f.get("train_tokens_per_second", "—")),
                     f"{f['trainable_parameters']:,}" if f.get("trainable_parameters") else "—"])
    return header, rows


def agreement_cells(metrics: dict) -> list[str]:
    a = metrics["agreement"]
    cells = [f"{a['krippendorff_alpha']:.3f} ({a['alpha_ci95'][0]:.3f}–{a['alpha_ci95'][1]:.3f})",
             f"{a['cohen_kappa']:.3f}"]
    c = metrics.get("calibration")
    return cells + [f"{c['before']['ece']:.3f} → {c['after']['ece']:.3f}" if c else "—"]


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
