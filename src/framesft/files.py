"""Files: written atomically (a temporary name in the same folder, renamed into place, so an interrupted process
never leaves something half-written that looks complete), JSON read back, and weight files checked before
loading (safetensors only: unpickling a .bin/.pt file can run code)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .errors import ConfigError

log = logging.getLogger(__name__)


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


def write_json_once(path: str | Path, data) -> dict:
    """Write `data` to `path` unless a file is there already, and return what the file holds: of processes racing
    to write it (independent jobs on a shared file system) one wins and all read the winner's. The file appears
    complete or not at all: written under a temporary name, then hard-linked to `path`, which fails if the name
    is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return json.loads(path.read_text(encoding="utf-8"))


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


def read_json(path: Path) -> dict:
    """A JSON file, or {} when there is none (a run folder file the run did not write)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def copy_entries(source: Path, target: Path, names) -> None:
    """Copy the named files and folders of `source` into `target`; names `source` lacks are skipped."""
    for name in names:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, target / name)
        elif path.is_file():
            shutil.copy2(path, target / name)


# ------------------------------------------------------------------------------------------ weight files


PICKLE_OVERRIDE = "FRAMESFT_TRUST_PICKLE"


def refuse_pickled_weights(folder: Path) -> None:
    """Weights must be safetensors: a pickle file (.bin/.pt/.pkl weights) can run code when it is loaded. An adapter
    folder holds adapter_model.safetensors; a fully fine-tuned model model.safetensors (or its shards)."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = [p.name for p in folder.glob("*") if p.name in {"adapter_model.bin", "pytorch_model.bin"}
               or p.suffix in {".pkl", ".pickle"}]
    if pickled and os.environ.get(PICKLE_OVERRIDE) == "1":
        log.warning("loading pickle-based weights %s because %s=1", pickled, PICKLE_OVERRIDE)
        return
    raise ConfigError(
        f"{folder}: no safetensors weights (adapter_model.safetensors, or model.safetensors after full "
        "fine-tuning)"
        + (f"; found pickle-based weights {pickled}, which framesft refuses to load because unpickling can run "
           f"arbitrary code. Convert them to safetensors, or, only for files you trust, set {PICKLE_OVERRIDE}=1"
           if pickled else "")
    )
