"""The accuracy campaign's fixed protocol: train each recipe on train_data.csv in its own process, score it on
dev_data.csv, and compare it with the campaign's baseline (`default`) trained with the same seed.

    .venv/bin/python benchmarks/accuracy_experiments.py default epochs2 --seeds 42 43
    .venv/bin/python benchmarks/accuracy_experiments.py --list
    .venv/bin/python benchmarks/accuracy_experiments.py lr1e-4 --seeds 42 --max-steps 120   # a cheap screen

A recipe is a named set of `--set` overrides of the campaign's baseline (RECIPES below): configs/gemma3-brexit.yaml
as shipped until 2026-12-01 (all rows, 1 epoch), which is today's config with BASELINE's overrides, so that every
entry in the JSON keeps its meaning. Today's config is the recipe `originals-2ep`. For each recipe and
seed the script runs `framesft train` in a new process (run folder benchmarks/work/accuracy/<budget>/<recipe>-s<seed>;
an existing complete one is reused with --reuse; a recipe with pretraining, `tapt`, first runs `framesft pretrain`
over the original training passages into <run folder>-pretrained and starts SFT from it), reads the run's
predictions on dev_data.csv (its test split) and appends one entry to benchmarks/results/accuracy_experiments.json
with:
- dev F1 macro with its 95% bootstrap interval, accuracy, per-class F1, Krippendorff's alpha (model vs gold) with
  its interval;
- the paired bootstrap difference in F1 macro and McNemar's test against `default` at the same seed and budget,
  and against the shipped recipe `originals-2ep` (when those entries exist), as `framesft compare` computes them;
  a run trained over bf16 weights (the compute plan on CPUs where bf16 is fast) also against `originals-2ep-bf16`;
- training minutes, the CPU it ran on (model name, AMX/AVX512-BF16 flags, matmul roofs), the compute plan line,
  the command;
- the dev labels and calibrated probabilities, so that seeds can be pooled and ensembles scored from the JSON.
Every recipe tried is kept, helpful or not: entries are appended, never replaced.

`--summary` prints the table of all entries (per recipe: mean over seeds, and the paired differences); `--pooled
RECIPE [--against RECIPE2]` averages its paired gain over default (or RECIPE2) across the seeds both ran (one
bootstrap over the passages; RECIPE may be an ensemble of one-seed runs, by its name `ensemble:A+B+...`);
`--ensemble RECIPE` scores a recipe's seeds as one ensemble, `--ensemble A@43 B@43 C@43` runs of different
recipes, from the probabilities in the JSON (no training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from framesft.metrics import classification_metrics
from framesft.precision import cpu_prefers_bf16
from framesft.reliability import agreement
from framesft.statistics import bootstrap_intervals, paired_comparison, resample_indices, resampled_metrics

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "brexit"
CONFIG = REPO / "configs" / "gemma3-brexit.yaml"
# configs/gemma3-brexit.yaml -> the config it was when the campaign began, and every recipe's starting point
BASELINE = ["data.drop_near_duplicates=false", "training.num_epochs=1"]
SHIPPED = "originals-2ep"  # the recipe configs/gemma3-brexit.yaml is today: new entries are compared with it too
SHIPPED_BF16 = "originals-2ep-bf16"  # the same, trained over bf16 weights: entries trained so are compared with it
WORK = REPO / "benchmarks" / "work" / "accuracy"
RESULTS = REPO / "benchmarks" / "results" / "accuracy_experiments.json"
DEFAULT_SEEDS = (42, 43)  # 42 is the shipped config's seed


@dataclass(frozen=True)
class Recipe:
    description: str
    overrides: list[str] = field(default_factory=list)
    training_rows: str = "all"  # "all": train_data.csv as it is; "originals": one row per near-duplicate group
    pretrain_epochs: float = 0  # > 0: `framesft pretrain` over the originals' passages first, SFT starts from it
    # True: the recipe is about the compute plan that holds the frozen weights in bf16 (precision.cpu_prefers_bf16:
    # a CPU whose bf16 matmul measures faster than fp32, AMX or Zen 5); refused on other CPUs, where it would
    # silently train in fp32 and repeat another recipe
    needs_bf16_training: bool = False


# Fuller label definitions for the codebook-wording recipe: the shipped one-liners (configs/gemma3-brexit.yaml)
# spelled out after Neuman, Just & Crigler's descriptions of the five frames, with no cue taken from dev passages.
# Fixed (commit message) before the recipe was trained.
CODEBOOK = {
    "Conflict": "disagreement, dispute or competition between parties, factions, politicians, governments, nations "
                "or institutions: attacks, accusations, blame, winners and losers",
    "Moral Value": "an argument from principle or morality: duty, honesty, trust, fairness, democracy, moral or "
                   "religious tenets, and what is right or wrong to do",
    "Economic": "money and the economy: trade, tariffs, markets, businesses, jobs, wages, growth, investment, public "
                "spending, costs and financial gains or losses",
    "Powerlessness": "people, groups, regions, nations or Parliament lacking control, voice or influence: decisions "
                     "imposed by stronger forces, being ignored, excluded or left without a say",
    "Human Impact": "how individuals, families and communities are affected in their lives: personal stories, "
                    "health, safety, rights, hardship, fear and wellbeing",
    "None": "the procedure and business of the House (points of order, timetables, thanks, questions of process) "
            "or no clear frame",
}

# The shipped label order (configs/gemma3-brexit.yaml data.label2id).
LABEL_ORDER = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]

RECIPES = {
    "default": Recipe("the campaign's baseline: configs/gemma3-brexit.yaml as shipped until 2026-12-01 (all 3,006 "
                      "rows, 1 epoch, lr 2e-4, LoRA r 16, label definitions)"),
    "epochs2": Recipe("2 epochs", ["training.num_epochs=2"]),
    "lr1e-4": Recipe("learning rate 1e-4", ["training.learning_rate=1e-4"]),
    "lr4e-4": Recipe("learning rate 4e-4", ["training.learning_rate=4e-4"]),
    "rank32": Recipe("LoRA r 32, alpha 64", ["training.lora_r=32", "training.lora_alpha=64"]),
    "rank8": Recipe("LoRA r 8, alpha 16", ["training.lora_r=8", "training.lora_alpha=16"]),
    "cosine": Recipe("cosine schedule (default: linear)", ["training.lr_scheduler=cosine"]),
    "no-definitions": Recipe("prompt without the label definitions", ["prompt.label_definitions={}"]),
    "smoothing0.1": Recipe("label smoothing 0.1", ["training.label_smoothing=0.1"]),
    "originals": Recipe("one row per near-duplicate group (1,547 passages, the rewrites dropped)",
                        training_rows="originals"),
    # the rows data.drop_near_duplicates keeps (tests/test_data.py): configs/gemma3-brexit.yaml since 2026-12-01
    "originals-2ep": Recipe("one row per near-duplicate group, 2 epochs (about the default's cost)",
                            ["training.num_epochs=2"], training_rows="originals"),
    "originals-2ep-rank32": Recipe("originals-2ep with LoRA r 32, alpha 64",
                                   ["training.num_epochs=2", "training.lora_r=32", "training.lora_alpha=64"],
                                   training_rows="originals"),
    "originals-2ep-rank8": Recipe("originals-2ep with LoRA r 8, alpha 16",
                                  ["training.num_epochs=2", "training.lora_r=8", "training.lora_alpha=16"],
                                  training_rows="originals"),
    "originals-2ep-lr1e-4": Recipe("originals-2ep with learning rate 1e-4 (shipped: 2e-4)",
                                   ["training.num_epochs=2", "training.learning_rate=1e-4"],
                                   training_rows="originals"),
    "originals-3ep": Recipe("one row per near-duplicate group, 3 epochs (1.5x the shipped recipe's cost)",
                            ["training.num_epochs=3"], training_rows="originals"),
    "originals-full-1ep": Recipe("one row per near-duplicate group, full fine-tuning (every weight but the token "
                                 "embeddings, training.use_lora false), lr 5e-5, 1 epoch",
                                 ["training.use_lora=false", "training.learning_rate=5e-5", "training.num_epochs=1"],
                                 training_rows="originals"),
    "originals-2ep-bf16": Recipe("originals-2ep (the shipped recipe) as the compute plan trains it on a CPU whose bf16 "
                                 "matmul is faster than fp32: frozen weights in bf16 under bf16 autocast, LoRA "
                                 "weights fp32, scoring fp32 (bf16 margin cascade); issue 20 part 3",
                                 ["training.num_epochs=2"], training_rows="originals", needs_bf16_training=True),
    "originals-2ep-cosine": Recipe("originals-2ep with a cosine learning-rate schedule (shipped: linear)",
                                   ["training.num_epochs=2", "training.lr_scheduler=cosine"],
                                   training_rows="originals"),
    "originals-2ep-no-definitions": Recipe("originals-2ep with the prompt's label list but without the label "
                                           "definitions", ["training.num_epochs=2", "prompt.label_definitions={}"],
                                           training_rows="originals"),
    "originals-2ep-codebook": Recipe("originals-2ep with fuller label definitions (CODEBOOK: Neuman, Just & Crigler's "
                                     "frames spelled out, about twice the words of the shipped one-liners)",
                                     ["training.num_epochs=2", f"prompt.label_definitions={json.dumps(CODEBOOK)}"],
                                     training_rows="originals"),
    # The label order of the prompt's list (and of label2id): reversed, None first, Conflict last. Whether the
    # position of a label in the list moves the model's choices; adopted only if it wins over two seeds.
    "originals-2ep-labels-reversed": Recipe("originals-2ep with the prompt's label list in reverse order (None, "
                                            "Human Impact, Powerlessness, Economic, Moral Value, Conflict)",
                                            ["training.num_epochs=2", "data.label2id=" + json.dumps(
                                                {label: i for i, label in enumerate(reversed(LABEL_ORDER))})],
                                            training_rows="originals"),
    # LoRA on the attention projections only (q, k, v, o; shipped: attention and MLP), the issue's "target
    # modules": 1.5M trainable parameters against 3.8M, and the MLP, where the base model holds most of what it
    # knows, left as it was. Adopted only if it wins over two seeds.
    "originals-2ep-attention": Recipe("originals-2ep with LoRA on the attention projections only (q, k, v, o)",
                                      ["training.num_epochs=2", "training.lora_target_modules=" + json.dumps(
                                          ["q_proj", "k_proj", "v_proj", "o_proj"])],
                                      training_rows="originals"),
    # NEFTune (training.neftune_noise_alpha): noise on the input embeddings while training, a regulariser against
    # fitting the rewritten training passages. Gemma scales its embeddings by sqrt(640), so the paper's alpha 5
    # would be 0.6% of their spread (per-element std 1.03, measured) at the median training example of 297
    # tokens; alpha 80 makes it about a tenth (0.09-0.12 from the 10th to the 90th percentile of lengths).
    # Adopted only if it wins over two seeds.
    "originals-2ep-neftune80": Recipe("originals-2ep with NEFTune embedding noise, alpha 80 (about a tenth of "
                                      "Gemma's scaled embeddings' spread)",
                                      ["training.num_epochs=2", "training.neftune_noise_alpha=80"],
                                      training_rows="originals"),
    "originals-2ep-tapt0.3": Recipe("task-adaptive pretraining over 0.3 of an epoch of the 1,547 original training "
                                    "passages (labels unread), then originals-2ep from that adapter",
                                    ["training.num_epochs=2"], training_rows="originals", pretrain_epochs=0.3),
    "tapt": Recipe("task-adaptive pretraining: one causal-LM epoch over the 1,547 original training passages "
                   "(labels unread), then the default SFT from that adapter", pretrain_epochs=1),
}


def training_file(rows: str) -> Path:
    """train_data.csv, or a variant of it written under benchmarks/work (never into the repository)."""
    source = SHARED / "train_data.csv"
    if rows == "all":
        return source
    from framesft.checks import near_duplicate_groups

    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    if rows != "originals":
        raise ValueError(rows)
    # The data check's paraphrase groups (threshold 0.3): the first row of each group stands for it.
    table = table.assign(group=near_duplicate_groups(table["chunk_text"].tolist(), 0.3)).drop_duplicates("group")
    path = WORK / "data" / f"train_{rows}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.drop(columns="group").to_csv(path, index=False)
    return path


def cpu_facts() -> dict:
    """Which kind of CPU a result came from: figures from AMX and non-AMX machines are never mixed up."""
    from framesft.precision import cpu_supports_bf16, measure_matmul_gflops

    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
                 platform.processor())
    return {"model": model, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags,
            "fp32_matmul_gflops": round(max(measure_matmul_gflops(torch.float32) for _ in range(3)), 1),
            # measured only where bf16 is native: emulated, it takes seconds and says nothing
            "bf16_matmul_gflops": (round(max(measure_matmul_gflops(torch.bfloat16) for _ in range(3)), 1)
                                   if cpu_supports_bf16() else None)}


def run_folder(recipe: str, seed: int, budget: str) -> Path:
    return WORK / budget / f"{recipe}-s{seed}"


def budget_name(max_steps: int | None) -> str:
    return "full" if not max_steps else f"steps{max_steps}"


def pretrain_folder(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-pretrained")


def pretrain_command(recipe: Recipe, seed: int, run_dir: Path) -> list[str] | None:
    """`framesft pretrain` over the originals' passages (never dev_data.csv), or None for a recipe without it."""
    if not recipe.pretrain_epochs:
        return None
    command = [sys.executable, "-m", "framesft.cli", "--quiet", "pretrain", str(CONFIG), "--run-dir",
               str(pretrain_folder(run_dir)), "--overwrite", "--epochs", str(recipe.pretrain_epochs),
               "--texts", str(training_file("originals"))]
    for override in [*BASELINE, f"training.seed={seed}", "tracking.report_to=none"]:
        command += ["--set", override]
    return command


def train_command(recipe: Recipe, seed: int, max_steps: int | None, run_dir: Path) -> list[str]:
    overrides = [*BASELINE, *recipe.overrides, f"training.seed={seed}", f"data.data_dir={SHARED}",
                 f"data.train_csv={training_file(recipe.training_rows)}",
                 f"data.test_csv={SHARED / 'dev_data.csv'}", "tracking.report_to=none"]
    if recipe.pretrain_epochs:
        overrides.append(f"training.init_adapter={pretrain_folder(run_dir)}")
    if max_steps:
        overrides.append(f"training.max_steps={max_steps}")
    command = [sys.executable, "-m", "framesft.cli", "--quiet", "train", str(CONFIG), "--run-dir", str(run_dir),
               "--overwrite"]
    for override in overrides:
        command += ["--set", override]
    return command


def run_is_complete(run_dir: Path) -> bool:
    return (run_dir / "run_summary.json").is_file() and (run_dir / "predictions_test.csv").is_file()


def dev_scores(labels: list[str], truth: list[str], predicted: list[str], probabilities: np.ndarray) -> dict:
    """The fields every entry has: F1 macro with its interval, accuracy, per-class F1, alpha, the predictions."""
    metrics = classification_metrics(truth, predicted, labels)
    intervals = bootstrap_intervals(truth, predicted, labels)
    alpha = agreement([truth, predicted], labels)
    return {
        "dev_f1_macro": round(metrics["f1_macro"], 4),
        "dev_f1_macro_ci95": [round(v, 3) for v in intervals["f1_macro"]],
        "dev_accuracy": round(metrics["accuracy"], 4),
        "dev_per_class_f1": {label: round(metrics["per_class"][label]["f1"], 3) for label in labels},
        "alpha": round(alpha["krippendorff_alpha"], 4),
        "alpha_ci95": [round(v, 3) for v in alpha["alpha_ci95"]],
        "labels": labels,
        "dev_truth": truth,
        "dev_predicted": predicted,
        "dev_probabilities": np.round(probabilities, 4).tolist(),
    }


def dev_entry(name: str, recipe: Recipe, seed: int, budget: str, run_dir: Path, commands: list[list[str]],
              wall_minutes: float | None, cpu: dict) -> dict:
    """One result: the run's predictions on dev_data.csv, scored with intervals; `commands`: the steps that
    trained it (pretraining, if the recipe has it, then SFT)."""
    summary = json.loads((run_dir / "run_summary.json").read_text())
    pretrained = pretrain_folder(run_dir) / "pretrain_summary.json"
    pretrain_seconds = json.loads(pretrained.read_text())["train_seconds"] if recipe.pretrain_epochs else 0.0
    predictions = pd.read_csv(run_dir / "predictions_test.csv", dtype={"label": str, "predicted": str},
                              keep_default_na=False)
    labels = [c[2:] for c in predictions.columns if c.startswith("p_")]
    return {
        "recipe": name,
        "description": recipe.description,
        "overrides": recipe.overrides,
        "training_rows": recipe.training_rows,
        "seed": seed,
        "budget": budget,
        **dev_scores(labels, predictions["label"].tolist(), predictions["predicted"].tolist(),
                     predictions[[f"p_{label}" for label in labels]].to_numpy()),
        "validation_f1_macro": summary["metrics"].get("validation", {}).get("f1_macro"),
        "train_minutes": round((summary["train_seconds"] + pretrain_seconds) / 60, 1),  # pretraining included
        "pretrain_minutes": round(pretrain_seconds / 60, 1),
        "wall_minutes": None if wall_minutes is None else round(wall_minutes, 1),
        "global_step": summary["global_step"],
        "cpu": cpu,
        "compute_plan": summary.get("compute_plan", {}).get("line"),
        "command": " && ".join(shlex.join(str(c) for c in step) for step in commands).replace(str(REPO) + "/", ""),
        "run_dir": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "date": time.strftime("%Y-%m-%d"),
    }


def paired_with(entry: dict, entries: list[dict], recipe: str = "default") -> dict | None:
    """The newest entry of `recipe` (the baseline, or the shipped recipe) of the same seed and budget, compared
    passage by passage."""
    baseline = next((e for e in reversed(entries) if e["recipe"] == recipe and e["seed"] == entry["seed"]
                     and e["budget"] == entry["budget"] and e["dev_truth"] == entry["dev_truth"]), None)
    if baseline is None or entry["recipe"] == recipe:
        return None
    result = paired_comparison(entry["dev_truth"], entry["dev_predicted"], baseline["dev_predicted"], entry["labels"])
    return {"against": f"{recipe} seed {baseline['seed']} ({baseline['date']})",
            "f1_macro_difference": round(result["f1_macro_difference"], 4),
            "ci95": [round(v, 3) for v in result["ci95"]],
            "only_recipe_correct": result["only_a_correct"], f"only_{recipe}_correct": result["only_b_correct"],
            "mcnemar_p": round(result["mcnemar_p"], 4)}


def ensemble_members(specs: list[str], budget: str, entries: list[dict]) -> list[dict]:
    """The entries an ensemble averages: for each spec, RECIPE (its newest entry per seed) or RECIPE@SEED (its
    newest entry of that seed). One RECIPE is the seeds-of-one-recipe ensemble; several recipes at one seed are
    the issue's "SFT runs with different prompts" (or recipes) of similar strength."""
    members = {}
    for spec in specs:
        recipe, _, seed = spec.partition("@")
        matching = [e for e in entries if e["recipe"] == recipe and e["budget"] == budget
                    and (not seed or e["seed"] == int(seed))]
        if not matching:
            raise SystemExit(f"--ensemble {spec}: no entry of that recipe{' and seed' if seed else ''} at budget "
                             f"{budget} in {RESULTS}")
        for e in matching:
            members[(recipe, e["seed"])] = e  # the newest per recipe and seed
    if len(members) < 2:
        raise SystemExit(f"--ensemble {' '.join(specs)}: needs at least two members (seeds or recipes) at budget "
                         f"{budget}")
    return [members[key] for key in sorted(members)]


def ensemble_entry(specs: list[str], budget: str, entries: list[dict]) -> dict:
    """The members (ensemble_members) as one ensemble: the average of their calibrated log-probabilities, scored
    like a single run; its training cost is the sum of its members'."""
    members = ensemble_members(specs, budget, entries)
    labels, truth = members[0]["labels"], members[0]["dev_truth"]
    if any(m["labels"] != labels or m["dev_truth"] != truth for m in members):
        raise SystemExit(f"--ensemble {' '.join(specs)}: the members were scored on different labels or passages")
    log_probabilities = np.mean([np.log(np.clip(m["dev_probabilities"], 1e-12, 1)) for m in members], axis=0)
    probabilities = np.exp(log_probabilities)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predicted = [labels[i] for i in probabilities.argmax(axis=1)]
    recipes = sorted({m["recipe"] for m in members})
    seeds = [m["seed"] for m in members]
    one_recipe = len(recipes) == 1
    entry = {
        "recipe": "ensemble:" + "+".join(recipes),
        "description": "average of the calibrated log-probabilities of "
                       + ", ".join(f"{m['recipe']} seed {m['seed']}" for m in members),
        "overrides": members[0]["overrides"] if one_recipe else None,
        "members": [f"{m['recipe']}@{m['seed']}" for m in members],
        "seed": seeds, "budget": budget,
        **dev_scores(labels, truth, predicted, probabilities),
        "validation_f1_macro": None,
        "train_minutes": round(sum(m["train_minutes"] for m in members), 1), "wall_minutes": None,
        "global_step": None, "cpu": members[0]["cpu"],
        "command": f"benchmarks/accuracy_experiments.py --ensemble {' '.join(specs)}"
                   + (f" --max-steps {budget[5:]}" if budget != "full" else ""),
        "run_dir": None, "date": time.strftime("%Y-%m-%d"),
    }
    entry["paired_with_default"] = None  # see paired_with_members (for ensemble:default, its members are it)
    if not one_recipe and len(set(seeds)) == 1:  # runs of different recipes at one seed: against that seed's runs
        single = {**entry, "seed": seeds[0]}
        entry["paired_with_default"] = paired_with(single, entries, "default")
        entry["paired_with_shipped"] = paired_with(single, entries, SHIPPED)
    entry["paired_with_members"] = {}
    for m in members:
        result = paired_comparison(truth, predicted, m["dev_predicted"], labels)
        entry["paired_with_members"][f"seed {m['seed']}" if one_recipe else f"{m['recipe']} seed {m['seed']}"] = {
            "f1_macro_difference": round(result["f1_macro_difference"], 4),
            "ci95": [round(v, 3) for v in result["ci95"]], "mcnemar_p": round(result["mcnemar_p"], 4)}
    return entry


def single_seed(entry: dict) -> int | None:
    """An entry's seed; for an ensemble of runs of one seed (RECIPE@SEED members) that seed, else None."""
    seed = entry["seed"]
    if isinstance(seed, list):
        return seed[0] if len(set(seed)) == 1 else None
    return seed


def pooled_over_seeds(recipe: str, budget: str, entries: list[dict], against: str = "default",
                      n_resamples: int = 10_000) -> dict:
    """The recipe's gain over `against` (the baseline, or the shipped recipe), averaged over every seed both were
    trained with: the mean of the per-seed F1 macro differences, with a paired bootstrap 95% interval that
    resamples the same passages for every seed (so the seeds' own spread is averaged, not counted as evidence).
    `recipe` may be an ensemble of runs of one seed (its recipe name, `ensemble:A+B+...`): one entry per seed."""
    seeds = sorted({single_seed(e) for e in entries if e["recipe"] == recipe and e["budget"] == budget} - {None})
    pairs = []
    for seed in seeds:
        mine = next(e for e in reversed(entries)
                    if e["recipe"] == recipe and single_seed(e) == seed and e["budget"] == budget)
        base = next((e for e in reversed(entries) if e["recipe"] == against and e["seed"] == seed
                     and e["budget"] == budget and e["dev_truth"] == mine["dev_truth"]), None)
        if base is not None:
            pairs.append((seed, mine, base))
    if len(pairs) < 2:
        raise SystemExit(f"--pooled {recipe}: needs at least two seeds trained with both it and {against} "
                         f"(have {[seed for seed, _, _ in pairs]})")
    truth, labels = pairs[0][1]["dev_truth"], pairs[0][1]["labels"]
    samples = resample_indices(len(truth), n_resamples, seed=0)
    diffs = np.mean([resampled_metrics(truth, mine["dev_predicted"], labels, samples)["f1_macro"]
                     - resampled_metrics(truth, base["dev_predicted"], labels, samples)["f1_macro"]
                     for _, mine, base in pairs], axis=0)
    point = np.mean([mine["dev_f1_macro"] - base["dev_f1_macro"] for _, mine, base in pairs])
    alpha = np.mean([mine["alpha"] - base["alpha"] for _, mine, base in pairs])
    return {"recipe": recipe, "against": against, "budget": budget, "seeds": [seed for seed, _, _ in pairs],
            "f1_macro_difference": round(float(point), 4),
            "ci95": [round(float(np.percentile(diffs, 2.5)), 3), round(float(np.percentile(diffs, 97.5)), 3)],
            "alpha_difference": round(float(alpha), 4),
            "mean_f1_macro": round(float(np.mean([mine["dev_f1_macro"] for _, mine, _ in pairs])), 4),
            "mean_alpha": round(float(np.mean([mine["alpha"] for _, mine, _ in pairs])), 4),
            "resamples": n_resamples, "date": time.strftime("%Y-%m-%d")}


def load_entries() -> list[dict]:
    return json.loads(RESULTS.read_text())["entries"] if RESULTS.is_file() else []


def load_pooled() -> list[dict]:
    return json.loads(RESULTS.read_text()).get("pooled", []) if RESULTS.is_file() else []


def save_entries(entries: list[dict], pooled: list[dict] | None = None) -> None:
    document = {"benchmark": "accuracy campaign on dev_data.csv (150 hand-coded passages, natural distribution)",
                "protocol": __doc__.split("\n\n")[2].strip(), "entries": entries,
                "pooled": load_pooled() if pooled is None else pooled}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    tmp.replace(RESULTS)


def trained_over_bf16(entry: dict) -> bool:
    """Whether the run trained over frozen bf16 weights (the compute plan where bf16 measures faster); entries
    without a recorded plan ran on CPUs where it trains in fp32."""
    return "training weights bfloat16" in (entry.get("compute_plan") or "")


def paired_cell(result: dict) -> str:
    low, high = result["ci95"]
    return f"{result['f1_macro_difference']:+.3f} ({low:+.3f}, {high:+.3f}), p={result['mcnemar_p']:.2f}"


def summary_table(entries: list[dict]) -> str:
    rows = ["| recipe | budget | seed | dev F1 macro (95% CI) | alpha (95% CI) | paired difference in F1 macro "
            "(95% CI), McNemar p | train min | CPU |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        if e.get("paired_with_default"):
            versus = "vs default: " + paired_cell(e["paired_with_default"])
            ensemble = e["recipe"].startswith("ensemble:")
            shipped = e.get("paired_with_shipped") or (None if ensemble else paired_with(e, entries, SHIPPED))
            if shipped:
                versus += f"; vs {SHIPPED}: " + paired_cell(shipped)
            if e.get("paired_with_shipped_bf16"):
                versus += f"; vs {SHIPPED_BF16}: " + paired_cell(e["paired_with_shipped_bf16"])
            if ensemble:
                versus += "".join(f"; vs {k}: {paired_cell(v)}" for k, v in e.get("paired_with_members", {}).items())
        else:
            versus = "; ".join(f"vs {k}: {paired_cell(v)}" for k, v in e.get("paired_with_members", {}).items())
        kind = "AMX" if e["cpu"]["amx_bf16"] else ("AVX512-BF16" if e["cpu"]["avx512_bf16"] else "no AVX512-BF16")
        if trained_over_bf16(e):
            kind += ", bf16 weights"
        rows.append(f"| {e['recipe']} | {e['budget']} | {e['seed']} | {e['dev_f1_macro']:.3f} "
                    f"({e['dev_f1_macro_ci95'][0]:.2f}-{e['dev_f1_macro_ci95'][1]:.2f}) | {e['alpha']:.3f} "
                    f"({e['alpha_ci95'][0]:.2f}-{e['alpha_ci95'][1]:.2f}) | {versus} | {e['train_minutes']} | {kind} |")
    return "\n".join(rows)


HARD_PASSAGES = REPO / "benchmarks" / "results" / "accuracy_hard_passages.json"


def hard_passages(entries: list[dict]) -> dict:
    """Where the errors lie: per dev passage, the share of the campaign's trained runs (full budget, ensembles
    left out: they add no independent run) that label it right; the passages no run gets right, with the label
    the runs give instead; and whether a model of another family, the TF-IDF baseline trained on the same file,
    gets those right. Passages are rows of dev_data.csv (0-based, header not counted): no text is copied."""
    from framesft.baseline import tfidf_baseline

    runs = [e for e in entries if e["budget"] == "full" and not e["recipe"].startswith("ensemble:")]
    truth = np.array(runs[0]["dev_truth"])
    if any(list(e["dev_truth"]) != list(truth) for e in runs):
        raise SystemExit("entries disagree on dev_data.csv's gold labels: not the same file")
    predicted = np.array([e["dev_predicted"] for e in runs])
    share_right = (predicted == truth).mean(axis=0)
    train = pd.read_csv(SHARED / "train_data.csv", dtype=str, keep_default_na=False)
    dev = pd.read_csv(SHARED / "dev_data.csv", dtype=str, keep_default_na=False)
    labels = runs[0]["labels"]
    tfidf, _ = tfidf_baseline(train["chunk_text"], train["frame_name"], dev["chunk_text"], labels)
    tfidf_right = np.array(tfidf) == truth
    never = np.flatnonzero(share_right == 0)
    per_label = {label: {"passages": int((truth == label).sum()),
                         "never_right": int(((truth == label) & (share_right == 0)).sum()),
                         "right_in_under_20pct_of_runs": int(((truth == label) & (share_right < 0.2)).sum()),
                         "always_right": int(((truth == label) & (share_right == 1)).sum())} for label in labels}
    instead = [Counter(predicted[:, i]).most_common(1)[0] for i in never]
    return {
        "runs": len(runs), "recipes": sorted({e["recipe"] for e in runs}), "passages": len(truth),
        "mean_accuracy": round(float(share_right.mean()), 4),
        "right_in_at_least_one_run": round(float((share_right > 0).mean()), 4),
        "histogram_share_of_runs_right": {
            "0": int((share_right == 0).sum()), "(0, 0.2)": int(((share_right > 0) & (share_right < 0.2)).sum()),
            "[0.2, 0.5)": int(((share_right >= 0.2) & (share_right < 0.5)).sum()),
            "[0.5, 0.8)": int(((share_right >= 0.5) & (share_right < 0.8)).sum()),
            "[0.8, 1)": int(((share_right >= 0.8) & (share_right < 1)).sum()), "1": int((share_right == 1).sum())},
        "per_gold_label": per_label,
        "never_right_gold_to_runs_label": dict(Counter(f"{truth[i]} -> {label}" for i, (label, _) in
                                                       zip(never, instead)).most_common()),
        "never_right": [{"dev_row": int(i), "gold": str(truth[i]), "runs_label": str(label),
                         "runs_giving_it": int(count), "tfidf_label": tfidf[i]} for i, (label, count) in
                        zip(never, instead)],
        "tfidf_accuracy": round(float(tfidf_right.mean()), 4),
        "tfidf_right_where_no_run_is": int(tfidf_right[never].sum()),
        "tfidf_gives_the_runs_label_where_no_run_is_right": sum(tfidf[i] == label for i, (label, _) in
                                                                zip(never, instead)),
        "never_right_with_every_run_agreeing": sum(count == len(runs) for _, count in instead),
        "date": time.strftime("%Y-%m-%d"),
    }


SEED_SELECTION = REPO / "benchmarks" / "results" / "accuracy_seed_selection.json"


def seed_selection(entries: list[dict]) -> dict:
    """Would training several seeds and keeping the one that validates best pick the better coder? For every
    recipe with two or more seeds (full budget, ensembles left out), each pair of its seeds: does the seed with
    the higher validation F1 macro (the grouped split of the training file, what a user without dev has) also
    score the higher dev F1 macro? Pairs of one recipe share seeds, so they are not independent draws: the sign
    test below is a guide, not a proof."""
    from scipy.stats import binomtest

    by_recipe: dict[str, dict[int, dict]] = {}
    for e in entries:
        if e["budget"] == "full" and not e["recipe"].startswith("ensemble:") and e.get("validation_f1_macro"):
            by_recipe.setdefault(e["recipe"], {})[e["seed"]] = e  # the newest entry per seed
    pairs = []
    for recipe, seeds in sorted(by_recipe.items()):
        for a, b in combinations(sorted(seeds), 2):
            first, second = seeds[a], seeds[b]
            if abs(first["validation_f1_macro"] - second["validation_f1_macro"]) < 0.001:
                continue  # a tie: one passage of the 77 moves validation F1 macro by more than this
            picked, other = ((first, second) if first["validation_f1_macro"] > second["validation_f1_macro"]
                             else (second, first))
            pairs.append({"recipe": recipe, "picked_seed": picked["seed"], "other_seed": other["seed"],
                          "validation_f1_macro": [round(picked["validation_f1_macro"], 4),
                                                  round(other["validation_f1_macro"], 4)],
                          "dev_f1_macro": [round(picked["dev_f1_macro"], 4), round(other["dev_f1_macro"], 4)],
                          "dev_gain_of_the_pick": round(picked["dev_f1_macro"] - other["dev_f1_macro"], 4)})
    gains = np.array([p["dev_gain_of_the_pick"] for p in pairs])
    right = int((gains > 0).sum())
    return {"pairs": len(pairs), "recipes": sum(len(s) > 1 for s in by_recipe.values()),
            "validation_picks_the_better_dev_seed": right,
            "sign_test_p": round(float(binomtest(right, len(pairs)).pvalue), 4) if pairs else None,
            "mean_dev_gain_of_the_pick": round(float(gains.mean()), 4) if pairs else None,
            "every_pair": pairs, "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipe names (see --list)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--max-steps", type=int, help="a screening budget: stop every run after this many steps")
    parser.add_argument("--reuse", action="store_true", help="score an existing complete run folder, do not retrain")
    parser.add_argument("--list", action="store_true", help="list the recipes and stop")
    parser.add_argument("--summary", action="store_true", help="print the table of all entries and stop")
    parser.add_argument("--hard-passages", action="store_true",
                        help=f"which dev passages the runs get wrong, how consistently, and whether TF-IDF gets "
                             f"those right; writes {HARD_PASSAGES.relative_to(REPO)}, stops")
    parser.add_argument("--seed-selection", action="store_true",
                        help=f"does the seed with the better validation F1 also score better on dev? writes "
                             f"{SEED_SELECTION.relative_to(REPO)}, stops")
    parser.add_argument("--ensemble", metavar="RECIPE[@SEED]", nargs="+",
                        help="score entries already in the JSON as one ensemble (a recipe: its seeds; "
                             "RECIPE@SEED: that seed's entry; several recipes: runs of different recipes), "
                             "append it, stop")
    parser.add_argument("--pooled", metavar="RECIPE",
                        help="the recipe's gain over default (or --against) averaged over the seeds both ran "
                             "(paired bootstrap; an ensemble of one-seed runs by its recipe name, ensemble:A+B...), "
                             "append it to the JSON's `pooled` list, stop")
    parser.add_argument("--against", metavar="RECIPE", default="default",
                        help="with --pooled: the recipe to compare with (default: the baseline `default`)")
    args = parser.parse_args()
    if args.list:
        for name, recipe in RECIPES.items():
            print(f"{name:16} {recipe.description}  {' '.join(recipe.overrides)}")
        return
    if args.summary:
        print(summary_table(load_entries()))
        return
    if args.hard_passages:
        result = hard_passages(load_entries())
        HARD_PASSAGES.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "never_right"}, indent=1))
        return
    if args.seed_selection:
        result = seed_selection(load_entries())
        SEED_SELECTION.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "every_pair"}, indent=1))
        return
    if args.pooled:
        result = pooled_over_seeds(args.pooled, budget_name(args.max_steps), load_entries(), args.against)
        save_entries(load_entries(), [*load_pooled(), result])
        low, high = result["ci95"]
        print(f"{args.pooled} vs {args.against} over seeds {result['seeds']}: F1 macro "
              f"{result['f1_macro_difference']:+.3f} (95% CI {low:+.3f}, {high:+.3f}), alpha "
              f"{result['alpha_difference']:+.3f}; its mean F1 macro {result['mean_f1_macro']:.3f}, alpha "
              f"{result['mean_alpha']:.3f}")
        return
    if args.ensemble:
        entries = load_entries()
        entry = ensemble_entry(args.ensemble, budget_name(args.max_steps), entries)
        entries.append(entry)
        save_entries(entries)
        print(summary_table([entry]))
        return
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown or not args.recipes:
        parser.error(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}" if unknown else "name a recipe")
    if not SHARED.is_dir():
        parser.error(f"{SHARED} is missing: the campaign reads ../shared/data/brexit beside the repository")

    refused = [r for r in args.recipes if RECIPES[r].needs_bf16_training and not cpu_prefers_bf16()]
    if refused:
        parser.error(f"{refused}: needs a CPU whose bf16 matmul measures faster than fp32 (the compute plan would "
                     "train in fp32 here and repeat another recipe)")
    cpu = cpu_facts()
    budget = budget_name(args.max_steps)
    for name in args.recipes:
        for seed in args.seeds:
            recipe, run_dir = RECIPES[name], run_folder(name, seed, budget)
            pretraining = pretrain_command(recipe, seed, run_dir)
            steps = ([pretraining] if pretraining else []) + [train_command(recipe, seed, args.max_steps, run_dir)]
            wall = None
            if not (args.reuse and run_is_complete(run_dir)):
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                for step in steps:
                    print(f"[{time.strftime('%H:%M')}] {name} seed {seed} ({budget}): {shlex.join(step)}", flush=True)
                    subprocess.run(step, check=True, cwd=REPO)
                wall = (time.perf_counter() - started) / 60
            entries = load_entries()
            entry = dev_entry(name, recipe, seed, budget, run_dir, steps, wall, cpu)
            entry["paired_with_default"] = paired_with(entry, entries, "default")
            entry["paired_with_shipped"] = paired_with(entry, entries, SHIPPED)
            if trained_over_bf16(entry):  # and with the shipped recipe trained the same way, where it was
                entry["paired_with_shipped_bf16"] = paired_with(entry, entries, SHIPPED_BF16)
            entries.append(entry)
            save_entries(entries)
            print(summary_table([entry]).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
