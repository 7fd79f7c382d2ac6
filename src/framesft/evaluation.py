"""Scoring a classifier on labelled passages: metrics, predictions with per-label probabilities, and the files
an evaluation leaves (metrics JSON, per-class CSV, confusion matrix CSV + PNG, predictions CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .calibration import calibration_report, fit_temperature, save_temperature, why_not_fit
from .dataset import load_run_data, read_coder_columns, read_labelled_file
from .errors import DataError
from .files import write_json, write_table
from .inference import Classifier, load_classifier
from .vllm_engine import load_classifier_for
from .metrics import classification_metrics, per_class_rows
from .plots import confusion_matrix_figure, save_png
from .reliability import model_as_coder
from .scoring import predictions_table


def evaluate_texts(classifier: Classifier, texts: Sequence[str], y_true: Sequence[str],
                   description: str = "evaluating", show_progress: bool = True, calibrate: bool = False,
                   coders: dict[str, Sequence[str]] | None = None) -> tuple[dict, pd.DataFrame]:
    """Metrics and the predictions table (calibrated probabilities) of a classifier on labelled passages.

    Besides the classification metrics: calibration before/after the classifier's temperature (with
    `calibrate`, a temperature fitted on these passages instead, returned as metrics["calibration"]["temperature"];
    the classifier itself is left as it is) and agreement statistics of the model as a coder (with `coders`,
    human coders' columns, also human-human agreement).
    """
    raw = classifier.score(texts, description, show_progress, calibrated=False)
    truth = [classifier.labels.index(label) for label in y_true]
    temperature = fit_temperature(raw.scores, truth) if calibrate else classifier.temperature
    scores = raw.with_calibration(temperature, classifier.label_bias)
    metrics = classification_metrics(list(y_true), scores.predictions, classifier.labels)
    metrics["calibration"] = calibration_report(raw.scores, truth, temperature, classifier.label_bias)
    reason = why_not_fit(raw.scores, truth) if calibrate else None
    if reason:
        metrics["calibration"]["not_fitted"] = reason
    metrics["agreement"] = model_as_coder(list(y_true), scores.predictions, classifier.labels, coders)
    return metrics, predictions_table(texts, scores, y_true)


def write_evaluation(folder: Path, split: str, metrics: dict, predictions: pd.DataFrame) -> None:
    """metrics_<split>.json, per_class_<split>.csv, confusion_matrix_<split>.csv/.png, predictions_<split>.csv."""
    labels = metrics["labels"]
    matrix = np.array(metrics["confusion_matrix"])
    write_table(folder / f"predictions_{split}.csv", predictions)
    write_table(folder / f"per_class_{split}.csv", pd.DataFrame(per_class_rows(metrics)))
    write_table(folder / f"confusion_matrix_{split}.csv", pd.DataFrame(matrix, index=labels, columns=labels)
                .rename_axis("true \\ predicted").reset_index())
    save_png(confusion_matrix_figure(matrix, labels, f"{split}: confusion matrix"),
             folder / f"confusion_matrix_{split}.png")
    write_json(folder / f"metrics_{split}.json", metrics)  # last: its presence marks a complete evaluation


def evaluate_run(run_dir: str | Path, data_path: str | Path, output_dir: str | Path | None = None,
                 show_progress: bool = True, encoding: str | None = None, delimiter: str | None = None,
                 coder_columns: Sequence[str] = (), sheet: str | None = None, engine: str = "local",
                 server: str | None = None) -> dict:
    """Evaluate a trained run on a labelled file; write metrics, per-class report, confusion matrix, predictions.

    The file is read with the run's columns, encoding and delimiter unless `encoding`/`delimiter` say otherwise
    (`sheet`: which sheet of an .xlsx workbook).
    `coder_columns` name columns with other human coders' labels (empty cell: not coded) for human-human
    agreement beside model-human agreement. `engine="vllm"`: score through the vLLM server at `server`
    (vllm_engine.py) instead of in this process.
    """
    classifier = load_classifier_for(run_dir, engine, server)
    data = classifier.config.data.with_format(encoding, delimiter, sheet)
    table = read_labelled_file(data_path, data, classifier.labels, extra_columns=coder_columns)
    coders = read_coder_columns(table, str(data_path), coder_columns, classifier.labels)
    metrics, predictions = evaluate_texts(classifier, table[data.text_column].tolist(),
                                          table[data.label_column].tolist(), show_progress=show_progress,
                                          coders=coders)
    folder = Path(output_dir) if output_dir else Path(run_dir) / f"eval_{Path(data_path).stem}"
    write_evaluation(folder, "eval", metrics, predictions)
    metrics["output_dir"] = str(folder)
    return metrics


def calibrate_run(run_dir: str | Path, data_path: str | Path | None = None, show_progress: bool = True,
                  encoding: str | None = None, delimiter: str | None = None, sheet: str | None = None) -> dict:
    """Fit the run's temperature on a labelled file (default: the run's own validation split, rebuilt from
    its config) and store it in the run folder; returns the calibration report (before/after)."""
    classifier = load_classifier(run_dir)
    if classifier.label_bias is not None:  # a temperature alone would replace the biases fitted with it
        raise DataError(f"{run_dir} is an adapted run: its temperature and per-label biases were fitted together by "
                        "`adaptation.adapt_run`; adapt its source run again instead")
    data = classifier.config.data.with_format(encoding, delimiter, sheet)
    if data_path is None:
        table, source = load_run_data(classifier.config).validation, "validation split"
    else:
        table, source = read_labelled_file(data_path, data, classifier.labels), str(data_path)
    texts, y_true = table[data.text_column].tolist(), table[data.label_column].tolist()
    raw = classifier.score(texts, "calibrating", show_progress, calibrated=False)
    truth = [classifier.labels.index(label) for label in y_true]
    reason = why_not_fit(raw.scores, truth)
    if reason:
        raise DataError(f"{source}: cannot fit a temperature: {reason}; give a larger labelled file with --data")
    temperature = fit_temperature(raw.scores, truth)
    report = calibration_report(raw.scores, truth, temperature)
    save_temperature(Path(run_dir), temperature, source, len(texts), report)
    return {"fitted_on": source, "passages": len(texts), **report}
