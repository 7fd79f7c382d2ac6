"""Reading and checking annotated passages.

Every value is read as a string: `None`, `NA` and `null` are labels here, never missing values (pandas would
turn them into NaN by default). Row numbers in messages count as a spreadsheet shows a CSV file: the header is
row 1, the first passage row 2. For JSONL the row is the line number.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataError

SUPPORTED_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet"}


# ----------------------------------------------------------------------------------------------- reading


def read_table(path: str | Path, required_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read CSV/TSV/JSONL/Parquet into a DataFrame of strings and check that the required columns exist."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header row and at least one passage")
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        frame = _read_delimited(path, sep="\t" if suffix == ".tsv" else ",")
    elif suffix in {".jsonl", ".json"}:
        frame = _read_jsonl(path)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path).astype(str)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(SUPPORTED_SUFFIXES)}")
    frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(frame, required_columns, path)
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return frame.reset_index(drop=True)


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    try:
        # utf-8-sig drops a byte-order mark that Excel puts in front of the first column name.
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: {describe_bad_utf8(path)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has no header row and no data") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid CSV file ({exc}); check for unbalanced quotes") from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(iter_jsonl_records(path)))


def iter_jsonl_records(path: Path):
    """JSON objects of a JSONL file, one per non-blank line, every value as a string; errors name the line."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {line_number} is not UTF-8 ({exc.reason}); re-save as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_number} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {line_number} must be a JSON object with named fields")
            yield {k: "" if v is None else str(v) for k, v in record.items()}


def describe_bad_utf8(path: Path) -> str:
    """Find the first line with bytes that are not UTF-8, so the user knows where to look."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                snippet = raw[max(0, exc.start - 20) : exc.end + 20]
                return (
                    f"line {line_number} is not UTF-8 (byte {raw[exc.start]:#04x} near {snippet!r}); "
                    "re-save the file as UTF-8 (in Excel: 'CSV UTF-8')"
                )
    return "the file is not UTF-8; re-save it as UTF-8"


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path | str) -> None:
    import difflib

    for column in columns:
        if column in frame.columns:
            continue
        close = difflib.get_close_matches(column, list(frame.columns), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"{path}: column {column!r} not found (columns: {', '.join(map(repr, frame.columns))}){hint} "
            "Set data.text_column / data.label_column in the config to the right name."
        )


def row_number(index: int, path: Path | str) -> int:
    """Spreadsheet row for CSV (header is row 1), line number for JSONL."""
    return index + 1 if str(path).lower().endswith((".jsonl", ".json")) else index + 2


# ----------------------------------------------------------------------------------------------- checking


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


def _rows(indices: list[int], path: str, limit: int = 10) -> str:
    shown = ", ".join(str(row_number(i, path)) for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def normalise_labels(frame: pd.DataFrame, label_column: str, labels: list[str] | None, report: DataReport) -> None:
    """Map case/whitespace variants ("economic ", "ECONOMIC") onto the configured spelling, with a warning."""
    values = frame[label_column]
    stripped = values.str.strip()
    canonical = {lab.casefold(): lab for lab in labels} if labels else {v.casefold(): v for v in stripped.unique()}
    fixed = stripped.map(lambda v: canonical.get(v.casefold(), v))
    changed = fixed != values
    if changed.any():
        variants = sorted(set(values[changed]))
        report.add(
            "warning",
            f"{int(changed.sum())} labels differ from the label set only in case or spaces "
            f"({', '.join(map(repr, variants[:5]))}); normalised ({_rows(list(frame.index[changed]), report.path)})",
        )
    frame[label_column] = fixed


def check_frame(
    frame: pd.DataFrame,
    path: str,
    text_column: str,
    label_column: str | None,
    labels: list[str] | None,
) -> DataReport:
    """Validate one table in place (labels are normalised) and return the findings."""
    report = DataReport(path=path, rows=len(frame))
    texts = frame[text_column]
    blank = list(frame.index[texts.str.strip() == ""])
    if blank:
        report.add("error", f"{len(blank)} empty or whitespace-only texts in column {text_column!r} ({_rows(blank, path)})")

    duplicated = frame.index[texts.duplicated(keep="first") & (texts.str.strip() != "")]
    if len(duplicated):
        report.add("warning", f"{len(duplicated)} duplicate texts ({_rows(list(duplicated), path)})")

    if label_column is None:
        return report

    missing = list(frame.index[frame[label_column].str.strip() == ""])
    if missing:
        report.add("error", f"{len(missing)} rows have no label in column {label_column!r} ({_rows(missing, path)})")
    normalise_labels(frame, label_column, labels, report)
    present = frame[label_column][frame[label_column] != ""]
    report.label_counts = dict(sorted(Counter(present).items()))

    if labels is not None:
        outside = defaultdict(list)
        for index, label in present.items():
            if label not in labels:
                outside[label].append(index)
        for label, indices in outside.items():
            report.add(
                "error",
                f"label {label!r} is not in the label set {labels} ({_rows(indices, path)}); "
                "fix the rows or add the label to data.label2id",
            )

    conflicting = frame.groupby(text_column)[label_column].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        indices = list(frame.index[frame[text_column].isin(conflicting.index)])
        report.add("error", f"{len(conflicting)} texts appear with different labels ({_rows(indices, path)})")
    return report


def check_overlap(train: pd.DataFrame, other: pd.DataFrame, other_path: str, text_column: str, report: DataReport):
    """Leakage: the same passage in the training file and in a validation/test file."""
    shared = other.index[other[text_column].isin(set(train[text_column]))]
    if len(shared):
        report.add(
            "error",
            f"{len(shared)} texts also appear in the training file (leakage; {_rows(list(shared), other_path)}); "
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
            f"{_rows(shared, other_path)}); scores on them overstate accuracy on new passages",
        )


def check_lengths(texts: pd.Series, count_tokens, max_text_tokens: int, path: str, report: DataReport) -> None:
    """Over-long passages are truncated before training; say how many and where."""
    lengths = texts.map(count_tokens)
    too_long = list(texts.index[lengths > max_text_tokens])
    if too_long:
        report.add(
            "warning",
            f"{len(too_long)} texts are longer than the {max_text_tokens} tokens left for the passage by "
            f"data.max_length (longest {int(lengths.max())} tokens) and will be truncated ({_rows(too_long, path)})",
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


def report_near_duplicates(frame: pd.DataFrame, path: str, text_column: str, threshold: float | None,
                           report: DataReport) -> list[int] | None:
    """Group the file's near-duplicates and report them; None when the check is off (threshold None)."""
    if threshold is None:
        return None
    groups = near_duplicate_groups(list(frame[text_column]), threshold)
    describe_near_duplicates(groups, path, report)
    return groups


def describe_near_duplicates(groups: list[int], path: str, report: DataReport) -> None:
    sizes = Counter(groups)
    in_groups = [index for index, group in enumerate(groups) if sizes[group] > 1]
    if in_groups:
        report.add(
            "warning",
            f"{len(in_groups)} texts have near-duplicates in the same file (paraphrases or overlapping "
            f"passages; {sum(1 for n in sizes.values() if n > 1)} groups, e.g. {_rows(in_groups, path, 5)}); "
            "a validation split keeps each group on one side so they cannot inflate validation scores",
        )


# ----------------------------------------------------------------------------------------------- splitting


def stratified_split(frame: pd.DataFrame, label_column: str, fraction: float, seed: int,
                     groups: Sequence[int] | None = None):
    """A seeded, stratified train/validation split of one table.

    With `groups` (see near_duplicate_groups) whole groups go to one side: the split is drawn over groups,
    stratified by each group's label, so a paraphrase of a training passage never lands in validation.
    Without groups every row is its own group, which is the plain stratified split.
    """
    from sklearn.model_selection import train_test_split

    group_of_row = pd.Series(range(len(frame)) if groups is None else list(groups), index=frame.index)
    group_labels = frame[label_column].groupby(group_of_row, sort=False).agg(lambda s: s.mode().iloc[0])
    counts = group_labels.value_counts()
    n_classes = len(counts)
    n_val = max(n_classes, round(len(group_labels) * fraction))
    rare = counts[counts < 2]
    grouped = len(group_labels) < len(frame)  # some rows share a group
    unit = "groups of near-duplicate rows" if grouped else "rows"
    if len(rare) or n_val >= len(group_labels) - n_classes + 1:
        raise DataError(
            f"cannot split a stratified validation set from {len(frame)} training rows: "
            + (f"labels {list(rare.index)} have fewer than 2 {unit}; " if len(rare) else "too few rows; ")
            + "provide data.validation_csv or add more examples"
            + (" (or set data.near_duplicate_threshold: null to split rows, not groups)" if grouped else "")
        )
    train_groups, validation_groups = train_test_split(
        list(group_labels.index), test_size=n_val, stratify=group_labels, random_state=seed)
    # rows follow their group's place in the shuffled order (with singleton groups: train_test_split's order)
    place = {group: i for i, group in enumerate(train_groups + validation_groups)}
    ordered = frame.loc[sorted(frame.index, key=lambda row: place[group_of_row[row]])]
    in_validation = group_of_row[ordered.index].isin(set(validation_groups))
    return ordered[~in_validation].reset_index(drop=True), ordered[in_validation].reset_index(drop=True)
