"""Prompts and training examples.

The prompt states the task and the allowed labels (with optional one-line definitions), then the passage.
The answer is the label followed by the end-of-turn token (the chat template's end of the assistant turn, or
EOS for the plain template). Loss is computed on the answer only.

Tokenization is done once per piece and the pieces are concatenated: the label's token ids are taken from the
label *in context* (after the prompt's last characters), so the ids the model is trained on are exactly the
ids the scorer later sums log-probabilities over. `check_answer_tokenization` proves this for every label.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PromptSection
from .errors import ConfigError

IGNORE_INDEX = -100
_PROBE = "\x00probe\x00"
PLAIN_ANSWER_CUE = "Frame:"


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]


class PromptBuilder:
    """Renders prompts for one tokenizer and label set and encodes them to token ids."""

    def __init__(self, tokenizer, labels: list[str], prompt: PromptSection, max_length: int):
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.settings = prompt
        self.max_length = max_length
        self.use_chat_template = self._wants_chat_template()
        self.end_of_answer_id = self._end_of_answer_id()
        self.label_token_ids = {label: self._answer_ids(label) for label in self.labels}
        self.max_answer_tokens = max(len(ids) for ids in self.label_token_ids.values())
        self.prompt_overhead = len(self._encode_rendered(""))
        self.max_text_tokens = max_length - self.prompt_overhead - self.max_answer_tokens
        if self.max_text_tokens < 16:
            raise ConfigError(
                f"data.max_length is {max_length} but the prompt without the passage already takes "
                f"{self.prompt_overhead} tokens and the longest answer {self.max_answer_tokens}; "
                f"raise data.max_length to at least {self.prompt_overhead + self.max_answer_tokens + 128}"
            )

    # ---- rendering

    def _wants_chat_template(self) -> bool:
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.settings.template == "chat" and not has_template:
            raise ConfigError("prompt.template is 'chat' but the tokenizer has no chat template; use 'auto' or 'plain'")
        return has_template if self.settings.template == "auto" else self.settings.template == "chat"

    def task_text(self, passage: str) -> str:
        lines = [self.settings.instruction.strip(), "", "Frames:"]
        for label in self.labels:
            definition = self.settings.label_definitions.get(label)
            lines.append(f"- {label}: {definition}" if definition else f"- {label}")
        lines += ["", "Passage:", passage, "", "Answer with the frame name only."]
        return "\n".join(lines)

    def render(self, passage: str) -> str:
        """The full prompt text, ending where the model's answer starts."""
        if self.use_chat_template:
            messages = []
            if self.settings.system_prompt:
                messages.append({"role": "system", "content": self.settings.system_prompt})
            messages.append({"role": "user", "content": self.task_text(passage)})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.task_text(passage) + "\n" + PLAIN_ANSWER_CUE

    def _encode_rendered(self, passage: str) -> list[int]:
        ids = self.tokenizer(self.render(passage), add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        # Chat templates write their own BOS; the plain template needs it added (Llama/Mistral expect it).
        if not self.use_chat_template and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    # ---- answers

    def _end_of_answer_id(self) -> int:
        """The token that closes the assistant's turn: what the chat template writes after the answer."""
        if self.use_chat_template:
            messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _PROBE}]
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False)
            suffix = rendered.split(_PROBE, 1)[1] if _PROBE in rendered else ""
            suffix_ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix.strip() else []
            if suffix_ids:
                return suffix_ids[0]
        if self.tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has neither a chat template end-of-turn token nor an EOS token")
        return self.tokenizer.eos_token_id

    def answer_text(self, label: str) -> str:
        return label if self.use_chat_template else " " + label

    def _answer_ids(self, label: str) -> list[int]:
        """The label's token ids as they appear after the prompt, plus the end-of-answer token."""
        probe = self.render("x")
        prompt_ids = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full_ids = self.tokenizer(probe + self.answer_text(label), add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ConfigError(
                f"the label {label!r} merges with the end of the prompt when tokenized; "
                "use a different prompt template (prompt.template) or rename the label"
            )
        label_ids = full_ids[len(prompt_ids) :]
        if not label_ids:
            raise ConfigError(f"the label {label!r} tokenizes to nothing")
        return label_ids + [self.end_of_answer_id]

    # ---- encoding

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, passage: str) -> list[int]:
        """Prompt ids for a passage, truncating the passage (never the instructions) to fit max_length."""
        budget = self.max_text_tokens
        passage_ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"]
        while True:
            if len(passage_ids) > budget:
                passage = self.tokenizer.decode(passage_ids[:budget], skip_special_tokens=True)
            ids = self._encode_rendered(passage)
            if len(ids) + self.max_answer_tokens <= self.max_length:
                return ids
            # Decoding and re-encoding can shift a few tokens; tighten the budget until it fits.
            budget = min(budget, len(passage_ids)) - 8

    def encode_example(self, passage: str, label: str) -> EncodedExample:
        prompt_ids = self.encode_prompt(passage)
        answer_ids = self.label_token_ids[label]
        return EncodedExample(
            input_ids=prompt_ids + answer_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        )

    def full_text(self, passage: str, label: str) -> str:
        """The training sequence as one string, for checks and inspection."""
        eoa = self.tokenizer.convert_ids_to_tokens(self.end_of_answer_id)
        return self.render(passage) + self.answer_text(label) + eoa


def check_answer_tokenization(builder: PromptBuilder, passage: str) -> list[str]:
    """Labels whose in-sequence tokens differ from the ids we train and score on (empty list: all good).

    Tokenizing the whole training sequence as one string must give exactly prompt ids + label ids; if a
    label's first token merged with the prompt's last characters, training and scoring would disagree.
    """
    problems = []
    for label in builder.labels:
        encoded = builder.encode_example(passage, label)
        whole = builder.tokenizer(builder.full_text(passage, label), add_special_tokens=False)["input_ids"]
        if not builder.use_chat_template and builder.tokenizer.bos_token_id is not None:
            whole = [builder.tokenizer.bos_token_id] + whole
        if whole != encoded.input_ids:
            problems.append(label)
    return problems
