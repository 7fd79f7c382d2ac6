"""The bf16 margin cascade (src/framesft/cascade.py) against the fp32 scorer, on real passages, in one session.

    .venv/bin/python benchmarks/scoring_cascade.py --run benchmarks/work/accuracy/full/default-s42 --rows 300
    taskset -c 0,1 .venv/bin/python benchmarks/scoring_cascade.py --run RUN_A --run RUN_B   # on a larger machine

For each trained run: the run loaded once (fp32 weights, the adapter merged, as `framesft evaluate` loads it) and a
bf16 copy of it; the first --rows passages of dev_data.csv then train_data.csv are scored three ways, interleaved
over --rounds rounds so that a machine that slows down slows all three: fp32 alone (the reference), bf16 alone,
and the cascade (a new one per round, so each round measures its probe again). Reported: passages/s of each and
the cascade's speed-up over fp32, labels identical to fp32 (bf16 alone and cascade), the largest difference of a
probability, the share rescored in fp32 and the bound. The CPU's matmul roofs (fp32, bf16) are measured in the
same session: the figures of one CPU kind are never read as another's.

On a CPU without native bf16 (no AVX512-BF16, no AMX) torch emulates bf16 hundreds of times slower than fp32:
there the compute plan never cascades, and the script records the roofs and the plan only (--force scores
anyway, for a handful of rows). Appends to benchmarks/results/scoring_cascade.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
RESULTS = REPO / "benchmarks" / "results" / "scoring_cascade.json"


def real_passages(rows: int) -> list[str]:
    tables = [pd.read_csv(SHARED / name, dtype=str, keep_default_na=False) for name in ("dev_data.csv",
                                                                                        "train_data.csv")]
    return pd.concat(tables)["chunk_text"].drop_duplicates().tolist()[:rows]


def timed(score, prompts):
    start = time.perf_counter()
    scores = score(prompts)
    return scores, time.perf_counter() - start


def measure_run(run: Path, texts: list[str], rounds: int) -> dict:
    from framesft.cascade import MarginCascade, bf16_copy
    from framesft.inference import load_classifier

    classifier = load_classifier(run)
    if classifier.fast_model is None:  # the plan did not cascade here: make the bf16 copy ourselves
        classifier.fast_model = bf16_copy(classifier.model)
    method = classifier.method
    exact, fast = method.scorer(classifier.model), method.scorer(classifier.fast_model)
    prompts = [method.encode_input(text) for text in texts]
    cascades: list[MarginCascade] = []

    def through_a_new_cascade(prompts_):
        cascades.append(MarginCascade(exact, fast, method.encode_input))
        return cascades[-1].score_prompts(prompts_)

    ways = {"fp32": exact.score_prompts, "bf16": fast.score_prompts, "cascade": through_a_new_cascade}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    scores = {}
    for round_ in range(rounds):
        for way in (ways if round_ % 2 == 0 else reversed(list(ways))):
            scores[way], elapsed = timed(ways[way], prompts)
            seconds[way].append(elapsed)
            print(f"{run.name} round {round_ + 1} {way}: {len(prompts) / elapsed:.2f} passages/s", flush=True)
    reference = classifier.calibrated(scores["fp32"])
    rate = {way: len(prompts) / statistics.median(values) for way, values in seconds.items()}
    result = {"run": str(run), "passages": len(prompts), "rounds": rounds,
              "passages_per_second": {way: round(value, 3) for way, value in rate.items()},
              "cascade_speedup_over_fp32": round(rate["cascade"] / rate["fp32"], 3),
              "bf16_speedup_over_fp32": round(rate["bf16"] / rate["fp32"], 3)}
    for way in ("bf16", "cascade"):
        got = classifier.calibrated(scores[way])
        same = sum(a == b for a, b in zip(got.predictions, reference.predictions))
        result[f"{way}_same_labels"] = f"{same}/{len(prompts)}"
        result[f"{way}_largest_probability_difference"] = round(
            float(np.abs(got.probabilities - reference.probabilities).max()), 4)
    result["cascade"] = cascades[-1].tally.as_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", required=True, help="a trained run folder (repeat)")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="score even where bf16 is emulated (very slow)")
    args = parser.parse_args()

    from framesft.precision import bf16_pays_for_cascade, cpu_facts, cpu_prefers_onednn_fp32

    cpu = cpu_facts(measured=True)
    entry = {"date": time.strftime("%Y-%m-%d"),
             "cpu": {"model": cpu.model, "kind": cpu.kind, "fp32_gflops": cpu.fp32_gflops,
                     "bf16_gflops": cpu.bf16_gflops},
             "plan_cascades_here": bf16_pays_for_cascade(cpu_prefers_onednn_fp32())}
    print(f"CPU {cpu.model} ({cpu.kind}): matmul fp32 {cpu.fp32_gflops} / bf16 {cpu.bf16_gflops} GFLOP/s; "
          f"the plan {'cascades' if entry['plan_cascades_here'] else 'stays fp32'} here", flush=True)
    if cpu.kind == "no native bf16" and not args.force:
        entry["runs"] = []
        entry["note"] = "no native bf16: the plan stays fp32 and the cascade was not timed (bf16 is emulated)"
    else:
        texts = real_passages(args.rows)
        entry["runs"] = [measure_run(run, texts, args.rounds) for run in args.run]
    document = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {
        "benchmark": __doc__.split("\n\n")[0].strip(), "entries": []}
    document["entries"].append(entry)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    for run in entry["runs"]:
        print(f"{run['run']}: fp32 {run['passages_per_second']['fp32']:.2f}, cascade "
              f"{run['passages_per_second']['cascade']:.2f} passages/s ({run['cascade_speedup_over_fp32']:.2f}x); "
              f"same labels {run['cascade_same_labels']} (bf16 alone {run['bf16_same_labels']}); rescored "
              f"{run['cascade']['rescored']} of {run['cascade']['fast_passages']}")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
