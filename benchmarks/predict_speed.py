"""Corpus prediction end to end against the scorer alone, on the same real passages, in the same run.

    .venv/bin/python benchmarks/predict_speed.py --run runs/demo --rows 10000 --scorer-rows 1000

1. scorer:  the run's classifier (as `load_classifier` gives it) scoring the passages in memory (the first
            --scorer-rows of them when given: a rate needs fewer rows than the end-to-end run, which must
            amortise its start-up as a user's large corpus does);
2. predict: `framesft predict RUN --input corpus.parquet --output out.parquet` as a user runs it: a new process
            that imports framesft, loads the model, reads the corpus in chunks, scores, writes each chunk and
            merges them. Its passages/s is rows over the whole wall-clock time, start-up included.
The corpus is the first --rows chunks of train_data.csv (../shared/data/brexit), cycled with a unique id when
--rows exceeds the file. `runs/demo` is what `make demo` trains. Writes benchmarks/results/predict_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "predict_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="trained run (default: runs/demo)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--scorer-rows", type=int, help="rows the scorer alone scores (default: --rows)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    args = parser.parse_args()
    if not (args.run / "adapter").is_dir():
        raise SystemExit(f"{args.run} is not a trained run; `make demo` writes runs/demo")

    scorer_rows = min(args.scorer_rows or args.rows, args.rows)
    texts = pd.read_csv(SHARED / "train_data.csv", dtype=str, keep_default_na=False)["chunk_text"].tolist()
    corpus = pd.DataFrame({"chunk_id": [f"c{i}" for i in range(args.rows)],
                           "chunk_text": [texts[i % len(texts)] for i in range(args.rows)]})
    work_folder = tempfile.TemporaryDirectory(prefix="framesft-predict-speed-")  # removed when the run ends
    work = Path(work_folder.name)
    corpus.to_parquet(work / "corpus.parquet")

    from framesft.inference import load_classifier
    from framesft.runfolder import read_run_config

    start = time.perf_counter()
    classifier = load_classifier(args.run)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = classifier.score(corpus["chunk_text"].tolist()[:scorer_rows], show_progress=False)
    scorer_seconds = time.perf_counter() - start
    del classifier

    framesft = Path(sys.executable).with_name("framesft")
    start = time.perf_counter()
    done = subprocess.run([str(framesft), "predict", str(args.run), "--input", str(work / "corpus.parquet"),
                           "--output", str(work / "out.parquet"), "--id-column", "chunk_id"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    predict_seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    written = pd.read_parquet(work / "out.parquet")
    same = (written.set_index("chunk_id").loc[corpus["chunk_id"][:scorer_rows], "predicted"].to_numpy()
            == pd.Series(scores.predictions).to_numpy())

    scorer_rate = scorer_rows / scorer_seconds
    predict_rate = args.rows / predict_seconds
    report = {
        "benchmark": "framesft predict end to end vs the scorer alone",
        "command": f"benchmarks/predict_speed.py --run {args.run} --rows {args.rows} --scorer-rows {scorer_rows}"
                   + (f" --output {args.output}" if args.output != RESULTS else ""),
        "run": str(args.run),
        "base_model": read_run_config(args.run).model.base_model,
        "rows": args.rows,
        "mean_characters": {"corpus": round(corpus["chunk_text"].str.len().mean(), 1),
                            "scorer_rows": round(corpus["chunk_text"][:scorer_rows].str.len().mean(), 1)},
        "cores": os.cpu_count(),
        "model_load_seconds": round(load_seconds, 1),
        "scorer": {"rows": scorer_rows, "seconds": round(scorer_seconds, 1),
                   "passages_per_second": round(scorer_rate, 2)},
        "predict": {"seconds": round(predict_seconds, 1), "passages_per_second": round(predict_rate, 2),
                    "rows_written": len(written),
                    "predictions_identical_to_scorer": f"{int(same.sum())} of {scorer_rows}"},
        "predict_over_scorer": round(predict_rate / scorer_rate, 3),
        "target": "predict >= 0.9 of the scorer's passages/s",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
