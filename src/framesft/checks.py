"""Checks on annotated passages: empty texts, unknown labels (with row numbers), duplicates, conflicting labels,
near-duplicates (paraphrases), leakage between files, over-long passages.

`check_tables` is the one place these run, for `framesft data check` and for every run's data alike.
Row numbers in messages count as a spreadsheet shows a CSV file (see tables.row_number).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .errors import DataError
from .tables import row_number

log = logging.getLogger(__name__)


@dataclass
class Finding:
    level: str  # "error" or "warning"
    message: str


@dataclass
class DataReport:
    path: str
    rows: int
    label_counts: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def add(self, level: str, message: str) -> None:
        self.findings.append(Finding(level, message))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows": self.rows,
            "label_counts": self.label_counts,
            "findings": [f.__dict__ for f in self.findings],
        }


def rows_text(indices: list[int], path: str, limit: int = 10) -> str:
    shown = ", ".join(str(row_number(i, path)) for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def normalise_labels(table: pd.DataFrame, label_column: str, labels: list[str] | None, report: DataReport) -> None:
    """Map case/whitespace variants ("economic ", "ECONOMIC") onto the configured spelling, with a warning."""
    values = table[label_column]
    stripped = values.str.strip()
    canonical = {lab.casefold(): lab for lab in labels} if labels else {v.casefold(): v for v in stripped.unique()}
    fixed = stripped.map(lambda v: canonical.get(v.casefold(), v))
    changed = fixed != values
    if changed.any():
        variants = sorted(set(values[changed]))
        report.add(
            "warning",
            f"{int(changed.sum())} labels differ from the label set only in case or spaces "
            f"({', '.join(map(repr, variants[:5]))}); normalised ({rows_text(list(table.index[changed]), report.path)})",
        )
    table[label_column] = fixed


def check_table(
    table: pd.DataFrame,
    path: str,
    text_column: str,
    label_column: str | None,
    labels: list[str] | None,
) -> DataReport:
    """Validate one table in place (labels are normalised) and return the findings."""
    report = DataReport(path=path, rows=len(table))
    texts = table[text_column]
    blank = list(table.index[texts.str.strip() == ""])
    if blank:
        report.add("error", f"{len(blank)} empty or whitespace-only texts in column {text_column!r} ({rows_text(blank, path)})")

    duplicated = table.index[texts.duplicated(keep="first") & (texts.str.strip() != "")]
    if len(duplicated):
        report.add("warning", f"{len(duplicated)} duplicate texts ({rows_text(list(duplicated), path)})")

    if label_column is None:
        return report

    missing = list(table.index[table[label_column].str.strip() == ""])
    if missing:
        report.add("error", f"{len(missing)} rows have no label in column {label_column!r} ({rows_text(missing, path)})")
    normalise_labels(table, label_column, labels, report)
    present = table[label_column][table[label_column] != ""]
    report.label_counts = dict(sorted(Counter(present).items()))

    if labels is not None:
        outside = defaultdict(list)
        for index, label in present.items():
            if label not in labels:
                outside[label].append(index)
        for label, indices in outside.items():
            report.add(
                "error",
                f"label {label!r} is not in the label set {labels} ({rows_text(indices, path)}); "
                "fix the rows or add the label to data.label2id",
            )

    conflicting = table.groupby(text_column)[label_column].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        indices = list(table.index[table[text_column].isin(conflicting.index)])
        report.add("error", f"{len(conflicting)} texts appear with different labels ({rows_text(indices, path)})")
    return report


def check_overlap(train: pd.DataFrame, other: pd.DataFrame, other_path: str, text_column: str, report: DataReport):
    """Leakage: the same passage in the training file and in a validation/test file."""
    shared = other.index[other[text_column].isin(set(train[text_column]))]
    if len(shared):
        report.add(
            "error",
            f"{len(shared)} texts also appear in the training file (leakage; {rows_text(list(shared), other_path)}); "
            "remove them from one of the files",
        )


def check_near_duplicate_overlap(train: pd.DataFrame, other: pd.DataFrame, other_path: str, text_column: str,
                                 threshold: float | None, report: DataReport) -> None:
    """Softer leakage: paraphrases or overlapping windows of training passages in a validation/test file."""
    if threshold is None:
        return
    texts = list(train[text_column]) + list(other[text_column])
    groups = near_duplicate_groups(texts, threshold)
    train_groups = set(groups[: len(train)])
    shared = [index for index, group in zip(other.index, groups[len(train):]) if group in train_groups]
    if shared:
        report.add(
            "warning",
            f"{len(shared)} texts are near-duplicates of training texts (paraphrases or overlapping passages; "
            f"{rows_text(shared, other_path)}); scores on them overstate accuracy on new passages",
        )


def check_lengths(texts: pd.Series, count_tokens: Callable[[str], int], max_text_tokens: int, path: str,
                  report: DataReport) -> None:
    """Over-long passages are truncated before training; say how many and where."""
    lengths = texts.map(count_tokens)
    too_long = list(texts.index[lengths > max_text_tokens])
    if too_long:
        report.add(
            "warning",
            f"{len(too_long)} texts are longer than the {max_text_tokens} tokens left for the passage by "
            f"data.max_length (longest {int(lengths.max())} tokens) and will be truncated ({rows_text(too_long, path)})",
        )


# ----------------------------------------------------------------------------------------------- near-duplicates

SHINGLE_WORDS = 5
COMMON_SHINGLE_TEXTS = 50  # a 5-word phrase found in more texts than this is boilerplate, not shared wording


def word_shingles(text: str, size: int = SHINGLE_WORDS) -> list[str]:
    words = re.findall(r"\w+", text.lower())
    return [" ".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))]


def near_duplicate_groups(texts: Sequence[str], threshold: float) -> list[int]:
    """A group id per text; texts whose shared 5-word phrases make up at least `threshold` of the shorter
    text's phrases (paraphrases, overlapping windows of one speech) share an id, transitively.

    Augmented training files are full of these: at 0.3, 2,059 of the 3,006 rows of the Brexit training file
    fall into 600 groups of 2-9 rows (1,547 groups with the singletons), while none of its 150 dev passages
    joins a training group.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.feature_extraction.text import CountVectorizer

    phrases = CountVectorizer(analyzer=word_shingles, binary=True).fit_transform(texts).tocsc()
    sizes = np.asarray(phrases.sum(axis=1)).ravel()
    rare = phrases[:, np.flatnonzero(np.asarray(phrases.sum(axis=0)).ravel() <= COMMON_SHINGLE_TEXTS)].tocsr()
    shared = (rare @ rare.T).tocoo()  # shared[i, j]: phrases texts i and j have in common
    close = shared.data >= threshold * np.minimum(sizes[shared.row], sizes[shared.col])
    links = coo_matrix((np.ones(close.sum()), (shared.row[close], shared.col[close])), shape=shared.shape)
    return connected_components(links, directed=False)[1].tolist()


def report_near_duplicates(table: pd.DataFrame, path: str, text_column: str, threshold: float | None,
                           report: DataReport) -> list[int] | None:
    """Group the file's near-duplicates and report them; None when the check is off (threshold None)."""
    if threshold is None:
        return None
    groups = near_duplicate_groups(list(table[text_column]), threshold)
    describe_near_duplicates(groups, path, report)
    return groups


def describe_near_duplicates(groups: list[int], path: str, report: DataReport) -> None:
    sizes = Counter(groups)
    in_groups = [index for index, group in enumerate(groups) if sizes[group] > 1]
    if in_groups:
        report.add(
            "warning",
            f"{len(in_groups)} texts have near-duplicates in the same file (paraphrases or overlapping "
            f"passages; {sum(1 for n in sizes.values() if n > 1)} groups, e.g. {rows_text(in_groups, path, 5)}); "
            "a validation split keeps each group on one side so they cannot inflate validation scores",
        )




# ----------------------------------------------------------------------------------------------- all files


def check_tables(tables: list[tuple[str, pd.DataFrame]], text_column: str, label_column: str,
                 labels: list[str] | None, num_labels: int | None = None,
                 near_duplicate_threshold: float | None = None) -> tuple[list[DataReport], list[str], list[int] | None]:
    """Check a training table and the validation/test tables beside it; labels are normalised in place.

    Returns one report per table, the label set (the given one, else the training table's labels, sorted)
    and the training table's near-duplicate groups (None when that check is off).
    """
    (train_path, train), others = tables[0], tables[1:]
    train_report = check_table(train, train_path, text_column, label_column, labels)
    if labels is None:
        labels = sorted(train_report.label_counts)
    if num_labels is not None and len(labels) != num_labels:
        train_report.add("error", f"data.num_labels is {num_labels} but the training file has "
                                  f"{len(labels)} labels: {labels}")
    if len(train_report.label_counts) < 2:
        train_report.add("error", f"the training file has only one class {list(train_report.label_counts)}; "
                                  "a classifier needs at least two")
    groups = report_near_duplicates(train, train_path, text_column, near_duplicate_threshold, train_report)
    reports = [train_report]
    for path, table in others:
        reports.append(check_table(table, path, text_column, label_column, labels))
        check_overlap(train, table, path, text_column, reports[-1])
        check_near_duplicate_overlap(train, table, path, text_column, near_duplicate_threshold, reports[-1])
    return reports, labels, groups


def raise_on_errors(reports: list[DataReport], hint: str = "") -> None:
    """One DataError listing every error of every report; otherwise log the warnings."""
    problems = [f"{report.path}: {finding.message}" for report in reports for finding in report.errors]
    if problems:
        raise DataError("data check failed:\n" + "\n".join(f"  - {p}" for p in problems) + hint)
    for report in reports:
        for finding in report.findings:
            log.warning("%s: %s", Path(report.path).name, finding.message)
