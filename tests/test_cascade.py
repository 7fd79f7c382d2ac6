"""The bf16 margin cascade (cascade.py): fp32 labels from bf16 scores plus fp32 rescoring near the decision."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import framesft.cascade as cascade
from framesft.cascade import (MarginCascade, bf16_copy, largest_difference_change, probe_positions,
                              sensitive_probabilities)
from framesft.scoring import LabelScorer, LabelScores

from conftest import SAMPLE_DATA

LABELS = ["a", "b", "c", "d", "e", "f"]


class TableScorer:
    """Scores looked up by passage index: the 'prompt' of passage i is [i]. Counts what it scored."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self.scored: list[int] = []

    def score_prompts(self, prompts, on_progress=None):
        rows = [p[0] for p in prompts]
        self.scored += rows
        if on_progress:
            on_progress(len(rows))
        return LabelScores(LABELS, self.table[rows].copy())


def noisy_pair(n: int, noise: float, seed: int = 0):
    """Exact scores, and fast ones off by at most `noise` per score (uniform): a known bf16-like error."""
    rng = np.random.default_rng(seed)
    exact = rng.normal(0, 6, size=(n, len(LABELS)))
    fast = exact + rng.uniform(-noise, noise, size=exact.shape)
    return exact, fast


def run_cascade(exact: np.ndarray, fast: np.ndarray, offset=None, calls=(slice(None),)):
    exact_scorer, fast_scorer = TableScorer(exact), TableScorer(fast)
    scorer = MarginCascade(exact_scorer, fast_scorer, encode=lambda i: [i], offset=offset)
    indices = np.arange(len(exact))
    scores = np.vstack([scorer.score_prompts([[i] for i in indices[part]]).scores for part in calls])
    return scores, scorer, exact_scorer


def test_cascade_keeps_the_exact_labels_under_a_known_error():
    exact, fast = noisy_pair(2000, noise=0.15)
    assert (fast.argmax(1) != exact.argmax(1)).sum() > 20  # the fast scores alone flip labels
    scores, scorer, exact_scorer = run_cascade(exact, fast, calls=(slice(0, 700), slice(700, None)))
    tally = scorer.tally
    assert (scores.argmax(1) == exact.argmax(1)).all()
    # The bound: SAFETY x the largest change of a score difference on the probe (32 passages spread over the
    # first call), which cannot exceed the 2 x noise the error allows.
    probe = probe_positions(700)
    assert tally.probe_passages == cascade.PROBE_PASSAGES == len(probe) and probe[0] == 0 and probe[-1] == 699
    assert tally.largest_change == pytest.approx(largest_difference_change(fast[probe], exact[probe]))
    assert 0.15 < tally.largest_change <= 0.3 and tally.bound == pytest.approx(cascade.SAFETY * tally.largest_change)
    margins = np.sort(fast, 1)[:, -1] - np.sort(fast, 1)[:, -2]
    rescored = np.flatnonzero((margins <= tally.bound) | sensitive_probabilities(fast, 1.0, tally.largest_change))
    rescored = np.setdiff1d(rescored, probe)
    # Exact scores for the probe, the close calls and the sensitive probabilities, the fast ones elsewhere; not
    # all are rescored (about half under this large error; bf16's own is far smaller).
    assert sorted(exact_scorer.scored) == sorted(list(probe) + list(rescored))
    np.testing.assert_array_equal(scores[probe], exact[probe])
    np.testing.assert_array_equal(scores[rescored], exact[rescored])
    kept = np.setdiff1d(np.arange(2000), np.union1d(probe, rescored))
    np.testing.assert_array_equal(scores[kept], fast[kept])
    assert tally.rescored == len(rescored) and tally.fast_passages == 2000 - 32
    assert 0.05 < len(rescored) / 2000 < 0.6
    exact_p, fast_p, got_p = (LabelScores(LABELS, x).probabilities for x in (exact, fast, scores))
    assert np.abs(fast_p - exact_p).max() > 0.05  # the fast scores alone move probabilities further
    assert np.abs(got_p - exact_p).max() < cascade.PROBABILITY_TOLERANCE


def test_calls_shorter_than_the_probe_are_scored_in_fp32_until_the_bound_is_measured():
    exact, fast = noisy_pair(100, noise=0.15)
    scores, scorer, exact_scorer = run_cascade(exact, fast, calls=(slice(0, 5), slice(5, 10), slice(10, None)))
    np.testing.assert_array_equal(scores[:10], exact[:10])  # two short calls: fp32 alone, no bound yet
    tally = scorer.tally
    assert (tally.fp32_only, tally.probe_passages, tally.fast_passages) == (10, 32, 100 - 10 - 32)
    probe = 10 + probe_positions(90)
    assert tally.largest_change == pytest.approx(largest_difference_change(fast[probe], exact[probe]))
    assert exact_scorer.scored[:42] == list(range(10)) + list(probe)


def test_the_cascade_steps_aside_when_most_passages_need_rescoring():
    """A model whose labels are mostly close calls (a weak run: margins small against bf16's error) would score
    nearly every passage twice, slower than fp32 alone: once more than half of at least 64 bf16-scored passages
    needed rescoring, the cascade scores the rest in fp32 alone. A model with clear margins keeps the cascade."""
    rng = np.random.default_rng(3)
    exact = rng.normal(0, 0.05, size=(400, len(LABELS)))  # every margin far inside a bf16-like error
    fast = exact + rng.uniform(-0.15, 0.15, size=exact.shape)
    scores, scorer, exact_scorer = run_cascade(exact, fast, calls=[slice(i, i + 40) for i in range(0, 400, 40)])
    tally = scorer.tally
    assert (scores.argmax(1) == exact.argmax(1)).all()  # fp32 labels either way
    assert tally.stepped_aside and tally.rescored > cascade.MAX_RESCORED_SHARE * tally.fast_passages
    # judged after the first call that brought the bf16-scored passages to 64: the probe's call (8 of 40 in
    # bf16) and the next two calls (88); the seven calls after it in fp32 alone, the bf16 scorer never asked
    assert (tally.probe_passages, tally.fast_passages, tally.fp32_only) == (32, 88, 280)
    np.testing.assert_array_equal(scores[120:], exact[120:])
    assert sum(i >= 120 for i in exact_scorer.scored) == 280
    assert "stepped aside" in tally.summary() and tally.as_dict()["stepped_aside"]

    # one long call (a predict chunk): judged after its first block of 64 bf16-scored passages, not at its end
    scores, scorer, exact_scorer = run_cascade(exact, fast)
    tally = scorer.tally
    assert (scores.argmax(1) == exact.argmax(1)).all() and tally.stepped_aside
    assert (tally.probe_passages, tally.fast_passages, tally.fp32_only) == (32, 64, 400 - 32 - 64)
    fast_scorer = scorer.fast
    assert len(fast_scorer.scored) == 32 + 64  # the probe and the first block; the rest never scored in bf16
    assert sorted(exact_scorer.scored[:32]) == sorted(fast_scorer.scored[:32]) == probe_positions(400).tolist()
    assert len(exact_scorer.scored) == 400  # the probe, then one fp32 call: the 64 sent back and the other 304
    progress = []
    fresh = MarginCascade(TableScorer(exact), TableScorer(fast), encode=lambda i: [i])
    fresh.score_prompts([[i] for i in range(400)], on_progress=progress.append)
    assert sum(progress) == 400  # a progress bar reaches its end

    clear = rng.normal(0, 6, size=(400, len(LABELS)))  # clear margins: few close calls, the cascade stays
    _, scorer, _ = run_cascade(clear, clear + rng.uniform(-0.01, 0.01, size=clear.shape),
                               calls=[slice(i, i + 40) for i in range(0, 400, 40)])
    assert not scorer.tally.stepped_aside and scorer.tally.fast_passages == 400 - 32


def test_the_probe_spans_the_call_so_a_sorted_corpus_cannot_hide_a_larger_error():
    """A corpus sorted so that the passages bf16 handles worst come last (say, the longest): a probe of the
    call's first 32 passages would see only the small error, set a bound too tight, and keep flipped labels."""
    exact, fast = noisy_pair(2000, noise=0.02)
    fast[1000:] = exact[1000:] + np.random.default_rng(5).uniform(-0.15, 0.15, size=(1000, len(LABELS)))
    assert (fast[1000:].argmax(1) != exact[1000:].argmax(1)).sum() > 10
    scores, scorer, _ = run_cascade(exact, fast)
    assert (scores.argmax(1) == exact.argmax(1)).all()
    assert scorer.tally.largest_change > 0.15  # measured on passages of both halves
    with pytest.MonkeyPatch.context() as patch:  # the check can fail: probing the first 32 only
        patch.setattr(cascade, "probe_positions", lambda n: np.arange(cascade.PROBE_PASSAGES))
        first_only, _, _ = run_cascade(exact, fast)
    assert (first_only.argmax(1) != exact.argmax(1)).sum() > 0


def test_without_the_safety_margin_labels_flip():
    """The check above can fail: with the bound at zero, the cascade returns the fast labels (the probability
    criterion, which does not use the bound, switched off)."""
    exact, fast = noisy_pair(2000, noise=0.15)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cascade, "SAFETY", 0.0)
        patch.setattr(cascade, "PROBABILITY_TOLERANCE", np.inf)
        scores, _, _ = run_cascade(exact, fast)
    assert (scores.argmax(1) != exact.argmax(1)).sum() > 10


def test_margins_are_taken_on_the_scores_the_labels_come_from(monkeypatch):
    """An adapted run adds temperature x bias to the raw scores: the cascade measures margins after it. (The
    probability criterion is switched off here: it rescores many passages for its own reason.)"""
    monkeypatch.setattr(cascade, "PROBABILITY_TOLERANCE", np.inf)
    exact, fast = noisy_pair(2000, noise=0.3, seed=1)
    offset = np.array([1.5, 0.0, -1.0, 0.5, 0.0, 2.0])
    assert ((fast + offset).argmax(1) != (exact + offset).argmax(1)).sum() > 20
    scores, _, _ = run_cascade(exact, fast, offset=offset)
    assert ((scores + offset).argmax(1) == (exact + offset).argmax(1)).all()
    unaware, _, _ = run_cascade(exact, fast)  # margins on the raw scores miss some flips of the adjusted label
    assert ((unaware + offset).argmax(1) != (exact + offset).argmax(1)).sum() > 5


@pytest.fixture(scope="module")
def tiny_fp32(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_cascade_over_a_bf16_copy_gives_the_fp32_labels(tiny_fp32, tokenizer):
    from framesft.config import PromptSection
    from framesft.prompting import PromptBuilder

    builder = PromptBuilder(tokenizer, ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact",
                                        "None"], PromptSection(), max_length=256)
    texts = pd.concat([pd.read_csv(SAMPLE_DATA / f, keep_default_na=False) for f in ("train.csv", "test.csv")])
    prompts = [builder.encode_prompt(t) for t in texts["chunk_text"]]
    reference = LabelScorer(tiny_fp32, builder).score_prompts(prompts).scores
    fast_model = bf16_copy(tiny_fp32)
    assert next(fast_model.parameters()).dtype == torch.bfloat16
    assert next(tiny_fp32.parameters()).dtype == torch.float32  # the copy leaves the fp32 model alone
    fast_alone = LabelScorer(fast_model, builder).score_prompts(prompts).scores
    # The random model gives every passage nearly the same scores; an offset (as an adapted run's biases) that
    # centres each label puts the passages near their decision boundaries, where bf16 rounding decides.
    offset = -np.median(reference, axis=0)
    labels = (reference + offset).argmax(1)
    assert len(set(labels)) == 6 and ((fast_alone + offset).argmax(1) != labels).sum() > 5
    scorer = MarginCascade(LabelScorer(tiny_fp32, builder), LabelScorer(fast_model, builder),
                           builder.encode_prompt, offset)
    got = scorer.score_prompts(prompts).scores
    assert ((got + offset).argmax(1) == labels).all()
    assert 0 < scorer.tally.largest_change < 1 and scorer.tally.fast_passages == len(prompts) - 32


def test_the_bf16_copy_is_the_converted_deep_copy_with_its_ties(tiny_fp32):
    fast = bf16_copy(tiny_fp32)
    expected = copy.deepcopy(tiny_fp32).to(torch.bfloat16)
    got = {**fast.state_dict(), **dict(fast.named_buffers())}  # buffers that state_dict leaves out as well
    want = {**expected.state_dict(), **dict(expected.named_buffers())}
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    originals = dict(tiny_fp32.named_parameters())
    for name, parameter in fast.named_parameters():
        assert parameter.dtype == torch.bfloat16 and parameter.data_ptr() != originals[name].data_ptr()
        assert parameter.requires_grad == originals[name].requires_grad
    assert next(tiny_fp32.parameters()).dtype == torch.float32
    tied = tiny_fp32.get_input_embeddings().weight is tiny_fp32.get_output_embeddings().weight
    assert (fast.get_input_embeddings().weight is fast.get_output_embeddings().weight) == tied
    assert not fast.training


@pytest.mark.parametrize("kind, expected", [("amx", True), ("avx512_bf16", False), ("avx2", False), ("zen5", False)])
def test_the_plan_cascades_where_bf16_is_faster(monkeypatch, tiny_model_dir, tmp_path, kind, expected):
    from conftest import simulate_cpu, tiny_config
    from framesft.errors import ConfigError
    from framesft.precision import resolve_plan

    simulate_cpu(monkeypatch, kind)
    cpu = torch.device("cpu")
    config = tiny_config(tiny_model_dir, tmp_path / "run")
    plan = resolve_plan(config, cpu)
    assert plan.scoring_cascade is expected and plan.scoring_weights == "float32"
    assert ("bf16 margin cascade" in plan.line()) is expected
    config.evaluation.bf16_cascade = False
    assert not resolve_plan(config, cpu).scoring_cascade
    config.evaluation.bf16_cascade = True  # forced: on every CPU
    assert resolve_plan(config, cpu).scoring_cascade
    config.model.dtype = "bfloat16"
    with pytest.raises(ConfigError, match="evaluation.bf16_cascade is true but model.dtype is bfloat16"):
        resolve_plan(config, cpu)
    config.model.dtype = "float32"  # an explicit dtype is obeyed: no cascade unless forced
    config.evaluation.bf16_cascade = None
    assert not resolve_plan(config, cpu).scoring_cascade


def test_corpus_prediction_through_the_cascade_has_the_fp32_labels(trained_run, tmp_path, monkeypatch):
    from conftest import simulate_cpu
    from framesft.corpus import predict_corpus
    from framesft.runfolder import read_provenance

    texts = pd.concat([pd.read_csv(SAMPLE_DATA / f, keep_default_na=False) for f in ("train.csv", "test.csv")])
    corpus = tmp_path / "corpus.csv"
    texts[["chunk_text"]].to_csv(corpus, index=False)
    simulate_cpu(monkeypatch, "avx2")  # the plan scores in fp32 alone (whichever --cpu-kind the suite runs as)
    predict_corpus(trained_run.run_dir, corpus, tmp_path / "fp32.csv", chunk_rows=40, show_progress=False)
    simulate_cpu(monkeypatch, "amx")  # the plan now scores through the cascade
    predict_corpus(trained_run.run_dir, corpus, tmp_path / "cascade.csv", chunk_rows=40, show_progress=False)
    fp32 = pd.read_csv(tmp_path / "fp32.csv", keep_default_na=False)
    cascaded = pd.read_csv(tmp_path / "cascade.csv", keep_default_na=False)
    assert list(cascaded["predicted"]) == list(fp32["predicted"])  # the labels themselves: tests above
    probabilities = [c for c in fp32.columns if c.startswith("p_")]
    assert np.abs(cascaded[probabilities].to_numpy() - fp32[probabilities].to_numpy()).max() < 0.03
    tally = read_provenance(tmp_path / "cascade.csv")["bf16_cascade"]
    assert tally["probe_passages"] == 32 and tally["fast_passages"] == len(texts) - 32
    assert "bf16_cascade" not in read_provenance(tmp_path / "fp32.csv")


def test_a_resumed_cascade_prediction_equals_an_uninterrupted_one(trained_run, tmp_path, monkeypatch):
    """An attempt interrupted after two chunks, then resumed: the resumed attempt keeps the bound the first one
    measured (which passages are rescored in fp32 depends on it), so the output equals an uninterrupted
    prediction's, scores included, and the provenance counts the rows of both attempts."""
    from conftest import simulate_cpu
    import framesft.corpus as corpus_module
    from framesft.runfolder import read_provenance

    texts = pd.read_csv(SAMPLE_DATA / "train.csv", keep_default_na=False)["chunk_text"].tolist()
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"chunk_text": [f"{texts[i % len(texts)]} ({i})" for i in range(160)]}).to_csv(corpus, index=False)
    simulate_cpu(monkeypatch, "amx")  # the plan scores through the cascade
    uninterrupted = tmp_path / "uninterrupted.csv"
    corpus_module.predict_corpus(trained_run.run_dir, corpus, uninterrupted, chunk_rows=40, show_progress=False)
    write_part = corpus_module.write_part

    def write_two_parts_then_stop(parts, index, table):
        if index == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, between two chunks
        write_part(parts, index, table)

    monkeypatch.setattr(corpus_module, "write_part", write_two_parts_then_stop)
    out = tmp_path / "labels.csv"
    with pytest.raises(KeyboardInterrupt):
        corpus_module.predict_corpus(trained_run.run_dir, corpus, out, chunk_rows=40, show_progress=False)
    assert len(list((tmp_path / "labels.csv.parts").glob("part-*.parquet"))) == 2
    monkeypatch.setattr(corpus_module, "write_part", write_part)
    # the resumed attempt's first chunk would probe passages the uninterrupted run scored in bf16 alone
    measured = []
    score_prompts = corpus_module.MarginCascade.score_prompts
    monkeypatch.setattr(corpus_module.MarginCascade, "score_prompts",
                        lambda self, prompts, *a: measured.append(self.tally.bound) or score_prompts(self, prompts, *a))
    assert corpus_module.predict_corpus(trained_run.run_dir, corpus, out, chunk_rows=40, show_progress=False) == 160
    tally = read_provenance(out)["bf16_cascade"]
    assert measured and measured[0] == tally["bound"] > 0  # the bound was in force before the first chunk
    assert tally["probe_passages"] == 32  # probed once, by the first attempt
    assert tally["probe_passages"] + tally["fast_passages"] + tally["fp32_only"] == 160
    assert 0 <= tally["rescored"] <= tally["fast_passages"]
    resumed, reference = (pd.read_csv(path, keep_default_na=False) for path in (out, uninterrupted))
    pd.testing.assert_frame_equal(resumed, reference)


def test_a_resumed_cascade_ignores_the_tally_of_a_chunk_without_its_part(tmp_path):
    """An attempt stopped between writing a chunk's cascade tally and its part: the resumed attempt scores that
    chunk again, so its tally must not count (it would step aside a chunk early, and the output would differ)."""
    from framesft.corpus import part_path, resume_cascade_state, tally_path
    from framesft.files import write_json

    for index, (fast, rescored, stepped_aside) in enumerate([(8, 5, False), (40, 26, False), (40, 30, True)]):
        write_json(tally_path(tmp_path, index), {"process": 0, "bound": 0.2, "largest_change": 0.1,
                                                 "fast_passages": fast, "rescored": rescored,
                                                 "stepped_aside": stepped_aside})
    for index in (0, 1):  # the third chunk's part was never written
        part_path(tmp_path, index).write_bytes(b"")
    resumed = MarginCascade(None, None, None)
    resume_cascade_state(resumed, tmp_path, 0)
    assert (resumed.tally.bound, resumed.tally.fast_passages, resumed.tally.rescored) == (0.2, 48, 31)
    assert not resumed.tally.stepped_aside
    part_path(tmp_path, 2).write_bytes(b"")
    resume_cascade_state(resumed, tmp_path, 0)
    assert (resumed.tally.fast_passages, resumed.tally.rescored, resumed.tally.stepped_aside) == (88, 61, True)
