"""Ensembles of trained runs: the average of their calibrated probabilities, used as one run.

Members of one model family tend to err together (seed ensembles of Gemma stayed between their members); runs of
different families (Gemma SFT, Qwen SFT) can err apart, and then averaging their calibrated probabilities helps.
`create_ensemble` writes a small run folder that names its members instead of holding weights:

    ensemble.json     the members (absolute paths), their weights, and what each was when the ensemble was made
    config.yaml       the first member's config: the data columns, encoding and scoring settings an input is read with
    label_map.json    the labels, in the first member's order (members may list them in another order)
    calibration.json  after `framesft calibrate ENSEMBLE`: a temperature over the averaged probabilities

`load_classifier` (inference.py) loads such a folder's members and makes them an `EnsembleClassifier`, so `evaluate`, `predict`,
`compare` and `calibrate` use it like any run. Each member scores with its own prompt, label order and temperature
(its own calibration.json); the ensemble's score of a label is the log of the weighted mean probability, so its
softmax at temperature 1 is that mean.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .calibration import CALIBRATION_FILE, read_temperature
from .config import FrameSFTConfig
from .errors import DataError, RunFolderError
from .files import atomic_directory, read_json, write_json
from .runfolder import (CONFIG_FILE, ENSEMBLE_FILE, LABEL_MAP_FILE, check_run_folder, is_ensemble, read_label_map,
                        read_run_config)
from .scoring import LabelScores
from .terminal import progress_bar

log = logging.getLogger(__name__)



def ensemble_members(run_dir: str | Path) -> list[dict]:
    """The members recorded in an ensemble folder: [{"run", "weight", "base_model", "temperature", ...}, ...]."""
    return read_json(Path(run_dir) / ENSEMBLE_FILE)["members"]


def create_ensemble(members: Sequence[str | Path], run_dir: str | Path, weights: Sequence[float] | None = None,
                    overwrite: bool = False) -> Path:
    """Write an ensemble folder averaging the calibrated probabilities of `members` (trained runs sharing a label
    set). `weights` (default: equal) are normalised to sum to one. Returns the folder."""
    run_dir = Path(run_dir)
    paths = [Path(m).resolve() for m in members]
    if len(paths) < 2:
        raise DataError("an ensemble needs at least two runs")
    if len(set(paths)) != len(paths):
        raise DataError(f"an ensemble lists each run once; repeated: {sorted({str(p) for p in paths if paths.count(p) > 1})}")
    if run_dir.exists() and not overwrite:
        raise RunFolderError(f"{run_dir} already exists; choose another --run-dir or pass --overwrite")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise DataError(f"--weights {weights}: give one positive number per run ({len(paths)} runs)")
    labels = None
    recorded = []
    for path, weight in zip(paths, weights):
        if is_ensemble(path):
            raise DataError(f"{path} is itself an ensemble; list its members instead")
        check_run_folder(path)
        member_labels = read_label_map(path)
        if labels is None:
            labels = member_labels
        elif sorted(member_labels) != sorted(labels):
            raise DataError(f"{path} was trained on labels {member_labels}, {paths[0]} on {labels}; the runs of an "
                            "ensemble must share a label set")
        calibrated = (path / CALIBRATION_FILE).is_file()
        if not calibrated:
            log.warning("%s has no calibration.json: its raw probabilities (temperature 1) go into the average; "
                        "`framesft calibrate %s` first if they should be calibrated", path, path)
        recorded.append({"run": str(path), "weight": weight / sum(weights),
                         "base_model": read_run_config(path).model.base_model,
                         "temperature": read_temperature(path), "calibrated": calibrated})
    with atomic_directory(run_dir) as staging:
        shutil.copy(paths[0] / CONFIG_FILE, staging / CONFIG_FILE)
        shutil.copy(paths[0] / LABEL_MAP_FILE, staging / LABEL_MAP_FILE)
        write_json(staging / ENSEMBLE_FILE, {"method": "mean of calibrated probabilities", "labels": labels,
                                             "members": recorded, "framesft_version": __version__})
    return run_dir


@dataclass
class EnsembleScorer:
    """Scores texts with every member and averages their calibrated probabilities in the ensemble's label order."""

    members: list  # inference.Classifier
    weights: np.ndarray
    orders: list[np.ndarray]  # per member: the column of each ensemble label in that member's label order
    labels: list[str]

    def score_texts(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None) -> LabelScores:
        mean = np.zeros((len(texts), len(self.labels)))
        for member, weight, order in zip(self.members, self.weights, self.orders):
            raw = member.scorer().score_texts(list(texts), on_progress=on_progress)
            mean += weight * member.calibrated(raw).probabilities[:, order]
        # log of the mean probability: the ensemble's softmax at temperature 1 gives the mean back
        return LabelScores(self.labels, np.log(np.clip(mean, np.finfo(float).tiny, None)))


@dataclass
class EnsembleClassifier:
    """A Classifier's interface (inference.Classifier) over several runs."""

    config: FrameSFTConfig
    labels: list[str]
    members: list
    weights: np.ndarray
    temperature: float = 1.0  # the ensemble's own calibration (framesft calibrate ENSEMBLE), over the mean
    label_bias: np.ndarray | None = None
    fast_model: object | None = None

    def scorer(self) -> EnsembleScorer:
        orders = [np.array([m.labels.index(label) for label in self.labels]) for m in self.members]
        return EnsembleScorer(self.members, self.weights, orders, self.labels)

    def calibrated(self, scores: LabelScores) -> LabelScores:
        return scores.with_calibration(self.temperature, self.label_bias)

    def score(self, texts: Sequence[str], description: str = "scoring", show_progress: bool = True,
              calibrated: bool = True) -> LabelScores:
        # one bar over every member's pass: the members score one after another
        with progress_bar(len(texts) * len(self.members), f"{description} ({len(self.members)} runs)",
                          enabled=show_progress) as advance:
            scores = self.scorer().score_texts(list(texts), on_progress=advance)
        return self.calibrated(scores) if calibrated else scores


def ensemble_classifier(run_dir: str | Path, members: list) -> EnsembleClassifier:
    """The ensemble of `members`, the classifiers of the runs its ensemble.json names, in that order
    (inference.load_classifier loads them, with the bf16 cascade off: it keeps a member's labels but not its
    probabilities exactly, and the ensemble's labels come from the probabilities)."""
    run_dir = Path(run_dir)
    weights = np.array([m["weight"] for m in ensemble_members(run_dir)], dtype=float)
    return EnsembleClassifier(read_run_config(run_dir), read_label_map(run_dir), members, weights / weights.sum(),
                              read_temperature(run_dir))
