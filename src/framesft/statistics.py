"""Uncertainty of classification results: bootstrap intervals over passages and paired comparisons.

Shared by the run report (intervals of each headline metric), `framesft compare` (paired differences and
McNemar's test) and future estimation work.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binomtest

from .metrics import classification_metrics


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_resamples, n) passage indices drawn with replacement: one bootstrap sample per row."""
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


def paired_comparison(y_true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str], labels: Sequence[str],
                      n_resamples: int = 2000, seed: int = 0) -> dict:
    """A - B in F1 macro with a paired bootstrap 95% interval (both scored on the same resampled passages),
    and McNemar's exact test on the passages only one of them gets right."""
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
