"""Ensembles of runs (ensemble.py): the mean of the members' calibrated probabilities, used like any run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import framesft

from framesft.cli import main
from framesft.corpus import predict_corpus
from framesft.ensemble import create_ensemble
from framesft.errors import DataError, RunFolderError
from framesft.evaluation import calibrate_run, evaluate_run
from framesft.export import export_merged
from framesft.findings import methods_paragraph
from framesft.inference import load_classifier, predict_texts
from framesft.runfolder import read_provenance

SAMPLE_DATA = Path(framesft.__file__).parent / "resources" / "sample_data"
TEXTS = ["The government has betrayed the people who voted to leave.",
         "Tariffs will cost manufacturers billions and jobs in the north.",
         "The honourable member opposite is simply wrong, and he knows it.",
         "Families in my constituency cannot plan their lives with this uncertainty."]


def other_member(run_dir, folder, temperature=2.5):
    """A second member unlike the first in the two ways members differ: its labels in another order (so its
    prompt lists them differently and its probability columns come in another order) and its own temperature."""
    copy = folder / "member-b"
    shutil.copytree(run_dir, copy)
    label_map = json.loads((copy / "label_map.json").read_text())
    labels = sorted(label_map["label2id"], key=label_map["label2id"].get)[::-1]
    label_map["label2id"] = {label: i for i, label in enumerate(labels)}
    if "id2label" in label_map:
        label_map["id2label"] = {str(i): label for i, label in enumerate(labels)}
    (copy / "label_map.json").write_text(json.dumps(label_map))
    calibration = json.loads((copy / "calibration.json").read_text()) if (copy / "calibration.json").is_file() else {}
    calibration["temperature"] = temperature
    (copy / "calibration.json").write_text(json.dumps(calibration))
    return copy


def test_the_ensemble_gives_the_weighted_mean_of_each_members_own_probabilities(trained_run, tmp_path):
    a = trained_run.run_dir
    b = other_member(a, tmp_path)
    alone = {run: predict_texts(load_classifier(run), TEXTS) for run in (a, b)}
    labels = load_classifier(a).labels
    assert load_classifier(b).labels == labels[::-1]
    # the members disagree somewhere, or the test could not tell a mean from either member
    assert not np.allclose(alone[a][[f"p_{l}" for l in labels]], alone[b][[f"p_{l}" for l in labels]], atol=1e-3)

    folder = create_ensemble([a, b], tmp_path / "ensemble", weights=[3, 1])
    ensemble = predict_texts(load_classifier(folder), TEXTS)
    for label in labels:
        expected = 0.75 * alone[a][f"p_{label}"] + 0.25 * alone[b][f"p_{label}"]
        np.testing.assert_allclose(ensemble[f"p_{label}"], expected, atol=1e-6)
    expected_labels = [labels[i] for i in np.argmax(
        np.column_stack([0.75 * alone[a][f"p_{l}"] + 0.25 * alone[b][f"p_{l}"] for l in labels]), axis=1)]
    assert ensemble["predicted"].tolist() == expected_labels


def test_evaluate_predict_calibrate_and_estimate_take_an_ensemble_like_any_run(trained_run, tmp_path):
    a = trained_run.run_dir
    folder = create_ensemble([a, other_member(a, tmp_path)], tmp_path / "ensemble")
    test_csv = SAMPLE_DATA / "test.csv"

    metrics = evaluate_run(folder, test_csv, tmp_path / "eval", show_progress=False)
    assert metrics["n"] == len(pd.read_csv(test_csv)) and 0 <= metrics["f1_macro"] <= 1
    assert (tmp_path / "eval" / "predictions_eval.csv").is_file()

    report = calibrate_run(folder, SAMPLE_DATA / "train.csv", show_progress=False)  # >= 30 passages
    stored = json.loads((folder / "calibration.json").read_text())
    assert stored["temperature"] == pytest.approx(report["temperature"]) and stored["temperature"] > 0
    assert load_classifier(folder).temperature == pytest.approx(stored["temperature"])

    corpus = pd.read_csv(test_csv, keep_default_na=False).assign(chunk_id=lambda t: range(len(t)))
    corpus.to_parquet(tmp_path / "corpus.parquet")
    out = tmp_path / "frames.parquet"
    assert predict_corpus(folder, tmp_path / "corpus.parquet", out, id_column="chunk_id", chunk_rows=7,
                          show_progress=False) == len(corpus)
    predicted = pd.read_parquet(out)
    direct = predict_texts(load_classifier(folder), corpus["chunk_text"].tolist())
    assert predicted["predicted"].tolist() == direct["predicted"].tolist()
    provenance = read_provenance(out)
    assert [m["run"] for m in provenance["ensemble"]] == [str(a.resolve()), str((tmp_path / "member-b").resolve())]

    table = pd.DataFrame({"label": ["Conflict"], "rows": [len(corpus)], "calibration": ["run temperature"]})
    paragraph = methods_paragraph(table, str(out), None)
    assert "an ensemble of 2 fine-tuned models" in paragraph and "weight 0.50" in paragraph


def test_ensembles_refuse_what_cannot_be_averaged(trained_run, tmp_path):
    a = trained_run.run_dir
    with pytest.raises(DataError, match="at least two runs"):
        create_ensemble([a], tmp_path / "one")
    with pytest.raises(DataError, match="each run once"):
        create_ensemble([a, a], tmp_path / "twice")
    other_labels = tmp_path / "other-labels"
    shutil.copytree(a, other_labels)
    (other_labels / "label_map.json").write_text(json.dumps({"label2id": {"Yes": 0, "No": 1}}))
    with pytest.raises(DataError, match="share a label set"):
        create_ensemble([a, other_labels], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()  # nothing half-written is left

    b = other_member(a, tmp_path)
    folder = create_ensemble([a, b], tmp_path / "ensemble")
    with pytest.raises(RunFolderError, match="already exists"):
        create_ensemble([a, b], folder)
    with pytest.raises(DataError, match="itself an ensemble"):
        create_ensemble([folder, a], tmp_path / "nested")
    with pytest.raises(RunFolderError, match="no single model to export"):
        export_merged(folder, tmp_path / "export")
    shutil.rmtree(b)
    with pytest.raises(RunFolderError, match="member-b does not exist"):
        load_classifier(folder)


def test_the_ensemble_command(trained_run, tmp_path, capsys):
    a = trained_run.run_dir
    b = other_member(a, tmp_path)
    assert main(["ensemble", str(a), str(b), "--run-dir", str(tmp_path / "e"), "--weights", "1,x"]) == 2
    assert "--weights 1,x" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    assert main(["ensemble", str(a), str(b), "--run-dir", str(tmp_path / "e"), "--weights", "2,2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("0.500") == 2 and "framesft evaluate" in printed
    assert main(["--quiet", "predict", str(tmp_path / "e"), "--text", TEXTS[0]]) == 0
    assert "predicted" in capsys.readouterr().out
