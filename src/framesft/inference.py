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
from .modeling import (load_adapter, load_base_model, load_tokenizer, pick_device, process_state,
                       resolve_model_path)
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
    tokenizer: object
    builder: PromptBuilder | None = None  # the SFT prompt; None for the classification head

    def scorer(self):
        """LabelScorer (generative SFT) or HeadScorer (classification head): both give LabelScores."""
        if self.config.method == "classification":
            from .heads import HeadScorer

            return HeadScorer(self.model, self.tokenizer, self.labels, self.config.data.max_length,
                              self.config.evaluation.token_budget, self.config.evaluation.batch_size)
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
    base = load_base_model(config, model_path, device, for_training=False, labels=labels,
                           pad_token_id=tokenizer.pad_token_id)
    model = load_adapter(base, run_dir / ADAPTER_DIR)
    model.eval()
    return make_classifier(config, labels, model, tokenizer)


def make_classifier(config: FrameSFTConfig, labels: list[str], model, tokenizer) -> Classifier:
    builder = None
    if config.method == "sft":
        builder = PromptBuilder(tokenizer, labels, config.prompt, config.data.max_length)
    return Classifier(config, labels, model, tokenizer, builder)


def load_zero_shot(config: FrameSFTConfig, labels: list[str], device=None) -> Classifier:
    """The base model with no adapter: the 'before training' reference."""
    device = device or pick_device()
    model_path = resolve_model_path(config.model.base_model)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
    model = load_base_model(config, model_path, device, for_training=False, labels=labels,
                            pad_token_id=tokenizer.pad_token_id)
    model.eval()
    return make_classifier(config, labels, model, tokenizer)


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


def predict_corpus(run_dir: str | Path, input_path: str | Path, output_path: str | Path,
                   text_column: str | None = None, id_column: str | None = None, query: str | None = None,
                   chunk_rows: int = 1000, show_progress: bool = True) -> int | None:
    """Label every row of a corpus, streaming and resumable (see framesft.corpus); returns the row count.

    Under `accelerate launch`/`torchrun` every process scores its share of the chunks and the main process
    merges; the other processes return None.
    """
    from .corpus import CorpusSource, count_rows, iter_chunks, merge_parts, part_path, prepare_parts, write_part

    output = Path(output_path)
    if output.suffix.lower() not in {".csv", ".parquet"}:
        raise DataError(f"--output {output}: write .csv or .parquet")
    if output.exists():
        raise RunFolderError(f"{output} already exists; delete it or choose another --output")
    state = process_state()
    classifier = load_classifier(run_dir, device=state.device)
    source = CorpusSource(Path(input_path), text_column or classifier.config.data.text_column, id_column, query,
                          chunk_rows)
    parts = prepare_parts(output, source, Path(run_dir), state.is_main_process)
    state.wait_for_everyone()
    total = count_rows(source) if state.is_main_process else None
    scorer = classifier.scorer()
    n_chunks = 0
    with progress_bar(total, "predicting", unit="rows",
                      enabled=show_progress and state.is_main_process) as advance:
        for index, chunk in enumerate(iter_chunks(source)):
            n_chunks += 1
            if index % state.num_processes != state.process_index or part_path(parts, index).is_file():
                advance(len(chunk) if state.num_processes == 1 else 0)
                continue
            scores = scorer.score_texts(chunk[source.text_column].tolist())
            result = predictions_frame(chunk[source.text_column].tolist(), scores).drop(columns=["text"])
            result.insert(0, id_column or "row", chunk[id_column].values if id_column else chunk["_row"].values)
            write_part(parts, index, result)
            advance(len(chunk) * state.num_processes)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return merge_parts(parts, n_chunks, output)


def export_merged(run_dir: str | Path, output_dir: str | Path) -> Path:
    """Write the base model with the run's adapter merged in: a plain transformers folder (safetensors).

    Besides weights and tokenizer it holds `label_map.json`, the run's `config.yaml` and `framesft_prompt.json`
    (labels, their token ids, a rendered example prompt), so other servers can score the same way.
    """
    import shutil
    import tempfile

    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise RunFolderError(f"{output} already exists and is not empty; choose another --output")
    run_dir = Path(run_dir)
    classifier = load_classifier(run_dir)
    merged = classifier.model.merge_and_unload()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        classifier.tokenizer.save_pretrained(staging)
        shutil.copy(run_dir / LABEL_MAP_FILE, staging / LABEL_MAP_FILE)
        shutil.copy(run_dir / CONFIG_FILE, staging / CONFIG_FILE)
        if classifier.builder is not None:
            (staging / "framesft_prompt.json").write_text(json.dumps({
                "labels": classifier.labels,
                "label_token_ids": classifier.builder.label_token_ids,
                "answer_texts": {label: classifier.builder.answer_text(label) for label in classifier.labels},
                "example_prompt": classifier.builder.render("<passage>"),
            }, indent=2, ensure_ascii=False))
        if output.exists():
            output.rmdir()
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output
