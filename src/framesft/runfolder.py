"""The run folder: its layout, creating it, the metadata training writes into it, and reading it back.

Training writes it, inference (`evaluate`, `predict`, `compare`, `export`) reads it; both use the names here.
Every file and folder is written under a temporary name in the same folder and renamed into place, so an
interrupted process never leaves something half-written that looks complete.

    config.yaml            the resolved config (`framesft train config.yaml` reproduces the run)
    label_map.json         label <-> id
    data_report.json       data check findings and where the validation set came from
    label_distribution.json  label counts of the train / validation / test splits
    adapter/               the best LoRA adapter (safetensors) and the tokenizer
    checkpoints/           Trainer checkpoints (for --resume)
    train.log, trainer_state.json, run_summary.json, metrics_*.json, ..., report.html
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

from .errors import RunFolderError

if TYPE_CHECKING:
    from .config import FrameSFTConfig
    from .dataset import RunData

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABEL_MAP_FILE = "label_map.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train.log"
DATA_REPORT_FILE = "data_report.json"
LABEL_DISTRIBUTION_FILE = "label_distribution.json"
TRAINER_STATE_FILE = "trainer_state.json"
SUMMARY_FILE = "run_summary.json"
REPORT_FILE = "report.html"


# ------------------------------------------------------------------------------------------ atomic writes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextmanager
def atomic_directory(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; it becomes `target` only if the block succeeds.

    replace=True swaps out an existing `target`; replace=False keeps an existing complete `target` (another
    process finished first) and drops the staging folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            if not replace:
                return
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_table(path: str | Path, table: pd.DataFrame) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


# ------------------------------------------------------------------------------------------ writing a run


def prepare_run_folder(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunFolderError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); start without --resume")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunFolderError(
                f"run folder {run_dir} already exists; pass --overwrite to replace it, --resume to continue it, "
                "or choose another folder with --run-dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def checkpoint_folder(config: FrameSFTConfig, run_dir: Path) -> Path:
    return Path(config.training.checkpoint_dir) if config.training.checkpoint_dir else run_dir / CHECKPOINT_DIR


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def write_run_metadata(run_dir: Path, data: RunData, label_column: str) -> None:
    write_json(run_dir / DATA_REPORT_FILE, {"validation_source": data.validation_source,
                                            "reports": [r.to_dict() for r in data.reports]})
    write_json(run_dir / LABEL_MAP_FILE, {"label2id": {l: i for i, l in enumerate(data.labels)},
                                          "id2label": {i: l for i, l in enumerate(data.labels)}})
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    write_json(run_dir / LABEL_DISTRIBUTION_FILE, {
        name: {label: int((table[label_column] == label).sum()) for label in data.labels}
        for name, table in splits.items() if table is not None
    })


def save_adapter(model, tokenizer, run_dir: Path) -> None:
    """Adapter (safetensors) + tokenizer into <run>/adapter, never half-written."""
    with atomic_directory(run_dir / ADAPTER_DIR) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


# ------------------------------------------------------------------------------------------ reading a run


def check_run_folder(run_dir: Path) -> None:
    for required in (CONFIG_FILE, LABEL_MAP_FILE, ADAPTER_DIR):
        if not (run_dir / required).exists():
            raise RunFolderError(
                f"{run_dir}: not a complete framesft run (missing {required}); "
                "give the folder that `framesft train` wrote"
            )


def read_run_config(run_dir: Path) -> FrameSFTConfig:
    from .config import load_config

    return load_config(run_dir / CONFIG_FILE)


def read_label_map(run_dir: Path) -> list[str]:
    """The run's labels in id order."""
    label2id = json.loads((run_dir / LABEL_MAP_FILE).read_text(encoding="utf-8"))["label2id"]
    return [label for label, _ in sorted(label2id.items(), key=lambda item: item[1])]


def read_json(path: Path) -> dict:
    """A JSON file of the run folder, or {} when the run did not write it."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def validate_checkpoint(checkpoint: str | Path) -> None:
    """Fail early, with a way out, if the checkpoint to resume from is damaged."""
    from safetensors import safe_open

    from .modeling import refuse_pickled_weights

    folder = Path(checkpoint)
    refuse_pickled_weights(folder)
    problems = []
    try:
        json.loads((folder / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{TRAINER_STATE_FILE} unreadable ({exc})")
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
            list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        problems.append(f"adapter_model.safetensors unreadable ({exc})")
    if not (folder / "optimizer.pt").is_file():
        problems.append("optimizer.pt missing")
    if problems:
        raise RunFolderError(
            f"cannot resume from {folder}: {'; '.join(problems)}. Delete that checkpoint folder to resume from the "
            "one before it, or start again with --overwrite"
        )
