"""The run folder: its layout, creating it, the metadata training writes into it, and reading it back.

Training writes it, inference (`evaluate`, `predict`, `compare`, `export`) reads it; both use the names here.
Every file and folder is written under a temporary name in the same folder and renamed into place, so an
interrupted process never leaves something half-written that looks complete.

    config.yaml            the resolved config (`framesft train config.yaml` reproduces the run)
    label_map.json         label <-> id
    data_report.json       data check findings, which training rows were used, where validation came from
    label_distribution.json  label counts of the train / validation / test splits
    adapter/               the best LoRA adapter (safetensors) and the tokenizer
    model/                 instead of adapter/ after full fine-tuning (training.use_lora: false): the whole
                           fine-tuned model as a transformers folder, and the tokenizer
    checkpoints/           Trainer checkpoints (for --resume)
    ensemble.json          instead of adapter/ in an ensemble folder (`framesft ensemble`): the member runs
    train.log, trainer_state.json, run_summary.json, metrics_*.json, ..., report.html
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from .config import FrameSFTConfig, load_config
from .dataset import RunData
from .errors import RunFolderError
from .files import atomic_directory, read_json, refuse_pickled_weights, write_json

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABEL_MAP_FILE = "label_map.json"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # full fine-tuning
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train.log"
DATA_REPORT_FILE = "data_report.json"
LABEL_DISTRIBUTION_FILE = "label_distribution.json"
TRAINER_STATE_FILE = "trainer_state.json"
SUMMARY_FILE = "run_summary.json"
REPORT_FILE = "report.html"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble folder (ensemble.py): names member runs instead of holding weights


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
    write_json(run_dir / DATA_REPORT_FILE, {"training_rows": data.training_rows,
                                            "validation_source": data.validation_source,
                                            "reports": [r.to_dict() for r in data.reports]})
    write_json(run_dir / LABEL_MAP_FILE, {"label2id": {l: i for i, l in enumerate(data.labels)},
                                          "id2label": {i: l for i, l in enumerate(data.labels)}})
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    write_json(run_dir / LABEL_DISTRIBUTION_FILE, {
        name: {label: int((table[label_column] == label).sum()) for label in data.labels}
        for name, table in splits.items() if table is not None
    })


def save_trained_weights(model, tokenizer, run_dir: Path) -> None:
    """The trained weights (safetensors) + tokenizer, never half-written: a LoRA adapter into <run>/adapter, a fully
    fine-tuned model into <run>/model."""
    folder = ADAPTER_DIR if hasattr(model, "peft_config") else MODEL_DIR
    with atomic_directory(run_dir / folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def software_versions(base_model: str) -> dict[str, str]:
    """What produced a run: Python, framesft and the libraries that decide its numbers, and the pip packages of
    an embedded model (run_summary.json's "software")."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .embedded import installed_versions

    found = {"python": platform.python_version()}
    for distribution in ("framesft", "torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "kernels",
                         "numpy", "scikit-learn"):
        try:
            found[distribution] = version(distribution)
        except PackageNotFoundError:
            pass  # kernels: only with transformers 5.25 and newer
    return {**found, **installed_versions(base_model)}


# ------------------------------------------------------------------------------------------ reading a run


def check_run_folder(run_dir: Path) -> None:
    for required in (CONFIG_FILE, LABEL_MAP_FILE):
        if not (run_dir / required).exists():
            raise RunFolderError(
                f"{run_dir}: not a complete framesft run (missing {required}); "
                "give the folder that `framesft train` wrote"
            )
    if is_ensemble(run_dir):
        for member in read_json(run_dir / ENSEMBLE_FILE)["members"]:
            if not Path(member["run"]).is_dir():
                raise RunFolderError(f"{run_dir}/{ENSEMBLE_FILE}: member {member['run']} does not exist (moved or "
                                     "deleted?); make the ensemble again with `framesft ensemble` from the runs' "
                                     "new places")
            check_run_folder(Path(member["run"]))
        return
    trained_weights_dir(run_dir)


def is_ensemble(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


def trained_weights_dir(run_dir: Path) -> Path:
    """<run>/adapter (LoRA) or <run>/model (full fine-tuning)."""
    for name in (ADAPTER_DIR, MODEL_DIR):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise RunFolderError(f"{run_dir}: not a complete framesft run (missing {ADAPTER_DIR}/, or {MODEL_DIR}/ after "
                         "full fine-tuning); give the folder that `framesft train` wrote")


def read_run_config(run_dir: Path) -> FrameSFTConfig:
    return load_config(run_dir / CONFIG_FILE)


def read_label_map(run_dir: Path) -> list[str]:
    """The run's labels in id order."""
    label2id = json.loads((run_dir / LABEL_MAP_FILE).read_text(encoding="utf-8"))["label2id"]
    return [label for label, _ in sorted(label2id.items(), key=lambda item: item[1])]


def validate_checkpoint(checkpoint: str | Path) -> None:
    """Fail early, with a way out, if the checkpoint to resume from is damaged."""
    from safetensors import safe_open


    folder = Path(checkpoint)
    refuse_pickled_weights(folder)
    problems = []
    try:
        json.loads((folder / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{TRAINER_STATE_FILE} unreadable ({exc})")
    for weights in sorted(folder.glob("*.safetensors")):  # adapter_model (LoRA) or model (full fine-tuning)
        try:
            with safe_open(str(weights), framework="pt") as handle:
                list(handle.keys())
        except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
            problems.append(f"{weights.name} unreadable ({exc})")
    if not (folder / "optimizer.pt").is_file():
        problems.append("optimizer.pt missing")
    if problems:
        raise RunFolderError(
            f"cannot resume from {folder}: {'; '.join(problems)}. Delete that checkpoint folder to resume from the "
            "one before it, or start again with --overwrite"
        )


# ------------------------------------------------------------------------------------------ prediction files


PROVENANCE_SUFFIX = ".framesft.json"  # next to a prediction file: the run that wrote it (methods.md reads it)


def provenance_path(predictions: str | Path) -> Path:
    path = Path(predictions)
    return path.with_name(path.name + PROVENANCE_SUFFIX)


def read_provenance(predictions: str | Path) -> dict:
    """What a prediction file records of the run that wrote it; {} for a file without the record."""
    return read_json(provenance_path(predictions))
