"""Reading and checking annotated passages.

Every value is read as a string: `None`, `NA` and `null` are labels here, never missing values (pandas would
turn them into NaN by default). Row numbers in messages count as a spreadsheet shows a CSV file: the header is
row 1, the first passage row 2. For JSONL the row is the line number.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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


# ----------------------------------------------------------------------------------------------- splitting


def stratified_split(frame: pd.DataFrame, label_column: str, fraction: float, seed: int):
    """A seeded, stratified train/validation split of one table."""
    from sklearn.model_selection import train_test_split

    counts = frame[label_column].value_counts()
    n_classes = len(counts)
    n_val = max(n_classes, round(len(frame) * fraction))
    rare = counts[counts < 2]
    if len(rare) or n_val >= len(frame) - n_classes + 1:
        raise DataError(
            f"cannot split a stratified validation set from {len(frame)} training rows: "
            + (f"labels {list(rare.index)} have fewer than 2 rows; " if len(rare) else "too few rows; ")
            + "provide data.validation_csv or add more examples"
        )
    train, validation = train_test_split(frame, test_size=n_val, stratify=frame[label_column], random_state=seed)
    return train.reset_index(drop=True), validation.reset_index(drop=True)
