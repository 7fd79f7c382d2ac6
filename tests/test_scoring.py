import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from framesft.config import PromptSection
from framesft.prompting import PromptBuilder
from framesft.scoring import LabelScorer, naive_label_scores, token_budget_batches

from conftest import SAMPLE_DATA

# Label token counts (before the end-of-answer token) from 1 to 4 with the SmolLM2 tokenizer; several share
# their first token ("Economic", "Economic policy", "Economic hardship for families").
LABELS = ["Economic", "Economic policy", "Economic hardship for families", "None", "Moral Value", "Human Impact"]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # Random init gives near-uniform attention and near-equal label scores, which would hide position or
    # masking mistakes; sharpen attention so positions matter.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(15)
            layer.self_attn.k_proj.weight.mul_(15)
    return model.eval()


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer, LABELS, PromptSection(), max_length=256)


def random_prompts(builder, n, seed):
    import pandas as pd

    words = " ".join(pd.read_csv(SAMPLE_DATA / "train.csv")["chunk_text"]).split()
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 120))) for _ in range(n)]
    return [builder.encode_prompt(t) for t in texts]


def test_label_set_covers_one_to_four_tokens_with_shared_first_tokens(builder):
    lengths = {len(ids) - 1 for ids in builder.label_token_ids.values()}
    assert lengths == {1, 2, 3, 4}
    firsts = [ids[0] for ids in builder.label_token_ids.values()]
    assert len(set(firsts)) < len(firsts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_scorer_equals_naive_scoring(tiny_model, builder, seed):
    prompts = random_prompts(builder, 9, seed)
    fast = LabelScorer(tiny_model, builder, token_budget=600, max_batch_size=4).score_prompts(prompts).scores
    slow = naive_label_scores(tiny_model, builder, prompts)
    np.testing.assert_allclose(fast, slow, atol=2e-4, rtol=1e-5)
    assert np.ptp(slow) > 1.0  # the comparison is not between near-constant numbers


def test_scorer_with_lora_adapter_unmerged_and_merged(tiny_model_dir, builder):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False)).eval()
    prompts = random_prompts(builder, 6, seed=5)
    unmerged = LabelScorer(model, builder, token_budget=500).score_prompts(prompts).scores
    np.testing.assert_allclose(unmerged, naive_label_scores(model, builder, prompts), atol=2e-4)
    merged = model.merge_and_unload().eval()
    np.testing.assert_allclose(LabelScorer(merged, builder).score_prompts(prompts).scores, unmerged, atol=2e-4)


def test_bf16_scorer_agrees_with_naive_bf16(tiny_model_dir, builder):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    prompts = random_prompts(builder, 6, seed=7)
    fast = LabelScorer(model, builder).score_prompts(prompts).scores
    slow = naive_label_scores(model, builder, prompts)
    np.testing.assert_allclose(fast, slow, atol=0.15)


def test_outputs_come_back_in_input_order(tiny_model, builder):
    prompts = random_prompts(builder, 8, seed=3)
    together = LabelScorer(tiny_model, builder, token_budget=10_000).score_prompts(prompts).scores
    one_by_one = np.vstack([LabelScorer(tiny_model, builder).score_prompts([p]).scores for p in prompts])
    np.testing.assert_allclose(together, one_by_one, atol=2e-4)


def test_length_normalisation_divides_by_label_token_count(tiny_model, builder):
    prompts = random_prompts(builder, 3, seed=4)
    raw = LabelScorer(tiny_model, builder).score_prompts(prompts).scores
    normalised = LabelScorer(tiny_model, builder, length_normalize=True).score_prompts(prompts).scores
    counts = np.array([len(builder.label_token_ids[l]) for l in LABELS])
    np.testing.assert_allclose(normalised, raw / counts)


def test_token_budget_batches_cover_every_index_once_within_budget():
    lengths = [5, 300, 40, 41, 200, 7, 7, 120]
    batches = list(token_budget_batches(lengths, token_budget=400, max_batch_size=3))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 400


def test_shared_prompt_prefix_is_computed_once_and_scores_as_without_it(tiny_model, builder, monkeypatch):
    """The instructions and label list every prompt starts with run once per call; each batch continues from a
    copy of their keys and values. Scores equal those of whole prompts and of the naive scorer."""
    prompts = random_prompts(builder, 10, seed=11)
    cached = LabelScorer(tiny_model, builder, token_budget=900, max_batch_size=3)
    width = len(cached.prefix)
    assert width >= 16 and all(p[:width] == cached.prefix for p in prompts)
    assert any(p[width] != prompts[0][width] for p in prompts)  # the prefix stops where the passages begin
    widths = []  # input widths of the model's forward calls: the prefix once, then passages only
    forward = tiny_model.forward
    monkeypatch.setattr(tiny_model, "forward", lambda *a, **k: widths.append(k["input_ids"].shape[1]) or
                        forward(*a, **k))
    fast = cached.score_prompts(prompts).scores
    monkeypatch.undo()
    prompt_passes = [w for w in widths if w > 8]  # the label continuations are a few tokens wide
    assert prompt_passes[0] == width and width not in prompt_passes[1:]
    assert max(prompt_passes[1:]) == max(len(p) for p in prompts) - width
    whole = LabelScorer(tiny_model, builder, token_budget=900, max_batch_size=3, reuse_prefix=False)
    assert whole.prefix == []
    np.testing.assert_allclose(fast, whole.score_prompts(prompts).scores, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(fast, naive_label_scores(tiny_model, builder, prompts), atol=2e-4, rtol=1e-5)


def test_prompts_without_the_shared_prefix_are_scored_whole(tiny_model, builder):
    """A prompt that does not start with the prefix (here one from another label set) turns the cache off for the
    call rather than scoring it against the wrong keys and values."""
    other = PromptBuilder(builder.tokenizer, ["Yes", "No"], PromptSection(), max_length=256)
    prompts = random_prompts(builder, 3, seed=12) + [other.encode_prompt("Tariffs cost jobs.")]
    scorer = LabelScorer(tiny_model, builder)
    assert scorer.prefix and prompts[-1][:len(scorer.prefix)] != scorer.prefix
    np.testing.assert_allclose(scorer.score_prompts(prompts).scores,
                               naive_label_scores(tiny_model, builder, prompts), atol=2e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("base_model", ["embedded:smollm2-135m-instruct", "embedded:gemma3-270m"])
def test_embedded_models_score_real_prompts_the_same_with_the_shared_prefix(base_model):
    """The Brexit config's prompt (label definitions) on both embedded models: a long shared prefix, and scores
    equal to whole prompts'."""
    import pandas as pd

    from framesft.config import load_config
    from framesft.modeling import load_tokenizer, resolve_model_path

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "gemma3-brexit.yaml",
                         [f"model.base_model={base_model}"])
    path = resolve_model_path(base_model)
    tokenizer = load_tokenizer(path, False)
    builder = PromptBuilder(tokenizer, config.data.labels_in_order(), config.prompt, config.data.max_length)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = pd.read_csv(SAMPLE_DATA / "test.csv", dtype=str, keep_default_na=False)["chunk_text"].tolist()[:6]
    prompts = [builder.encode_prompt(t) for t in texts]
    cached = LabelScorer(model, builder, max_batch_size=3)
    assert len(cached.prefix) > 100  # the instructions and six labels with their definitions
    whole = LabelScorer(model, builder, max_batch_size=3, reuse_prefix=False)
    a, b = cached.score_prompts(prompts), whole.score_prompts(prompts)
    assert a.predictions == b.predictions
    np.testing.assert_allclose(a.scores, b.scores, atol=2e-3, rtol=1e-4)
