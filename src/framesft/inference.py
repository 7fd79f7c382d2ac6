"""Using a trained run: load it as a classifier and label passages."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .calibration import read_label_bias, read_temperature
from .cascade import MarginCascade, bf16_copy
from .config import FrameSFTConfig
from .ensemble import ensemble_classifier, ensemble_members
from .errors import RunFolderError
from .methods import Method, Scorer, build_method
from .modeling import load_adapter, load_base_model, load_tokenizer, resolve_model_path
from .precision import resolve_plan, use_onednn_linears
from .files import refuse_pickled_weights
from .runfolder import (MODEL_DIR, check_run_folder, is_ensemble, read_label_map, read_run_config,
                        trained_weights_dir)
from .scoring import LabelScores, predictions_table
from .terminal import progress_bar

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A model ready to score labels: a trained run, or a base model before training (zero-shot)."""

    config: FrameSFTConfig
    labels: list[str]
    model: object
    tokenizer: object
    method: Method
    temperature: float = 1.0  # calibration (calibration.py): probabilities are softmax(scores / temperature)
    label_bias: np.ndarray | None = None  # an adapted run's per-label biases (adaptation.adapt_run)
    fast_model: object | None = None  # a bf16 copy of the model where the plan scores through the margin cascade

    def scorer(self) -> Scorer:
        """Raw label scores (temperature 1); `calibrated` applies the run's temperature (and biases) to them.
        With a fast model: the bf16 margin cascade (cascade.py), which keeps the labels of `model`."""
        exact = self.method.scorer(self.model)
        if self.fast_model is None:
            return exact
        offset = None if self.label_bias is None else self.temperature * np.asarray(self.label_bias)
        return MarginCascade(exact, self.method.scorer(self.fast_model), self.method.encode_input, offset,
                             self.temperature)

    def calibrated(self, scores: LabelScores) -> LabelScores:
        return scores.with_calibration(self.temperature, self.label_bias)

    def score(self, texts: Sequence[str], description: str = "scoring", show_progress: bool = True,
              calibrated: bool = True) -> LabelScores:
        scorer = self.scorer()
        with progress_bar(len(texts), description, enabled=show_progress) as advance:
            scores = scorer.score_texts(list(texts), on_progress=advance)
        if isinstance(scorer, MarginCascade):
            log.info("%s: %s", description, scorer.tally.summary())
        return self.calibrated(scores) if calibrated else scores


def merged_for_scoring(model):
    """The LoRA weights folded into the base weights (PEFT's merge_and_unload, in place): the same scores up to
    rounding, without the adapters' extra small matmuls in every layer. Trained runs and `framesft evaluate` both
    score this way, so they agree exactly."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def load_classifier(run_dir: str | Path, device=None, merge: bool = True, dtype: str | None = None,
                    scoring: dict[str, bool] | None = None, cascade: bool = True) -> Classifier:
    """Base model + the run's LoRA adapter (or the run's fully fine-tuned model), with the run's own config, labels
    and prompt.

    merge: fold the adapter into the weights for faster scoring (merged_for_scoring); dtype overrides the run's
    model.dtype (export writes fp32 weights on CPU); scoring: {"onednn_linears": ..., "bf16_cascade": ...} decided
    already (a prediction's recorded route, corpus.scoring_route) instead of measured on this CPU; cascade=False
    keeps the bf16 cascade off whatever the plan says (an ensemble's members, ensemble.py).

    An ensemble folder (`framesft ensemble`) loads as an EnsembleClassifier with the same interface."""
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        if merge is False or dtype:
            raise RunFolderError(f"{run_dir} is an ensemble of runs: it has no single model to load unmerged or "
                                 "in another dtype; use one of its member runs")
        check_run_folder(run_dir)  # every member still a complete run
        members = [load_classifier(member["run"], device, scoring=scoring, cascade=False)
                   for member in ensemble_members(run_dir)]
        return ensemble_classifier(run_dir, members)
    check_run_folder(run_dir)
    config = read_run_config(run_dir)
    if dtype or scoring:
        config = config.model_copy(deep=True)
        config.model.dtype = dtype or config.model.dtype
        if scoring:
            config.evaluation.onednn_linears = scoring["onednn_linears"]
            config.evaluation.bf16_cascade = scoring["bf16_cascade"]
    labels = read_label_map(run_dir)
    weights_dir = trained_weights_dir(run_dir)
    full = weights_dir.name == MODEL_DIR  # full fine-tuning: the run holds the whole model
    if full:
        refuse_pickled_weights(weights_dir)
    model_path = str(weights_dir) if full else resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
    plan = resolve_plan(config, device)
    model = load_base_model(config, model_path, plan, for_training=False, labels=labels,
                            pad_token_id=tokenizer.pad_token_id)
    if not full:
        model = load_adapter(model, weights_dir)
    if merge:
        model = merged_for_scoring(model)
    model.eval()
    fast_model = bf16_copy(model) if plan.scoring_cascade and cascade else None
    if plan.onednn_linears:
        use_onednn_linears(model)
    return Classifier(config, labels, model, tokenizer, build_method(config, tokenizer, labels),
                      read_temperature(run_dir), read_label_bias(run_dir, labels), fast_model)


def load_zero_shot(config: FrameSFTConfig, labels: list[str], device=None) -> Classifier:
    """The base model with no adapter: the 'before training' reference."""
    model_path = resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
    plan = resolve_plan(config, device)
    model = load_base_model(config, model_path, plan, for_training=False, labels=labels,
                            pad_token_id=tokenizer.pad_token_id)
    model.eval()
    if plan.onednn_linears:
        use_onednn_linears(model)
    return Classifier(config, labels, model, tokenizer, build_method(config, tokenizer, labels))


def predict_texts(classifier: Classifier, texts: Sequence[str], show_progress: bool = False) -> pd.DataFrame:
    scores = classifier.score(texts, "predicting", show_progress)
    return predictions_table(texts, scores)
