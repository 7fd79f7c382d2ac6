"""Generative SFT: the causal LM learns to write the label after a prompt that lists the labels.

- encoding: prompt + answer (the label and the end-of-turn token), loss on the answer only (prompting.py);
  `data.max_length` covers prompt and answer, and only the passage is truncated to fit;
- batching: left padding, so every answer ends its row and the LM head runs only over the last few positions;
- scoring: the exact log-likelihood of every label after the prompt (scoring.LabelScorer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prompting import IGNORE_INDEX, PromptBuilder
from ..scoring import LabelScorer, last_positions, pad_batch, positions_from_mask
from .base import Method


class GenerativeSFT(Method):
    name = "sft"
    peft_task_type = "CAUSAL_LM"

    def __init__(self, config, tokenizer, labels):
        super().__init__(config, tokenizer, labels)
        self.prompt = PromptBuilder(tokenizer, self.labels, config.prompt, config.data.max_length)
        self.max_text_tokens = self.prompt.max_text_tokens

    @staticmethod
    def model_class():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def count_tokens(self, text: str) -> int:
        return self.prompt.count_tokens(text)

    def encode_input(self, text: str) -> list[int]:
        return self.prompt.encode_prompt(text)

    def encode_example(self, text: str, label: str) -> dict:
        encoded = self.prompt.encode_example(text, label)
        return {"input_ids": encoded.input_ids, "labels": encoded.labels}

    def collator(self) -> AnswerOnlyCollator:
        return AnswerOnlyCollator(self.tokenizer.pad_token_id)

    def loss(self, model, batch):
        return answer_only_loss(model, batch, self.config.training.label_smoothing)

    def scorer(self, model) -> LabelScorer:
        evaluation = self.config.evaluation
        return LabelScorer(model, self.prompt, token_budget=evaluation.token_budget,
                           max_batch_size=evaluation.batch_size, length_normalize=evaluation.length_normalize,
                           reuse_prefix=evaluation.reuse_prompt_prefix)

    def serving_description(self) -> dict:
        return {
            "labels": self.labels,
            "label_token_ids": self.prompt.label_token_ids,
            "answer_texts": {label: self.prompt.answer_text(label) for label in self.labels},
            "example_prompt": self.prompt.render("<passage>"),
        }


class AnswerOnlyCollator:
    """Left-pads input ids and labels; position ids restart at each row's first real token."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, "left")
        labels, _ = pad_batch([e["labels"] for e in examples], IGNORE_INDEX, "left")
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask), "labels": labels}


def answer_only_loss(model, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (with training.label_smoothing), projecting to the vocabulary
    only where they are.

    With left padding the answers end every row; the last K+1 positions (K = longest answer in the batch)
    hold every logit the loss needs, so the LM head never runs over the prompt.
    """
    labels = batch["labels"]
    answer_width = int((labels != IGNORE_INDEX).sum(dim=1).max())
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=last_positions(batch["input_ids"], answer_width + 1),
        use_cache=False,
    )
    logits = outputs.logits[:, :-1].float()  # position t predicts token t+1
    targets = labels[:, -answer_width:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)


def full_sequence_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stock causal-LM loss (logits at every position, cross-entropy where labels are set): the same value
    as answer_only_loss at a higher cost; the reference the benchmarks measure our shortcut against."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False).loss
