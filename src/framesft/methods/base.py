"""The interface every training method implements (sft.py, classification.py): what differs between them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

if TYPE_CHECKING:
    import torch

    from ..config import FrameSFTConfig
    from ..scoring import LabelScores


class Scorer(Protocol):
    """Per-label log-probabilities for passages (or already encoded inputs)."""

    def score_texts(self, texts, on_progress: Callable[[int], None] | None = None) -> LabelScores: ...

    def score_prompts(self, inputs, on_progress: Callable[[int], None] | None = None) -> LabelScores: ...


class Method:
    """One training method: built for a config, a tokenizer and the label set (in id order)."""

    name: ClassVar[str]
    peft_task_type: ClassVar[str]  # tells PEFT what to train besides LoRA and what to save with the adapter

    def __init__(self, config: FrameSFTConfig, tokenizer, labels: list[str]):
        self.config = config
        self.tokenizer = tokenizer
        self.labels = list(labels)

    # ---- the model

    @staticmethod
    def model_class():
        """The transformers Auto class that loads the base model for this method."""
        raise NotImplementedError

    @staticmethod
    def model_kwargs(labels: list[str], pad_token_id: int | None) -> dict[str, Any]:
        """Extra `from_pretrained` arguments (the head needs the label set)."""
        return {}

    # ---- encoding: what data.max_length means

    max_text_tokens: int  # tokens left for the passage by data.max_length

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def encode_input(self, text: str) -> list[int]:
        """What the model reads for one passage."""
        raise NotImplementedError

    def encode_example(self, text: str, label: str) -> dict[str, Any]:
        """A training example: input ids and the target(s) the loss compares against."""
        raise NotImplementedError

    # ---- training and scoring

    def collator(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one micro-batch (with training.label_smoothing)."""
        raise NotImplementedError

    def scorer(self, model) -> Scorer:
        raise NotImplementedError

    def serving_description(self) -> dict | None:
        """What another server needs to score like framesft (written by `framesft export`); None: nothing."""
        return None
