"""Planning the audit (`framesft plan`), checked against a known truth: a simulated corpus and classifier; the
planned audit, drawn many times, gives intervals whose realised half-width is the target (within 15%) and whose
coverage stays at the nominal 95%."""

import numpy as np
import pandas as pd
import pytest

from framesft.cli import main
from framesft.estimation import power_tuning, ppi_interval
from framesft.planning import audit_size, half_widths, model_errors, plan_audit

LABELS = ["Conflict", "Economic", "None"]
SHARES = {"A": [0.5, 0.3, 0.2], "B": [0.2, 0.3, 0.5]}


def simulate(rng, n_per_group: int):
    """Passages with known labels and a noisy classifier: probabilities softmax(2 * onehot(y) + noise)."""
    groups, truth = [], []
    for group, shares in SHARES.items():
        groups += [group] * n_per_group
        truth.append(rng.choice(len(LABELS), n_per_group, p=shares))
    truth = np.concatenate(truth)
    logits = 2.0 * np.eye(len(LABELS))[truth] + rng.normal(scale=1.3, size=(len(truth), len(LABELS)))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return np.array(groups), truth, probabilities


def write_predictions(path, groups, probabilities):
    table = pd.DataFrame({"chunk_id": [f"c{i}" for i in range(len(groups))], "party": groups,
                          "predicted": [LABELS[k] for k in probabilities.argmax(axis=1)]})
    for k, label in enumerate(LABELS):
        table[f"p_{label}"] = probabilities[:, k]
    table["margin"] = 0.0
    table.to_parquet(path, index=False)


def write_validation(run_dir, truth, probabilities):
    run_dir.mkdir()
    table = pd.DataFrame({"text": [f"v{i}" for i in range(len(truth))], "label": [LABELS[k] for k in truth],
                          "predicted": [LABELS[k] for k in probabilities.argmax(axis=1)]})
    for k, label in enumerate(LABELS):
        table[f"p_{label}"] = probabilities[:, k]
    table.to_csv(run_dir / "predictions_validation.csv", index=False)


def test_size_formula_inverts_the_half_width():
    variance = np.array([0.05, 0.12, 0.08])
    n = audit_size(variance, N=50_000, half_width=0.03)
    assert half_widths(variance, 50_000, n).max() <= 0.03 < half_widths(variance, 50_000, n - 1).max()
    assert audit_size(variance, N=300, half_width=0.001) == 300  # never more than the corpus


def test_planned_audit_reaches_the_target_width_with_nominal_coverage(tmp_path):
    rng = np.random.default_rng(7)
    groups, truth, probabilities = simulate(rng, 10_000)
    predictions = tmp_path / "frames.parquet"
    write_predictions(predictions, groups, probabilities)
    _, val_truth, val_probs = simulate(rng, 300)  # labelled passages the model was not trained on
    write_validation(tmp_path / "run", val_truth, val_probs)

    target = 0.05
    plan, errors = plan_audit(predictions, tmp_path / "run", target, by=["party"])
    assert errors.passages == 600 and list(plan["party"]) == ["(all)", "A", "B"]
    overall = plan.iloc[0]
    n, N = int(overall["audit_n"]), int(overall["rows"])
    assert 50 < n < overall["audit_alone_n"] < 2000  # the model saves coding
    assert overall["half_width_at_n"] <= target < overall["half_width_at_half_n"]

    f_sum, f_sumsq = probabilities.sum(axis=0), (probabilities ** 2).sum(axis=0)
    true_shares = np.bincount(truth, minlength=len(LABELS)) / N
    widths, covered = [], []
    for _ in range(400):
        rows = rng.choice(N, n, replace=False)
        y = np.eye(len(LABELS))[truth[rows]]
        f = probabilities[rows]
        lam = power_tuning(y, f, N, f_sum, f_sumsq)
        intervals = [ppi_interval(y[:, k], f[:, k], N, f_sum[k], f_sumsq[k], lam=lam) for k in range(len(LABELS))]
        widths.append(max((i.high - i.low) / 2 for i in intervals))
        covered += [i.low <= true_shares[k] <= i.high for k, i in enumerate(intervals)]
    assert np.mean(widths) == pytest.approx(target, rel=0.15)
    assert 0.92 <= np.mean(covered) <= 0.98

    # per group: each group's plan reaches the target within that group
    for group in ("A", "B"):
        row = plan[plan["party"] == group].iloc[0]
        members = np.flatnonzero(groups == group)
        g_probs, g_truth = probabilities[members], truth[members]
        g_sum, g_sumsq = g_probs.sum(axis=0), (g_probs ** 2).sum(axis=0)
        widths = []
        for _ in range(100):
            rows = rng.choice(len(members), int(row["audit_n"]), replace=False)
            y, f = np.eye(len(LABELS))[g_truth[rows]], g_probs[rows]
            lam = power_tuning(y, f, len(members), g_sum, g_sumsq)
            widths.append(max(ppi_interval(y[:, k], f[:, k], len(members), g_sum[k], g_sumsq[k], lam=lam).high
                              - ppi_interval(y[:, k], f[:, k], len(members), g_sum[k], g_sumsq[k], lam=lam).low
                              for k in range(len(LABELS))) / 2)
        assert np.mean(widths) == pytest.approx(target, rel=0.15)


def test_errors_follow_the_model():
    """A perfect model has no error variance; a useless one (constant probabilities) has Var(Y)."""
    gold = ["Conflict", "Economic", "None", "Conflict"] * 10
    perfect = np.eye(3)[[LABELS.index(g) for g in gold]]
    assert model_errors(gold, perfect, LABELS, "x").var_error == pytest.approx([0, 0, 0])
    useless = np.full((len(gold), 3), 1 / 3)
    shares = np.array([0.5, 0.25, 0.25])
    assert model_errors(gold, useless, LABELS, "x").var_error == pytest.approx(shares * (1 - shares))


def test_plan_command(tmp_path, capsys):
    rng = np.random.default_rng(1)
    groups, _, probabilities = simulate(rng, 2_000)
    write_predictions(tmp_path / "frames.parquet", groups, probabilities)
    _, val_truth, val_probs = simulate(rng, 50)
    write_validation(tmp_path / "run", val_truth, val_probs)
    assert main(["plan", str(tmp_path / "frames.parquet"), "--labelled", str(tmp_path / "run"), "--by", "party",
                 "--output", str(tmp_path / "plan.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "audit size for 95% intervals of +-0.050" in err and "100 labelled passages" in err
    assert len(pd.read_csv(tmp_path / "plan.csv")) == 3
    assert main(["plan", str(tmp_path / "frames.parquet"), "--labelled", str(tmp_path / "run"),
                 "--half-width", "5"]) == 2
    assert "--half-width 5.0" in capsys.readouterr().err
