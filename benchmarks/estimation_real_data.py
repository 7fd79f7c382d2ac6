"""Frame shares on real data: how far each estimator lands from the truth, and whether its intervals hold.

    .venv/bin/python benchmarks/estimation_real_data.py --run-dir RUN [--draws 1000]

RUN is a trained framesft run (its temperature fitted on its validation split at the end of training). The
150 chunks of ../shared/data/brexit/dev_data.csv play the corpus: the run scores every chunk, the true shares
are the gold labels' shares, and for each of `--draws` random audits of n = 50 and n = 100 chunks (simple
random samples; their gold labels play the human coding) we estimate the six shares by classify-and-count (CC),
calibrated probabilistic classify-and-count (PCC), the audit alone, and prediction-powered inference (PPI++),
exactly as `framesft estimate` does. Reported: mean absolute error over the six shares and the draws, and the
coverage and mean width of the 95% intervals. Also: ECE / Brier / log loss on dev before and after the run's
temperature, and Krippendorff's alpha and Cohen's kappa of the model against the gold labels.
Writes benchmarks/results/estimation_real_data.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from framesft.calibration import calibration_report
from framesft.estimation import cc_interval, pcc_interval, power_tuning, ppi_interval
from framesft.inference import load_classifier
from framesft.reliability import agreement

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "estimation_real_data.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    args = parser.parse_args()

    classifier = load_classifier(args.run_dir)
    labels = classifier.labels
    dev = pd.read_csv(SHARED / "dev_data.csv", dtype=str, keep_default_na=False)
    raw = classifier.score(dev["chunk_text"].tolist(), "scoring dev", calibrated=False)
    scores = classifier.calibrated(raw)
    truth = np.array([labels.index(label) for label in dev["frame_name"]])
    probabilities, predicted = scores.probabilities, scores.predicted_index
    N, k = len(truth), len(labels)
    true_shares = np.bincount(truth, minlength=k) / N
    calibration = calibration_report(raw.scores, truth, classifier.temperature)
    coder = agreement([dev["frame_name"].tolist(), scores.predictions], labels)

    f_sum, f_sumsq = probabilities.sum(axis=0), (probabilities ** 2).sum(axis=0)
    corpus_only = {"cc": [cc_interval(N, int((predicted == j).sum())) for j in range(k)],
                   "pcc": [pcc_interval(N, f_sum[j], f_sumsq[j]) for j in range(k)]}
    rng = np.random.default_rng(0)
    by_size = {}
    for n in args.sizes:
        intervals = {name: [] for name in ("cc", "pcc", "audit", "ppi")}
        for _ in range(args.draws):
            audit = rng.choice(N, n, replace=False)
            y = np.eye(k)[truth[audit]]
            f = probabilities[audit]
            lam = power_tuning(y, f, N, f_sum, f_sumsq)
            intervals["cc"].append(corpus_only["cc"])
            intervals["pcc"].append(corpus_only["pcc"])
            intervals["audit"].append([ppi_interval(y[:, j], f[:, j], N, f_sum[j], f_sumsq[j], lam=0.0)
                                       for j in range(k)])
            intervals["ppi"].append([ppi_interval(y[:, j], f[:, j], N, f_sum[j], f_sumsq[j], lam=lam)
                                     for j in range(k)])
        summary = {}
        for name, draws in intervals.items():
            estimate = np.array([[i.estimate for i in draw] for draw in draws])
            low = np.array([[i.low for i in draw] for draw in draws])
            high = np.array([[i.high for i in draw] for draw in draws])
            summary[name] = {
                "mean_absolute_error": round(float(np.abs(estimate - true_shares).mean()), 4),
                "coverage_95": round(float(((low <= true_shares) & (true_shares <= high)).mean()), 3),
                "mean_interval_width": round(float((high - low).mean()), 4),
            }
            if name == "ppi":
                summary[name]["mean_lambda"] = round(float(np.mean([d[0].lam for d in draws])), 3)
        by_size[str(n)] = summary
        print(n, json.dumps(summary), flush=True)

    report = {
        "benchmark": "frame shares on dev_data.csv as a corpus, random audits",
        "run": str(Path(args.run_dir).resolve()), "base_model": classifier.config.model.base_model,
        "corpus_rows": N, "draws": args.draws, "labels": labels,
        "true_shares": dict(zip(labels, np.round(true_shares, 4).tolist())),
        "cc_shares": dict(zip(labels, np.round(np.bincount(predicted, minlength=k) / N, 4).tolist())),
        "dev_f1_macro": round(float(__import__("sklearn.metrics", fromlist=["f1_score"]).f1_score(
            truth, predicted, average="macro")), 4),
        "temperature": round(classifier.temperature, 3),
        "calibration_on_dev": {when: {key: round(calibration[when][key], 4) for key in ("ece", "brier", "log_loss")}
                               for when in ("before", "after")},
        "model_vs_gold_on_dev": {key: coder[key] for key in ("krippendorff_alpha", "alpha_ci95", "cohen_kappa",
                                                             "kappa_ci95")},
        "audit_sizes": by_size,
        "notes": "cc/pcc intervals cover sampling noise only (their coverage shows what that misses); audit and "
                 "ppi intervals carry the finite-population correction (the 150 chunks are the whole corpus).",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
