"""The two ways framesft trains a classifier, behind one interface.

`sft` (methods/sft.py): the causal LM learns to generate the label; every label is scored exactly.
`classification` (methods/classification.py): a sequence-classification head on the same base model.

Everything else (data, checks, label map, metrics, early stopping, run folders, evaluate/predict/export) is
shared and asks the method for what differs: the model class and PEFT task type, how a passage and a training
example are encoded, the collator, the loss, the scorer, and what `data.max_length` means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, Scorer
from .classification import ClassificationHead
from .sft import GenerativeSFT

if TYPE_CHECKING:
    from ..config import FrameSFTConfig

__all__ = ["Method", "Scorer", "ClassificationHead", "GenerativeSFT", "method_class", "build_method"]

METHODS: dict[str, type[Method]] = {"sft": GenerativeSFT, "classification": ClassificationHead}


def method_class(name: str) -> type[Method]:
    return METHODS[name]


def build_method(config: FrameSFTConfig, tokenizer, labels: list[str]) -> Method:
    return method_class(config.method)(config, tokenizer, labels)
