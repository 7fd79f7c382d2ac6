import json

import pytest
from scipy.stats import binomtest

from framesft.compare import compare_runs, paired_comparison
from framesft.training import train

from conftest import SAMPLE_DATA, tiny_config


def test_paired_comparison_mcnemar_and_interval():
    truth = ["A"] * 10 + ["B"] * 10
    pred_a = truth[:]                       # all right
    pred_b = ["B"] * 6 + ["A"] * 4 + ["B"] * 10  # wrong on 6 of the A passages
    result = paired_comparison(truth, pred_a, pred_b, ["A", "B"], n_resamples=500)
    assert (result["only_a_correct"], result["only_b_correct"]) == (6, 0)
    assert result["mcnemar_p"] == pytest.approx(binomtest(0, 6, 0.5).pvalue)
    low, high = result["ci95"]
    assert low <= result["f1_macro_difference"] <= high and low > 0


@pytest.mark.slow
def test_compare_sft_head_and_baseline(trained_run, tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "head", num_epochs=1)
    config.method = "classification"
    head = train(config, show_progress=False)
    result = compare_runs([trained_run.run_dir, head.run_dir], SAMPLE_DATA / "test.csv", tmp_path / "cmp",
                          baseline=True, show_progress=False)
    assert set(result["metrics"]) == {"tiny", "head", "tfidf-baseline"}
    assert len(result["pairs"]) == 3
    assert result["metrics"]["tiny"]["f1_macro"] == pytest.approx(trained_run.metrics["test"]["f1_macro"])
    for name in ("comparison.md", "comparison.html", "comparison.json"):
        assert (tmp_path / "cmp" / name).is_file()
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "McNemar p" in markdown and "tfidf-baseline" in markdown
    facts = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["facts"]
    assert facts["head"]["method"] == "classification" and facts["tiny"]["trainable_parameters"] > 0
