"""Interruptions: SIGKILL after a checkpoint then --resume; SIGTERM saves a checkpoint before exiting."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from framesft.training import train

from conftest import tiny_config

pytestmark = pytest.mark.slow


def start_training(config_path, run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "framesft.cli", "--quiet", "train", str(config_path),
                             "--run-dir", str(run_dir), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted_run(trained_run, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "killed"
    config = tiny_config(tiny_model_dir, run_dir, num_epochs=3)  # the same settings and seed as trained_run
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())

    process = start_training(config_path, run_dir)
    first = run_dir / "checkpoints" / "checkpoint-12"
    assert wait_for(lambda: (first / "trainer_state.json").is_file() and (first / "rng_state.pth").is_file()
                    or process.poll() is not None)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics_test.json").exists()  # nothing that looks finished
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert saved and saved[-1] < 36, "the kill must land before the end of training"

    resumed = train(config, run_dir, resume=True, show_progress=False)
    state = json.loads((run_dir / "trainer_state.json").read_text())
    reference = json.loads((trained_run.run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == reference["global_step"] == 36
    # the log continues from the checkpoint instead of starting over
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert resumed.metrics["validation"]["f1_macro"] == pytest.approx(trained_run.metrics["validation"]["f1_macro"],
                                                                     abs=0.02)
    assert state["best_metric"] == pytest.approx(reference["best_metric"], abs=0.02)
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    reference_losses = {e["step"]: e["loss"] for e in reference["log_history"] if "loss" in e}
    assert losses[36] == pytest.approx(reference_losses[36], rel=0.05)  # optimizer, scheduler, RNG restored


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "terminated"
    # far longer than the test, and no early stopping: the tiny run could otherwise end before the signal
    config = tiny_config(tiny_model_dir, run_dir, num_epochs=500, early_stopping_patience="null")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())
    process = start_training(config_path, run_dir)
    assert wait_for(lambda: (run_dir / "train.log").is_file()
                    and "SIGTERM saves a checkpoint" in (run_dir / "train.log").read_text()
                    or process.poll() is not None)  # the handler is installed (waiting for "LoRA" raced it)
    time.sleep(2)  # a few optimizer steps in
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "training stopped by SIGTERM at step" in stderr and "--resume" in stderr
    checkpoints = list((run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    step = int(stderr.split("at step ")[1].split(";")[0])
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors").is_file()
