"""Adaptation with coded passages, without retraining: recalibrate a trained run's label probabilities on
dev_data.csv by 5-fold cross-fitting, and see whether its labels get better.

    .venv/bin/python benchmarks/adaptation_crossfit.py --recipe default --budget full

The findings workflow has users code a random audit sample of their corpus: the only labels from the distribution
they care about. The cheapest use of them leaves the model as it is and only moves its probabilities: fit on 4
folds of dev_data.csv, apply to the fifth, pool the five folds' predictions and score them like any run (F1 macro
with its interval, alpha), against the unadapted predictions of the same run on the same passages (paired
bootstrap, McNemar). Variants (log p: the run's calibrated log-probabilities, stored per passage in
benchmarks/results/accuracy_experiments.json):
- temperature: softmax(log p / T); the argmax never changes, so only calibration can move (ECE);
- prior: softmax(log p + log pi_coded - log pi_train), pi_coded the label shares of the coding folds (add-one),
  pi_train the training file's (uniform here): the textbook correction for a known label shift;
- bias: softmax(log p / T + b) with T and one bias per label fitted by maximum likelihood (L2 penalty on b), a
  per-label shift learnt from the coded passages (vector scaling without the matrix).
Fold assignments are stratified by label and repeated over several seeds; each repetition is a complete
cross-fit, and the figures are their mean (with each one's paired test kept). Appends to
benchmarks/results/adaptation_experiments.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.model_selection import StratifiedKFold

from framesft.calibration import calibration_measures
from framesft.metrics import classification_metrics
from framesft.reliability import agreement
from framesft.statistics import bootstrap_intervals, paired_comparison

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "benchmarks" / "results" / "accuracy_experiments.json"
RESULTS = REPO / "benchmarks" / "results" / "adaptation_experiments.json"


def fit_temperature_and_bias(log_p: np.ndarray, truth: np.ndarray, with_bias: bool, penalty: float) -> tuple:
    k = log_p.shape[1]

    def loss(params):
        log_t, bias = params[0], (params[1:] if with_bias else np.zeros(k))
        z = log_softmax(log_p / np.exp(log_t) + bias, axis=1)
        return -z[np.arange(len(truth)), truth].mean() + penalty * np.sum(bias**2)

    start = np.zeros(1 + (k if with_bias else 0))
    result = minimize(loss, start, method="L-BFGS-B")
    return float(np.exp(result.x[0])), (result.x[1:] if with_bias else np.zeros(k))


def adapt(variant: str, log_p_fit, truth_fit, log_p_apply, k: int, penalty: float) -> np.ndarray:
    """Adapted log-probabilities of the held-out fold, from what the coding folds teach."""
    if variant == "none":
        return log_p_apply
    if variant == "temperature":
        t, _ = fit_temperature_and_bias(log_p_fit, truth_fit, False, penalty)
        return log_softmax(log_p_apply / t, axis=1)
    if variant == "prior":
        coded = (np.bincount(truth_fit, minlength=k) + 1) / (len(truth_fit) + k)
        return log_softmax(log_p_apply + np.log(coded) - np.log(np.full(k, 1 / k)), axis=1)
    if variant == "bias":
        t, bias = fit_temperature_and_bias(log_p_fit, truth_fit, True, penalty)
        return log_softmax(log_p_apply / t + bias, axis=1)
    raise ValueError(variant)


def crossfit(entry: dict, variant: str, folds: int, seed: int, penalty: float) -> np.ndarray:
    labels = entry["labels"]
    truth = np.array([labels.index(y) for y in entry["dev_truth"]])
    log_p = np.log(np.clip(np.array(entry["dev_probabilities"]), 1e-12, 1))
    adapted = np.zeros_like(log_p)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, apply_rows in splitter.split(log_p, truth):
        adapted[apply_rows] = adapt(variant, log_p[fit_rows], truth[fit_rows], log_p[apply_rows], len(labels),
                                    penalty)
    return adapted


def score(entry: dict, log_p: np.ndarray) -> dict:
    labels, truth = entry["labels"], entry["dev_truth"]
    predicted = [labels[i] for i in log_p.argmax(axis=1)]
    truth_index = [labels.index(y) for y in truth]
    return {"predicted": predicted,
            "f1_macro": classification_metrics(truth, predicted, labels)["f1_macro"],
            "f1_ci95": bootstrap_intervals(truth, predicted, labels)["f1_macro"],
            "alpha": agreement([truth, predicted], labels, n_resamples=200)["krippendorff_alpha"],
            "ece": calibration_measures(np.exp(log_p), truth_index)["ece"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default", help="recipe in accuracy_experiments.json")
    parser.add_argument("--budget", default="full")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="fold assignments (seeds 0..repeats-1)")
    parser.add_argument("--penalty", type=float, default=0.01, help="L2 penalty on the biases")
    parser.add_argument("--variants", nargs="+", default=["temperature", "prior", "bias"])
    args = parser.parse_args()

    entries = json.loads(EXPERIMENTS.read_text())["entries"]
    runs = {}
    for e in entries:  # newest entry per seed
        if e["recipe"] == args.recipe and e["budget"] == args.budget:
            runs[str(e["seed"])] = e
    if not runs:
        raise SystemExit(f"no entries of recipe {args.recipe!r} at budget {args.budget!r} in {EXPERIMENTS}")
    results = []
    for seed, entry in runs.items():
        labels, truth = entry["labels"], entry["dev_truth"]
        unadapted = score(entry, np.log(np.clip(np.array(entry["dev_probabilities"]), 1e-12, 1)))
        for variant in args.variants:
            repeats = []
            for repeat in range(args.repeats):
                adapted = score(entry, crossfit(entry, variant, args.folds, repeat, args.penalty))
                paired = paired_comparison(truth, adapted["predicted"], unadapted["predicted"], labels)
                repeats.append({"fold_seed": repeat, "f1_macro": round(adapted["f1_macro"], 4),
                                "f1_ci95": [round(v, 3) for v in adapted["f1_ci95"]],
                                "alpha": round(adapted["alpha"], 4), "ece": round(adapted["ece"], 4),
                                "difference": round(paired["f1_macro_difference"], 4),
                                "difference_ci95": [round(v, 3) for v in paired["ci95"]],
                                "mcnemar_p": round(paired["mcnemar_p"], 4)})
            mean = {k: round(float(np.mean([r[k] for r in repeats])), 4)
                    for k in ("f1_macro", "alpha", "ece", "difference")}
            result = {"recipe": args.recipe, "budget": args.budget, "run_seed": seed, "variant": variant,
                      "folds": args.folds, "penalty": args.penalty if variant == "bias" else None,
                      "unadapted": {"f1_macro": round(unadapted["f1_macro"], 4), "alpha": round(unadapted["alpha"], 4),
                                    "ece": round(unadapted["ece"], 4)},
                      "adapted_mean": mean, "repeats": repeats, "date": time.strftime("%Y-%m-%d")}
            results.append(result)
            print(f"{args.recipe} seed {seed} {variant:12} F1 {unadapted['f1_macro']:.3f} -> {mean['f1_macro']:.3f} "
                  f"(mean diff {mean['difference']:+.3f}; per repeat CIs "
                  f"{[r['difference_ci95'] for r in repeats]}), alpha {unadapted['alpha']:.3f} -> {mean['alpha']:.3f}, "
                  f"ECE {unadapted['ece']:.3f} -> {mean['ece']:.3f}", flush=True)
    document = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {
        "benchmark": "recalibration with coded passages, 5-fold cross-fitted on dev_data.csv",
        "protocol": __doc__.split("\n\n")[1].strip(), "entries": []}
    document["entries"].extend(results)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
