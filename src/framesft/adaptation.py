"""Adapting a trained run to the passages a user coded: one bias per label, checked by cross-fitting.

A run trained on one distribution of passages (the Brexit training file: balanced labels, many rewrites) meets
another in the user's corpus (natural label shares, hand-coded passages). The coded audit sample is the only
labelled data from that distribution. `adapt_run(RUN, "coded.csv", ADAPTED)` uses it without touching the
model's weights: it fits a temperature and one bias per label on the coded passages
(p = softmax(score / T + b), calibration.fit_temperature_and_bias) and writes a new, complete run folder that
`evaluate`, `predict`, `compare` and `export` accept like any other.

A Python function, not a command: issue 21 asked for `framesft adapt` only if the adaptation won outside the
noise, and on the Brexit dev passages it did not (5-fold cross-fitted over three training seeds: +0.081, +0.025
and -0.003 F1 macro; averaged over the seeds +0.021 to +0.046 with every 95% interval including 0; docs/accuracy.md).
It stays for measuring the same thing on one's own coded passages, which its cross-fitted check does first.

Why not train further: a few hundred coded passages are enough to learn one number per label, not to move
millions of weights without over-fitting them (README, "The accuracy campaign", has the figures).

Honest by construction:
- before fitting on all coded passages, `adapt_run` measures what the adaptation does on passages it has not seen:
  k-fold cross-fitting (fit on k-1 folds, predict the held-out fold, pool), repeated over several fold
  assignments, against the unadapted run on the same passages (paired bootstrap interval of the F1 macro
  difference, McNemar's test). The verdict is logged and kept in adaptation.json; a worse adaptation is said so.
- the adapted run records which passages it was fitted on (adaptation.json: file, its SHA-256, row numbers,
  and a fingerprint of every passage). `predict` with an adapted run writes these fingerprints next to its
  output, and `estimate` refuses an audit sheet holding any of them: prediction-powered inference needs audit
  labels the model has not learnt from (Zrnic & Candes 2024 show how to cross-fit instead; not built yet).
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .calibration import (CALIBRATION_FILE, MIN_PASSAGES, calibration_measures, fit_temperature_and_bias,
                          probabilities, why_not_fit)
from .checks import rows_text
from .dataset import read_labelled_file
from .errors import DataError, RunFolderError
from .files import atomic_directory, copy_entries, read_json, write_json
from .metrics import classification_metrics
from .reliability import agreement
from .runfolder import (ADAPTER_DIR, CONFIG_FILE, DATA_REPORT_FILE, ENSEMBLE_FILE, LABEL_DISTRIBUTION_FILE,
                        LABEL_MAP_FILE, MODEL_DIR, SUMMARY_FILE, read_provenance)
from .statistics import bootstrap_intervals, paired_comparison
from .tables import row_number

log = logging.getLogger(__name__)

ADAPTATION_FILE = "adaptation.json"
# what an adapted run folder keeps of its source run: what scoring needs and what describes the training
KEPT_FROM_SOURCE = (CONFIG_FILE, LABEL_MAP_FILE, ADAPTER_DIR, MODEL_DIR, ENSEMBLE_FILE, DATA_REPORT_FILE,
                    LABEL_DISTRIBUTION_FILE, SUMMARY_FILE)


def passage_fingerprint(text: str) -> str:
    """SHA-256 of a passage with its whitespace collapsed (the same passage re-exported still matches)."""
    return hashlib.sha256(re.sub(r"\s+", " ", str(text)).strip().encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ cross-fitting


def fold_assignment(truth: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of every passage: stratified by label (a label with fewer passages than folds is spread as far
    as it goes)."""
    from sklearn.model_selection import StratifiedKFold

    fold_of = np.zeros(len(truth), dtype=int)
    with warnings.catch_warnings():  # "the least populated class has only n members": expected with few codes
        warnings.simplefilter("ignore", UserWarning)
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(truth, truth)
        for fold, (_, held_out) in enumerate(splits):
            fold_of[held_out] = fold
    return fold_of


def crossfit_probabilities(scores: np.ndarray, truth: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """Adapted probabilities of every passage, each from a fit on the other folds only."""
    adapted = np.zeros(scores.shape, dtype=np.float64)
    for fold in np.unique(fold_of):
        fit, held_out = fold_of != fold, fold_of == fold
        temperature, bias = fit_temperature_and_bias(scores[fit], truth[fit])
        adapted[held_out] = probabilities(scores[held_out], temperature, bias)
    return adapted


def crossfit_check(scores: np.ndarray, truth: Sequence[int], labels: Sequence[str], folds: int = 5,
                   repeats: int = 5, base_temperature: float = 1.0) -> dict:
    """What the adaptation does to passages it was not fitted on, against the unadapted run.

    Every repeat is a complete cross-fit with another fold assignment; the first one's pooled predictions get
    the paired bootstrap interval and McNemar's test, the others show how much the fold assignment moves it."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth)
    gold = [labels[i] for i in truth]
    unadapted = [labels[i] for i in scores.argmax(axis=1)]

    def summary(predicted: list[str], probs: np.ndarray) -> dict:
        return {"f1_macro": classification_metrics(gold, predicted, list(labels))["f1_macro"],
                "f1_ci95": bootstrap_intervals(gold, predicted, list(labels))["f1_macro"],
                "krippendorff_alpha": agreement([gold, predicted], list(labels),
                                                n_resamples=200)["krippendorff_alpha"],
                "ece": calibration_measures(probs, truth)["ece"]}

    before = summary(unadapted, probabilities(scores, base_temperature))
    runs = []
    for seed in range(repeats):
        probs = crossfit_probabilities(scores, truth, fold_assignment(truth, folds, seed))
        predicted = [labels[i] for i in probs.argmax(axis=1)]
        paired = paired_comparison(gold, predicted, unadapted, list(labels))
        runs.append({"fold_seed": seed, **summary(predicted, probs),
                     "f1_macro_difference": paired["f1_macro_difference"], "difference_ci95": paired["ci95"],
                     "mcnemar_p": paired["mcnemar_p"]})
    first = runs[0]
    low, high = first["difference_ci95"]
    verdict = ("better: the F1 macro gain's 95% interval lies above 0" if low > 0 else
               "worse: the F1 macro change's 95% interval lies below 0; keep the unadapted run" if high < 0 else
               "inside the noise: the F1 macro change's 95% interval includes 0")
    return {"folds": folds, "repeats": repeats, "passages": len(truth), "unadapted": before, "adapted": runs,
            "mean_f1_macro_difference": float(np.mean([r["f1_macro_difference"] for r in runs])),
            "verdict": verdict}


# ------------------------------------------------------------------------------------------ the adapted run


def read_coded_passages(path: str | Path, data, labels: list[str]) -> pd.DataFrame:
    table = read_labelled_file(path, data, labels)
    if len(table) < MIN_PASSAGES:
        raise DataError(f"{path}: {len(table)} coded passages; adapting needs at least {MIN_PASSAGES} (more is "
                        "better: every label a few times)")
    return table


def adapt_run(run_dir: str | Path, data_path: str | Path, output_dir: str | Path, folds: int = 5, repeats: int = 5,
              overwrite: bool = False, show_progress: bool = True, text_column: str | None = None,
              label_column: str | None = None, encoding: str | None = None, delimiter: str | None = None,
              sheet: str | None = None) -> dict:
    """Fit the per-label recalibration of a trained run on coded passages, check it by cross-fitting, and write
    the adapted run folder; returns what adaptation.json holds."""
    from .inference import load_classifier  # torch and transformers load only when adapting

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise RunFolderError(f"{output_dir} already exists; pass overwrite=True to replace it or choose another "
                             "folder")
    if output_dir.resolve() == run_dir.resolve():
        raise RunFolderError(f"{output_dir} is the run itself; the adapted run goes into a new folder")
    if folds < 2:
        raise DataError(f"folds={folds}: cross-fitting needs at least 2 folds")
    classifier = load_classifier(run_dir)
    if classifier.label_bias is not None:
        raise RunFolderError(f"{run_dir} is already an adapted run; adapt the run it came from "
                             f"({read_json(run_dir / ADAPTATION_FILE).get('source_run', 'see its adaptation.json')})")
    data = classifier.config.data.with_format(encoding, delimiter, sheet)
    data = data.model_copy(update={k: v for k, v in (("text_column", text_column), ("label_column", label_column))
                                   if v is not None})
    table = read_coded_passages(data_path, data, classifier.labels)
    texts = table[data.text_column].tolist()
    truth = np.array([classifier.labels.index(label) for label in table[data.label_column]])
    raw = classifier.score(texts, "scoring the coded passages", show_progress, calibrated=False)
    reason = why_not_fit(raw.scores, truth)
    if reason:
        raise DataError(f"{data_path}: cannot fit the adaptation: {reason}")

    check = crossfit_check(raw.scores, truth, classifier.labels, folds, repeats, classifier.temperature)
    temperature, bias = fit_temperature_and_bias(raw.scores, truth)
    record = {
        "method": "per-label bias and temperature on the run's label scores (weights unchanged)",
        "source_run": str(run_dir.resolve()), "data": str(Path(data_path).resolve()),
        "data_sha256": file_sha256(data_path), "text_column": data.text_column, "label_column": data.label_column,
        "passages": len(texts),
        "label_counts": {label: int((truth == i).sum()) for i, label in enumerate(classifier.labels)},
        "temperature": temperature, "label_bias": dict(zip(classifier.labels, map(float, bias))),
        "crossfit": check,
        # row numbers as in error messages (a CSV's header is row 1) and a fingerprint of each passage (estimate's
        # check)
        "rows": [row_number(int(i), data_path) for i in table.index],
        "passage_fingerprints": [passage_fingerprint(t) for t in texts],
    }
    with atomic_directory(output_dir) as staging:
        copy_entries(run_dir, staging, KEPT_FROM_SOURCE)
        write_json(staging / CALIBRATION_FILE, {
            "method": "temperature scaling with per-label bias (framesft adaptation.adapt_run)", "temperature": temperature,
            "label_bias": record["label_bias"], "fitted_on": str(data_path), "passages": len(texts),
            "before": {k: v for k, v in calibration_measures(probabilities(raw.scores, classifier.temperature),
                                                             truth).items() if k != "reliability"},
            "after": {k: v for k, v in calibration_measures(probabilities(raw.scores, temperature, bias),
                                                            truth).items() if k != "reliability"}})
        write_json(staging / ADAPTATION_FILE, record)
    log.info("adapted run written to %s (%s)", output_dir, check["verdict"])
    return record


# ------------------------------------------------------------------------------------------ estimate's check


def adaptation_provenance(run_dir: Path) -> dict | None:
    """For the provenance of an adapted run's predictions: which passages it was fitted on (estimate's check)."""
    record = read_json(run_dir / ADAPTATION_FILE)
    if not record:
        return None
    return {"source_run": record["source_run"], "data": record["data"],
            "passage_fingerprints": record["passage_fingerprints"]}


def check_audit_not_adapted_on(predictions_path: str | Path, audit_texts: Sequence[str], audit_path: str) -> None:
    """Refuse an audit sheet that holds passages the predicting run was adapted on."""
    record = read_provenance(predictions_path).get("adapted_on")
    if not record:
        return
    seen = set(record["passage_fingerprints"])
    overlap = [i for i, text in enumerate(audit_texts) if passage_fingerprint(text) in seen]
    if overlap:
        raise DataError(
            f"{audit_path}: {len(overlap)} coded passages ({rows_text(overlap, audit_path)}) are passages the run "
            f"that wrote {predictions_path} was adapted on ({record['data']}); prediction-powered intervals "
            "need audit labels the model has not learnt from. Code a fresh audit sample (`framesft sample` with "
            "another --seed, leaving these passages out), or estimate with the predictions of the unadapted run")
