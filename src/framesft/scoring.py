"""Label scoring: the log-likelihood of each allowed label after the prompt.

Every prediction is a valid label (we pick among label scores, we never parse free text) and comes with a
probability per label (the softmax over label scores).

Cost is about one forward pass over the prompt:
1. the prompts of a batch run once, with the output projection computed at the last position only
   (`logits_to_keep`); this gives each label's first-token log-probability;
2. the remaining tokens of every label (all but the final end-of-answer token, which is only predicted) run
   as one short continuation on top of that pass's key/value cache, with a block-causal attention mask so
   that each label's tokens see the prompt and their own label only (about 2 tokens per label).
Every prompt begins with the same instructions and label list (about 130 of Gemma's ~300 prompt tokens on the Brexit
dev passages). Their keys and values are computed once per call and every batch continues from a copy of them,
so step 1 runs over the passage part of each prompt only (`shared_prompt_prefix`; evaluation.reuse_prompt_prefix).
Causal attention makes the prefix's keys and values independent of what follows, and the positions are the
same as without the cache, so the scores are the same up to float rounding.
`naive_label_scores` (one full sequence per label) is the reference the tests compare against.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .prompting import PromptBuilder


@dataclass
class LabelScores:
    labels: list[str]
    scores: np.ndarray  # (n_texts, n_labels) summed (or length-normalised) log-likelihoods
    temperature: float = 1.0  # probabilities are softmax(scores / temperature + bias); see calibration.py
    bias: np.ndarray | None = None  # one number per label, fitted on coded passages by adaptation.adapt_run

    @property
    def adjusted(self) -> np.ndarray:
        """The scores the labels and probabilities come from: the raw scores, plus the adaptation's per-label bias
        on the scores' own scale (temperature x bias), so that without a bias they are the raw scores."""
        if self.bias is None:
            return self.scores
        return self.scores + self.temperature * np.asarray(self.bias)[None, :]

    @property
    def probabilities(self) -> np.ndarray:
        adjusted = self.adjusted
        shifted = (adjusted - adjusted.max(axis=1, keepdims=True)) / self.temperature
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def with_calibration(self, temperature: float, bias: np.ndarray | None = None) -> LabelScores:
        """The same raw scores with calibrated probabilities. A temperature alone never changes the predicted
        labels; a per-label bias (an adapted run) can."""
        return LabelScores(self.labels, self.scores, temperature, bias)

    @property
    def predicted_index(self) -> np.ndarray:
        return self.adjusted.argmax(axis=1)

    @property
    def predictions(self) -> list[str]:
        return [self.labels[i] for i in self.predicted_index]

    @property
    def margins(self) -> np.ndarray:
        """Score of the best label minus the runner-up: small margins mark uncertain predictions."""
        if self.scores.shape[1] < 2:
            return np.zeros(len(self.scores))
        top2 = np.sort(self.adjusted, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]


def predictions_table(texts: Sequence[str], scores: LabelScores, y_true: Sequence[str] | None = None) -> pd.DataFrame:
    """text, [label,] predicted, p_<label> for every label, margin (best minus runner-up score)."""
    table = pd.DataFrame({"text": list(texts)})
    if y_true is not None:
        table["label"] = list(y_true)
    table["predicted"] = scores.predictions
    probabilities = scores.probabilities
    for j, label in enumerate(scores.labels):
        table[f"p_{label}"] = probabilities[:, j]
    table["margin"] = scores.margins
    return table


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        if batch and ((len(batch) + 1) * longest > token_budget or len(batch) >= max_batch_size):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left",
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id sequences to the longest; returns (ids, attention mask). Left padding puts every
    sequence's end (the answer, the next-token position) in the last column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def last_positions(ids: torch.Tensor, count: int) -> torch.Tensor:
    """`logits_to_keep` for the last `count` positions of a batch, given as positions rather than as the count.

    With the count, transformers slices a strided view of the hidden states, and torch multiplies such a 3-d
    input by the LM head one batch row at a time (bmm), reading the whole vocabulary matrix once per row; the
    positions gather a contiguous copy first and the head runs as one matmul, which matters with a large
    vocabulary (Gemma's 262k tokens)."""
    length = ids.shape[-1]
    return torch.arange(length - count, length, device=ids.device)


# Probe passages whose first characters differ in kind: where a tokenizer merges the end of the instructions with
# the start of a passage, the prompts of these probes part before that point.
PREFIX_PROBES = ("x", "\n1", " Yes", "(a)", "\u2014 well", "'Quote'", "\t9")
MIN_SHARED_PREFIX = 16  # below this the saving is small; not worth a second code path (not measured)


def shared_prompt_prefix(builder: PromptBuilder) -> list[int]:
    """The token ids every prompt of this builder starts with (the instructions and label list): the common
    prefix of the prompts of several unlike probe passages. Each prompt is still checked against it."""
    prompts = [builder.encode_prompt(probe) for probe in PREFIX_PROBES]
    length = 0
    while all(length < len(p) for p in prompts) and len({p[length] for p in prompts}) == 1:
        length += 1
    return prompts[0][:length]


class LabelScorer:
    def __init__(
        self,
        model,
        builder: PromptBuilder,
        token_budget: int = 4096,
        max_batch_size: int = 64,
        length_normalize: bool = False,
        reuse_prefix: bool = True,
    ):
        self.model = model
        self.builder = builder
        self.labels = builder.labels
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.length_normalize = length_normalize
        self.pad_id = builder.tokenizer.pad_token_id
        self.label_ids = [builder.label_token_ids[label] for label in self.labels]
        self.continuation = self._build_continuation()
        prefix = shared_prompt_prefix(builder) if reuse_prefix else []
        self.prefix = prefix if len(prefix) >= MIN_SHARED_PREFIX else []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score_texts(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None) -> LabelScores:
        prompts = [self.builder.encode_prompt(text) for text in texts]
        return self.score_prompts(prompts, on_progress)

    def score_prompts(
        self, prompts: Sequence[list[int]], on_progress: Callable[[int], None] | None = None
    ) -> LabelScores:
        scores = np.zeros((len(prompts), len(self.labels)), dtype=np.float64)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                prefix_cache = self._prefix_cache(prompts)
                for batch in token_budget_batches([len(p) for p in prompts], self.token_budget, self.max_batch_size):
                    scores[batch] = self._score_batch([prompts[i] for i in batch], prefix_cache).cpu().numpy()
                    if on_progress:
                        on_progress(len(batch))
        finally:
            self.model.train(was_training)
        if self.length_normalize:
            scores = scores / np.array([len(ids) for ids in self.label_ids], dtype=np.float64)
        return LabelScores(self.labels, scores)

    def _prefix_cache(self, prompts: Sequence[list[int]]):
        """Keys and values of the shared prefix (one sequence), or None where some prompt does not start with it
        (then every batch runs whole prompts)."""
        width = len(self.prefix)
        if not width or not all(len(p) > width and p[:width] == self.prefix for p in prompts):
            return None
        ids = torch.tensor([self.prefix], device=self.device)
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).cache

    def _score_batch(self, prompts: list[list[int]], prefix_cache=None) -> torch.Tensor:
        device = self.device
        n_prompts, n_labels = len(prompts), len(self.labels)
        if prefix_cache is None:
            ids, mask = pad_batch(prompts, self.pad_id, "left", device)
            positions, cache = positions_from_mask(mask), None
        else:  # [prefix][left padding][rest of the prompt]: positions as without the cache, padding masked out
            width = len(self.prefix)
            ids, rest_mask = pad_batch([p[width:] for p in prompts], self.pad_id, "left", device)
            mask = torch.cat([torch.ones((n_prompts, width), dtype=rest_mask.dtype, device=device), rest_mask], -1)
            positions = width + positions_from_mask(rest_mask)
            cache = copy.deepcopy(prefix_cache)  # each batch appends its own keys and values
            cache.batch_repeat_interleave(n_prompts)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=last_positions(ids, 1),
        )
        first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        first_tokens = torch.tensor([seq[0] for seq in self.label_ids], device=device)
        totals = first_logp[:, first_tokens]  # (n_prompts, n_labels)

        if self.continuation is None:
            return totals
        # All labels' remaining tokens run together as one short continuation of each prompt: block j holds
        # label j's tokens after the first (inputs) and sees the prompt plus its own earlier tokens only.
        inputs, targets, block_mask, offsets, owner = (t.to(device) for t in self.continuation)
        width = inputs.shape[0]
        prompt_lengths = mask.sum(-1)
        mask_dtype = self.model.get_input_embeddings().weight.dtype  # the attention compute dtype (also in 4-bit)
        attend = torch.cat([mask.bool()[:, None, :].expand(n_prompts, width, -1),
                            block_mask[None].expand(n_prompts, -1, -1)], dim=-1)
        attention = torch.zeros(attend.shape, dtype=mask_dtype, device=device)
        attention.masked_fill_(~attend, torch.finfo(mask_dtype).min)  # additive mask: works for sdpa and eager
        cont_out = self.model(
            input_ids=inputs[None].expand(n_prompts, -1),
            attention_mask=attention[:, None],  # (batch, 1, query, prompt + continuation): used as given
            position_ids=prompt_lengths[:, None] + offsets[None],
            cache=out.cache,
            use_cache=True,
        )
        cont_logp = torch.log_softmax(cont_out.logits.float(), dim=-1)
        picked = cont_logp.gather(-1, targets[None, :, None].expand(n_prompts, -1, 1)).squeeze(-1)
        rest = torch.zeros((n_prompts, n_labels), dtype=picked.dtype, device=device)
        rest.index_add_(1, owner, picked)
        return totals + rest

    def _build_continuation(self):
        """Token layout shared by every batch: inputs, targets, block-causal mask, position offsets, owner label."""
        inputs, targets, offsets, owner = [], [], [], []
        for label_index, seq in enumerate(self.label_ids):
            for step in range(len(seq) - 1):
                inputs.append(seq[step])
                targets.append(seq[step + 1])
                offsets.append(step)
                owner.append(label_index)
        if not inputs:
            return None
        owner_t = torch.tensor(owner)
        offsets_t = torch.tensor(offsets)
        same_block = owner_t[:, None] == owner_t[None, :]
        causal = offsets_t[None, :] <= offsets_t[:, None]
        return (torch.tensor(inputs), torch.tensor(targets), same_block & causal, offsets_t, owner_t)


def naive_label_scores(model, builder: PromptBuilder, prompts: Sequence[list[int]]) -> np.ndarray:
    """Reference scorer: one full forward pass per (prompt, label) pair, summing the label's log-probs."""
    label_ids = [builder.label_token_ids[label] for label in builder.labels]
    scores = np.zeros((len(prompts), len(label_ids)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            sequences = [prompt + seq for seq in label_ids]
            ids, mask = pad_batch(sequences, builder.tokenizer.pad_token_id, "left", device)
            logp = torch.log_softmax(
                model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits.float(), -1
            )
            width = ids.shape[1]
            for j, seq in enumerate(label_ids):
                positions = torch.arange(width - len(seq), width, device=device)
                scores[i, j] = logp[j, positions - 1, torch.tensor(seq, device=device)].sum().item()
    model.train(was_training)
    return scores
