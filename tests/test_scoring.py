import random

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
