"""Peak memory of corpus prediction at 10k and 100k rows: streaming means the larger run stays flat.

    .venv/bin/python benchmarks/predict_memory.py

Uses a tiny randomly initialised Llama (SmolLM2 tokenizer) trained for one step, so that 100k rows take
minutes on a CPU: the point is the memory of reading, scoring and writing in chunks, not the model. The corpus
repeats the bundled sample passages with a unique suffix. Each size runs in its own process; peak RSS is that
process's ru_maxrss. Writes benchmarks/results/predict_memory.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "predict_memory.json"
SIZES = [10_000, 100_000]

CHILD = """
import resource, sys, time
from framesft.corpus import predict_corpus
start = time.perf_counter()
n = predict_corpus(sys.argv[1], sys.argv[2], sys.argv[3], id_column="chunk_id", chunk_rows=1000, show_progress=False)
print("RESULT", n, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_tiny_run(work: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from framesft.config import EMBEDDED_DEFAULT_MODEL, load_config
    from framesft.modeling import load_tokenizer, resolve_model_path
    from framesft.training import train

    tokenizer = load_tokenizer(resolve_model_path(EMBEDDED_DEFAULT_MODEL), False)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(work / "tiny")
    tokenizer.save_pretrained(work / "tiny")
    run_config = load_config(None, [f"model.base_model={work / 'tiny'}", "data.data_dir=framesft:sample_data",
                                    "training.max_steps=1", "training.warmup_steps=0", "data.max_length=256",
                                    "data.validation_fraction=0.2", "tracking.report_to=none"])
    return train(run_config, work / "run", show_progress=False).run_dir


def main() -> None:
    import pandas as pd

    work = Path(tempfile.mkdtemp(prefix="framesft-memory-"))
    run_dir = make_tiny_run(work)
    texts = pd.read_csv(REPO / "src/framesft/resources/sample_data/test.csv")["chunk_text"].tolist()
    results = {}
    for size in SIZES:
        corpus = work / f"corpus_{size}.parquet"
        pd.DataFrame({"chunk_id": [f"c{i}" for i in range(size)],
                      "chunk_text": [f"{texts[i % len(texts)]} ({i})" for i in range(size)]}).to_parquet(corpus)
        output = work / f"out_{size}.parquet"
        done = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(corpus), str(output)],
                              capture_output=True, text=True)
        line = [l for l in done.stdout.splitlines() if l.startswith("RESULT")]
        if done.returncode != 0 or not line:
            raise SystemExit(done.stderr[-3000:])
        _, rows, seconds, peak = line[0].split()
        out = pd.read_parquet(output, columns=["chunk_id"])
        results[str(size)] = {"rows_written": int(rows), "unique_ids": int(out["chunk_id"].nunique()),
                              "seconds": round(float(seconds), 1),
                              "rows_per_second": round(int(rows) / float(seconds), 1),
                              "peak_rss_mib": round(float(peak), 1)}
        print(size, results[str(size)])
    report = {
        "benchmark": "corpus prediction peak memory (streaming)",
        "model": "tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer",
        "chunk_rows": 1000,
        "sizes": results,
        "peak_rss_ratio_100k_over_10k": round(results["100000"]["peak_rss_mib"] / results["10000"]["peak_rss_mib"], 3),
        "target": "<= 1.2",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
