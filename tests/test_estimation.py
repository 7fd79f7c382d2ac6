"""Frame shares with intervals: checked against a known truth (simulated corpora and classifiers) and against
ppi_python; audit samples and coded sheets; the estimate command end to end, its page in headless Chromium."""

import numpy as np
import pandas as pd
import pytest

from framesft.audit import allocate, draw_audit_sample, read_coded_sheet
from framesft.cli import main
from framesft.errors import DataError
from framesft.estimation import cc_interval, estimate_shares, power_tuning, ppi_interval, stratified_ppi_interval

from conftest import render_in_chromium

LABELS = ["Conflict", "Economic", "None"]
SHARES = {"A": [0.5, 0.3, 0.2], "B": [0.2, 0.3, 0.5]}
# The classifier errs differently in each group: in A it calls Economic passages Conflict, in B None passages
# Economic. Rows: true label; columns: predicted label.
CONFUSION = {"A": np.array([[0.85, 0.10, 0.05], [0.30, 0.60, 0.10], [0.10, 0.10, 0.80]]),
             "B": np.array([[0.80, 0.10, 0.10], [0.05, 0.85, 0.10], [0.05, 0.35, 0.60]])}


def simulate_corpus(rng, n_per_group=1500):
    """Groups with known shares; predicted labels from the group's confusion matrix; model probabilities that
    put 0.7 on the predicted label (the classifier does not know its own errors)."""
    groups, truth, predicted = [], [], []
    for group, shares in SHARES.items():
        true = rng.choice(3, n_per_group, p=shares)
        cumulative = CONFUSION[group][true].cumsum(axis=1)
        pred = (rng.random(n_per_group)[:, None] > cumulative).sum(axis=1)
        groups += [group] * n_per_group
        truth.append(true)
        predicted.append(pred)
    truth, predicted = np.concatenate(truth), np.concatenate(predicted)
    probabilities = np.full((len(truth), 3), 0.15)
    probabilities[np.arange(len(truth)), predicted] = 0.7
    return np.array(groups), truth, predicted, probabilities


def test_ppi_matches_ppi_python_on_a_simple_random_audit():
    """Our estimator works from the corpus's sums (flat memory); with the corpus seen as a sample from a larger
    population it is PPI++ for the vector of shares exactly as ppi_python computes it (one weight for all
    labels, so the shares sum to 1)."""
    from ppi_py import ppi_mean_ci, ppi_mean_pointestimate

    rng = np.random.default_rng(0)
    _, truth, _, probabilities = simulate_corpus(rng, 2500)
    probabilities = probabilities + rng.uniform(0, 0.3, probabilities.shape)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    audit = rng.choice(len(truth), 200, replace=False)
    y = np.eye(3)[truth[audit]]
    f, N = probabilities[audit], len(truth)
    lam = power_tuning(y, f, N, probabilities.sum(axis=0), (probabilities ** 2).sum(axis=0))
    expected = np.ravel(ppi_mean_pointestimate(y, f, probabilities))
    low, high = (np.ravel(bound) for bound in ppi_mean_ci(y, f, probabilities, alpha=0.05))
    for k in range(3):
        column = probabilities[:, k]
        ours = ppi_interval(y[:, k], f[:, k], N, column.sum(), (column ** 2).sum(), lam=lam, finite_population=False)
        assert ours.estimate == pytest.approx(expected[k], abs=1e-12)
        assert (ours.low, ours.high) == pytest.approx((low[k], high[k]), abs=1e-12)
    assert expected.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("design", ["simple random", "stratified by predicted label"])
def test_ppi_intervals_cover_the_true_shares_and_counting_is_biased(design):
    """200 simulated corpora, each with a fresh audit of 400: the 95% PPI intervals cover the corpus's true
    share in 92-98% of them, overall and in each group; classify-and-count is biased in both groups."""
    rng = np.random.default_rng(2024)
    covered = {level: [] for level in ("all", "A", "B")}
    cc_error = {level: [] for level in ("A", "B")}
    for _ in range(200):
        groups, truth, predicted, probabilities = simulate_corpus(rng)
        N = len(truth)
        if design == "simple random":
            audit = rng.choice(N, 400, replace=False)
            inclusion = np.full(400, 400 / N)
            strata = np.zeros(400, int)
        else:  # oversample the predicted label that is rarest
            sizes = {h: int((predicted == h).sum()) for h in range(3)}
            drawn = allocate({str(h): sizes[h] for h in range(3)}, 400)
            audit, inclusion, strata = [], [], []
            for h in range(3):
                take = max(drawn[str(h)], 60)  # unequal inclusion probabilities on purpose
                audit += list(rng.choice(np.flatnonzero(predicted == h), take, replace=False))
                inclusion += [take / sizes[h]] * take
                strata += [h] * take
            audit, inclusion, strata = np.array(audit), np.array(inclusion), np.array(strata)
        for level in covered:
            members = np.ones(N, bool) if level == "all" else groups == level
            in_group = members[audit]
            # one PPI++ weight for the group's three shares, as `framesft estimate` uses it
            lam = power_tuning(np.eye(3)[truth[audit][in_group]], probabilities[audit][in_group], members.sum(),
                               probabilities[members].sum(axis=0), (probabilities[members] ** 2).sum(axis=0))
            for k in range(3):
                y, f = (truth[audit] == k).astype(float), probabilities[audit, k]
                f_group = probabilities[members, k]
                if design == "simple random":
                    interval = ppi_interval(y[in_group], f[in_group], members.sum(), f_group.sum(),
                                            (f_group ** 2).sum(), lam=lam)
                else:
                    interval = stratified_ppi_interval(y, f, in_group, strata, inclusion, members.sum(),
                                                       f_group.sum(), (f_group ** 2).sum(), lam=lam)
                true_share = (truth[members] == k).mean()
                covered[level].append(interval.low <= true_share <= interval.high)
                if level != "all":
                    cc = cc_interval(int(members.sum()), int((predicted[members] == k).sum()))
                    cc_error[level].append(cc.estimate - true_share)
    for level, hits in covered.items():
        assert 0.92 <= np.mean(hits) <= 0.98, (level, np.mean(hits))
    for level, errors in cc_error.items():
        errors = np.array(errors).reshape(200, 3)
        bias, standard_error = errors.mean(axis=0), errors.std(axis=0) / np.sqrt(200)
        # several points off in each group (A: Economic about -5 points, B: Economic +15, None -15), far beyond
        # what 200 replications could show by chance
        assert np.abs(bias).max() > 0.04 and (np.abs(bias) / standard_error).max() > 10, (level, bias)


def test_groups_with_fewer_than_two_audit_rows_get_no_interval():
    for n in (0, 1):
        interval = ppi_interval(np.ones(n), np.full(n, 0.5), 100, 50.0, 25.0)
        assert np.isnan(interval.low) and np.isnan(interval.high)
    assert not np.isnan(ppi_interval(np.array([1.0, 0.0]), np.array([0.6, 0.4]), 100, 50.0, 26.0).low)


def test_allocation_is_proportional_with_two_per_stratum():
    assert allocate({"a": 900, "b": 90, "c": 10}, 100) == {"a": 89, "b": 9, "c": 2}
    assert sum(allocate({"a": 5, "b": 7, "c": 1000}, 50).values()) == 50
    with pytest.raises(DataError, match="too small"):
        allocate({str(i): 10 for i in range(10)}, 15)


def synthetic_predictions(path, n=600, seed=0):
    rng = np.random.default_rng(seed)
    groups, truth, predicted, probabilities = simulate_corpus(rng, n // 2)
    dates = pd.Timestamp("2019-01-01") + pd.to_timedelta(rng.integers(0, 180, len(truth)), "D")
    table = pd.DataFrame({"chunk_id": [f"c{i}" for i in range(len(truth))], "party": groups,
                          "date": dates.strftime("%Y-%m-%d"), "chunk_text": [f"passage {i}" for i in range(len(truth))],
                          "predicted": [LABELS[k] for k in predicted]})
    for k, label in enumerate(LABELS):
        table[f"p_{label}"] = probabilities[:, k]
    table["margin"] = 0.0
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return table, [LABELS[k] for k in truth]


def code_sheet(sheet_path, truth_by_id, out_path):
    sheet = pd.read_csv(sheet_path, dtype=str, keep_default_na=False)
    sheet["label"] = [truth_by_id[i] for i in sheet["id"]]
    sheet.to_csv(out_path, index=False)
    return sheet


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_sample_code_estimate_end_to_end(tmp_path, suffix, capsys):
    predictions = tmp_path / f"frames{suffix}"
    table, truth = synthetic_predictions(predictions)
    truth_by_id = dict(zip(table["chunk_id"], truth))
    sheet = tmp_path / "sheet.csv"
    assert main(["sample", str(predictions), "--n", "120", "--output", str(sheet), "--seed", "1"]) == 0
    drawn = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    assert list(drawn.columns) == ["id", "inclusion_probability", "stratum", "text", "label"]  # no model label
    assert drawn["id"].is_unique and len(drawn) == 120 and set(drawn["label"]) == {""}
    assert np.allclose(drawn["inclusion_probability"].astype(float), 120 / 600)
    assert all(text == f"passage {i[1:]}" for i, text in zip(drawn["id"], drawn["text"]))
    code_sheet(sheet, truth_by_id, tmp_path / "coded.csv")

    out = tmp_path / "shares"
    assert main(["estimate", str(predictions), "--audit", str(tmp_path / "coded.csv"), "--by", "party",
                 "--time-column", "date", "--time-unit", "month", "--output-dir", str(out)]) == 0
    assert "cover sampling noise and the classifier's errors" in " ".join(capsys.readouterr().err.split())
    shares = pd.read_parquet(out / "shares.parquet")
    assert {"cc", "pcc", "audit", "ppi", "ppi_low", "ppi_high"} <= set(shares.columns)
    overall = shares[(shares["party"] == "(all)") & (shares["period"] == "(all)")]
    assert overall["ppi"].sum() == pytest.approx(1.0, abs=1e-9) and overall["rows"].iloc[0] == 600
    assert set(shares["period"]) == {"(all)", "2019-01", "2019-02", "2019-03", "2019-04", "2019-05", "2019-06"}
    assert (out / "shares_over_time.png").stat().st_size > 10_000 and (out / "shares.csv").is_file()
    assert 'id="shares-table"' in (out / "shares.html").read_text()


def test_estimate_without_audit_says_what_the_intervals_cover(tmp_path, capsys):
    predictions = tmp_path / "frames.parquet"
    synthetic_predictions(predictions)
    assert main(["estimate", str(predictions), "--by", "party", "--output-dir", str(tmp_path / "out")]) == 0
    assert "intervals cover sampling noise only" in " ".join(capsys.readouterr().err.split())
    page = (tmp_path / "out" / "shares.html").read_text()
    assert "cover sampling noise only" in page and (tmp_path / "out" / "shares_by_group.png").is_file()
    assert main(["estimate", str(predictions), "--output-dir", str(tmp_path / "out")]) == 2  # never overwritten


def test_stratified_sample_records_inclusion_probabilities(tmp_path):
    predictions = tmp_path / "frames.parquet"
    table, _ = synthetic_predictions(predictions)
    sheet = draw_audit_sample(predictions, 60, tmp_path / "sheet.csv", stratify_by="predicted", seed=4,
                              include_model_label=True)
    counts = table["predicted"].value_counts()
    for stratum, rows in sheet.groupby("stratum"):
        assert rows["inclusion_probability"].iloc[0] == pytest.approx(len(rows) / counts[stratum])
    assert (sheet["model_label"] == sheet["stratum"]).all()
    assert (tmp_path / "sheet.csv.design.json").is_file()


def test_texts_come_from_the_corpus_when_predictions_do_not_carry_them(tmp_path):
    predictions = tmp_path / "frames.csv"
    table, _ = synthetic_predictions(predictions)
    table.drop(columns=["chunk_text"]).to_csv(predictions, index=False)
    corpus = tmp_path / "corpus.jsonl"
    table[["chunk_id", "chunk_text"]].to_json(corpus, orient="records", lines=True)
    with pytest.raises(DataError, match="pass --corpus FILE"):
        draw_audit_sample(predictions, 10, tmp_path / "a.csv")
    sheet = draw_audit_sample(predictions, 10, tmp_path / "b.csv", corpus=corpus)
    assert all(text == f"passage {i[1:]}" for i, text in zip(sheet["id"], sheet["text"]))


def test_coded_sheet_errors_name_the_rows(tmp_path):
    predictions = tmp_path / "frames.parquet"
    synthetic_predictions(predictions)
    sheet = tmp_path / "coded.csv"
    pd.DataFrame({"id": ["c1", "c2", "c2", "c9999", "c5", "c6"],
                  "inclusion_probability": ["0.1"] * 6, "stratum": ["all"] * 6, "text": ["t"] * 6,
                  "label": ["Conflict", "economic", "None", "Economic", "Brexit", ""]}).to_csv(sheet, index=False)
    with pytest.raises(DataError) as error:
        read_coded_sheet(sheet, predictions)
    message = str(error.value)
    assert "1 rows have no label in column 'label' (row 7)" in message
    assert "label 'Brexit' is not in the label set" in message and "row 6" in message
    assert "2 rows share an id (rows 3, 4)" in message
    assert "1 ids are not in" in message and "row 5" in message
    assert "None" not in message.split("label set")[0]  # the label None is a label, not a missing value


def test_dates_that_are_not_dates_are_named(tmp_path):
    predictions = tmp_path / "frames.csv"
    table, _ = synthetic_predictions(predictions)
    table.loc[3, "date"] = "last Tuesday"
    table.to_csv(predictions, index=False)
    with pytest.raises(DataError, match="1 values of 'date' are not dates .*'last Tuesday'"):
        estimate_shares(predictions, time_column="date")


@pytest.mark.slow
def test_estimate_page_renders_in_headless_chromium(tmp_path):
    predictions = tmp_path / "frames.parquet"
    synthetic_predictions(predictions)
    assert main(["estimate", str(predictions), "--time-column", "date", "--output-dir", str(tmp_path / "out")]) == 0
    dom, _ = render_in_chromium(tmp_path / "out" / "shares.html", tmp_path)
    assert 'id="shares-table"' in dom and 'id="coverage"' in dom and "data:image/png;base64," in dom


def overconfident_corpus(rng, n: int = 3000):
    """Known shares and a classifier whose probabilities are too sharp: softmax(3 * logits) where softmax(logits)
    would be calibrated (the run's temperature came from other data and missed it)."""
    truth = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    logits = 1.5 * np.eye(3)[truth] + rng.normal(size=(n, 3))
    sharp = np.exp(3 * logits)
    return truth, sharp / sharp.sum(axis=1, keepdims=True)


def write_corpus(path, truth, probabilities):
    table = pd.DataFrame({"chunk_id": [f"c{i}" for i in range(len(truth))],
                          "predicted": [LABELS[k] for k in probabilities.argmax(axis=1)]})
    for k, label in enumerate(LABELS):
        table[f"p_{label}"] = probabilities[:, k]
    table.to_parquet(path, index=False)


def test_cross_fitted_calibration_on_the_audit_fixes_the_probabilities_and_keeps_coverage(tmp_path):
    """A temperature refitted on the audit by 5-fold cross-fitting: the audit's probabilities become calibrated
    (ECE falls), counted labels do not move, and over 120 corpora the 95% PPI intervals still cover the true
    shares in 92-98% of cases."""
    from framesft.calibration import expected_calibration_error
    from framesft.estimation import crossfit_temperatures, recalibrated_audit

    rng = np.random.default_rng(5)
    covered, ece_before, ece_after = [], [], []
    for replication in range(120):
        truth, probabilities = overconfident_corpus(rng)
        path = tmp_path / f"c{replication % 2}.parquet"
        write_corpus(path, truth, probabilities)
        rows = rng.choice(len(truth), 250, replace=False)
        audit = pd.DataFrame({"id": [f"c{i}" for i in rows], "gold": [LABELS[truth[i]] for i in rows],
                              "inclusion_probability": 250 / len(truth), "stratum": "all"})
        table = estimate_shares(path, audit, calibrate_folds=5)
        plain = estimate_shares(path, audit) if replication < 3 else None
        if plain is not None:
            assert table["cc"].tolist() == plain["cc"].tolist()  # a temperature never moves a label
            assert table["calibration"].iloc[0].startswith("temperature refitted on the audit, 5-fold")
        true_shares = np.bincount(truth, minlength=3) / len(truth)
        for k, label in enumerate(LABELS):
            row = table[table["label"] == label].iloc[0]
            covered.append(row["ppi_low"] <= true_shares[k] <= row["ppi_high"])
        if replication < 20:
            joined = audit.assign(**{f"p_{label}": probabilities[rows, k] for k, label in enumerate(LABELS)})
            fold_of, temperatures = crossfit_temperatures(joined, LABELS, 5)
            # the Bayes posterior is softmax(1.5 * logits + log prior): the probabilities are 2x too sharp
            assert all(1.3 < t < 2.5 for t in temperatures), temperatures
            refitted = recalibrated_audit(joined, LABELS, fold_of, temperatures)
            gold = truth[rows]
            ece_before.append(expected_calibration_error(probabilities[rows], gold))
            ece_after.append(expected_calibration_error(refitted[[f"p_{l}" for l in LABELS]].to_numpy(), gold))
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)
    assert np.mean(ece_after) < 0.5 * np.mean(ece_before), (np.mean(ece_before), np.mean(ece_after))


def test_calibrating_on_the_audit_needs_an_audit(tmp_path):
    path = tmp_path / "c.parquet"
    truth, probabilities = overconfident_corpus(np.random.default_rng(0), 100)
    write_corpus(path, truth, probabilities)
    with pytest.raises(DataError, match="needs an audit sample"):
        estimate_shares(path, None, calibrate_folds=5)
    tiny = pd.DataFrame({"id": ["c1", "c2", "c3"], "gold": ["Conflict", "Economic", "None"],
                         "inclusion_probability": 0.03, "stratum": "all"})
    with pytest.raises(DataError, match="cannot be split into 5 folds"):
        estimate_shares(path, tiny, calibrate_folds=5)
