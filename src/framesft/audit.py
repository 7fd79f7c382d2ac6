"""Audit samples: rows drawn from a prediction file for human coding, and the coded sheet read back.

`draw_audit_sample` draws a simple random sample (what the estimators need) or a stratified one (by predicted
label or by a column, proportional allocation with at least two rows per stratum so each stratum's variance
can be estimated), and records each row's inclusion probability. The coding sheet holds the id, the inclusion
probability, the stratum, the text and an empty label column, in random order; the model's label is left out
unless asked for, because it anchors coders.

`read_coded_sheet` applies the bad-input rules of training data to the coded sheet: an unknown or empty label,
an id that is not in the predictions, or a duplicate id is an error naming the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .adaptation import check_audit_not_adapted_on
from .checks import check_table, raise_on_errors, rows_text
from .corpus import CorpusSource, iter_chunks
from .errors import DataError
from .estimation import open_predictions, quote
from .files import atomic_path, write_json
from .tables import read_table

LABEL_COLUMN = "label"
TEXT_COLUMN = "text"
MODEL_LABEL_COLUMN = "model_label"


def allocate(stratum_sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional allocation of n rows over strata (largest remainders), at least min(2, N_h) each."""
    total = sum(stratum_sizes.values())
    floor = {h: min(2, size) for h, size in stratum_sizes.items()}
    if sum(floor.values()) > n:
        raise DataError(f"--n {n} is too small for {len(stratum_sizes)} strata (each needs 2 rows); draw at least "
                        f"{sum(floor.values())} or stratify by something with fewer values")
    exact = {h: n * size / total for h, size in stratum_sizes.items()}
    sizes = {h: max(floor[h], min(stratum_sizes[h], int(exact[h]))) for h in stratum_sizes}
    order = sorted(stratum_sizes, key=lambda h: exact[h] - int(exact[h]), reverse=True)
    while sum(sizes.values()) < n:
        grown = False
        for h in order:
            if sum(sizes.values()) < n and sizes[h] < stratum_sizes[h]:
                sizes[h] += 1
                grown = True
        if not grown:
            break
    while sum(sizes.values()) > n:  # the floors pushed the total over n: take from the largest strata
        h = max(sizes, key=lambda k: sizes[k] - floor[k])
        sizes[h] -= 1
    return sizes


def draw_audit_sample(predictions: str | Path, n: int, output: str | Path, *, stratify_by: str | None = None,
                      seed: int = 0, id_column: str | None = None, corpus: str | Path | None = None,
                      text_column: str = "chunk_text", corpus_id_column: str | None = None,
                      include_model_label: bool = False, encoding: str = "utf-8",
                      delimiter: str | None = None, sheet: str | None = None) -> pd.DataFrame:
    """Write a coding sheet of n rows drawn from a prediction file; returns it.

    The texts come from the prediction file's `text_column` (carried with `predict --keep-columns`) or from
    `corpus`, the file that was classified, matched on the id column (or the row number).
    """
    output = Path(output)
    if output.suffix.lower() not in {".csv", ".xlsx"}:
        raise DataError(f"--output {output}: write the coding sheet as .csv (opens in any spreadsheet) or .xlsx (an "
                        "Excel workbook whose label column offers the label set as a drop-down)")
    if output.exists():
        raise DataError(f"{output} already exists; delete it or choose another --output")
    file, connection = open_predictions(predictions, id_column)
    try:
        if stratify_by and stratify_by not in file.columns:
            raise DataError(f"{file.path}: cannot stratify by {stratify_by!r}: no such column (columns: "
                            f"{', '.join(file.columns)})")
        stratum = f"CAST({quote(stratify_by)} AS VARCHAR)" if stratify_by else "'all'"
        numbered = (f"SELECT *, {stratum} AS _stratum, row_number() OVER () - 1 AS _position "
                    f"FROM {file.relation_sql()}")
        sizes = dict(connection.execute(f"SELECT _stratum, count(*) FROM ({numbered}) GROUP BY 1 ORDER BY 1")
                     .fetchall())
        total = sum(sizes.values())
        if n > total:
            raise DataError(f"--n {n} is larger than the {total} rows of {file.path}")
        per_stratum = allocate(sizes, n) if stratify_by else {"all": n}
        rng = np.random.default_rng(seed)
        chosen = []
        for h in sorted(per_stratum):
            positions = connection.execute(f"SELECT _position FROM ({numbered}) WHERE _stratum = ? ORDER BY _position",
                                           [h]).fetchnumpy()["_position"]
            picked = rng.choice(positions, size=per_stratum[h], replace=False)
            chosen += [(int(p), h, per_stratum[h] / sizes[h]) for p in picked]
        design = pd.DataFrame(chosen, columns=["_position", "stratum", "inclusion_probability"])
        connection.register("chosen", design)
        wanted = [file.id_column] + ([text_column] if text_column in file.columns else []) + \
            (["predicted"] if include_model_label else [])
        sample = connection.execute(
            f"SELECT c.stratum, c.inclusion_probability, {', '.join('CAST(p.' + quote(c) + ' AS VARCHAR) AS ' + quote(c) for c in wanted)} "
            f"FROM ({numbered}) p JOIN chosen c USING (_position)").df()
    finally:
        connection.close()
    if text_column in sample.columns:
        sample = sample.rename(columns={text_column: TEXT_COLUMN})
    elif corpus is not None:
        sample[TEXT_COLUMN] = corpus_texts(corpus, sample[file.id_column].tolist(), file.id_column, text_column,
                                           corpus_id_column, encoding, delimiter, sheet)
    else:
        raise DataError(f"{file.path} has no {text_column!r} column: pass --corpus FILE (the file that was "
                        f"classified) or predict with --keep-columns {text_column}")
    sample = sample.sample(frac=1, random_state=seed).reset_index(drop=True)  # coders see a random order
    sheet = pd.DataFrame({"id": sample[file.id_column], "inclusion_probability": sample["inclusion_probability"],
                          "stratum": sample["stratum"], TEXT_COLUMN: sample[TEXT_COLUMN], LABEL_COLUMN: ""})
    if include_model_label:
        sheet[MODEL_LABEL_COLUMN] = sample["predicted"]
    with atomic_path(output) as tmp:
        if output.suffix.lower() == ".xlsx":
            write_coding_workbook(sheet, tmp, file.labels)
        else:
            sheet.to_csv(tmp, index=False)
    write_json(output.with_name(output.name + ".design.json"), {
        "predictions": str(file.path.resolve()), "id_column": file.id_column, "rows": total, "n": n,
        "design": f"stratified by {stratify_by}, proportional allocation" if stratify_by else "simple random sample",
        "strata": {h: {"rows": sizes[h], "drawn": per_stratum[h]} for h in per_stratum}, "seed": seed,
        "labels": file.labels})
    return sheet


def write_coding_workbook(sheet: pd.DataFrame, path: Path, labels: list[str]) -> None:
    """The coding sheet as an Excel workbook: the label column offers the label set as a drop-down (Excel data
    validation, which refuses anything else typed in), passages wrapped in a wide column, the header frozen.
    The labels live on a second sheet, so a label holding a comma or a long label set still works."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    book = Workbook()
    coding = book.active
    coding.title = "coding"
    coding.append(list(sheet.columns))
    for row in sheet.itertuples(index=False):
        coding.append([str(value) for value in row])
    label_sheet = book.create_sheet("labels")
    for label in labels:
        label_sheet.append([label])
    label_sheet.sheet_state = "hidden"

    columns = list(sheet.columns)
    label_letter = get_column_letter(columns.index(LABEL_COLUMN) + 1)
    choice = DataValidation(type="list", formula1=f"=labels!$A$1:$A${len(labels)}", allow_blank=True,
                            showErrorMessage=True, errorTitle="Not a label",
                            error="Choose one of the labels from the list.", promptTitle="label",
                            prompt="Choose the frame of this passage", showInputMessage=True)
    choice.add(f"{label_letter}2:{label_letter}{len(sheet) + 1}")
    coding.add_data_validation(choice)
    widths = {TEXT_COLUMN: 100, LABEL_COLUMN: max(16, max(map(len, labels), default=0) + 4), "id": 14}
    for position, name in enumerate(columns, start=1):
        letter = get_column_letter(position)
        coding.column_dimensions[letter].width = widths.get(name, 12)
        coding.cell(row=1, column=position).font = Font(bold=True)
    for cell in coding[get_column_letter(columns.index(TEXT_COLUMN) + 1)][1:]:
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    coding.freeze_panes = "A2"
    book.save(path)


def corpus_texts(corpus: str | Path, ids: list[str], id_column: str, text_column: str,
                 corpus_id_column: str | None, encoding: str, delimiter: str | None,
                 sheet: str | None = None) -> list[str]:
    """Texts of the sampled rows, streamed from the classified corpus (any input format of `predict`)."""
    by_row = id_column == "row" and corpus_id_column is None
    key = corpus_id_column or (None if by_row else id_column)
    source = CorpusSource(Path(corpus), text_column, key, encoding=encoding, delimiter=delimiter, sheet=sheet)
    wanted, found = set(ids), {}
    for chunk in iter_chunks(source):
        keys = chunk["_row"].astype(str) if by_row else chunk[key].astype(str)
        hits = keys.isin(wanted)
        found.update(zip(keys[hits], chunk.loc[hits, text_column]))
    missing = [i for i in ids if i not in found]
    if missing:
        raise DataError(f"{corpus}: {len(missing)} sampled ids not found (e.g. {missing[:5]}); give the file that "
                        f"was classified, and --corpus-id-column if its id column has another name")
    return [found[i] for i in ids]


def read_coded_sheet(path: str | Path, predictions: str | Path, labels: list[str] | None = None,
                     id_column: str | None = None, encoding: str = "utf-8",
                     delimiter: str | None = None, sheet: str | None = None) -> pd.DataFrame:
    """The coded sheet as (id, gold, inclusion_probability, stratum), checked row by row; a sheet holding
    passages the predicting run was adapted on (adaptation.adapt_run) is refused."""
    sheet = read_table(path, ["id", TEXT_COLUMN, LABEL_COLUMN], encoding, delimiter, sheet)
    file, connection = open_predictions(predictions, id_column)
    labels = labels or file.labels
    # the training-data rules: empty or unknown labels (case variants normalised), conflicting labels
    report = check_table(sheet, str(path), TEXT_COLUMN, LABEL_COLUMN, labels)
    sheet["id"] = sheet["id"].str.strip()
    duplicated = list(sheet.index[sheet["id"].duplicated(keep=False)])
    if duplicated:
        report.add("error", f"{len(duplicated)} rows share an id ({rows_text(duplicated, path)}); each passage is "
                            "coded once")
    try:
        connection.register("sheet_ids", sheet[["id"]])
        known = {r[0] for r in connection.execute(
            f"SELECT s.id FROM sheet_ids s JOIN {file.relation_sql()} p "
            f"ON CAST(p.{quote(file.id_column)} AS VARCHAR) = s.id").fetchall()}
    finally:
        connection.close()
    unknown = list(sheet.index[~sheet["id"].isin(known)])
    if unknown:
        report.add("error", f"{len(unknown)} ids are not in {file.path} ({rows_text(unknown, path)}); the sheet must "
                            "come from `framesft sample` on this prediction file")
    inclusion = pd.to_numeric(sheet.get("inclusion_probability", pd.Series("", index=sheet.index)), errors="coerce")
    if "inclusion_probability" in sheet and (inclusion.isna() | (inclusion <= 0) | (inclusion > 1)).any():
        bad = list(sheet.index[inclusion.isna() | (inclusion <= 0) | (inclusion > 1)])
        report.add("error", f"column 'inclusion_probability' must be a number in (0, 1] ({rows_text(bad, path)})")
    raise_on_errors([report])
    check_audit_not_adapted_on(predictions, sheet[TEXT_COLUMN].tolist(), str(path))
    return pd.DataFrame({
        "id": sheet["id"], "gold": sheet[LABEL_COLUMN],
        "inclusion_probability": inclusion if "inclusion_probability" in sheet else 1.0,
        "stratum": sheet["stratum"] if "stratum" in sheet else "all",
    })
