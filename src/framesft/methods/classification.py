"""The sibling approach: a sequence-classification head on the same base model (LoRA on the same modules,
the head trained in full).

- encoding: the passage alone (no instructions), truncated to `data.max_length` tokens; the head reads the
  final token's hidden state; the target is the label's index;
- batching: right padding;
- scoring: the log-softmax of the head's logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..scoring import LabelScores, pad_batch, token_budget_batches
from .base import Method


class ClassificationHead(Method):
    name = "classification"
    peft_task_type = "SEQ_CLS"  # PEFT then trains the new head ("score") in full and saves it with the adapter

    def __init__(self, config, tokenizer, labels):
        super().__init__(config, tokenizer, labels)
        self.max_text_tokens = config.data.max_length

    @staticmethod
    def model_class():
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    @staticmethod
    def model_kwargs(labels, pad_token_id):
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": pad_token_id}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_input(self, text: str) -> list[int]:
        return encode_passage(self.tokenizer, text, self.config.data.max_length)

    def encode_example(self, text: str, label: str) -> dict:
        return {"input_ids": self.encode_input(text), "labels": self.labels.index(label)}

    def collator(self) -> HeadCollator:
        return HeadCollator(self.tokenizer.pad_token_id)

    def loss(self, model, batch):
        return head_loss(model, batch, self.config.training.label_smoothing)

    def scorer(self, model) -> HeadScorer:
        evaluation = self.config.evaluation
        return HeadScorer(model, self.tokenizer, self.labels, self.config.data.max_length,
                          evaluation.token_budget, evaluation.batch_size)


def encode_passage(tokenizer, text: str, max_length: int) -> list[int]:
    """The passage alone (no instructions): the head reads the final token's hidden state."""
    return tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


class HeadCollator:
    """Right-pads input ids; labels are class indices."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, "right")
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def head_loss(model, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=label_smoothing)


class HeadScorer:
    """Label log-probabilities from the classification head (log-softmax of its logits)."""

    def __init__(self, model, tokenizer, labels: list[str], max_length: int, token_budget: int = 4096,
                 max_batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size

    def score_texts(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None) -> LabelScores:
        return self.score_prompts([encode_passage(self.tokenizer, t, self.max_length) for t in texts], on_progress)

    def score_prompts(self, inputs: Sequence[list[int]], on_progress=None) -> LabelScores:
        scores = np.zeros((len(inputs), len(self.labels)))
        collate = HeadCollator(self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for batch in token_budget_batches([len(i) for i in inputs], self.token_budget, self.max_batch_size):
                    tensors = collate([{"input_ids": inputs[i], "labels": 0} for i in batch])
                    logits = self.model(input_ids=tensors["input_ids"].to(device),
                                        attention_mask=tensors["attention_mask"].to(device)).logits
                    scores[batch] = torch.log_softmax(logits.float(), -1).cpu().numpy()
                    if on_progress:
                        on_progress(len(batch))
        finally:
            self.model.train(was_training)
        return LabelScores(self.labels, scores)
