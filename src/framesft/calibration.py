"""Calibrated probabilities: temperature scaling (Guo et al. 2017) and how well probabilities match accuracy.

A fine-tuned model's label probabilities are often over-confident. One temperature T, fitted by minimising
the log loss on labelled data the model was not trained on (the validation split, or any labelled file),
divides every label score before the softmax: p = softmax(score / T). T > 1 softens over-confident
probabilities; the predicted label (the argmax) never changes, because T is one positive number.

A run adapted to coded passages (adaptation.adapt_run) adds one bias per label:
p = softmax(score / T + b), T and b fitted together by log loss with a small L2 penalty on b. Unlike T alone,
the biases move the predicted labels: they shift the model toward the label shares and boundaries of the coded
passages.

The temperature (and an adapted run's biases) are stored in the run folder (`calibration.json`) and used by
`evaluate`, `predict`, `compare` and `estimate`. Measures, before and after: expected calibration error (ECE, top label, 15 equal-width bins),
Brier score (multi-class: squared error summed over labels, averaged over passages) and log loss.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import log_loss

from .files import read_json, write_json

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
MIN_PASSAGES = 30  # fewer labelled passages than this give no reliable temperature
# L2 penalty on the per-label biases (per passage's log loss): keeps a label that the coded passages hold only a
# few times from being pushed far
BIAS_PENALTY = 0.01


def probabilities(scores: np.ndarray, temperature: float = 1.0, bias: np.ndarray | None = None) -> np.ndarray:
    logits = np.asarray(scores, dtype=np.float64) / temperature
    return softmax(logits if bias is None else logits + np.asarray(bias)[None, :], axis=1)


def why_not_fit(scores: np.ndarray, truth: Sequence[int]) -> str | None:
    """Why these passages cannot fit a temperature, or None when they can.

    With every passage predicted right the log loss keeps falling as T goes to 0 (ever more confident), so the
    fit would make the model over-confident on new data; too few passages give a temperature that is noise.
    """
    if len(truth) < MIN_PASSAGES:
        return f"{len(truth)} labelled passages (at least {MIN_PASSAGES} are needed)"
    if (np.asarray(scores).argmax(axis=1) == np.asarray(truth)).all():
        return f"the model predicts all {len(truth)} passages right, which gives the fit no minimum"
    return None


def fit_temperature(scores: np.ndarray, truth: Sequence[int]) -> float:
    """The temperature that minimises the log loss of softmax(scores / T) on these labelled passages; 1.0 (raw
    probabilities, with a warning) where they cannot fit one (see why_not_fit)."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth)
    reason = why_not_fit(scores, truth)
    if reason is not None:
        log.warning("calibration: temperature kept at 1 (raw probabilities): %s; fit it on more labelled data "
                    "with `framesft calibrate RUN --data FILE`", reason)
        return 1.0

    def nll(log_t: float) -> float:
        return -log_softmax(scores / np.exp(log_t), axis=1)[np.arange(len(truth)), truth].mean()

    # T between 0.05 and 20 covers any model we have seen (fits land between 0.8 and 3)
    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def fit_temperature_and_bias(scores: np.ndarray, truth: Sequence[int],
                             penalty: float = BIAS_PENALTY) -> tuple[float, np.ndarray]:
    """T and one bias per label minimising the log loss of softmax(scores / T + b) plus penalty * |b|^2.

    The penalty also picks, of the biases that give the same probabilities (adding one number to all of them
    changes nothing), the ones that sum to zero. Callers check why_not_fit first."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth)
    rows = np.arange(len(truth))

    def loss(params: np.ndarray) -> float:
        bias = params[1:]
        return (-log_softmax(scores / np.exp(params[0]) + bias, axis=1)[rows, truth].mean()
                + penalty * float(np.sum(bias ** 2)))

    result = minimize(loss, np.zeros(1 + scores.shape[1]), method="L-BFGS-B",
                      bounds=[(np.log(0.05), np.log(20.0))] + [(None, None)] * scores.shape[1])
    return float(np.exp(result.x[0])), result.x[1:].copy()


def reliability_bins(probs: np.ndarray, truth: Sequence[int], n_bins: int = ECE_BINS) -> list[dict]:
    """Top-label confidence against accuracy in equal-width bins (the points of a reliability diagram)."""
    truth = np.asarray(truth)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(inside.sum()),
                         "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return bins


def expected_calibration_error(probs: np.ndarray, truth: Sequence[int], n_bins: int = ECE_BINS) -> float:
    n = len(probs)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, truth, n_bins)))


def brier_score(probs: np.ndarray, truth: Sequence[int]) -> float:
    onehot = np.eye(probs.shape[1])[np.asarray(truth)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_measures(probs: np.ndarray, truth: Sequence[int]) -> dict:
    return {"ece": expected_calibration_error(probs, truth), "brier": brier_score(probs, truth),
            "log_loss": float(log_loss(truth, probs, labels=list(range(probs.shape[1])))),
            "reliability": reliability_bins(probs, truth)}


def calibration_report(scores: np.ndarray, truth: Sequence[int], temperature: float,
                       bias: np.ndarray | None = None) -> dict:
    """ECE, Brier score, log loss and reliability bins before (T = 1) and after calibration."""
    return {"temperature": temperature,
            **({"label_bias": [float(b) for b in bias]} if bias is not None else {}),
            "before": calibration_measures(probabilities(scores), truth),
            "after": calibration_measures(probabilities(scores, temperature, bias), truth)}


def save_temperature(run_dir: Path, temperature: float, fitted_on: str, n: int, report: dict,
                     not_fitted: str | None = None) -> None:
    write_json(run_dir / CALIBRATION_FILE, {
        "method": "temperature scaling", "temperature": temperature, "fitted_on": fitted_on, "passages": n,
        **({"not_fitted": not_fitted} if not_fitted else {}),
        "before": {k: v for k, v in report["before"].items() if k != "reliability"},
        "after": {k: v for k, v in report["after"].items() if k != "reliability"},
    })


def read_temperature(run_dir: Path) -> float:
    """The run's fitted temperature; 1.0 (raw probabilities) for a run that has none."""
    return float(read_json(run_dir / CALIBRATION_FILE).get("temperature", 1.0))


def read_label_bias(run_dir: Path, labels: Sequence[str]) -> np.ndarray | None:
    """An adapted run's per-label biases in label order; None for a run that has none."""
    stored = read_json(run_dir / CALIBRATION_FILE).get("label_bias")
    if stored is None:
        return None
    return np.array([float(stored[label]) for label in labels])
