"""Scoring at bf16 speed with fp32 labels: a margin cascade over two scorers of the same model.

Where a CPU multiplies bf16 matrices several times faster than fp32 (AMX), scoring every passage with a bf16 copy
of the model is fast, but bf16 rounding moves label scores a little, and a passage whose two best labels are
close can change its label. The cascade keeps the fp32 labels:
1. probe: PROBE_PASSAGES passages spread evenly over the first scoring call (in `predict`, the first chunk of
   the corpus) are scored both ways; the largest change bf16 makes to a difference between two labels' scores,
   times SAFETY, is the bound (measured per model and per scorer, on the user's own passages, once). Spread, not
   the first ones: a corpus sorted by date, length or speaker would otherwise probe one end of itself only;
2. every other passage is scored in bf16 only;
3. each passage whose bf16 margin (best minus runner-up label, on the scores the labels come from) lies within
   the bound is scored again in fp32, and takes those scores; so is each passage whose probabilities a change
   as large as the largest seen on the probe could move by more than PROBABILITY_TOLERANCE (a softmax
   probability p_j moves by at most about p_j (1 - p_j) times the change of the score differences, divided by
   the temperature). Without SAFETY: that formula already assumes every label's error points the worst way,
   which real bf16 errors do not. A fine-tuned Gemma on 300 real passages (Zen 5 CPU, 2026-12-01) had 204
   passages sensitive under the bound, 1 whose bf16 probabilities actually moved by more than 0.03; with the
   probe's largest change instead, the largest probability difference left was 0.022 (benchmarks.md).
A passage outside the bound keeps its bf16 scores: for its label to differ from fp32, bf16 would have to move
a difference of two scores by more than SAFETY times the largest such move seen on the probe.
4. when most passages need rescoring (MAX_RESCORED_SHARE), the cascade steps aside: fp32 alone from then on.
   It judges after each block of a call (64 passages, then blocks as long as all bf16-scored so far), so a long
   call (a 1,000-row predict chunk) is not scored twice over before it can step aside.

Where bf16 is not faster the compute plan never builds a cascade (precision.resolve_plan,
evaluation.bf16_cascade); tests force it on any CPU.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .methods import Scorer
from .scoring import LabelScores

log = logging.getLogger(__name__)

PROBE_PASSAGES = 32  # scored both ways to measure the bound (cost: these passages once more in fp32)
SAFETY = 2.0  # the bound is this many times the largest change of a score difference seen on the probe
PROBABILITY_TOLERANCE = 0.03  # passages whose calibrated probabilities the bound could move further are rescored
# The cascade steps aside (fp32 alone from then on) once more than this share of its bf16-scored passages needed
# rescoring, judged after at least STEP_ASIDE_AFTER of them. With bf16 k times as fast as fp32 a passage costs
# 1/k + share of an fp32 one: at k = 2.3-2.8 (measured scoring on AMX and Zen 5) the cascade gains little above a
# half and loses above about 0.6, as it did (0.71x fp32) for a weak SmolLM2 run whose every passage was close.
# A share, not a timing, so that two runs over the same passages decide alike.
MAX_RESCORED_SHARE = 0.5
STEP_ASIDE_AFTER = 2 * PROBE_PASSAGES


def bf16_copy(model):
    """A bf16 copy of a (merged) model for the fast pass; the fp32 model stays as it is.

    The same as `copy.deepcopy(model).to(torch.bfloat16)`, without the fp32 copy in between: deepcopy's memo hands
    it each floating-point tensor already in bf16 (tied weights stay tied, since the memo is keyed by the tensor),
    so model loading in `predict` writes half the bytes (a start-up cost measured in predict_prefix.py)."""
    memo = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in memo and tensor.is_floating_point():
            converted = tensor.detach().to(torch.bfloat16, copy=True)
            memo[id(tensor)] = (nn.Parameter(converted, requires_grad=tensor.requires_grad)
                                if isinstance(tensor, nn.Parameter) else converted)
    return copy.deepcopy(model, memo).eval()


def largest_difference_change(fast: np.ndarray, exact: np.ndarray) -> float:
    """The largest change, over passages and pairs of labels j, k, of score_j - score_k between two scorings."""
    delta = fast - exact
    return float((delta.max(axis=1) - delta.min(axis=1)).max()) if len(delta) else 0.0


def sensitive_probabilities(scores: np.ndarray, temperature: float, bound: float) -> np.ndarray:
    """Passages whose probabilities softmax(scores / temperature) a change of `bound` in the score differences
    could move by more than PROBABILITY_TOLERANCE (to first order: p_j (1 - p_j) x bound / temperature)."""
    shifted = (scores - scores.max(axis=1, keepdims=True)) / temperature
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    return (p * (1 - p)).max(axis=1) * bound / temperature > PROBABILITY_TOLERANCE


def probe_positions(n: int) -> np.ndarray:
    """PROBE_PASSAGES positions spread evenly over a call of n >= PROBE_PASSAGES passages, first and last included."""
    return np.unique(np.linspace(0, n - 1, PROBE_PASSAGES).round().astype(int))


def top_margins(scores: np.ndarray) -> np.ndarray:
    if scores.shape[1] < 2:
        return np.full(len(scores), np.inf)
    top2 = np.sort(scores, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


TALLY_COUNTS = ("probe_passages", "fast_passages", "rescored", "fp32_only")


@dataclass
class CascadeTally:
    """What one cascade did: reported in logs, benchmarks and the predictions' provenance."""

    probe_passages: int = 0
    largest_change: float = 0.0  # on the probe: the largest change bf16 made to a difference of two scores
    bound: float | None = None  # SAFETY x largest_change: margins within it are rescored in fp32
    fast_passages: int = 0  # scored in bf16 (the probe excluded)
    rescored: int = 0  # of those, scored again in fp32 (a close margin, or probabilities the bound could move)
    fp32_only: int = 0  # scored in fp32 alone: calls shorter than the probe before the bound, or after stepping aside
    stepped_aside: bool = False  # more than MAX_RESCORED_SHARE of the bf16-scored passages needed rescoring

    def summary(self) -> str:
        scored = self.probe_passages + self.fast_passages + self.fp32_only
        in_fp32 = self.probe_passages + self.rescored + self.fp32_only
        return (f"bf16 margin cascade: {in_fp32} of {scored} passages scored in fp32 ({self.probe_passages} "
                f"probe, {self.rescored} within the bound {self.bound or 0:.4f}, {self.fp32_only} alone"
                + (": it stepped aside, too many needed rescoring)" if self.stepped_aside else ")"))

    def as_dict(self) -> dict:
        return {"probe_passages": self.probe_passages, "largest_change": self.largest_change, "bound": self.bound,
                "fast_passages": self.fast_passages, "rescored": self.rescored, "fp32_only": self.fp32_only,
                "stepped_aside": self.stepped_aside, "safety": SAFETY,
                "probability_tolerance": PROBABILITY_TOLERANCE}

    def since(self, earlier: dict) -> dict:
        """What the calls since `earlier` (an as_dict() of this tally) did, with the bound then in force."""
        record = self.as_dict()
        for key in TALLY_COUNTS:
            record[key] -= earlier[key]
        return record


def summed_tallies(tallies: Sequence[dict]) -> dict:
    """Several tallies (as_dict() records) as one: counts summed, the largest change and the widest bound."""
    combined = dict(tallies[0])
    for key in TALLY_COUNTS:
        combined[key] = sum(t[key] for t in tallies)
    combined["stepped_aside"] = any(t.get("stepped_aside", False) for t in tallies)
    for key in ("largest_change", "bound"):
        values = [t[key] for t in tallies if t[key] is not None]
        combined[key] = max(values) if values else None
    return combined


class MarginCascade:
    """A Scorer: fast (bf16) scores where they cannot change the label, exact (fp32) scores elsewhere.

    offset: what the caller adds to the raw scores before taking the label (an adapted run's temperature x
    bias), so that margins are measured on the scores the labels come from; temperature: the one the caller's
    probabilities divide by (the run's calibration)."""

    def __init__(self, exact: Scorer, fast: Scorer, encode: Callable[[str], list[int]],
                 offset: np.ndarray | None = None, temperature: float = 1.0):
        self.exact, self.fast, self.encode = exact, fast, encode
        self.offset, self.temperature = offset, temperature
        self.tally = CascadeTally()

    def score_texts(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None) -> LabelScores:
        return self.score_prompts([self.encode(text) for text in texts], on_progress)

    def score_prompts(self, prompts: Sequence, on_progress: Callable[[int], None] | None = None) -> LabelScores:
        prompts = list(prompts)
        tally = self.tally
        if tally.stepped_aside or (tally.bound is None and len(prompts) < PROBE_PASSAGES):
            # stepped aside, or too few passages to measure the bound on before it exists: fp32 alone
            tally.fp32_only += len(prompts)
            return self.exact.score_prompts(prompts, on_progress)
        positions = np.arange(len(prompts))
        scores, labels = None, None
        if tally.bound is None:  # the first call of at least PROBE_PASSAGES measures the bound
            probe = probe_positions(len(prompts))
            exact_probe = self.exact.score_prompts([prompts[i] for i in probe])
            self.measure_bound(self.fast.score_prompts([prompts[i] for i in probe]).scores, exact_probe.scores)
            labels, scores = exact_probe.labels, np.empty((len(prompts), exact_probe.scores.shape[1]))
            scores[probe] = exact_probe.scores
            tally.probe_passages = len(probe)
            positions = np.setdiff1d(positions, probe)
            if on_progress:
                on_progress(len(probe))
        # bf16 in blocks, so that a long call (a predict chunk) is judged for stepping aside as it goes: 64
        # passages, then as many as the cascade has scored in bf16 so far (judged often at first, in long calls
        # later). The fp32 work is one call at the end: the passages the bound sends back, and once the cascade
        # has stepped aside the rest of the call (one call batches and sorts by length as a whole).
        in_fp32, unreported = [], 0
        start = 0
        while start < len(positions):
            if tally.stepped_aside:
                unreported = len(positions) - start
                tally.fp32_only += unreported
                in_fp32.append(positions[start:])
                break
            block = positions[start:start + max(STEP_ASIDE_AFTER, tally.fast_passages)]
            start += len(block)
            fast = self.fast.score_prompts([prompts[i] for i in block], on_progress)
            if scores is None:
                labels, scores = fast.labels, np.empty((len(prompts), fast.scores.shape[1]))
            scores[block] = fast.scores
            in_fp32.append(block[self.needs_fp32(fast.scores)])
        in_fp32 = np.concatenate(in_fp32) if in_fp32 else np.zeros(0, dtype=int)
        if len(in_fp32):
            exact = self.exact.score_prompts([prompts[i] for i in in_fp32])
            if scores is None:
                labels, scores = exact.labels, np.empty((len(prompts), exact.scores.shape[1]))
            scores[in_fp32] = exact.scores
        if on_progress and unreported:
            on_progress(unreported)
        return LabelScores(labels, scores)

    def measure_bound(self, fast: np.ndarray, exact: np.ndarray) -> None:
        tally = self.tally
        tally.largest_change = largest_difference_change(fast, exact)
        tally.bound = SAFETY * tally.largest_change
        log.info("bf16 margin cascade: on %d probe passages bf16 moved a difference of two label scores by at most "
                 "%.4f; passages with a bf16 margin under %.4f are rescored in fp32",
                 len(fast), tally.largest_change, tally.bound)

    def needs_fp32(self, fast_scores: np.ndarray) -> np.ndarray:
        """Which of a block's bf16-scored passages the bound could change (a close margin, or probabilities it
        could move too far), counted in the tally; after enough of them, whether the cascade steps aside."""
        tally = self.tally
        adjusted = fast_scores if self.offset is None else fast_scores + self.offset[None, :]
        close = ((top_margins(adjusted) <= tally.bound)
                 | sensitive_probabilities(adjusted, self.temperature, tally.largest_change))
        tally.fast_passages += len(fast_scores)
        tally.rescored += int(close.sum())
        if tally.fast_passages >= STEP_ASIDE_AFTER and tally.rescored > MAX_RESCORED_SHARE * tally.fast_passages:
            tally.stepped_aside = True
            log.warning("bf16 margin cascade: %d of %d passages scored in bf16 needed fp32 again (their labels' "
                        "margins are close), so the cascade is no faster than fp32 for this model; scoring the "
                        "rest in fp32 alone", tally.rescored, tally.fast_passages)
        return close
