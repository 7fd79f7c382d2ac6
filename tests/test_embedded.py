"""The embedded default model loads from the pip package (no hub) and gives valid labels."""

import pytest

from framesft.config import FrameSFTConfig
from framesft.inference import evaluate_frame, load_zero_shot

from conftest import FRAMES

pytestmark = pytest.mark.slow


def test_embedded_default_predicts_valid_labels():
    config = FrameSFTConfig()
    assert config.model.base_model == "embedded:smollm2-135m-instruct"
    classifier = load_zero_shot(config, FRAMES)
    texts = ["Tariffs of ten per cent would make our car plants uncompetitive.",
             "I beg to move that the Bill be now read a Second time.",
             "A nurse from Portugal told me she lies awake worrying whether she can stay."]
    metrics, predictions = evaluate_frame(classifier, texts, ["Economic", "None", "Human Impact"],
                                          show_progress=False)
    assert set(predictions["predicted"]) <= set(FRAMES)
    assert metrics["n"] == 3
    probabilities = predictions[[f"p_{label}" for label in FRAMES]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-9
    # a real model, not random weights: the scores of a real passage are far from uniform
    assert probabilities.max(axis=1).min() > 1.5 / len(FRAMES)
