"""Untrusted artifacts, secrets, and tracking (W&B offline for real, TensorBoard)."""

import os
import shutil
import subprocess
import sys

import pytest

from framesft.errors import ConfigError
from framesft.inference import load_classifier

from conftest import tiny_config

pytestmark = pytest.mark.slow

FAKE_SECRETS = {
    "WANDB_API_KEY": "wandb-fake-key-0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_FAKEtokenFAKEtokenFAKEtoken123",
    "MY_SERVICE_SECRET_KEY": "sk-fake-service-secret-98765",
    "OPENAI_API_TOKEN": "tok-fake-openai-55555",
}


def test_pickled_adapter_is_refused_unless_explicitly_trusted(trained_run, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    adapter = run / "adapter"
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="refuses to load because unpickling can run arbitrary code"):
        load_classifier(run)
    monkeypatch.setenv("FRAMESFT_TRUST_PICKLE", "1")
    assert load_classifier(run).labels == trained_run.labels


def test_secrets_never_reach_run_folder_and_wandb_runs_offline(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(tiny_model_dir, run_dir, num_epochs=1)
    config.tracking.report_to = ["wandb", "tensorboard"]
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())
    env = {**os.environ, **FAKE_SECRETS, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "framesft.cli", "--quiet", "train", str(config_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    leaks = []
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        content = path.read_bytes()
        leaks += [f"{name} in {path.relative_to(run_dir)}" for name, value in FAKE_SECRETS.items()
                  if value.encode() in content]
    output = done.stdout + done.stderr
    leaks += [f"{name} in CLI output" for name, value in FAKE_SECRETS.items() if value in output]
    assert leaks == []
