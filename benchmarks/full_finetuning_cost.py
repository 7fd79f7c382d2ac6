"""What full fine-tuning (training.use_lora: false) costs against LoRA on the shipped Gemma recipe: a short screen
of each, in the same run, before any full-budget accuracy run is spent on it.

    .venv/bin/python benchmarks/full_finetuning_cost.py --steps 4

configs/gemma3-brexit.yaml (real training passages, batch 8) trains --steps optimizer steps three times, each in
its own process through `framesft train`: LoRA, full fine-tuning, LoRA again (this VM's speed drifts over minutes,
so full fine-tuning is compared with the mean of the LoRA runs around it). No evaluation falls inside the steps
(training.eval_steps above them), so a run's train_seconds are its steps alone; afterwards only a 1% validation
split is scored (data.validation_fraction 0.01, data.test_csv null), to keep the screen short. The matmul roof is
measured at the start and the end. Reports seconds per step, the full-to-LoRA ratio, trainable parameters, each
process's peak RSS, and the projected minutes of the accuracy recipe `originals-full-1ep` (and of two epochs; 184
steps each). Writes benchmarks/results/full_finetuning_cost.json (--output to change).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roofline import measure_roof

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "gemma3-brexit.yaml"
RESULTS = REPO / "benchmarks" / "results" / "full_finetuning_cost.json"
STEPS_PER_EPOCH = 184  # the shipped recipe: 1,470 training rows at batch 8
FULL = ["training.use_lora=false", "training.learning_rate=5e-5"]
RUNS = [("lora", []), ("full", FULL), ("lora", [])]


def child_peak_rss_mb(command: list[str]) -> float:
    """Run a command under a Python parent that reports the command's peak RSS (GNU time is not always installed)."""
    probe = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
             "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
             "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", probe, *command], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return peak / 1024


def run_steps(overrides: list[str], steps: int, run_dir: Path) -> dict:
    command = [sys.executable, "-m", "framesft.cli", "--quiet", "train", str(CONFIG), "--run-dir", str(run_dir),
               "--overwrite", "--set", f"training.max_steps={steps}", f"training.eval_steps={steps + 1000}",
               "data.test_csv=null", "data.validation_fraction=0.01", "training.early_stopping_patience=null", *overrides]
    start = time.perf_counter()
    peak_mb = child_peak_rss_mb(command)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    return {"overrides": overrides, "train_seconds": summary["train_seconds"],
            "seconds_per_step": round(summary["train_seconds"] / summary["global_step"], 2),
            "global_step": summary["global_step"], "trainable_parameters": summary["trainable_parameters"],
            "peak_rss_mb": round(peak_mb), "process_seconds": round(time.perf_counter() - start, 1),
            "compute_plan": summary["compute_plan"]["line"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    roof_start = measure_roof()
    runs = []
    with tempfile.TemporaryDirectory(prefix="full-ft-cost-") as work:
        for index, (name, overrides) in enumerate(RUNS):
            print(f"[{index + 1}/{len(RUNS)}] {name}: {args.steps} steps ...", flush=True)
            runs.append({"variant": name, **run_steps(overrides, args.steps, Path(work) / f"{index}-{name}")})
            print(f"    {runs[-1]['seconds_per_step']} s/step, peak RSS {runs[-1]['peak_rss_mb']} MB", flush=True)
    roof_end = measure_roof()

    lora = [r["seconds_per_step"] for r in runs if r["variant"] == "lora"]
    full = next(r for r in runs if r["variant"] == "full")
    lora_mean = sum(lora) / len(lora)
    ratio = full["seconds_per_step"] / lora_mean
    result = {
        "benchmark": "full fine-tuning vs LoRA on configs/gemma3-brexit.yaml, a short screen (LoRA, full, LoRA)",
        "command": f".venv/bin/python benchmarks/full_finetuning_cost.py --steps {args.steps}",
        "date": time.strftime("%Y-%m-%d"),
        "roof_start": roof_start, "roof_end": roof_end,
        "runs": runs,
        "lora_seconds_per_step_mean": round(lora_mean, 2),
        "full_to_lora_time_ratio": round(ratio, 2),
        "full_to_lora_peak_rss_ratio": round(full["peak_rss_mb"] / max(r["peak_rss_mb"] for r in runs
                                                                      if r["variant"] == "lora"), 2),
        "projected_minutes_originals_full": {
            f"{epochs} epoch(s)": round(epochs * STEPS_PER_EPOCH * full["seconds_per_step"] / 60, 1)
            for epochs in (1, 2)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"full / LoRA time per step {ratio:.2f}x; projected "
          f"{result['projected_minutes_originals_full']}; written to {args.output}")


if __name__ == "__main__":
    main()
