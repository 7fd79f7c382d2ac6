"""Corpus prediction: every input format, exactly-once output after a real SIGKILL and resume, export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from framesft.errors import FrameSFTError
from framesft.corpus import predict_corpus

from conftest import FRAMES, SAMPLE_DATA, run_with_measured_route, write_every_format

pytestmark = pytest.mark.slow


def corpus_frame(n_rows: int) -> pd.DataFrame:
    texts = pd.read_csv(SAMPLE_DATA / "test.csv")["chunk_text"].tolist()
    return pd.DataFrame({"chunk_id": [f"c{i:05d}" for i in range(n_rows)],
                         "chunk_text": [f"{texts[i % len(texts)]} ({i})" for i in range(n_rows)]})


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "framesft.cli", "--quiet", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_every_input_format_gives_the_same_predictions(trained_run, tmp_path):
    frame = corpus_frame(45)
    inputs = write_every_format(frame, tmp_path)
    database = inputs.pop("duckdb")

    outputs = {}
    for name, path in inputs.items():
        out = tmp_path / f"out_{name}.parquet"
        assert predict_corpus(trained_run.run_dir, path, out, id_column="chunk_id", chunk_rows=10,
                              show_progress=False) == 45
        outputs[name] = pd.read_parquet(out)
    out = tmp_path / "out_duckdb.csv"
    predict_corpus(trained_run.run_dir, database, out, id_column="chunk_id", chunk_rows=7,
                   query="SELECT chunk_id, chunk_text FROM chunks ORDER BY chunk_id", show_progress=False)
    outputs["duckdb"] = pd.read_csv(out, keep_default_na=False)

    reference = outputs["csv"]
    assert reference["chunk_id"].tolist() == frame["chunk_id"].tolist()
    assert set(reference["predicted"]) <= set(FRAMES)
    assert list(reference.columns) == ["chunk_id", "predicted", *(f"p_{l}" for l in sorted(FRAMES)), "margin"]
    for name, other in outputs.items():
        assert other["chunk_id"].tolist() == reference["chunk_id"].tolist(), name
        assert other["predicted"].tolist() == reference["predicted"].tolist(), name
        np.testing.assert_allclose(other["margin"], reference["margin"], atol=1e-5)
    assert not list(tmp_path.glob("*.parts"))  # parts folders are removed after the merge


def test_killed_prediction_resumes_to_exactly_once_output(trained_run, tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus_frame(1200).to_csv(corpus, index=False)
    run = run_with_measured_route(trained_run.run_dir, tmp_path)  # the reference and the resumed run score alike
    args = ["predict", str(run), "--input", str(corpus), "--id-column", "chunk_id", "--chunk-rows", "40"]
    reference_out = tmp_path / "reference.csv"
    assert cli(*args, "--output", str(reference_out)).returncode == 0

    out = tmp_path / "resumed.csv"
    parts = tmp_path / "resumed.csv.parts"
    process = subprocess.Popen([sys.executable, "-m", "framesft.cli", "--quiet", *args, "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before_kill = len(list(parts.glob("part-*.parquet")))
    assert 3 <= finished_before_kill < 30, "the kill must land part-way"
    assert not out.exists()  # no output that looks complete

    resumed = cli(*args, "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr
    result = pd.read_csv(out, keep_default_na=False)
    reference = pd.read_csv(reference_out, keep_default_na=False)
    assert result["chunk_id"].is_unique and len(result) == 1200
    assert result["chunk_id"].tolist() == reference["chunk_id"].tolist()
    assert result["predicted"].tolist() == reference["predicted"].tolist()
    np.testing.assert_allclose(result["margin"], reference["margin"], atol=1e-5)
    assert not parts.exists()


FIRST_BATCH_SCORES = """
import hashlib, sys
import pandas as pd
from framesft.inference import load_classifier
texts = pd.read_csv(sys.argv[2])["chunk_text"].tolist()
print(hashlib.sha1(load_classifier(sys.argv[1]).score(texts, "scoring", False).scores.tobytes()).hexdigest())
"""


def test_fresh_processes_score_the_first_batch_bit_identically(trained_run, tmp_path):
    """A resumed prediction mixes rows scored by different processes. Without settle_cpu_math_kernels about one
    fresh process in three scored its first batch with a low-accuracy MKL cos (pytorch/pytorch#188792), so six
    processes all agreeing would then happen about one time in ten. The run's copy pins the scoring route this
    process measures: measured in each process, it can differ on a loaded machine."""
    run = run_with_measured_route(trained_run.run_dir, tmp_path)
    corpus = tmp_path / "corpus.csv"
    corpus_frame(40).to_csv(corpus, index=False)
    digests = []
    for _ in range(3):  # two at a time: concurrent processes make the thread timing less regular
        pair = [subprocess.Popen([sys.executable, "-c", FIRST_BATCH_SCORES, str(run), str(corpus)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
        digests += [process.communicate(timeout=300)[0].strip() for process in pair]
    assert all(digests) and len(set(digests)) == 1, digests


def test_a_resumed_prediction_keeps_the_scoring_route_its_first_attempt_measured(trained_run, tmp_path,
                                                                                 monkeypatch):
    """Whether the linear layers go through oneDNN (and whether the bf16 cascade runs) is measured per process; a
    resumed attempt whose own measurement chooses otherwise still scores the way the first attempt did."""
    import framesft.corpus as corpus_module
    import framesft.inference as inference
    import framesft.precision as precision

    run = trained_run.run_dir
    corpus = tmp_path / "corpus.csv"
    corpus_frame(24).to_csv(corpus, index=False)
    routed = []
    real_route = inference.use_onednn_linears
    monkeypatch.setattr(inference, "use_onednn_linears", lambda model: routed.append(real_route(model)))
    real_write_part = corpus_module.write_part

    def crash_after_two_parts(parts, index, table):
        if len(list(parts.glob("part-*.parquet"))) == 2:
            raise KeyboardInterrupt
        real_write_part(parts, index, table)

    monkeypatch.setattr(precision, "cpu_prefers_onednn_fp32", lambda: True)  # the first attempt measures oneDNN
    monkeypatch.setattr(corpus_module, "write_part", crash_after_two_parts)
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_corpus(run, corpus, out, chunk_rows=8, show_progress=False)
    route = json.loads((tmp_path / "out.csv.parts" / "scoring_route.json").read_text())
    assert route["onednn_linears"] is True and len(routed) == 1 and routed[0] > 0

    monkeypatch.setattr(precision, "cpu_prefers_onednn_fp32", lambda: False)  # the resumed one would measure ATen
    monkeypatch.setattr(corpus_module, "write_part", real_write_part)
    assert predict_corpus(run, corpus, out, chunk_rows=8, show_progress=False) == 24
    assert len(routed) == 2  # oneDNN again, as recorded
    predict_corpus(run, corpus, tmp_path / "fresh.csv", chunk_rows=8, show_progress=False)
    assert len(routed) == 2  # a new prediction measures for itself
    assert not list(tmp_path.glob("*.parts"))
    fresh, resumed = (pd.read_csv(tmp_path / name, keep_default_na=False) for name in ("fresh.csv", "out.csv"))
    assert resumed["predicted"].tolist() == fresh["predicted"].tolist()


def test_resume_refuses_parts_from_a_different_input(trained_run, tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus_frame(20).to_csv(corpus, index=False)
    parts = tmp_path / "out.csv.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"source": {"input": "other.csv"}}))
    with pytest.raises(FrameSFTError, match="different prediction"):
        predict_corpus(trained_run.run_dir, corpus, tmp_path / "out.csv", show_progress=False)


def test_missing_text_column_is_a_clear_error(trained_run, tmp_path):
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"id": [1], "text": ["hello"]}).to_csv(corpus, index=False)
    done = cli("predict", str(trained_run.run_dir), "--input", str(corpus), "--output", str(tmp_path / "o.csv"))
    assert done.returncode == 2
    assert "column 'chunk_text' not found" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.csv").exists()


def test_exported_merged_model_scores_like_the_adapter(trained_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from framesft.inference import load_classifier
    from framesft.scoring import LabelScorer

    done = cli("export", str(trained_run.run_dir), "--output", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)  # plain transformers
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    classifier = load_classifier(trained_run.run_dir)
    texts = corpus_frame(12)["chunk_text"].tolist()
    adapter_scores = classifier.scorer().score_texts(texts).scores
    merged_scores = LabelScorer(merged, classifier.method.prompt).score_texts(texts).scores
    np.testing.assert_allclose(merged_scores, adapter_scores, atol=1e-4)
    assert json.loads((tmp_path / "merged" / "label_map.json").read_text())["label2id"]


def test_keep_columns_travel_with_every_input_format_and_a_resumed_run(trained_run, tmp_path, monkeypatch):
    import framesft.corpus as corpus_module

    frame = corpus_frame(30).assign(date=[f"2019-0{1 + i % 9}-15" for i in range(30)],
                                    party=["Lab", "Con", "None"] * 10)
    inputs = write_every_format(frame, tmp_path)
    for name, path in inputs.items():
        out = tmp_path / f"out_{name}.csv"
        predict_corpus(trained_run.run_dir, path, out, id_column="chunk_id", chunk_rows=8, show_progress=False,
                       keep_columns=["date", "party"], query="chunks" if name == "duckdb" else None)
        result = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert list(result.columns[:4]) == ["chunk_id", "date", "party", "predicted"], name
        assert result["date"].tolist() == frame["date"].tolist() and result["party"].tolist() == frame["party"].tolist()

    # a run that dies after two chunks, resumed: every row once, with its columns
    real_write_part, written = corpus_module.write_part, []

    def crash_after_two_parts(parts, index, table):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(index)
        real_write_part(parts, index, table)

    monkeypatch.setattr(corpus_module, "write_part", crash_after_two_parts)
    out = tmp_path / "resumed.parquet"
    with pytest.raises(KeyboardInterrupt):
        predict_corpus(trained_run.run_dir, inputs["csv"], out, id_column="chunk_id", chunk_rows=8,
                       show_progress=False, keep_columns=["party"])
    monkeypatch.setattr(corpus_module, "write_part", real_write_part)
    with pytest.raises(FrameSFTError, match="different prediction"):  # other columns: parts are not mixed
        predict_corpus(trained_run.run_dir, inputs["csv"], out, id_column="chunk_id", chunk_rows=8,
                       show_progress=False, keep_columns=["date"])
    assert predict_corpus(trained_run.run_dir, inputs["csv"], out, id_column="chunk_id", chunk_rows=8,
                          show_progress=False, keep_columns=["party"]) == 30
    result = pd.read_parquet(out)
    assert result["chunk_id"].tolist() == frame["chunk_id"].tolist()
    assert result["party"].tolist() == frame["party"].tolist()  # "None" stays a party name, not a missing value

    with pytest.raises(FrameSFTError, match="column 'speaker' not found"):
        predict_corpus(trained_run.run_dir, inputs["csv"], tmp_path / "x.csv", keep_columns=["speaker"],
                       show_progress=False)


def test_predict_reads_a_german_excel_export_with_encoding_and_delimiter(trained_run, tmp_path):
    corpus = tmp_path / "export.csv"
    frame = corpus_frame(6)
    frame.loc[0, "chunk_text"] = "Die Bürger in Köln fürchten die Zölle."
    corpus.write_bytes(frame.to_csv(index=False, sep=";", lineterminator="\r\n").encode("cp1252"))
    failed = cli("predict", str(trained_run.run_dir), "--input", str(corpus), "--output", str(tmp_path / "a.csv"))
    assert failed.returncode == 2 and "--encoding cp1252" in failed.stderr
    done = cli("predict", str(trained_run.run_dir), "--input", str(corpus), "--output", str(tmp_path / "b.csv"),
               "--encoding", "cp1252", "--delimiter", ";", "--id-column", "chunk_id")
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "b.csv")["chunk_id"].tolist() == frame["chunk_id"].tolist()


def test_each_chunk_belongs_to_one_process_of_one_shard():
    from framesft.corpus import Shard

    for count, processes in ((1, 1), (3, 1), (4, 2)):
        owners = [[(k, p) for k in range(count) for p in range(processes)
                   if Shard(k, count).owns(chunk, p, processes)] for chunk in range(50)]
        assert all(len(o) == 1 for o in owners)
        assert all(o[0][0] == chunk % count for chunk, o in enumerate(owners))  # chunk i is shard i mod N's
    assert Shard.parse("7/8") == Shard(7, 8)
    for bad in ("8/8", "1", "a/b", "0/0", "-1/4"):
        with pytest.raises(FrameSFTError, match="--shard"):
            Shard.parse(bad)


def test_racing_writers_of_a_shared_record_all_read_the_first(tmp_path):
    from framesft.files import write_json_once

    assert write_json_once(tmp_path / "route.json", {"bf16_cascade": True}) == {"bf16_cascade": True}
    assert write_json_once(tmp_path / "route.json", {"bf16_cascade": False}) == {"bf16_cascade": True}
    assert [p.name for p in tmp_path.iterdir()] == ["route.json"]  # no temporary file left


def test_shards_as_independent_jobs_give_exactly_once_output_after_a_kill(trained_run, tmp_path):
    """Three shards as three separate processes (no torchrun between them): shard 1 killed part-way, shards 0 and 2
    run side by side and finish without merging, --merge refuses naming shard 1, and shard 1's rerun merges."""
    corpus = tmp_path / "corpus.csv"
    corpus_frame(1200).to_csv(corpus, index=False)
    run = run_with_measured_route(trained_run.run_dir, tmp_path)
    args = ["predict", str(run), "--input", str(corpus), "--id-column", "chunk_id", "--chunk-rows", "20"]
    reference_out = tmp_path / "reference.csv"
    assert cli(*args, "--output", str(reference_out)).returncode == 0

    out = tmp_path / "sharded.parquet"
    parts = tmp_path / "sharded.parquet.parts"
    shard = [*args, "--output", str(out), "--shard"]
    killed = subprocess.Popen([sys.executable, "-m", "framesft.cli", "--quiet", *shard, "1/3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def shard_1_parts():
        return [p for p in parts.glob("part-*.parquet") if int(p.stem.split("-")[1]) % 3 == 1]

    deadline = time.time() + 300
    while time.time() < deadline and len(shard_1_parts()) < 2:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 2 <= len(shard_1_parts()) < 20, "the kill must land part-way"

    others = [subprocess.Popen([sys.executable, "-m", "framesft.cli", "--quiet", *shard, k], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for k in ("0/3", "2/3")]
    for process in others:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        assert "the last shard to finish merges" in stderr
    assert not out.exists() and sorted(p.name for p in parts.glob("shard-*")) == ["shard-0-of-3.json",
                                                                                  "shard-2-of-3.json"]
    refused = cli(*args, "--output", str(out), "--merge")
    assert refused.returncode != 0 and "shards [1] of 3 have not finished" in refused.stderr
    assert not out.exists()

    rerun = cli(*shard, "1/3")
    assert rerun.returncode == 0, rerun.stderr
    assert "wrote 1200 predictions" in rerun.stderr
    result = pd.read_parquet(out)
    reference = pd.read_csv(reference_out, keep_default_na=False)
    assert result["chunk_id"].is_unique and result["chunk_id"].tolist() == reference["chunk_id"].tolist()
    assert result["predicted"].tolist() == reference["predicted"].tolist()
    np.testing.assert_allclose(result["margin"], reference["margin"], atol=1e-5)
    assert not parts.exists()
    assert json.loads((tmp_path / "sharded.parquet.framesft.json").read_text())["shards"] == 3
