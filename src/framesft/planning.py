"""Planning the audit before anyone codes: how many passages give 95% PPI intervals of a chosen half-width.

`framesft plan PREDICTIONS --labelled RUN_OR_SHEET --half-width 0.05 [--by party] [--time-column date]`.

For one label's share in one group of N passages, a simple random audit of n of them gives (estimation.py,
finite population) the PPI++ half-width

    h(n) = z * sqrt(V / n * (1 - n / N)),    V = Var(Y - lam f),

Y the gold indicator of the label and f the model's calibrated probability. Solving for n:
n = z^2 V / (h^2 + z^2 V / N). V is not known before coding; it is predicted from two sources:
- the model's errors e = Y - f, from labelled passages the model was not trained on (the run's validation
  split, or a pilot audit once one is coded): Var(e) and Cov(e, f) per label;
- the spread of the predictions in the corpus itself, Var(f) per group and label (exact: every passage was
  scored).
Then V = Var(e) + (1 - lam)^2 Var(f) + 2 (1 - lam) Cov(e, f), since Y - lam f = e + (1 - lam) f, and lam is
PPI++'s one weight for all labels (sum of Cov(Y, f) over sum of Var(f), clipped to [0, 1]). The audit alone is
the same with lam = 0 (V = Var(Y)): what coding would cost without the model. The n of a group is the largest
over its labels, so every share reaches the width. The errors are assumed alike in every group (the labelled
passages rarely cover each group); a pilot audit from the corpus makes them the corpus's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .audit import read_coded_sheet
from .errors import DataError
from .estimation import (ALL, audit_rows, check_dates, corpus_aggregates, group_expressions, open_predictions,
                         z_value)
from .tables import read_table

PREDICTIONS_VALIDATION = "predictions_validation.csv"
MIN_LABELLED = 30  # fewer labelled passages give error variances that are noise


@dataclass
class ModelErrors:
    """Per label, over labelled passages: Var(Y - f), Cov(Y - f, f) and the passages they come from."""

    labels: list[str]
    var_error: np.ndarray
    cov_error_prediction: np.ndarray
    passages: int
    source: str


def model_errors(gold: Sequence[str], probabilities: np.ndarray, labels: list[str], source: str) -> ModelErrors:
    y = np.stack([(np.asarray(gold) == label).astype(float) for label in labels], axis=1)
    f = np.asarray(probabilities, dtype=float)
    e = y - f
    cov = ((e - e.mean(axis=0)) * (f - f.mean(axis=0))).mean(axis=0)
    return ModelErrors(list(labels), e.var(axis=0), cov, len(y), source)


def errors_from_labelled(labelled: str | Path, predictions: str | Path, labels: list[str],
                         id_column: str | None = None) -> ModelErrors:
    """The model's errors from a run folder (its validation predictions) or a coded pilot audit sheet."""
    path = Path(labelled)
    if path.is_dir():
        table = read_table(path / PREDICTIONS_VALIDATION, ["label"] + [f"p_{label}" for label in labels])
        gold, probs = table["label"].tolist(), table[[f"p_{label}" for label in labels]].astype(float).to_numpy()
        source = f"{path} (validation split)"
    else:
        sheet = read_coded_sheet(path, predictions, labels, id_column=id_column)
        file, connection = open_predictions(predictions, id_column)
        try:
            rows = audit_rows(file, connection, sheet, {})
        finally:
            connection.close()
        gold, probs = rows["gold"].tolist(), rows[[f"p_{label}" for label in labels]].astype(float).to_numpy()
        source = f"{path} (pilot audit)"
    if len(gold) < MIN_LABELLED:
        raise DataError(f"{labelled}: {len(gold)} labelled passages; planning needs at least {MIN_LABELLED} to "
                        "estimate the model's errors")
    return model_errors(gold, probs, labels, source)


def rectifier_variance(errors: ModelErrors, var_f: np.ndarray, lam: float) -> np.ndarray:
    """Var(Y - lam f) per label: e + (1 - lam) f with e's moments from labelled data, f's from the corpus."""
    return np.maximum(errors.var_error + (1 - lam) ** 2 * var_f + 2 * (1 - lam) * errors.cov_error_prediction, 0.0)


def power_weight(errors: ModelErrors, var_f: np.ndarray) -> float:
    """PPI++'s weight for all labels as the audit will tune it: sum of Cov(Y, f) over sum of Var(f)."""
    total = var_f.sum()
    return float(np.clip((errors.cov_error_prediction + var_f).sum() / total, 0.0, 1.0)) if total > 0 else 0.0


def audit_size(variance: np.ndarray, N: int, half_width: float, alpha: float = 0.05) -> int:
    """The smallest n whose half-width z sqrt(V/n (1 - n/N)) is at most the target for every label."""
    z2v = z_value(alpha) ** 2 * np.max(variance)
    return int(min(N, max(2, np.ceil(z2v / (half_width ** 2 + z2v / N)))))


def half_widths(variance: np.ndarray, N: int, n: int, alpha: float = 0.05) -> np.ndarray:
    return z_value(alpha) * np.sqrt(variance / n * max(0.0, 1 - n / N))


def plan_audit(predictions: str | Path, labelled: str | Path, half_width: float, by: Sequence[str] = (),
               time_column: str | None = None, time_unit: str = "month", id_column: str | None = None,
               alpha: float = 0.05) -> tuple[pd.DataFrame, ModelErrors]:
    """One row per group (overall first): corpus rows, the planned audit size with PPI++ and with the audit alone,
    the widest label, and the half-widths at a few sizes around the plan."""
    if not 0 < half_width < 0.5:
        raise DataError(f"--half-width {half_width}: give the half-width of the intervals as a share, e.g. 0.05")
    file, connection = open_predictions(predictions, id_column)
    try:
        groups = group_expressions(file, list(by), time_column, time_unit)
        if time_column:
            check_dates(file, connection, time_column)
        aggregates = corpus_aggregates(file, connection, groups)
    finally:
        connection.close()
    errors = errors_from_labelled(labelled, predictions, file.labels, id_column)
    rows = []
    for _, group in aggregates.iterrows():
        N = int(group["rows"])
        mean = np.array([group["s_" + label] / N for label in file.labels])
        var_f = np.maximum(np.array([group["ss_" + label] / N for label in file.labels]) - mean ** 2, 0.0)
        lam = power_weight(errors, var_f)
        with_model = rectifier_variance(errors, var_f, lam)
        alone = rectifier_variance(errors, var_f, 0.0)
        n = audit_size(with_model, N, half_width, alpha)
        row = {name: group[name] for name in groups}
        row.update({"rows": N, "audit_n": n, "audit_alone_n": audit_size(alone, N, half_width, alpha),
                    "lambda": lam, "widest_label": file.labels[int(np.argmax(with_model))]})
        for name, factor in (("half_n", 0.5), ("n", 1.0), ("2n", 2.0)):  # how the width moves with the size
            size = int(min(N, max(2, round(n * factor))))
            row[f"half_width_at_{name}"] = float(half_widths(with_model, N, size, alpha).max())
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in groups:
        table[name] = table[name].fillna(ALL)
    return table, errors
