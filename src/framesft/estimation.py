"""Frame shares with valid confidence intervals, overall and per group or time bin.

For each share (the fraction of passages with a label) three estimates are reported:
- classify-and-count (CC): the fraction of passages predicted as the label;
- probabilistic classify-and-count (PCC, Card & Smith 2018): the mean calibrated probability of the label;
- with a human-coded audit sample: the prediction-powered estimate (PPI++, Angelopoulos et al. 2023), which
  corrects the PCC estimate by the mean error the audit measures, and the audit alone.
CC and PCC intervals cover sampling noise only, not the classifier's errors: counting predicted labels is
biased whenever the classifier errs, and the bias differs between groups. The PPI intervals cover both.

The target is the share in the corpus itself (a finite population: every passage was scored), so the audit
part of each variance carries the finite-population correction (1 - n/N) and the model's mean over the corpus
is exact. For a simple random audit (the default of `framesft sample`) the estimator is PPI++ with its power
tuning (`ppi_mean_ci` of the ppi_python package gives the same estimate and, with `finite_population=False`,
the same interval; a test checks this). A stratified audit is weighted by its inclusion probabilities
(Horvitz-Thompson, as in design-based supervised learning, Egami et al. 2023) with the stratified variance.

The prediction file is never loaded whole: DuckDB aggregates it (counts, sums and sums of squares per group),
and only the audit rows are read into memory.

Calibrated on the corpus (`calibrate_folds`, `framesft estimate --calibrate-on-audit`): the run's temperature was
fitted on its validation split, which may be distributed unlike the corpus. The coded audit is the corpus's own
labelled data, so the temperature is refitted on it, by cross-fitting so that the audit can still serve the
estimate (cross-prediction-powered inference, Zrnic & Candes 2024): the audit is split into K folds stratified by
label, each fold's probabilities come from a temperature fitted on the other folds, and the corpus's
probabilities are the average of the K refitted ones. A temperature never changes a predicted label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from .adaptation import fold_assignment
from .calibration import fit_temperature
from .errors import DataError

TIME_UNITS = ("day", "week", "month", "quarter", "year")
TIME_FORMATS = {"day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m", "quarter": "%Y-%m", "year": "%Y"}
ALL = "(all)"


# ------------------------------------------------------------------------------------------ estimators


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    lam: float | None = None  # PPI++ power-tuning weight of the model's predictions (0: audit alone)


def z_value(alpha: float) -> float:
    return float(norm.ppf(1 - alpha / 2))


def pcc_interval(n: int, prob_sum: float, prob_sumsq: float, alpha: float = 0.05) -> Interval:
    """Mean probability with a normal interval for its sampling noise (passages as a sample of passages)."""
    mean = prob_sum / n
    sd = np.sqrt(max(prob_sumsq / n - mean ** 2, 0.0))
    half = z_value(alpha) * sd / np.sqrt(n)
    return Interval(mean, max(0.0, mean - half), min(1.0, mean + half))


def cc_interval(n: int, count: int, alpha: float = 0.05) -> Interval:
    """Fraction predicted as the label, with a Wilson interval for its sampling noise (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(count, n, alpha=alpha, method="wilson")
    return Interval(count / n, float(low), float(high))


def power_tuning(y: np.ndarray, f: np.ndarray, N: int, f_sum, f_sumsq) -> float:
    """PPI++'s weight of the predictions, as ppi_python computes it for a mean (clipped to [0, 1]).

    With one column per label (y one-hot, f the probabilities, f_sum and f_sumsq per label) it is the one weight
    that minimises the summed variance of all shares ("overall" in ppi_python), so the shares still sum to 1.
    """
    n = len(y)
    if n < 2:
        return 0.0
    y, f = np.asarray(y, float).reshape(n, -1), np.asarray(f, float).reshape(n, -1)
    cov = ((y - y.mean(axis=0)) * (f - f.mean(axis=0))).mean(axis=0).sum()
    m = n + N  # variance of the predictions over audit and corpus together (ddof 1)
    total, total_sq = f.sum(axis=0) + f_sum, (f ** 2).sum(axis=0) + f_sumsq
    var = ((total_sq - total ** 2 / m) / (m - 1)).sum()
    if var <= 0:
        return 0.0
    return float(np.clip(cov / ((1 + n / N) * var), 0.0, 1.0))


def ppi_interval(y: np.ndarray, f: np.ndarray, N: int, f_sum: float, f_sumsq: float, alpha: float = 0.05,
                 lam: float | None = None, finite_population: bool = True) -> Interval:
    """PPI++ estimate of a corpus mean of y from a simple random audit (y, f) and the corpus's predictions
    (N passages, sum and sum of squares of f).

    lam=None tunes the weight of the predictions (PPI++); lam=0 is the audit alone; lam=1 is plain PPI.
    finite_population=True: the corpus is the population (its predictions' mean is exact, the audit part
    gets the factor 1 - n/N); False: the corpus is a sample from a larger population, as in ppi_python.
    """
    y, f = np.asarray(y, dtype=float), np.asarray(f, dtype=float)
    n = len(y)
    if n < 2:  # no spread to estimate from: no interval rather than a zero-width one
        return Interval(np.nan, np.nan, np.nan, lam)
    lam = power_tuning(y, f, N, f_sum, f_sumsq) if lam is None else lam
    f_mean = f_sum / N
    rectifier = y - lam * f
    estimate = lam * f_mean + rectifier.mean()
    rectifier_var = rectifier.var() / n  # ddof 0, as ppi_python
    if finite_population:
        variance = rectifier_var * max(0.0, 1 - n / N)
    else:
        variance = lam ** 2 * max(f_sumsq / N - f_mean ** 2, 0.0) / N + rectifier_var
    half = z_value(alpha) * np.sqrt(variance)
    return bounded(estimate, half, lam)


def stratified_ppi_interval(y: np.ndarray, f: np.ndarray, in_group: np.ndarray, strata: np.ndarray,
                            inclusion: np.ndarray, N_group: int, f_sum: float, f_sumsq: float,
                            alpha: float = 0.05, lam: float | None = None) -> Interval:
    """PPI estimate of a group's mean of y from a stratified audit (Horvitz-Thompson weights 1/inclusion).

    y, f, in_group, strata, inclusion: one entry per audit row (all strata, the group's rows marked).
    Stratum sizes are n_h / inclusion_h. Variance: the stratified formula with finite-population correction
    for the domain total of (y - lam f); the group's mean prediction over the corpus is exact.
    """
    y, f, in_group = np.asarray(y, float), np.asarray(f, float), np.asarray(in_group, bool)
    if in_group.sum() < 2:  # no spread to estimate from: no interval rather than a zero-width one
        return Interval(np.nan, np.nan, np.nan, lam)
    if lam is None:
        lam = power_tuning(y[in_group], f[in_group], N_group, f_sum, f_sumsq)
    d = np.where(in_group, y - lam * f, 0.0)
    weights = 1.0 / np.asarray(inclusion, float)
    estimate = lam * f_sum / N_group + (weights * d).sum() / N_group
    variance = 0.0
    for stratum in np.unique(strata):
        rows = strata == stratum
        n_h = int(rows.sum())
        N_h = n_h * weights[rows].mean()
        if n_h > 1:
            variance += N_h ** 2 * (1 - n_h / N_h) * d[rows].var(ddof=1) / n_h
    half = z_value(alpha) * np.sqrt(variance) / N_group
    return bounded(estimate, half, lam)


def bounded(estimate: float, half: float, lam: float | None) -> Interval:
    """The interval estimate +- half, cut to [0, 1]: a share cannot lie outside, so coverage is unchanged.
    The estimate itself is not cut (that would bias it, and the shares would no longer sum to 1)."""
    return Interval(float(estimate), float(max(0.0, estimate - half)), float(min(1.0, estimate + half)), lam)


# ------------------------------------------------------------------------------------------ the corpus side


@dataclass
class PredictionFile:
    """A file written by `framesft predict` (CSV or Parquet): id, predicted, p_<label>..., margin, context."""

    path: Path
    id_column: str
    labels: list[str]
    columns: list[str]

    def relation_sql(self) -> str:
        path = str(self.path).replace("'", "''")
        if self.path.suffix.lower() == ".parquet":
            return f"read_parquet('{path}')"
        return f"read_csv('{path}', header=true, all_varchar=true)"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_predictions(path: str | Path, id_column: str | None = None):
    """The prediction file's columns and labels (from its p_<label> columns), and a DuckDB connection."""
    import duckdb

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() not in {".csv", ".parquet"}:
        raise DataError(f"{path}: expected the .csv or .parquet file that `framesft predict` wrote")
    connection = duckdb.connect()
    probe = PredictionFile(path, "", [], [])
    columns = [row[0] for row in connection.execute(f"DESCRIBE SELECT * FROM {probe.relation_sql()}").fetchall()]
    labels = [c[2:] for c in columns if c.startswith("p_")]
    if "predicted" not in columns or not labels:
        raise DataError(f"{path}: no 'predicted' and p_<label> columns; give the file `framesft predict` wrote")
    id_column = id_column or columns[0]
    if id_column not in columns:
        raise DataError(f"{path}: id column {id_column!r} not found (columns: {', '.join(columns)})")
    return PredictionFile(path, id_column, labels, columns), connection


def group_expressions(file: PredictionFile, by: Sequence[str], time_column: str | None,
                      time_unit: str | None) -> dict[str, str]:
    """Output column name -> SQL expression, for each grouping column and the time bin."""
    for column in [*by, *([time_column] if time_column else [])]:
        if column not in file.columns:
            raise DataError(f"{file.path}: column {column!r} not found (columns: {', '.join(file.columns)}); "
                            "carry it into the predictions with `framesft predict ... --keep-columns`")
    expressions = {column: f"CAST({quote(column)} AS VARCHAR)" for column in by}
    if time_column:
        if time_unit not in TIME_UNITS:
            raise DataError(f"--time-unit {time_unit!r}: use one of {', '.join(TIME_UNITS)}")
        expressions["period"] = (f"strftime(date_trunc('{time_unit}', TRY_CAST({quote(time_column)} AS TIMESTAMP)),"
                                 f" '{TIME_FORMATS[time_unit]}')")
    return expressions


def check_dates(file: PredictionFile, connection, time_column: str) -> None:
    column = quote(time_column)
    bad = connection.execute(
        f"SELECT CAST({column} AS VARCHAR) FROM {file.relation_sql()} WHERE TRY_CAST({column} AS TIMESTAMP) IS NULL "
        "LIMIT 5").fetchall()
    if bad:
        count = connection.execute(f"SELECT count(*) FROM {file.relation_sql()} "
                                   f"WHERE TRY_CAST({column} AS TIMESTAMP) IS NULL").fetchone()[0]
        raise DataError(f"{file.path}: {count} values of {time_column!r} are not dates (e.g. "
                        f"{', '.join(repr(r[0]) for r in bad)}); write them as YYYY-MM-DD")


def crossfit_temperatures(audited: pd.DataFrame, labels: list[str], folds: int,
                          seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Each audit row's fold (stratified by its gold label) and, per fold, the temperature fitted on the other
    folds, relative to the stored probabilities p (the refitted ones are proportional to p ** (1 / T))."""
    if len(audited) < 2 * folds:
        raise DataError(f"{len(audited)} audit rows cannot be split into {folds} folds for calibration; code more "
                        "passages or leave out --calibrate-on-audit")
    truth = np.array([labels.index(g) for g in audited["gold"]])
    scores = np.log(np.clip(audited[[f"p_{label}" for label in labels]].to_numpy(float), 1e-300, 1.0))
    fold_of = fold_assignment(truth, folds, seed)
    return fold_of, [fit_temperature(scores[fold_of != k], truth[fold_of != k]) for k in range(folds)]


def recalibrated_audit(audited: pd.DataFrame, labels: list[str], fold_of: np.ndarray,
                       temperatures: list[float]) -> pd.DataFrame:
    """The audit rows' probabilities, each from the temperature its own fold was not fitted on."""
    columns = [f"p_{label}" for label in labels]
    scores = np.log(np.clip(audited[columns].to_numpy(float), 1e-300, 1.0))
    scaled = scores / np.array(temperatures)[fold_of][:, None]
    scaled -= scaled.max(axis=1, keepdims=True)
    probabilities = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
    result = audited.copy()
    result[columns] = probabilities
    return result


def averaged_probability_sql(labels: list[str], temperatures: list[float]) -> dict[str, str]:
    """SQL per label: the mean over the folds' temperatures of softmax(log p / T_k), from the stored p."""
    def p(label: str) -> str:
        return f"greatest(CAST({quote('p_' + label)} AS DOUBLE), 1e-300)"

    expressions = {}
    for label in labels:
        terms = []
        for t in temperatures:
            power = 1.0 / t
            denominator = " + ".join(f"pow({p(other)}, {power!r})" for other in labels)
            terms.append(f"pow({p(label)}, {power!r}) / ({denominator})")
        expressions[label] = f"(({' + '.join(terms)}) / {len(temperatures)})"
    return expressions


def corpus_aggregates(file: PredictionFile, connection, groups: dict[str, str],
                      temperatures: list[float] | None = None) -> pd.DataFrame:
    """Per group (and overall): rows, predicted counts, and sum and sum of squares of each probability (with
    temperatures: of the probabilities averaged over the cross-fitted temperatures)."""
    parts = ["count(*) AS rows"]
    averaged = averaged_probability_sql(file.labels, temperatures) if temperatures else {}
    for label in file.labels:
        p = averaged.get(label, f"CAST({quote('p_' + label)} AS DOUBLE)")
        parts += [f"sum(CAST(predicted = '{label.replace(chr(39), chr(39) * 2)}' AS INTEGER)) AS {quote('cc_' + label)}",
                  f"sum({p}) AS {quote('s_' + label)}", f"sum({p} * {p}) AS {quote('ss_' + label)}"]
    keys = ", ".join(f"{expr} AS {quote(name)}" for name, expr in groups.items())
    select = ", ".join(([keys] if keys else []) + parts)
    # overall, each grouping column alone, and all of them together (e.g. party; period; party x period)
    sets = ["()"] + [f"({quote(n)})" for n in groups] + ([f"({', '.join(quote(n) for n in groups)})"]
                                                          if len(groups) > 1 else [])
    grouping = f" GROUP BY GROUPING SETS ({', '.join(sets)})" if groups else ""
    table = connection.execute(f"SELECT {select} FROM {file.relation_sql()}{grouping}").df()
    for name in groups:
        table[name] = table[name].astype(object).where(table[name].notna(), ALL)
    if groups:  # overall first, then the groups in order (periods chronologically)
        names = list(groups)
        overall = (table[names] == ALL).all(axis=1)
        table = pd.concat([table[overall], table[~overall].sort_values(names)], ignore_index=True)
    return table


def audit_rows(file: PredictionFile, connection, audit: pd.DataFrame, groups: dict[str, str]) -> pd.DataFrame:
    """The audit's gold labels joined with their predictions and group keys (only these rows are read)."""
    connection.register("audit_sheet", audit)
    keys = "".join(f", {expr} AS {quote(name)}" for name, expr in groups.items())
    probs = "".join(f", CAST({quote('p_' + l)} AS DOUBLE) AS {quote('p_' + l)}" for l in file.labels)
    joined = connection.execute(
        f"SELECT a.*{keys}{probs} FROM audit_sheet a JOIN {file.relation_sql()} p "
        f"ON CAST(p.{quote(file.id_column)} AS VARCHAR) = a.id").df()
    connection.unregister("audit_sheet")
    return joined


# ------------------------------------------------------------------------------------------ the table


def estimate_shares(predictions: str | Path, audit: pd.DataFrame | None = None, by: Sequence[str] = (),
                    time_column: str | None = None, time_unit: str | None = "month", id_column: str | None = None,
                    alpha: float = 0.05, calibrate_folds: int | None = None) -> pd.DataFrame:
    """One row per (group, label): CC, PCC and, with an audit (columns id, gold, inclusion_probability,
    stratum), the audit-alone and PPI estimates, each with its 95% interval. calibrate_folds: refit the
    temperature on the audit by cross-fitting with this many folds (see the module's docstring)."""
    file, connection = open_predictions(predictions, id_column)
    temperatures = None
    try:
        groups = group_expressions(file, list(by), time_column, time_unit)
        if time_column:
            check_dates(file, connection, time_column)
        audited = audit_rows(file, connection, audit, groups) if audit is not None else None
        if calibrate_folds:
            if audited is None:
                raise DataError("calibrating on the audit needs an audit sample (--audit)")
            fold_of, temperatures = crossfit_temperatures(audited, file.labels, calibrate_folds)
            audited = recalibrated_audit(audited, file.labels, fold_of, temperatures)
        aggregates = corpus_aggregates(file, connection, groups, temperatures)
    finally:
        connection.close()
    rows = []
    for _, group in aggregates.iterrows():
        keys = {name: group[name] for name in groups}
        in_group = np.ones(len(audited), bool) if audited is not None else None
        if audited is not None:
            for name, value in keys.items():
                if value != ALL:
                    in_group &= (audited[name] == value).to_numpy()
            lam = group_power_tuning(audited, in_group, file.labels, group)
        for label in file.labels:
            n = int(group["rows"])
            row = {**keys, "label": label, "rows": n}
            add(row, "cc", cc_interval(n, int(group["cc_" + label]), alpha))
            add(row, "pcc", pcc_interval(n, group["s_" + label], group["ss_" + label], alpha))
            if audited is not None:
                estimate_with_audit(row, audited, in_group, label, n, group["s_" + label], group["ss_" + label],
                                    lam, alpha)
            rows.append(row)
    table = pd.DataFrame(rows)
    table["calibration"] = (f"temperature refitted on the audit, {calibrate_folds}-fold cross-fitted (T relative to "
                            f"the run's: {', '.join(f'{t:.2f}' for t in temperatures)})" if temperatures
                            else "the run's temperature")
    table["intervals_cover"] = ("sampling noise and classifier error (PPI)" if audit is not None
                                else "sampling noise only (no audit sample: classifier error not covered)")
    return table


def add(row: dict, name: str, interval: Interval) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = interval.estimate, interval.low, interval.high
    if interval.lam is not None and name == "ppi":
        row["ppi_lambda"] = interval.lam


def estimate_with_audit(row: dict, audited: pd.DataFrame, in_group: np.ndarray, label: str, N: int,
                        f_sum: float, f_sumsq: float, lam: float, alpha: float) -> None:
    y = (audited["gold"] == label).to_numpy(float)
    f = audited["p_" + label].to_numpy(float)
    inclusion = audited["inclusion_probability"].to_numpy(float)
    row["audit_rows"] = int(in_group.sum())
    if is_stratified(audited):
        strata = audited["stratum"].to_numpy()
        add(row, "audit", stratified_ppi_interval(y, f, in_group, strata, inclusion, N, f_sum, f_sumsq, alpha, 0.0))
        add(row, "ppi", stratified_ppi_interval(y, f, in_group, strata, inclusion, N, f_sum, f_sumsq, alpha, lam))
    else:
        add(row, "audit", ppi_interval(y[in_group], f[in_group], N, f_sum, f_sumsq, alpha, lam=0.0))
        add(row, "ppi", ppi_interval(y[in_group], f[in_group], N, f_sum, f_sumsq, alpha, lam=lam))


def is_stratified(audited: pd.DataFrame) -> bool:
    inclusion = audited["inclusion_probability"].to_numpy(float)
    return audited["stratum"].nunique() > 1 or not np.allclose(inclusion, inclusion[0])


def group_power_tuning(audited: pd.DataFrame, in_group: np.ndarray, labels: list[str], group: pd.Series) -> float:
    """One PPI++ weight for all of a group's shares (so that they sum to 1)."""
    rows = audited[in_group]
    y = np.stack([(rows["gold"] == label).to_numpy(float) for label in labels], axis=1)
    f = np.stack([rows["p_" + label].to_numpy(float) for label in labels], axis=1)
    return power_tuning(y, f, int(group["rows"]), np.array([group["s_" + l] for l in labels]),
                        np.array([group["ss_" + l] for l in labels]))
