"""Using a trained run: load it, evaluate it on labelled data, predict labels for new text."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .config import FrameSFTConfig, load_config
from .data import read_table
from .errors import DataError, RunFolderError
from .metrics import classification_metrics
from .modeling import load_adapter, load_base_model, load_tokenizer, pick_device, resolve_model_path
from .progress import progress_bar
from .prompting import PromptBuilder
from .reporting import predictions_frame, write_evaluation, write_table
from .scoring import LabelScorer, LabelScores

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABEL_MAP_FILE = "label_map.json"
ADAPTER_DIR = "adapter"


@dataclass
class Classifier:
    """A model ready to score labels: a trained run, or a base model before training (zero-shot)."""

    config: FrameSFTConfig
    labels: list[str]
    model: object
    builder: PromptBuilder

    def scorer(self) -> LabelScorer:
        return LabelScorer(
            self.model,
            self.builder,
            token_budget=self.config.evaluation.token_budget,
            max_batch_size=self.config.evaluation.batch_size,
            length_normalize=self.config.evaluation.length_normalize,
        )

    def score(self, texts: Sequence[str], description: str = "scoring", show_progress: bool = True) -> LabelScores:
        with progress_bar(len(texts), description, enabled=show_progress) as advance:
            return self.scorer().score_texts(list(texts), on_progress=advance)


def read_label_map(run_dir: Path) -> list[str]:
    label2id = json.loads((run_dir / LABEL_MAP_FILE).read_text(encoding="utf-8"))["label2id"]
    return [label for label, _ in sorted(label2id.items(), key=lambda item: item[1])]


def load_classifier(run_dir: str | Path, device=None) -> Classifier:
    """Base model + the run's LoRA adapter, with the run's own config, labels and prompt."""
    run_dir = Path(run_dir)
    for required in (CONFIG_FILE, LABEL_MAP_FILE, ADAPTER_DIR):
        if not (run_dir / required).exists():
            raise RunFolderError(
                f"{run_dir}: not a complete framesft run (missing {required}); "
                "give the folder that `framesft train` wrote"
            )
    config = load_config(run_dir / CONFIG_FILE)
    labels = read_label_map(run_dir)
    device = device or pick_device()
    model_path = resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
    base = load_base_model(config, model_path, device, for_training=False)
    model = load_adapter(base, run_dir / ADAPTER_DIR)
    model.eval()
    return Classifier(config, labels, model, PromptBuilder(tokenizer, labels, config.prompt, config.data.max_length))


def load_zero_shot(config: FrameSFTConfig, labels: list[str], device=None) -> Classifier:
    """The base model with no adapter: the 'before training' reference."""
    device = device or pick_device()
    model_path = resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
    model = load_base_model(config, model_path, device, for_training=False)
    model.eval()
    return Classifier(config, labels, model, PromptBuilder(tokenizer, labels, config.prompt, config.data.max_length))


def evaluate_frame(
    classifier: Classifier, texts: Sequence[str], y_true: Sequence[str], description: str = "evaluating",
    show_progress: bool = True,
) -> tuple[dict, pd.DataFrame]:
    scores = classifier.score(texts, description, show_progress)
    metrics = classification_metrics(list(y_true), scores.predictions, classifier.labels)
    return metrics, predictions_frame(texts, scores, y_true)


def evaluate_run(run_dir: str | Path, data_path: str | Path, output_dir: str | Path | None = None,
                 show_progress: bool = True) -> dict:
    """Evaluate a trained run on a labelled file; write metrics, per-class report, confusion matrix, predictions."""
    classifier = load_classifier(run_dir)
    data = classifier.config.data
    frame = read_table(data_path, [data.text_column, data.label_column])
    from .data import check_frame

    report = check_frame(frame, str(data_path), data.text_column, data.label_column, classifier.labels)
    if report.errors:
        raise DataError("\n".join(f"{report.path}: {f.message}" for f in report.errors))
    metrics, predictions = evaluate_frame(
        classifier, frame[data.text_column].tolist(), frame[data.label_column].tolist(), show_progress=show_progress
    )
    folder = Path(output_dir) if output_dir else Path(run_dir) / f"eval_{Path(data_path).stem}"
    write_evaluation(folder, "eval", metrics, predictions)
    metrics["output_dir"] = str(folder)
    return metrics


def predict_texts(classifier: Classifier, texts: Sequence[str], show_progress: bool = False) -> pd.DataFrame:
    scores = classifier.score(texts, "predicting", show_progress)
    return predictions_frame(texts, scores)


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path,
                 text_column: str | None = None, id_column: str | None = None, show_progress: bool = True) -> int:
    """Label every row of a file; the output (CSV or Parquet) has id, predicted label, probabilities, margin."""
    classifier = load_classifier(run_dir)
    text_column = text_column or classifier.config.data.text_column
    frame = read_table(input_path, [text_column] + ([id_column] if id_column else []))
    scores = classifier.score(frame[text_column].tolist(), "predicting", show_progress)
    result = predictions_frame(frame[text_column].tolist(), scores).drop(columns=["text"])
    ids = frame[id_column] if id_column else pd.Series(range(len(frame)), name="row")
    result.insert(0, id_column or "row", ids.values)
    write_table(output_path, result)
    return len(result)
