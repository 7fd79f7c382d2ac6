"""How low can ECE go on 150 passages? Expected calibration error of the default Gemma run on dev_data.csv as
trained, after a temperature refitted on the dev passages by 5-fold cross-fitting (what
`framesft estimate --calibrate-on-audit` does with an audit), and the floor: the ECE that a perfectly calibrated
model shows on the same 150 passages, by simulation (labels drawn from the model's own probabilities), and on
larger audits of the same kind (the probability vectors resampled to 300-2400 passages).

    .venv/bin/python benchmarks/calibration_floor.py

ECE (15 equal-width bins) is biased upwards on small samples: each bin's accuracy carries binomial noise, and
|noise| does not average out. The floor says which ECE targets 150 passages can show at all. Reads the dev
probabilities stored in benchmarks/results/accuracy_experiments.json; writes benchmarks/results/calibration_floor.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from framesft.calibration import expected_calibration_error
from framesft.estimation import crossfit_temperatures, recalibrated_audit

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "benchmarks" / "results" / "accuracy_experiments.json"
RESULTS = REPO / "benchmarks" / "results" / "calibration_floor.json"
DRAWS = 1000
LARGER_AUDITS = (300, 600, 1200, 2400)  # the floor for audits of these sizes (passages drawn from dev's)


def floor(probabilities: np.ndarray, rng) -> dict:
    """ECE of a perfectly calibrated model: labels drawn from the probabilities themselves."""
    cumulative = probabilities.cumsum(axis=1)
    values = []
    for _ in range(DRAWS):
        drawn = (rng.random(len(probabilities))[:, None] > cumulative).sum(axis=1).clip(max=probabilities.shape[1] - 1)
        values.append(expected_calibration_error(probabilities, drawn))
    return {"mean": float(np.mean(values)), "p05": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95))}


def main() -> None:
    entries = [e for e in json.loads(EXPERIMENTS.read_text())["entries"]
               if e["recipe"] == "default" and e["budget"] == "full"]
    newest = {e["seed"]: e for e in entries}
    rng = np.random.default_rng(0)
    results = []
    for seed, entry in sorted(newest.items()):
        labels = entry["labels"]
        probabilities = np.array(entry["dev_probabilities"], dtype=float)
        truth = np.array([labels.index(y) for y in entry["dev_truth"]])
        audit = pd.DataFrame({"gold": entry["dev_truth"],
                              **{f"p_{label}": probabilities[:, k] for k, label in enumerate(labels)}})
        crossfit = []
        for fold_seed in range(5):
            fold_of, temperatures = crossfit_temperatures(audit, labels, 5, seed=fold_seed)
            refitted = recalibrated_audit(audit, labels, fold_of, temperatures)
            crossfit.append(expected_calibration_error(refitted[[f"p_{l}" for l in labels]].to_numpy(), truth))
        result = {"recipe": "default", "seed": seed, "passages": len(truth),
                  "ece_as_trained": expected_calibration_error(probabilities, truth),
                  "ece_crossfit_temperature": {"mean": float(np.mean(crossfit)), "per_fold_assignment": crossfit},
                  "ece_of_a_perfectly_calibrated_model": floor(probabilities, rng),
                  # How large an audit must be before ECE <= 0.05 can be told apart from the floor: the same
                  # model's probability vectors, resampled to larger audits.
                  "floor_for_larger_audits": {
                      str(n): floor(probabilities[rng.integers(0, len(probabilities), n)], rng)
                      for n in LARGER_AUDITS}}
        results.append(result)
        print(f"seed {seed}: ECE {result['ece_as_trained']:.3f} as trained, {np.mean(crossfit):.3f} cross-fitted "
              f"temperature; a perfectly calibrated model on these passages: "
              f"{result['ece_of_a_perfectly_calibrated_model']['mean']:.3f} "
              f"(5-95%: {result['ece_of_a_perfectly_calibrated_model']['p05']:.3f}-"
              f"{result['ece_of_a_perfectly_calibrated_model']['p95']:.3f}); at "
              + ", ".join(f"{n} passages {f['mean']:.3f} ({f['p05']:.3f}-{f['p95']:.3f})"
                          for n, f in result["floor_for_larger_audits"].items()))
    RESULTS.write_text(json.dumps({"benchmark": __doc__.split("\n\n")[0].strip(), "draws": DRAWS,
                                   "date": time.strftime("%Y-%m-%d"), "entries": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
