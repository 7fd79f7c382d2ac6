"""`framesft predict` end to end with the shared prompt prefix computed once, against the same run without it
(the scorer before issue 20), on the same real passages, in the same session.

    .venv/bin/python benchmarks/predict_prefix.py --run benchmarks/work/accuracy/full/default-s42 --rows 300

Two copies of the run's folder (adapter, config, labels, calibration) differ in one key,
`evaluation.reuse_prompt_prefix` (true: the prompt's shared instructions and label list are run once per scoring
call and every batch continues from their keys and values; false: every prompt whole). Each copy labels the same
corpus (the first --rows passages of dev_data.csv, cycled with unique ids past its 150) with `framesft predict` in
a new process, as a user runs it: start-up, model loading, reading, scoring and writing all in the wall time. The
two are interleaved over --rounds rounds, so a machine that slows down in between slows both; the figure is the
ratio of the medians. Predicted labels must agree. Records the CPU (model, flags, matmul roofs measured in the
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


def copy_run(run: Path, folder: Path, reuse: bool) -> Path:
    from framesft.files import copy_entries

    folder.mkdir(parents=True)
    copy_entries(run, folder, RUN_FILES)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.setdefault("evaluation", {})["reuse_prompt_prefix"] = reuse
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
    args = parser.parse_args()

    from framesft.precision import cpu_facts

    texts = pd.read_csv(SHARED / "dev_data.csv", dtype=str, keep_default_na=False)["chunk_text"].tolist()
    work_folder = tempfile.TemporaryDirectory(prefix="framesft-predict-prefix-")
    work = Path(work_folder.name)
    corpus = work / "corpus.parquet"
    pd.DataFrame({"chunk_id": [f"c{i}" for i in range(args.rows)],
                  "chunk_text": [texts[i % len(texts)] for i in range(args.rows)]}).to_parquet(corpus)
    runs = {reuse: copy_run(args.run, work / f"run-reuse-{reuse}", reuse) for reuse in (False, True)}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for reuse in (False, True) if round_ % 2 == 0 else (True, False):
            seconds[reuse].append(predict(runs[reuse], corpus, work / f"out-{reuse}.parquet"))
            print(f"round {round_ + 1}, shared prefix {'once' if reuse else 'per prompt'}: "
                  f"{args.rows / seconds[reuse][-1]:.2f} passages/s", flush=True)
    labels = {reuse: pd.read_parquet(work / f"out-{reuse}.parquet")["predicted"].tolist() for reuse in runs}
    same = sum(a == b for a, b in zip(labels[False], labels[True]))
    rate = {reuse: args.rows / statistics.median(values) for reuse, values in seconds.items()}
    cpu = cpu_facts(measured=True)
    result = {
        "run": str(args.run), "rows": args.rows, "rounds": args.rounds,
        "passages_per_second_whole_prompts": round(rate[False], 3),
        "passages_per_second_shared_prefix": round(rate[True], 3),
        "speedup": round(rate[True] / rate[False], 3),
        "same_labels": f"{same}/{args.rows}",
        "wall_seconds": {"whole_prompts": [round(s, 1) for s in seconds[False]],
                         "shared_prefix": [round(s, 1) for s in seconds[True]]},
        "cpu": {"model": cpu.model, "kind": cpu.kind, "fp32_gflops": cpu.fp32_gflops, "bf16_gflops": cpu.bf16_gflops},
        "date": time.strftime("%Y-%m-%d"),
    }
    document = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {
        "benchmark": __doc__.split("\n\n")[0].strip(), "entries": []}
    document["entries"].append(result)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"predict end to end: {rate[False]:.2f} -> {rate[True]:.2f} passages/s ({result['speedup']:.2f}x), "
          f"same labels {same}/{args.rows}; CPU {cpu.model}")


if __name__ == "__main__":
    main()
