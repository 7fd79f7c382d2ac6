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
  pi_train the label shares of the file the run trained on (uniform for train_data.csv, 501 rows per label; not
  for one row per paraphrase group): the textbook correction for a known label shift;
- bias: softmax(log p / T + b) with T and one bias per label fitted by maximum likelihood (L2 penalty on b), a
  per-label shift learnt from the coded passages (vector scaling without the matrix).
- balanced: softmax(log p - log pi_train), no coded passages used: the label prior a class-weighted loss
  (weights 1 / pi_train) would move the model towards, a free screen of class weights before training with them.
Fold assignments are stratified by label and repeated over several seeds; each repetition is a complete
cross-fit, and the figures are their mean (with each one's paired test kept).

    .venv/bin/python benchmarks/adaptation_crossfit.py --recipe default --continue-training coded-lr2e-5

With --continue-training VARIANT the model itself moves: for each fold, the run's adapter trains further
(training.init_adapter) on the 4 coding folds, in its own `framesft train` process, and predicts the fifth
(one fold assignment; five trainings). Variants (CONTINUATIONS below): coded passages alone with a low learning
rate and one pass, or mixed with replayed rows of train_data.csv. Validation during these runs uses 60 rows of
train_data.csv (one epoch: one checkpoint, so it only sets the temperature). Appends to
benchmarks/results/adaptation_experiments.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import numpy as np
from scipy.special import log_softmax
from sklearn.model_selection import StratifiedKFold

from framesft.calibration import calibration_measures, fit_temperature, fit_temperature_and_bias
from framesft.metrics import classification_metrics
from framesft.reliability import agreement
from framesft.statistics import bootstrap_intervals, paired_comparison

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "benchmarks" / "results" / "accuracy_experiments.json"
RESULTS = REPO / "benchmarks" / "results" / "adaptation_experiments.json"
SHARED = REPO.parent / "shared" / "data" / "brexit"
WORK = REPO / "benchmarks" / "work" / "adaptation"

# Continued training on the coding folds: (overrides of the run's config, replayed train_data.csv rows per fold)
CONTINUATIONS = {
    "coded-lr2e-5": (["training.learning_rate=2e-5", "training.num_epochs=1", "training.warmup_steps=0"], 0),
    "coded+replay-lr5e-5": (["training.learning_rate=5e-5", "training.num_epochs=1", "training.warmup_steps=0"], 120),
}


def training_prior(entry: dict) -> np.ndarray:
    """The label shares of the training file the entry's recipe used (accuracy_experiments.training_file), in the
    entry's label order."""
    from accuracy_experiments import training_file  # the sibling script: the same file the recipe trained on

    counts = read(training_file(entry.get("training_rows", "all")))["frame_name"].value_counts()
    return np.array([counts.get(label, 0) for label in entry["labels"]], dtype=float) / counts.sum()


def adapt(variant: str, log_p_fit, truth_fit, log_p_apply, k: int, penalty: float,
          train_prior: np.ndarray | None = None) -> np.ndarray:
    """Adapted log-probabilities of the held-out fold, from what the coding folds teach."""
    if variant == "none":
        return log_p_apply
    if variant == "temperature":
        return log_softmax(log_p_apply / fit_temperature(log_p_fit, truth_fit), axis=1)
    if variant == "prior":
        coded = (np.bincount(truth_fit, minlength=k) + 1) / (len(truth_fit) + k)
        trained = np.full(k, 1 / k) if train_prior is None else train_prior
        return log_softmax(log_p_apply + np.log(coded) - np.log(trained), axis=1)
    if variant == "balanced":
        return log_softmax(log_p_apply - np.log(train_prior), axis=1)
    if variant == "bias":
        t, bias = fit_temperature_and_bias(log_p_fit, truth_fit, penalty)  # what `framesft adapt` fits
        return log_softmax(log_p_apply / t + bias, axis=1)
    raise ValueError(variant)


def crossfit(entry: dict, variant: str, folds: int, seed: int, penalty: float) -> np.ndarray:
    labels = entry["labels"]
    truth = np.array([labels.index(y) for y in entry["dev_truth"]])
    log_p = np.log(np.clip(np.array(entry["dev_probabilities"]), 1e-12, 1))
    adapted = np.zeros_like(log_p)
    train_prior = training_prior(entry) if variant in ("prior", "balanced") else None
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, apply_rows in splitter.split(log_p, truth):
        adapted[apply_rows] = adapt(variant, log_p[fit_rows], truth[fit_rows], log_p[apply_rows], len(labels),
                                    penalty, train_prior)
    return adapted


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def continue_crossfit(entry: dict, variant: str, folds: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """Log-probabilities of every dev passage from the run's adapter trained further on the other folds."""
    overrides, replay_rows = CONTINUATIONS[variant]
    run_dir = REPO / entry["run_dir"]
    dev, train = read(SHARED / "dev_data.csv"), read(SHARED / "train_data.csv")
    if dev["frame_name"].tolist() != entry["dev_truth"]:
        raise SystemExit("dev_data.csv differs from the passages the entry was scored on")
    labels = entry["labels"]
    truth = np.array([labels.index(y) for y in dev["frame_name"]])
    shuffled = train.sample(frac=1.0, random_state=seed)
    validation, replay_pool = shuffled.iloc[:60], shuffled.iloc[60:]
    folder = WORK / f"{entry['recipe']}-s{entry['seed']}" / variant
    folder.mkdir(parents=True, exist_ok=True)
    validation.to_csv(folder / "validation.csv", index=False)
    adapted = np.zeros((len(dev), len(labels)))
    runs = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, apply_rows) in enumerate(splitter.split(dev, truth)):
        coded = dev.iloc[fit_rows]
        replay = replay_pool.iloc[fold * replay_rows:(fold + 1) * replay_rows]
        pd.concat([coded, replay]).to_csv(folder / f"train_fold{fold}.csv", index=False)
        dev.iloc[apply_rows].to_csv(folder / f"apply_fold{fold}.csv", index=False)
        fold_run = folder / f"run_fold{fold}"
        command = [sys.executable, "-m", "framesft.cli", "--quiet", "train", str(run_dir / "config.yaml"),
                   "--run-dir", str(fold_run), "--overwrite",
                   "--set", f"training.init_adapter={run_dir}", "--set", f"data.data_dir={folder}",
                   "--set", f"data.train_csv=train_fold{fold}.csv", "--set", "data.validation_csv=validation.csv",
                   "--set", f"data.test_csv=apply_fold{fold}.csv", "--set", "tracking.report_to=none",
                   "--set", "data.near_duplicate_threshold=null"]
        for override in overrides:
            command += ["--set", override]
        print(f"[{time.strftime('%H:%M')}] {variant} fold {fold}: {len(coded)} coded + {len(replay)} replayed rows",
              flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        predictions = read(fold_run / "predictions_test.csv")
        if predictions["label"].tolist() != dev.iloc[apply_rows]["frame_name"].tolist():
            raise SystemExit(f"{fold_run}: its test predictions are not the fold's passages in order")
        adapted[apply_rows] = np.log(np.clip(predictions[[f"p_{label}" for label in labels]]
                                             .astype(float).to_numpy(), 1e-12, 1))
        summary = json.loads((fold_run / "run_summary.json").read_text())
        runs.append({"fold": fold, "coded_rows": len(coded), "replayed_rows": len(replay),
                     "train_minutes": round(summary["train_seconds"] / 60, 2),
                     "wall_minutes": round((time.perf_counter() - started) / 60, 2),
                     "command": " ".join(command).replace(str(REPO) + "/", "")})
    return adapted, runs


def score(entry: dict, log_p: np.ndarray) -> dict:
    labels, truth = entry["labels"], entry["dev_truth"]
    predicted = [labels[i] for i in log_p.argmax(axis=1)]
    truth_index = [labels.index(y) for y in truth]
    return {"predicted": predicted,
            "f1_macro": classification_metrics(truth, predicted, labels)["f1_macro"],
            "f1_ci95": bootstrap_intervals(truth, predicted, labels)["f1_macro"],
            "alpha": agreement([truth, predicted], labels, n_resamples=200)["krippendorff_alpha"],
            "ece": calibration_measures(np.exp(log_p), truth_index)["ece"]}


def pooled(args) -> None:
    """Is the gain outside the noise over the training seeds together? For each fold assignment: the F1 macro
    gain of the variant over the unadapted predictions, averaged over the seeds, with a paired bootstrap that
    resamples the same passages for every seed (the seeds share the dev passages)."""
    from framesft.statistics import resample_indices

    entries = json.loads(EXPERIMENTS.read_text())["entries"]
    runs = {e["seed"]: e for e in entries if e["recipe"] == args.recipe and e["budget"] == args.budget}
    if len(runs) < 2:
        raise SystemExit(f"--pooled: needs at least two seeds of {args.recipe!r}")
    first = next(iter(runs.values()))
    labels, gold = first["labels"], first["dev_truth"]
    truth = np.array([labels.index(y) for y in gold])
    samples = resample_indices(len(truth), 1000, 0)

    def f1(predicted: list[str], rows) -> float:
        """F1 macro of the rows over every label (as framesft.metrics reports it), from the counts: the bootstrap
        calls it 1000 times per seed and fold assignment, too often for the full metrics report."""
        rows = np.asarray(rows)
        t = truth[rows]
        p = np.array([labels.index(y) for y in predicted])[rows]
        k = len(labels)
        tp = np.bincount(t[t == p], minlength=k)
        support, predicted_count = np.bincount(t, minlength=k), np.bincount(p, minlength=k)
        present = (support + predicted_count) > 0
        return float(np.divide(2 * tp, support + predicted_count, out=np.zeros(k), where=present).mean())

    repeats = []
    for repeat in range(args.repeats):
        pairs = []
        for entry in runs.values():
            log_p = np.log(np.clip(np.array(entry["dev_probabilities"]), 1e-12, 1))
            adapted = crossfit(entry, args.pooled, args.folds, repeat, args.penalty)
            pairs.append(([labels[i] for i in log_p.argmax(axis=1)], [labels[i] for i in adapted.argmax(axis=1)]))
        every = range(len(truth))
        point = float(np.mean([f1(after, every) - f1(before, every) for before, after in pairs]))
        boot = np.array([np.mean([f1(after, rows) - f1(before, rows) for before, after in pairs])
                         for rows in samples])
        repeats.append({"fold_seed": repeat, "mean_gain": round(point, 4),
                        "ci95": [round(float(v), 3) for v in np.percentile(boot, [2.5, 97.5])],
                        "share_of_draws_at_or_below_0": round(float((boot <= 0).mean()), 3)})
        print(f"{args.pooled}, fold assignment {repeat}: F1 gain averaged over seeds {sorted(runs)} "
              f"{point:+.3f} (95% CI {repeats[-1]['ci95'][0]:+.3f}, {repeats[-1]['ci95'][1]:+.3f})", flush=True)
    document = json.loads(RESULTS.read_text())
    document["entries"].append({"recipe": args.recipe, "budget": args.budget, "run_seed": sorted(runs),
                                "variant": args.pooled, "pooled_over_seeds": True, "folds": args.folds,
                                "penalty": args.penalty, "repeats": repeats, "date": time.strftime("%Y-%m-%d")})
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default", help="recipe in accuracy_experiments.json")
    parser.add_argument("--budget", default="full")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="fold assignments (seeds 0..repeats-1)")
    parser.add_argument("--penalty", type=float, default=0.01, help="L2 penalty on the biases")
    parser.add_argument("--variants", nargs="+", default=["temperature", "prior", "bias"])
    parser.add_argument("--continue-training", choices=sorted(CONTINUATIONS),
                        help="train the run's adapter further on the coding folds instead of recalibrating")
    parser.add_argument("--run-seed", type=int, help="only the entry of this training seed")
    parser.add_argument("--pooled", metavar="VARIANT",
                        help="the variant's F1 gain averaged over the recipe's training seeds, with one paired "
                             "bootstrap over the passages (per fold assignment), appended; then stop")
    args = parser.parse_args()
    if args.pooled:
        return pooled(args)

    entries = json.loads(EXPERIMENTS.read_text())["entries"]
    runs = {}
    for e in entries:  # newest entry per seed
        if e["recipe"] == args.recipe and e["budget"] == args.budget:
            runs[str(e["seed"])] = e
    if args.run_seed is not None:
        runs = {k: v for k, v in runs.items() if k == str(args.run_seed)}
    if not runs:
        raise SystemExit(f"no entries of recipe {args.recipe!r} at budget {args.budget!r} in {EXPERIMENTS}")
    results = []
    for seed, entry in runs.items():
        labels, truth = entry["labels"], entry["dev_truth"]
        unadapted = score(entry, np.log(np.clip(np.array(entry["dev_probabilities"]), 1e-12, 1)))
        variants = [args.continue_training] if args.continue_training else args.variants
        for variant in variants:
            repeats, fold_runs = [], None
            for repeat in range(1 if args.continue_training else args.repeats):
                if args.continue_training:
                    log_p, fold_runs = continue_crossfit(entry, variant, args.folds, repeat)
                else:
                    log_p = crossfit(entry, variant, args.folds, repeat, args.penalty)
                adapted = score(entry, log_p)
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
            if fold_runs:
                result["continued_training"] = {"overrides": CONTINUATIONS[variant][0], "fold_runs": fold_runs}
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
