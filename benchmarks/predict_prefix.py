"""`framesft predict` end to end with the shared prompt prefix computed once, against the same run without it
and against the scorer before issue 20 (whole prompts, fp32 alone), on the same real passages, in one session.

    .venv/bin/python benchmarks/predict_prefix.py --run benchmarks/work/accuracy/full/default-s42 --rows 300

Copies of the run's folder (adapter, config, labels, calibration) differ in their evaluation keys (VARIANTS):
fp32_whole_prompts (`reuse_prompt_prefix: false`, `bf16_cascade: false`, `onednn_linears: false`: the scorer
before issue 20), whole_prompts (`reuse_prompt_prefix: false`, the rest as the compute plan decides),
shared_prefix_aten (the prompt's shared instructions and label list run once per scoring call and every batch
continues from their keys and values; ATen's fp32 linear layers, the cascade as the plan decides against them: the
default until 2026-12-01 evening) and shared_prefix (today's default: the shared prefix, oneDNN's fp32 linear
layers and the cascade as the plan decides). `--variants` picks some. Each copy labels the
same corpus (the first --rows passages of dev_data.csv, cycled with unique ids past its 150) with `framesft
predict` in a new process, as a user runs it: start-up, model loading, reading, scoring and writing all in the
wall time. They are interleaved over --rounds rounds, so a machine that slows down in between slows all; the
figures are ratios of the medians. Labels are compared with fp32_whole_prompts'. Each round also times each copy
predicting one passage: the start-up (imports, compute plan, model, adapter, merge, the cascade's bf16 copy) that
a short corpus pays in full. Records each copy's compute plan, the CPU (model, flags, matmul roofs measured in the
same session) and appends to benchmarks/results/predict_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "predict_prefix.json"
RUN_FILES = ("config.yaml", "label_map.json", "adapter", "calibration.json")


# The copies of the run: evaluation settings that differ. "fp32_whole_prompts": the scorer before issue 20 (every
# prompt whole, ATen's fp32 alone); "whole_prompts": the compute plan's choices without the shared prefix;
# "shared_prefix_aten": the default until oneDNN's fp32 route (the plan's cascade against ATen's fp32 rate);
# "shared_prefix": today's default, everything as the plan decides.
VARIANTS = {"fp32_whole_prompts": {"reuse_prompt_prefix": False, "bf16_cascade": False, "onednn_linears": False},
            "whole_prompts": {"reuse_prompt_prefix": False, "bf16_cascade": None, "onednn_linears": None},
            "shared_prefix_aten": {"reuse_prompt_prefix": True, "bf16_cascade": None, "onednn_linears": False},
            "shared_prefix": {"reuse_prompt_prefix": True, "bf16_cascade": None, "onednn_linears": None}}
BASELINE = "fp32_whole_prompts"


def copy_run(run: Path, folder: Path, evaluation: dict) -> Path:
    from framesft.files import copy_entries

    folder.mkdir(parents=True)
    copy_entries(run, folder, RUN_FILES)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.setdefault("evaluation", {}).update(evaluation)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def predict(run: Path, corpus: Path, output: Path) -> float:
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "framesft.cli", "--quiet", "predict", str(run), "--input", str(corpus),
                    "--output", str(output), "--id-column", "chunk_id"], check=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help=f"the copies to run ({BASELINE} always runs: the labels are compared with its labels)")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in VARIANTS if name in args.variants or name == BASELINE}

    from framesft.precision import cpu_facts, resolve_plan
    from framesft.runfolder import read_run_config

    texts = pd.read_csv(SHARED / "dev_data.csv", dtype=str, keep_default_na=False)["chunk_text"].tolist()
    work_folder = tempfile.TemporaryDirectory(prefix="framesft-predict-prefix-")
    work = Path(work_folder.name)
    corpus = work / "corpus.parquet"
    pd.DataFrame({"chunk_id": [f"c{i}" for i in range(args.rows)],
                  "chunk_text": [texts[i % len(texts)] for i in range(args.rows)]}).to_parquet(corpus)
    one_passage = work / "one.parquet"
    pd.DataFrame({"chunk_id": ["c0"], "chunk_text": texts[:1]}).to_parquet(one_passage)
    runs = {name: copy_run(args.run, work / f"run-{name}", evaluation) for name, evaluation in variants.items()}
    plans = {name: resolve_plan(read_run_config(run)).line() for name, run in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    startup: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            seconds[name].append(predict(runs[name], corpus, work / f"out-{name}.parquet"))
            startup[name].append(predict(runs[name], one_passage, work / f"one-{name}.parquet"))
            print(f"round {round_ + 1}, {name}: {args.rows / seconds[name][-1]:.2f} passages/s, "
                  f"{startup[name][-1]:.1f} s for one passage", flush=True)
    labels = {name: pd.read_parquet(work / f"out-{name}.parquet")["predicted"].tolist() for name in runs}
    same = {name: sum(a == b for a, b in zip(labels[BASELINE], labels[name])) for name in runs}
    rate = {name: args.rows / statistics.median(values) for name, values in seconds.items()}
    cpu = cpu_facts(measured=True, linear_routes=True)
    result = {
        "run": str(args.run), "rows": args.rows, "rounds": args.rounds,
        "passages_per_second": {name: round(value, 3) for name, value in rate.items()},
        "speedup_over_fp32_whole_prompts": {name: round(value / rate[BASELINE], 3) for name, value in rate.items()},
        "same_labels_as_fp32_whole_prompts": {name: f"{n}/{args.rows}" for name, n in same.items()},
        "wall_seconds": {name: [round(s, 1) for s in values] for name, values in seconds.items()},
        "one_passage_seconds": {name: [round(s, 1) for s in values] for name, values in startup.items()},
        "plans": plans,
        "cpu": {"model": cpu.model, "kind": cpu.kind, "fp32_gflops": cpu.fp32_gflops, "bf16_gflops": cpu.bf16_gflops,
                "fp32_linear_gflops": cpu.fp32_linear_gflops},
        "date": time.strftime("%Y-%m-%d"),
    }
    document = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {
        "benchmark": __doc__.split("\n\n")[0].strip(), "entries": []}
    document["entries"].append(result)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print("predict end to end: " + ", ".join(
        f"{name} {rate[name]:.2f} passages/s ({rate[name] / rate[BASELINE]:.2f}x, labels {same[name]}/{args.rows})"
        for name in runs) + f"; CPU {cpu.model} ({cpu.kind})")


if __name__ == "__main__":
    main()
