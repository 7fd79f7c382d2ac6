"""Two CPU processes (gloo): DDP training and sharded corpus prediction, launched with torchrun."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from framesft.runfolder import read_provenance

from conftest import FRAMES, SAMPLE_DATA, tiny_config

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
            "-m", "framesft.cli", "--quiet"]


def run_two_processes(*args, timeout=600):
    env = {"OMP_NUM_THREADS": "1"}
    import os

    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def test_ddp_training_with_two_processes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    config = tiny_config(tiny_model_dir, run_dir, num_epochs=2)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())
    done = run_two_processes("train", str(config_path))
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["processes"] == 2  # the world size really was 2
    assert "processes: 2" in (run_dir / "train.log").read_text()
    state = json.loads((run_dir / "trainer_state.json").read_text())
    evaluations = [e for e in state["log_history"] if "eval_f1_macro" in e]
    # 48 training rows, batch 4 per process, 2 processes: 6 optimizer steps per epoch
    assert state["global_step"] == 12
    assert len(evaluations) == 2
    assert all(e["eval_samples"] == 12 for e in evaluations)  # the whole validation set, once per evaluation
    assert state["best_metric"] == max(e["eval_f1_macro"] for e in evaluations)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    assert metrics["n"] == 24


def test_sharded_prediction_has_every_row_exactly_once(trained_run, tmp_path):
    texts = pd.read_csv(SAMPLE_DATA / "test.csv")["chunk_text"].tolist()
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"chunk_id": [f"c{i}" for i in range(130)], "party": [f"p{i % 7}" for i in range(130)],
                  "chunk_text": [texts[i % len(texts)] for i in range(130)]}).to_csv(corpus, index=False)
    out = tmp_path / "out.parquet"
    done = run_two_processes("predict", str(trained_run.run_dir), "--input", str(corpus), "--output", str(out),
                             "--id-column", "chunk_id", "--chunk-rows", "20", "--keep-columns", "party")
    assert done.returncode == 0, done.stderr[-3000:]
    result = pd.read_parquet(out)
    assert result["chunk_id"].tolist() == [f"c{i}" for i in range(130)]
    assert set(result["predicted"]) <= set(FRAMES)
    assert result["party"].tolist() == [f"p{i % 7}" for i in range(130)]  # kept columns from both processes
    assert read_provenance(out)["processes"] == 2  # the world size really was 2


def test_sharded_prediction_through_the_cascade_records_each_process(trained_run, tmp_path):
    """Each process measures its own bound on its own chunks; the provenance keeps every process's tally."""
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["evaluation"]["bf16_cascade"] = True  # forced: the cascade runs on any CPU
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    texts = pd.read_csv(SAMPLE_DATA / "test.csv")["chunk_text"].tolist()
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"chunk_text": [texts[i % len(texts)] for i in range(130)]}).to_csv(corpus, index=False)
    out = tmp_path / "out.csv"
    done = run_two_processes("predict", str(run), "--input", str(corpus), "--output", str(out), "--chunk-rows", "40")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(pd.read_csv(out, keep_default_na=False)) == 130
    record = read_provenance(out)
    assert record["processes"] == 2
    tally = record["bf16_cascade"]
    # chunks of 40, 40, 40, 10: process 0 scores chunks 0 and 2, process 1 chunks 1 and 3; each probes 32 of its first
    per_process = tally["per_process"]
    assert [t["probe_passages"] for t in per_process] == [32, 32]
    assert [t["probe_passages"] + t["fast_passages"] + t["fp32_only"] for t in per_process] == [80, 50]
    assert tally["probe_passages"] == 64 and tally["fast_passages"] == 130 - 64
    assert tally["bound"] == max(t["bound"] for t in per_process)
