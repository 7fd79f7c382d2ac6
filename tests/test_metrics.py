import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from framesft.metrics import classification_metrics
from framesft.scoring import LabelScores

LABELS = ["Conflict", "Economic", "None", "Moral Value"]
Y_TRUE = ["Conflict", "Economic", "None", "None", "Conflict", "Economic", "Economic", "Moral Value"]
Y_PRED = ["Conflict", "None", "None", "Economic", "Economic", "Economic", "Economic", "Conflict"]


def test_headline_metrics_match_scikit_learn():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["f1_macro"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, labels=LABELS, average="macro"))
    assert m["f1_micro"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, labels=LABELS, average="micro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, labels=LABELS, average="weighted"))
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED)) == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(precision_score(Y_TRUE, Y_PRED, labels=LABELS, average="macro",
                                                           zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(Y_TRUE, Y_PRED, labels=LABELS, average="macro"))


def test_per_class_scores_and_confusion_matrix():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    economic = m["per_class"]["Economic"]
    assert economic == {"precision": pytest.approx(2 / 4), "recall": pytest.approx(2 / 3),
                        "f1": pytest.approx(4 / 7), "support": 3}
    assert m["per_class"]["Moral Value"]["f1"] == 0.0  # never predicted: 0, not NaN
    matrix = np.array(m["confusion_matrix"])
    assert matrix.sum() == len(Y_TRUE)
    assert matrix[LABELS.index("Economic"), LABELS.index("None")] == 1
    assert np.trace(matrix) == 4


def test_label_scores_probabilities_and_margins():
    scores = LabelScores(["a", "b", "c"], np.array([[-1.0, -2.0, -3.0], [-5.0, -0.5, -0.6]]))
    assert scores.predictions == ["a", "b"]
    np.testing.assert_allclose(scores.probabilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(scores.margins, [1.0, 0.1])
    expected = np.exp([-1.0, -2.0, -3.0]) / np.exp([-1.0, -2.0, -3.0]).sum()
    np.testing.assert_allclose(scores.probabilities[0], expected)
