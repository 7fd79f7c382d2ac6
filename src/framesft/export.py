"""`framesft export`: the base model with a run's adapter merged in (or a fully fine-tuned run's model), as a plain
transformers folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .calibration import CALIBRATION_FILE
from .errors import RunFolderError
from .files import atomic_directory
from .inference import load_classifier
from .runfolder import CONFIG_FILE, LABEL_MAP_FILE, is_ensemble


def export_merged(run_dir: str | Path, output_dir: str | Path) -> Path:
    """Write the merged model (safetensors) and tokenizer, plus `label_map.json`, the run's `config.yaml`, its
    `calibration.json` (temperature; an adapted run's biases, which move its labels) and, for generative SFT, `framesft_prompt.json` (labels, their token ids, a rendered example prompt), so other
    servers can score the same way."""
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise RunFolderError(f"{output} already exists and is not empty; choose another --output")
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        raise RunFolderError(f"{run_dir} is an ensemble of runs, with no single model to export; export its members "
                             "one by one")
    # On CPU in fp32 whatever the machine would score in: the export must not depend on where it was made.
    classifier = load_classifier(run_dir, merge=True, dtype=None if torch.cuda.is_available() else "float32")
    merged = classifier.model
    with atomic_directory(output) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        classifier.tokenizer.save_pretrained(staging)
        shutil.copy(run_dir / LABEL_MAP_FILE, staging / LABEL_MAP_FILE)
        shutil.copy(run_dir / CONFIG_FILE, staging / CONFIG_FILE)
        if (run_dir / CALIBRATION_FILE).is_file():  # the temperature (and an adapted run's per-label biases):
            shutil.copy(run_dir / CALIBRATION_FILE, staging / CALIBRATION_FILE)  # softmax(score / T + b)
        description = classifier.method.serving_description()
        if description is not None:
            (staging / "framesft_prompt.json").write_text(json.dumps(description, indent=2, ensure_ascii=False))
    return output
