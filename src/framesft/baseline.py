"""The lexical floor: TF-IDF + logistic regression, trained and evaluated on the same files as a model."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .dataset import load_run_data, read_labelled_file
from .metrics import classification_metrics


def tfidf_baseline(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                   labels: Sequence[str], seed: int = 42):
    """Fit word 1-2-gram TF-IDF + balanced logistic regression; return (predictions, probabilities)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced", random_state=seed),
    )
    pipeline.fit(list(train_texts), list(train_labels))
    probabilities = pipeline.predict_proba(list(test_texts))
    classes = list(pipeline.classes_)
    # columns in the caller's label order; a label absent from training gets probability 0
    ordered = np.zeros((len(test_texts), len(labels)))
    for j, label in enumerate(labels):
        if label in classes:
            ordered[:, j] = probabilities[:, classes.index(label)]
    predictions = [labels[i] for i in ordered.argmax(axis=1)]
    return predictions, ordered


def evaluate_baseline(train_texts, train_labels, test_texts, test_labels, labels, seed: int = 42) -> dict:
    predictions, _ = tfidf_baseline(train_texts, train_labels, test_texts, labels, seed)
    return classification_metrics(list(test_labels), predictions, list(labels))


def run_baseline(config, data_path=None) -> dict:
    """The baseline on a config's data: fit on its training rows, score the given file (default: the test file,
    else the validation set). Returns metrics keyed by the evaluated split."""
    data = load_run_data(config)
    text, label = config.data.text_column, config.data.label_column
    if data_path is not None:
        table, split = read_labelled_file(data_path, config.data, data.labels), str(data_path)
    elif data.test is not None:
        table, split = data.test, "test"
    else:
        table, split = data.validation, "validation"
    metrics = evaluate_baseline(data.train[text], data.train[label], table[text], table[label], data.labels,
                                config.training.seed)
    return {"split": split, "train_rows": len(data.train), "metrics": metrics}
