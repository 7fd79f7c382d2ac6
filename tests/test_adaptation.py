"""Adaptation to coded passages (`adaptation.adapt_run`, Python only): the per-label bias against a known truth (a
simulated label shift, whose correction is known in closed form), the cross-fitted check, and adapt_run end to end
with a real trained run: the adapted folder, its predictions, and estimate refusing an audit the run was adapted
on."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from framesft.adaptation import adapt_run, crossfit_check, passage_fingerprint
from framesft.calibration import fit_temperature_and_bias, probabilities
from framesft.cli import main
from framesft.errors import DataError, RunFolderError
from framesft.inference import load_classifier
from framesft.scoring import predictions_table

from conftest import SAMPLE_DATA

LABELS = ["Conflict", "Economic", "Moral", "None"]


def shifted_passages(rng, n: int, target_prior: np.ndarray, training_prior: np.ndarray | None = None):
    """Passages whose label scores are the exact log-posteriors under a training prior (uniform unless given;
    Gaussian classes in 2-D), and labels drawn from another prior: the correction is then known in closed form,
    bias = log(target prior) - log(training prior) + a constant, temperature 1 (Saerens et al. 2002)."""
    training_prior = np.full(len(LABELS), 1 / len(LABELS)) if training_prior is None else training_prior
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5], [1.5, 1.5]])
    truth = rng.choice(len(LABELS), n, p=target_prior)
    points = centres[truth] + rng.normal(size=(n, 2))
    joint = -0.5 * ((points[:, None, :] - centres[None]) ** 2).sum(axis=2) + np.log(training_prior)[None, :]
    return joint - np.logaddexp.reduce(joint, axis=1, keepdims=True), truth


def test_bias_recovers_the_known_label_shift_correction():
    rng = np.random.default_rng(0)
    prior = np.array([0.55, 0.25, 0.15, 0.05])
    scores, truth = shifted_passages(rng, 40_000, prior)
    temperature, bias = fit_temperature_and_bias(scores, truth, penalty=0.0)
    expected = np.log(prior) - np.log(prior).mean()
    assert temperature == pytest.approx(1.0, abs=0.05)
    assert bias - bias.mean() == pytest.approx(expected, abs=0.08)
    # the default penalty shrinks the biases toward 0 but keeps their order and most of their size
    _, shrunk = fit_temperature_and_bias(scores, truth)
    assert list(np.argsort(shrunk)) == list(np.argsort(expected)) and np.abs(shrunk).sum() < np.abs(bias).sum()
    assert abs(shrunk.sum()) < 1e-3  # the penalty picks the biases that sum to zero


def test_temperature_alone_is_the_bias_free_fit():
    rng = np.random.default_rng(1)
    scores, truth = shifted_passages(rng, 20_000, np.full(4, 0.25))  # no shift: nothing to correct
    temperature, bias = fit_temperature_and_bias(3.0 * scores, truth, penalty=0.0)  # over-confident by 3x
    assert temperature == pytest.approx(3.0, rel=0.05) and np.abs(bias - bias.mean()).max() < 0.05


def test_crossfit_check_finds_a_real_shift_better_and_no_shift_not_better():
    # a model trained where the labels were skewed under-predicts the labels rare there; the coded passages are
    # balanced, so the correction raises F1 macro (and accuracy)
    rng = np.random.default_rng(2)
    shifted, truth = shifted_passages(rng, 400, np.full(4, 0.25), training_prior=np.array([0.6, 0.25, 0.1, 0.05]))
    check = crossfit_check(shifted, truth, LABELS, folds=5, repeats=2)
    assert check["verdict"].startswith("better") and check["mean_f1_macro_difference"] > 0
    assert len(check["adapted"]) == 2 and check["passages"] == 400
    first = check["adapted"][0]
    assert first["difference_ci95"][0] > 0 and first["mcnemar_p"] < 0.05
    assert check["unadapted"]["f1_macro"] < first["f1_macro"]

    same, truth = shifted_passages(rng, 400, np.full(4, 0.25))
    check = crossfit_check(same, truth, LABELS, folds=5, repeats=2)
    assert not check["verdict"].startswith("better")
    assert abs(check["mean_f1_macro_difference"]) < 0.05


def coded_file(tmp_path):
    """60 coded passages (the sample training data), as the coding sheet of `framesft sample` names its columns."""
    table = pd.read_csv(SAMPLE_DATA / "train.csv", dtype=str, keep_default_na=False)
    sheet = pd.DataFrame({"id": [f"r{i}" for i in range(len(table))], "text": table["chunk_text"],
                          "label": table["frame_name"]})
    path = tmp_path / "coded.csv"
    sheet.to_csv(path, index=False)
    return path, sheet


def adapt(run_dir, coded, adapted, **kwargs):
    """adapt_run as a notebook calls it (there is no command: issue 21's measurement found no gain outside the
    noise), on a coding sheet's columns."""
    return adapt_run(run_dir, coded, adapted, text_column="text", label_column="label", show_progress=False,
                     **kwargs)


def test_adapt_writes_a_complete_run_whose_labels_follow_the_fitted_bias(trained_run, tmp_path):
    coded, sheet = coded_file(tmp_path)
    adapted = tmp_path / "adapted"
    returned = adapt(trained_run.run_dir, coded, adapted, folds=3)
    assert returned["crossfit"]["verdict"].split(":")[0] in ("better", "inside the noise", "worse")

    record = json.loads((adapted / "adaptation.json").read_text())
    assert record == json.loads(json.dumps(returned))
    assert record["passages"] == 60 and record["rows"] == list(range(2, 62))
    assert record["passage_fingerprints"] == [passage_fingerprint(t) for t in sheet["text"]]
    assert record["source_run"] == str(trained_run.run_dir.resolve()) and len(record["data_sha256"]) == 64
    assert record["crossfit"]["folds"] == 3 and len(record["crossfit"]["adapted"]) == 5
    calibration = json.loads((adapted / "calibration.json").read_text())
    assert set(calibration["label_bias"]) == set(trained_run.labels)
    for name in ("config.yaml", "label_map.json", "adapter", "run_summary.json"):
        assert (adapted / name).exists()
    assert not (adapted / "checkpoints").exists()  # the unadapted run's training state stays with it

    # the adapted run's labels are argmax(raw score / T + b) of the unadapted run's raw scores
    texts = pd.read_csv(SAMPLE_DATA / "test.csv", dtype=str, keep_default_na=False)["chunk_text"].tolist()
    source = load_classifier(trained_run.run_dir)
    raw = source.score(texts, show_progress=False, calibrated=False)
    bias = np.array([calibration["label_bias"][label] for label in source.labels])
    expected = probabilities(raw.scores, calibration["temperature"], bias)
    classifier = load_classifier(adapted)
    table = predictions_table(texts, classifier.score(texts, show_progress=False))
    got = table[[f"p_{label}" for label in classifier.labels]].to_numpy()
    assert got == pytest.approx(expected[:, [source.labels.index(label) for label in classifier.labels]], abs=1e-6)
    assert table["predicted"].tolist() == [source.labels[i] for i in expected.argmax(axis=1)]

    assert main(["--quiet", "evaluate", str(adapted), "--data", str(SAMPLE_DATA / "test.csv"),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics_eval.json").read_text())
    assert metrics["calibration"]["label_bias"] == pytest.approx(list(bias), abs=1e-9)
    # the merged export carries the biases its labels need
    assert main(["--quiet", "export", str(adapted), "--output", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "calibration.json").read_text())["label_bias"] == calibration["label_bias"]


def test_estimate_refuses_an_audit_the_run_was_adapted_on(trained_run, tmp_path, capsys):
    coded, sheet = coded_file(tmp_path)
    adapted = tmp_path / "adapted"
    adapt(trained_run.run_dir, coded, adapted, folds=3)
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"chunk_id": sheet["id"], "chunk_text": sheet["text"]}).to_csv(corpus, index=False)
    predictions = tmp_path / "frames.csv"
    assert main(["--quiet", "predict", str(adapted), "--input", str(corpus), "--output", str(predictions),
                 "--id-column", "chunk_id"]) == 0
    provenance = json.loads((tmp_path / "frames.csv.framesft.json").read_text())
    assert provenance["run"] == str(adapted.resolve()) and provenance["method"] == "sft"
    assert provenance["adapted_on"]["passage_fingerprints"] == [passage_fingerprint(t) for t in sheet["text"]]

    audit = tmp_path / "audit.csv"
    sheet.iloc[:40].to_csv(audit, index=False)  # the same passages, coded again: not independent of the model
    capsys.readouterr()
    assert main(["estimate", str(predictions), "--audit", str(audit), "--output-dir", str(tmp_path / "shares")]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "40 coded passages (rows 2, 3, 4" in err and "was adapted on" in err and "fresh audit sample" in err
    assert not (tmp_path / "shares").exists()

    # the unadapted run's predictions of the same corpus carry no such record, and estimate accepts the audit
    plain = tmp_path / "plain.csv"
    assert main(["--quiet", "predict", str(trained_run.run_dir), "--input", str(corpus), "--output", str(plain),
                 "--id-column", "chunk_id"]) == 0
    provenance = json.loads((tmp_path / "plain.csv.framesft.json").read_text())
    assert provenance["run"] == str(trained_run.run_dir.resolve()) and "adapted_on" not in provenance
    assert main(["estimate", str(plain), "--audit", str(audit), "--output-dir", str(tmp_path / "shares")]) == 0


def test_adapt_bad_input_is_named(trained_run, tmp_path, capsys):
    coded, sheet = coded_file(tmp_path)
    few = tmp_path / "few.csv"
    sheet.iloc[:12].to_csv(few, index=False)
    with pytest.raises(DataError, match="12 coded passages; adapting needs at least 30"):
        adapt(trained_run.run_dir, few, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    bad = sheet.copy()
    bad.loc[5, "label"] = "Brexit"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError) as error:
        adapt(trained_run.run_dir, tmp_path / "bad.csv", tmp_path / "a")
    assert "'Brexit'" in str(error.value) and "row 7" in str(error.value)

    adapt(trained_run.run_dir, coded, tmp_path / "a", folds=3)
    with pytest.raises(RunFolderError, match="overwrite=True"):  # exists: not replaced
        adapt(trained_run.run_dir, coded, tmp_path / "a")
    with pytest.raises(RunFolderError, match="already an adapted run"):
        adapt(tmp_path / "a", coded, tmp_path / "b")
    assert main(["--quiet", "calibrate", str(tmp_path / "a"), "--data", str(SAMPLE_DATA / "test.csv")]) == 2
    assert "is an adapted run" in " ".join(capsys.readouterr().err.split())
    assert "label_bias" in (tmp_path / "a" / "calibration.json").read_text()  # left as adapt wrote it
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b-*"))
    shutil.rmtree(tmp_path / "a")
