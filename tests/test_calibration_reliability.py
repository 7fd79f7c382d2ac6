"""Calibrated probabilities and the model as a coder, checked against known truths: a simulated over-confident
model, Krippendorff's own worked example, and a textbook Cohen's kappa."""

import json

import numpy as np
import pandas as pd
import pytest

from framesft.calibration import calibration_report, fit_temperature, probabilities
from framesft.cli import main
from framesft.reliability import cohen_kappa, krippendorff_alpha, model_as_coder

from conftest import SAMPLE_DATA


def over_confident_scores(rng, n):
    """True label probabilities softmax(z); the model reports 3 z: the right ranking, three times too sure."""
    z = rng.normal(0, 1.2, (n, 4))
    p = probabilities(z)
    truth = np.array([rng.choice(4, p=row) for row in p])
    return 3 * z, truth


def test_temperature_scaling_recovers_an_over_confident_model():
    rng = np.random.default_rng(7)
    fit_scores, fit_truth = over_confident_scores(rng, 3000)
    held_scores, held_truth = over_confident_scores(rng, 3000)
    temperature = fit_temperature(fit_scores, fit_truth)
    assert temperature == pytest.approx(3.0, rel=0.1)
    report = calibration_report(held_scores, held_truth, temperature)  # data it was not fitted on
    assert report["after"]["log_loss"] < report["before"]["log_loss"] - 0.1
    assert report["after"]["ece"] < report["before"]["ece"] / 2
    assert report["after"]["brier"] < report["before"]["brier"]
    assert (probabilities(held_scores, temperature).argmax(1) == held_scores.argmax(1)).all()  # no label changes


def test_no_temperature_from_too_few_passages_or_a_perfect_fit():
    """All passages right: the log loss falls forever as T -> 0, so fitting would make the model over-confident."""
    rng = np.random.default_rng(3)
    scores, truth = over_confident_scores(rng, 200)
    perfect = scores.argmax(axis=1)
    assert fit_temperature(scores, perfect) == 1.0
    assert fit_temperature(scores[:12], truth[:12]) == 1.0
    assert fit_temperature(scores, truth) != 1.0


def test_krippendorff_alpha_reproduces_krippendorffs_worked_example():
    """Krippendorff (2011), 'Computing Krippendorff's alpha-reliability', section C: four observers, twelve
    units, missing values; nominal alpha = 0.743."""
    rows = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .",
            "1 2 3 3 2 4 4 1 2 5 1 ."]
    names = {"1": "Conflict", "2": "Economic", "3": "None", "4": "Moral Value", "5": "Human Impact"}
    coders = [[names.get(v, "") for v in row.split()] for row in rows]
    assert krippendorff_alpha(coders, list(names.values())) == pytest.approx(0.743, abs=5e-4)


def test_cohen_kappa_reproduces_the_textbook_example():
    """50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4."""
    a = ["Yes"] * 25 + ["No"] * 25
    b = ["Yes"] * 20 + ["No"] * 5 + ["Yes"] * 10 + ["No"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_agreement_intervals_contain_the_point_estimate_and_humans_are_compared():
    rng = np.random.default_rng(1)
    labels = ["A", "B", "C"]
    gold = list(rng.choice(labels, 200))
    noisy = lambda rate: [g if rng.random() > rate else rng.choice(labels) for g in gold]  # noqa: E731
    report = model_as_coder(gold, noisy(0.3), labels, {"coder_a": noisy(0.1), "coder_b": noisy(0.1)},
                            n_resamples=200)
    model = report["model_vs_gold"]
    assert model["alpha_ci95"][0] < model["krippendorff_alpha"] < model["alpha_ci95"][1]
    assert model["kappa_ci95"][0] < model["cohen_kappa"] < model["kappa_ci95"][1]
    # the humans err less than the model: their agreement is higher than the model's with either of them
    assert report["human_vs_human"]["krippendorff_alpha"] > report["pairs"]["model vs coder_a"]["krippendorff_alpha"]
    assert set(report["pairs"]) == {"coder_a vs coder_b", "model vs coder_a", "model vs coder_b"}


@pytest.mark.slow
def test_training_fits_a_temperature_and_evaluate_uses_it(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"  # a copy: refitting the temperature must not change the run other tests share
    shutil.copytree(trained_run.run_dir, run)
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["fitted_on"] == "validation split" and calibration["temperature"] > 0
    if calibration["passages"] < 30:  # the sample data's validation split is small: left at 1, saying why
        assert calibration["temperature"] == 1.0 and "labelled passages" in calibration["not_fitted"]
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert {"ece", "brier", "log_loss"} <= set(metrics["calibration"]["after"])
    assert metrics["calibration"]["temperature"] == pytest.approx(calibration["temperature"])
    assert "krippendorff_alpha" in metrics["agreement"]["model_vs_gold"]

    # refit on a labelled file with two extra coders' columns, then evaluate: labels unchanged
    test = pd.concat([pd.read_csv(SAMPLE_DATA / name, keep_default_na=False) for name in ("test.csv", "train.csv")],
                     ignore_index=True)
    rng = np.random.default_rng(0)
    test["coder_a"] = test["frame_name"]
    test["coder_b"] = [label if rng.random() > 0.2 else "" for label in test["frame_name"]]  # '' = not coded
    labelled = tmp_path / "coded.csv"
    test.to_csv(labelled, index=False)
    assert main(["--quiet", "calibrate", str(run), "--data", str(labelled)]) == 0
    refitted = json.loads((run / "calibration.json").read_text())
    assert refitted["fitted_on"] == str(labelled)
    assert refitted["after"]["log_loss"] <= refitted["before"]["log_loss"] + 1e-9
    assert main(["--quiet", "evaluate", str(run), "--data", str(labelled), "--coder-columns", "coder_a,coder_b",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    err = capsys.readouterr().err
    assert "Krippendorff" in err and "expected calibration error" in err
    evaluated = json.loads((tmp_path / "eval" / "metrics_eval.json").read_text())
    assert evaluated["agreement"]["human_vs_human"]["krippendorff_alpha"] > 0.5
    predictions = pd.read_csv(tmp_path / "eval" / "predictions_eval.csv", keep_default_na=False)
    raw = pd.read_csv(run / "predictions_test.csv", keep_default_na=False)
    assert predictions["predicted"].tolist()[:24] == raw["predicted"].tolist()  # calibration never changes a label
    assert main(["--quiet", "evaluate", str(run), "--data", str(labelled), "--coder-columns", "coder_a,missing",
                 "--output-dir", str(tmp_path / "eval2")]) == 2
