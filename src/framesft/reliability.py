"""The model as a coder: agreement statistics that content analysts report for human coders.

Krippendorff's alpha (nominal; the `krippendorff` package) and Cohen's kappa (scikit-learn) between the model
and the gold labels, each with a percentile bootstrap 95% interval over passages. With several human coders'
columns, human-human alpha is reported beside model-human alpha: the question reviewers ask is whether the
model codes as reliably as a second human.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from .statistics import resample_indices

MISSING = ""  # an empty cell in a coder's column: that coder did not code the passage


def _codes(columns: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """Coders x units matrix of label indices, NaN where a coder left the unit empty."""
    index = {label: float(i) for i, label in enumerate(labels)}
    return np.array([[index[v] if v != MISSING else np.nan for v in column] for column in columns])


def krippendorff_alpha(columns: Sequence[Sequence[str]], labels: Sequence[str]) -> float:
    """Nominal alpha over any number of coders (one sequence of labels per coder; '' is a missing code)."""
    import krippendorff

    data = _codes(columns, labels)
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return float("nan")  # one value in all the data: alpha is undefined
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal",
                                     value_domain=list(range(len(labels)))))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    both = [(x, y) for x, y in zip(a, b) if x != MISSING and y != MISSING]
    if not both:
        return float("nan")
    x, y = zip(*both)
    return float(cohen_kappa_score(list(x), list(y)))


def _interval(values: np.ndarray) -> list[float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def agreement(columns: Sequence[Sequence[str]], labels: Sequence[str], n_resamples: int = 1000,
              seed: int = 0) -> dict:
    """Alpha (and, for two coders, kappa) with percentile bootstrap 95% intervals over units."""
    columns = [list(c) for c in columns]
    n = len(columns[0])
    samples = resample_indices(n, n_resamples, seed)
    result = {"coders": len(columns), "units": n, "krippendorff_alpha": krippendorff_alpha(columns, labels),
              "alpha_ci95": _interval(np.array([krippendorff_alpha([[c[i] for i in rows] for c in columns], labels)
                                                for rows in samples]))}
    if len(columns) == 2:
        result["cohen_kappa"] = cohen_kappa(*columns)
        result["kappa_ci95"] = _interval(np.array([cohen_kappa([columns[0][i] for i in rows],
                                                               [columns[1][i] for i in rows]) for rows in samples]))
    return result


def model_as_coder(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str],
                   coders: dict[str, Sequence[str]] | None = None, n_resamples: int = 1000) -> dict:
    """Model vs gold; with human coders' columns also human vs human, model vs each human, and all together."""
    report = {"model_vs_gold": agreement([y_true, y_pred], labels, n_resamples)}
    if coders:
        names = list(coders)
        report["human_vs_human"] = agreement([coders[name] for name in names], labels, n_resamples)
        report["pairs"] = {f"{a} vs {b}": agreement([coders[a], coders[b]], labels, n_resamples)
                           for a, b in combinations(names, 2)}
        report["pairs"].update({f"model vs {name}": agreement([y_pred, coders[name]], labels, n_resamples)
                                for name in names})
        report["humans_and_model"] = agreement([coders[name] for name in names] + [list(y_pred)], labels,
                                               n_resamples)
    return report
