"""Reading tables of passages: CSV, TSV, Excel workbooks (.xlsx), Excel's "Unicode Text" export (.txt: UTF-16,
tab-separated), JSONL and Parquet files, every value as a string.

`None`, `NA` and `null` are labels here, never missing values (pandas would turn them into NaN by default).
CSV/TSV files are read in the encoding and with the delimiter the config names (`data.encoding`,
`data.delimiter`, or `--encoding`/`--delimiter`); a file in another encoding, or with another delimiter, gets
a message naming the setting that reads it.
Row numbers in messages count as a spreadsheet shows a CSV file: the header is row 1, the first passage row 2.
For JSONL the row is the line number. A workbook is read from its first sheet unless `data.sheet` / `--sheet`
names another. A header that names a column twice is an error: which of the two holds the labels is the user's
call, not ours.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from .errors import DataError

SUPPORTED_SUFFIXES = {".csv", ".tsv", ".txt", ".xlsx", ".jsonl", ".json", ".parquet"}
DELIMITED_SUFFIXES = {".csv", ".tsv", ".txt"}
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}


def read_table(path: str | Path, required_columns: Iterable[str] = (), encoding: str = "utf-8",
               delimiter: str | None = None, sheet: str | None = None) -> pd.DataFrame:
    """Read CSV/TSV/TXT/XLSX/JSONL/Parquet into a DataFrame of strings and check that the required columns exist."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header row and at least one passage")
    suffix = path.suffix.lower()
    if suffix in DELIMITED_SUFFIXES:
        encoding = text_encoding(path, encoding)
        table = read_delimited(path, encoding, delimiter)
    elif suffix == ".xlsx":
        table = read_workbook(path, sheet)
    elif suffix in {".jsonl", ".json"}:
        table = pd.DataFrame.from_records(list(iter_jsonl_records(path)))
    elif suffix == ".parquet":
        table = pd.read_parquet(path).astype(str)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(SUPPORTED_SUFFIXES)}")
    table.columns = [str(c).strip() for c in table.columns]
    require_columns(table, required_columns, path, encoding, delimiter)
    if table.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return table.reset_index(drop=True)


def text_encoding(path: Path, encoding: str) -> str:
    """UTF-16 for a file that starts with its byte-order mark (Excel's "Unicode Text"), else the setting."""
    with path.open("rb") as handle:
        start = handle.read(2)
    return "utf-16" if start in UTF16_BOMS else encoding


def read_workbook(path: Path, sheet: str | None = None) -> pd.DataFrame:
    """One sheet of an .xlsx workbook (the first unless named), every cell a string, empty cells ''."""
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True)  # read-only mode holds the file open until closed
        names = book.sheetnames
        book.close()
    except Exception as exc:  # openpyxl raises several types for a damaged or mislabelled file
        raise DataError(f"{path}: not a readable Excel workbook ({exc}); save it again from Excel as .xlsx") from None
    if sheet is not None and sheet not in names:
        raise DataError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(map(repr, names))}); set data.sheet or "
                        "--sheet to one of them")
    name = sheet if sheet is not None else names[0]
    header = pd.read_excel(path, sheet_name=name, header=None, nrows=1, dtype=str, keep_default_na=False,
                           na_filter=False, engine="openpyxl")
    check_unique_columns(header.iloc[0].tolist() if len(header) else [], f"{path} (sheet {name!r})")
    return pd.read_excel(path, sheet_name=name, dtype=str, keep_default_na=False, na_filter=False, engine="openpyxl")


def check_unique_columns(names: list, where: str) -> None:
    """A header naming a column twice (what a merge of two exports leaves behind) is an error."""
    stripped = [str(n).strip() for n in names]
    repeated = sorted({n for n in stripped if n and stripped.count(n) > 1})
    if repeated:
        raise DataError(f"{where}: the header names {', '.join(map(repr, repeated))} more than once (columns "
                        + "; ".join(f"{n!r} at " + ", ".join(str(i + 1) for i, m in enumerate(stripped) if m == n)
                                    for n in repeated)
                        + "); rename or delete the extra columns so that each name appears once")


def csv_options(path: Path, encoding: str = "utf-8", delimiter: str | None = None) -> dict:
    """pandas.read_csv arguments that keep every value a string (no NaN for `None`)."""
    return {
        "sep": delimiter or ("\t" if path.suffix.lower() in {".tsv", ".txt"} else ","),
        "dtype": str, "keep_default_na": False, "na_filter": False,
        # utf-8-sig drops a byte-order mark that Excel puts in front of the first column name.
        "encoding": "utf-8-sig" if encoding.replace("_", "-").lower() in {"utf-8", "utf8"} else encoding,
    }


def read_delimited(path: Path, encoding: str = "utf-8", delimiter: str | None = None) -> pd.DataFrame:
    """The whole file; read errors say how to fix them."""
    try:
        header = pd.read_csv(path, header=None, nrows=1, **csv_options(path, encoding, delimiter))
        check_unique_columns(header.iloc[0].tolist() if len(header) else [], str(path))
        return pd.read_csv(path, **csv_options(path, encoding, delimiter))
    except UnicodeDecodeError:
        raise DataError(f"{path}: {describe_bad_encoding(path, encoding)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has no header row and no data") from None
    except pd.errors.ParserError as exc:
        hint = delimiter_hint(path, encoding, delimiter)
        if hint:
            raise DataError(f"{path}: cannot be read as {csv_options(path)['sep']!r}-separated{hint}") from None
        raise DataError(f"{path}: not a valid CSV file ({str(exc).strip()}); check for unbalanced quotes") from None


def iter_delimited_chunks(path: Path, encoding: str, delimiter: str | None, chunksize: int) -> Iterator[pd.DataFrame]:
    """The file in chunks of `chunksize` rows (corpus prediction)."""
    try:
        header = pd.read_csv(path, header=None, nrows=1, **csv_options(path, encoding, delimiter))
        check_unique_columns(header.iloc[0].tolist() if len(header) else [], str(path))
        yield from pd.read_csv(path, chunksize=chunksize, **csv_options(path, encoding, delimiter))
    except UnicodeDecodeError:
        raise DataError(f"{path}: {describe_bad_encoding(path, encoding)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None


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


def describe_bad_encoding(path: Path, encoding: str) -> str:
    """Where the first undecodable line is, and which setting reads the file when a common encoding does."""
    name = "UTF-8" if encoding.replace("_", "-").lower() in {"utf-8", "utf8"} else encoding
    where = f"the file is not {name}"
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as exc:
                snippet = raw[max(0, exc.start - 20): exc.end + 20]
                where = f"line {line_number} is not {name} (byte {raw[exc.start]:#04x} near {snippet!r})"
                break
    data = path.read_bytes()
    for candidate, description in (("utf-8", "UTF-8"), ("cp1252", "Windows-1252 (cp1252), what Excel on Windows "
                                                                   "writes for 'CSV'")):
        if candidate == encoding:
            continue
        try:
            data.decode(candidate)
        except UnicodeDecodeError:
            continue
        return (f"{where}; the whole file reads as {description}: set data.encoding: {candidate} in the config "
                f"(or pass --encoding {candidate}), or re-save the file as UTF-8 (in Excel: 'CSV UTF-8')")
    return f"{where}; re-save the file as UTF-8 (in Excel: 'CSV UTF-8') or set data.encoding to its encoding"


def delimiter_hint(path: Path, encoding: str, delimiter: str | None) -> str:
    """'; the file looks ;-separated: ...' when the header line splits on another common delimiter."""
    if delimiter is not None or path.suffix.lower() not in DELIMITED_SUFFIXES:
        return ""
    try:
        with path.open(encoding=csv_options(path, encoding)["encoding"], errors="replace") as handle:
            header = handle.readline()
    except OSError:
        return ""
    used = csv_options(path, encoding)["sep"]
    found = [sep for sep in DELIMITERS if sep != used and sep in header]
    if not found:
        return ""
    sep = max(found, key=header.count)
    shown = "'\\t'" if sep == "\t" else f"'{sep}'"
    return (f"; it looks {DELIMITERS[sep]}-separated ({sep!r} in its header): set data.delimiter: {shown} "
            f"in the config (or pass --delimiter {shown})")


def require_columns(table: pd.DataFrame, columns: Iterable[str], path: Path | str, encoding: str = "utf-8",
                    delimiter: str | None = None) -> None:
    for column in columns:
        if column in table.columns:
            continue
        if len(table.columns) == 1:
            hint = delimiter_hint(Path(path), encoding, delimiter)
            if hint:
                raise DataError(f"{path}: read as a single column {table.columns[0]!r}{hint}")
        close = difflib.get_close_matches(column, list(table.columns), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"{path}: column {column!r} not found (columns: {', '.join(map(repr, table.columns))}){hint} "
            "Set data.text_column / data.label_column in the config to the right name."
        )


def row_number(index: int, path: Path | str) -> int:
    """Spreadsheet row for CSV (header is row 1), line number for JSONL."""
    return index + 1 if str(path).lower().endswith((".jsonl", ".json")) else index + 2
