"""report.html: bootstrap intervals are right, the page is self-contained and renders in headless Chromium."""

import re

import numpy as np
import pytest
from sklearn.metrics import f1_score

from framesft.statistics import bootstrap_intervals

from conftest import render_in_chromium

LABELS = ["A", "B", "C"]


def test_bootstrap_intervals_match_a_direct_computation():
    rng = np.random.default_rng(3)
    y_true = list(rng.choice(LABELS, size=60))
    y_pred = [t if rng.random() < 0.6 else rng.choice(LABELS) for t in y_true]
    ours = bootstrap_intervals(y_true, y_pred, LABELS, n_resamples=200, seed=5)
    samples = np.random.default_rng(5).integers(0, 60, size=(200, 60))
    t, p = np.array(y_true), np.array(y_pred)
    macro = [f1_score(t[s], p[s], labels=LABELS, average="macro", zero_division=0) for s in samples]
    weighted = [f1_score(t[s], p[s], labels=LABELS, average="weighted", zero_division=0) for s in samples]
    assert ours["f1_macro"] == pytest.approx((np.percentile(macro, 2.5), np.percentile(macro, 97.5)))
    assert ours["f1_weighted"] == pytest.approx((np.percentile(weighted, 2.5), np.percentile(weighted, 97.5)))
    point = f1_score(y_true, y_pred, labels=LABELS, average="macro")
    assert ours["f1_macro"][0] < point < ours["f1_macro"][1]


@pytest.mark.slow
def test_report_is_self_contained(trained_run):
    page = (trained_run.run_dir / "report.html").read_text()
    assert 'id="metrics-table"' in page and "95% CI" in page
    assert page.count("data:image/png;base64,") >= 2  # confusion matrix and learning curves embedded
    assert page.count("data:image/png;base64,") >= 3  # and the reliability diagram
    assert not re.search(r'(src|href)="https?://', page)  # nothing to fetch: viewable offline
    for section in ("Per class", "Confusion matrix", "Learning curves", "Label distribution",
                    "Most confident mistakes", "Calibration", "The model as a coder"):
        assert section in page


@pytest.mark.slow
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    dom, _ = render_in_chromium(trained_run.run_dir / "report.html", tmp_path)
    assert 'id="metrics-table"' in dom and "f1_macro" in dom
