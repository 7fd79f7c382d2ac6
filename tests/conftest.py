"""Shared fixtures: the embedded tokenizer and a tiny randomly initialised Llama built in the test session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from framesft.config import EMBEDDED_DEFAULT_MODEL, FrameSFTConfig
from framesft.modeling import load_tokenizer, resolve_model_path

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "src" / "framesft" / "resources" / "sample_data"
FRAMES = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]


# The CPU kinds framesft meets, as the compute plan sees them: flags, the matmul rates measured on 2 cores and an
# fp32 linear layer's rates through ATen (MKL) and oneDNN (GFLOP/s). AMX: Sapphire Rapids; AVX512-BF16 without
# AMX: the Xeons the CPU work was tuned on; AVX2 only: the AMD EPYC some of these machines have, where torch
# emulates bf16; Zen 5: an AMD EPYC with the avx512_bf16 flag and no AMX whose bf16 matmul runs 4.5x fp32 and whose
# oneDNN fp32 linear layer runs 2.1-2.4x MKL's (2026-12-01, benchmarks/fp32_linear_routes.py: 206 vs 450). The
# oneDNN rates of the other kinds were not measured there: set level with ATen, the plan keeps ATen.
CPU_KINDS = {
    "amx": ({"avx512_bf16", "amx_bf16"}, {"float32": 195.0, "bfloat16": 734.0}, {"aten": 195.0, "onednn": 195.0}),
    "avx512_bf16": ({"avx512_bf16"}, {"float32": 310.0, "bfloat16": 160.0}, {"aten": 310.0, "onednn": 310.0}),
    "avx2": (set(), {"float32": 146.0, "bfloat16": 0.5}, {"aten": 146.0, "onednn": 146.0}),
    "zen5": ({"avx512_bf16"}, {"float32": 219.0, "bfloat16": 989.0}, {"aten": 219.0, "onednn": 480.0}),
}


def simulate_cpu(monkeypatch, kind: str) -> None:
    """Make the compute plan see a CPU of this kind (flags and measured rates); the arithmetic stays this CPU's."""
    import torch

    import framesft.precision as precision

    flags, rates, linear_rates = CPU_KINDS[kind]
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(precision, "cpu_matmul_rates", lambda: {getattr(torch, k): v for k, v in rates.items()})
    monkeypatch.setattr(precision, "cpu_fp32_linear_rates", lambda: dict(linear_rates))


def pytest_addoption(parser):
    parser.addoption("--cpu-kind", choices=["native", *CPU_KINDS], default="native",
                     help="run the whole suite as the compute plan would on another kind of CPU (the paths it "
                          "chooses there: bf16 training on AMX); tests that pin a kind keep theirs")


@pytest.fixture(scope="session", autouse=True)
def cpu_kind(request, tmp_path_factory):
    """--cpu-kind: this process and every Python process the tests start (framesft CLI runs, torchrun workers)
    see the simulated CPU; the latter through a sitecustomize module put first on PYTHONPATH."""
    import os

    kind = request.config.getoption("--cpu-kind")
    if kind == "native":
        yield kind
        return
    flags, rates, linear_rates = CPU_KINDS[kind]
    startup = tmp_path_factory.mktemp("cpu-kind")
    (startup / "sitecustomize.py").write_text(
        "import torch\nimport framesft.precision as precision\n"
        f"precision.cpu_flags = lambda: {set(flags)!r}\n"
        f"precision.cpu_matmul_rates = lambda: {{getattr(torch, k): v for k, v in {rates!r}.items()}}\n"
        f"precision.cpu_fp32_linear_rates = lambda: {linear_rates!r}\n")
    with pytest.MonkeyPatch.context() as patch:
        simulate_cpu(patch, kind)
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(startup), os.environ.get("PYTHONPATH")])))
        yield kind


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    return resolve_model_path(EMBEDDED_DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    return load_tokenizer(embedded_model_dir, trust_remote_code=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> str:
    """A 2-layer Llama with random weights and the SmolLM2 tokenizer: real code paths, seconds to train."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(config)
    # With the default init (std 0.02) the tied output layer can move logits by about 1 nat only, so no
    # training could bring the loss far below log(vocab); larger embeddings give it room to learn.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_csv(path: Path, rows: list[tuple[str, str]], header=("chunk_text", "frame_name")) -> Path:
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False)
    return path


def tiny_config(tiny_model_dir: str, run_dir: Path, **training) -> FrameSFTConfig:
    """Config for a few-step training run of the tiny model on the bundled sample data."""
    from framesft.config import load_config

    overrides = [
        f"model.base_model={tiny_model_dir}",
        "model.name=tiny-llama",
        "data.data_dir=framesft:sample_data",
        "data.test_csv=test.csv",
        "data.max_length=256",
        "data.validation_fraction=0.2",
        "training.batch_size=4",
        "training.gradient_accumulation_steps=1",
        "training.learning_rate=5e-3",
        "training.num_epochs=2",
        "training.warmup_steps=0",
        "training.logging_steps=2",
        "training.lora_r=8",
        "training.lora_alpha=16",
        f"training.output_dir={run_dir}",
        "tracking.report_to=none",
    ] + [f"training.{k}={v}" for k, v in training.items()]
    return load_config(None, overrides)


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory):
    """A real (few-step) training run of the tiny model; its run folder is shared by several test modules."""
    from framesft.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    return train(tiny_config(tiny_model_dir, run_dir, num_epochs=3), show_progress=False)


def run_with_measured_route(run_dir: Path, folder: Path) -> Path:
    """A copy of the run whose config pins the scoring route this process measures (oneDNN linear layers, bf16
    cascade): for tests that compare predictions made by separate processes, which on a loaded machine (CI beside
    a training run) can each measure a different route (corpus.scoring_route keeps one per prediction)."""
    import shutil

    import torch

    from framesft.precision import resolve_plan
    from framesft.runfolder import read_run_config

    copy = folder / "run-with-route"
    shutil.copytree(run_dir, copy)
    config = read_run_config(copy)
    plan = resolve_plan(config, torch.device("cpu"))
    config.evaluation.onednn_linears, config.evaluation.bf16_cascade = plan.onednn_linears, plan.scoring_cascade
    (copy / "config.yaml").write_text(config.to_yaml())
    return copy


def write_every_format(table: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The same table as CSV, JSONL, Parquet and a DuckDB database (table `chunks`)."""
    import duckdb

    inputs = {"csv": folder / "c.csv", "jsonl": folder / "c.jsonl", "parquet": folder / "c.parquet",
              "duckdb": folder / "c.duckdb"}
    table.to_csv(inputs["csv"], index=False)
    table.to_json(inputs["jsonl"], orient="records", lines=True)
    table.to_parquet(inputs["parquet"], index=False)
    with duckdb.connect(str(inputs["duckdb"])) as connection:
        connection.register("passages", table)
        connection.execute("CREATE TABLE chunks AS SELECT * FROM passages")
    return inputs


def render_in_chromium(page: Path, work: Path) -> tuple[str, Path]:
    """The page's DOM after headless Chromium loaded it, and a 1200 px wide screenshot (skips without Chromium)."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed and could not be installed by `make test` (apt-get chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={work / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = work / "screenshot.png"
    done = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
    return dom.stdout, shot
