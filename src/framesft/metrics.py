"""Classification metrics for frame predictions (scikit-learn underneath, one dict out)."""

from __future__ import annotations

from typing import Sequence

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

HEADLINE = ("f1_macro", "f1_micro", "f1_weighted", "accuracy", "precision", "recall")


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """F1 macro/micro/weighted, accuracy, macro precision and recall, per-class scores, confusion matrix.

    `labels` fixes the order of classes; a class with no support or no predictions scores 0, not NaN.
    """
    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    macro_p, macro_r, _, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(macro_p),
        "recall": float(macro_r),
        "n": len(y_true),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def headline(metrics: dict) -> dict[str, float]:
    return {key: metrics[key] for key in HEADLINE}


def per_class_rows(metrics: dict) -> list[dict]:
    return [{"label": label, **scores} for label, scores in metrics["per_class"].items()]
