import pytest

from framesft.config import PromptSection
from framesft.errors import ConfigError
from framesft.prompting import IGNORE_INDEX, PromptBuilder, check_answer_tokenization

from conftest import FRAMES

PASSAGE = "The Honourable Member knows that tariffs of ten per cent would make our plants uncompetitive."


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_answer_tokens_in_the_full_sequence_are_exactly_the_label_tokens(tokenizer, template):
    builder = PromptBuilder(tokenizer, FRAMES, PromptSection(template=template), max_length=512)
    assert check_answer_tokenization(builder, PASSAGE) == []
    for label in FRAMES:
        example = builder.encode_example(PASSAGE, label)
        answer = builder.label_token_ids[label]
        # the supervised positions are exactly the label's tokens followed by the end-of-answer token
        supervised = [t for t in example.labels if t != IGNORE_INDEX]
        assert supervised == answer == example.input_ids[-len(answer):]
        assert answer[-1] == builder.end_of_answer_id
        assert tokenizer.decode(answer[:-1]).strip() == label
        # every prompt position is masked
        n_prompt = len(example.input_ids) - len(answer)
        assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert example.input_ids[:n_prompt] == builder.encode_prompt(PASSAGE)


def test_chat_template_is_used_and_ends_the_turn_with_its_own_token(tokenizer):
    builder = PromptBuilder(tokenizer, FRAMES, PromptSection(), max_length=512)
    assert builder.use_chat_template
    assert tokenizer.convert_ids_to_tokens(builder.end_of_answer_id) == "<|im_end|>"
    prompt = builder.render(PASSAGE)
    assert prompt.endswith("<|im_start|>assistant\n")
    for label in FRAMES:
        assert f"- {label}" in prompt


def test_label_definitions_appear_in_the_prompt(tokenizer):
    section = PromptSection(label_definitions={"Economic": "money, trade and jobs"})
    builder = PromptBuilder(tokenizer, FRAMES, section, max_length=512)
    assert "- Economic: money, trade and jobs" in builder.render(PASSAGE)


def test_long_passages_are_truncated_to_fit_max_length(tokenizer):
    builder = PromptBuilder(tokenizer, FRAMES, PromptSection(), max_length=200)
    long_text = " ".join(["The Government must answer for the cost of leaving the customs union."] * 60)
    for label in FRAMES:
        example = builder.encode_example(long_text, label)
        assert len(example.input_ids) <= 200
        assert example.input_ids[-len(builder.label_token_ids[label]):] == builder.label_token_ids[label]


def test_max_length_below_the_prompt_length_is_a_config_error(tokenizer):
    with pytest.raises(ConfigError, match="data.max_length is 64 but the prompt without the passage"):
        PromptBuilder(tokenizer, FRAMES, PromptSection(), max_length=64)


def test_any_label_set_works(tokenizer):
    labels = ["pro-leave", "pro-remain", "neutral stance", "Überwachung"]
    builder = PromptBuilder(tokenizer, labels, PromptSection(), max_length=256)
    assert check_answer_tokenization(builder, PASSAGE) == []
