"""The files people have: Excel workbooks (.xlsx) read wherever a table is read, Excel's "Unicode Text" export
(UTF-16, tab-separated), a header naming a column twice refused, and the coding sheet written as a workbook with
a drop-down of the labels, filled in by code as a coder would (openpyxl), and read back through the usual checks."""

import json

import numpy as np
import pandas as pd
import pytest
from openpyxl import Workbook, load_workbook

from framesft.audit import read_coded_sheet
from framesft.cli import main
from framesft.config import load_config
from framesft.dataset import load_run_data
from framesft.errors import DataError
from framesft.tables import read_table

from conftest import FRAMES, SAMPLE_DATA


def annotations() -> pd.DataFrame:
    table = pd.read_csv(SAMPLE_DATA / "train.csv", dtype=str, keep_default_na=False)
    assert "None" in set(table["frame_name"])  # the label pandas would turn into a missing value
    return table


def write_workbook(table: pd.DataFrame, path, sheets=("annotations",), extra_first_sheet=False) -> None:
    """As Excel saves it: strings in cells, a number where the user typed one, a header on row 1."""
    book = Workbook()
    first = book.active
    if extra_first_sheet:
        first.title = "notes"
        first.append(["coded by", "A. Coder"])
    for name in sheets:
        sheet = first if not extra_first_sheet and name == sheets[0] else book.create_sheet(name)
        sheet.title = name
        sheet.append(list(table.columns) + ["year"])
        for row in table.itertuples(index=False):
            sheet.append(list(row) + [2019])
    book.save(path)


def test_xlsx_annotations_read_as_strings_with_none_a_label(tmp_path):
    table = annotations()
    path = tmp_path / "annotations.xlsx"
    write_workbook(table, path)
    read = read_table(path, ["chunk_text", "frame_name"])
    assert read["frame_name"].tolist() == table["frame_name"].tolist()
    assert read["chunk_text"].tolist() == table["chunk_text"].tolist()
    assert set(read["year"]) == {"2019"}  # a number cell comes back as the text Excel shows


def test_xlsx_sheet_is_chosen_by_config_or_option_and_a_wrong_one_is_named(tmp_path, capsys):
    table = annotations()
    path = tmp_path / "book.xlsx"
    write_workbook(table, path, sheets=("coded",), extra_first_sheet=True)
    with pytest.raises(DataError, match="column 'chunk_text' not found"):  # the first sheet holds notes
        read_table(path, ["chunk_text", "frame_name"])
    assert main(["data", "check", str(path), "--sheet", "coded"]) in (0, 1)
    assert main(["data", "check", str(path), "--sheet", "Coded "]) == 2
    assert "no sheet 'Coded '" in (err := capsys.readouterr().err) and "'notes', 'coded'" in err
    # train reads the workbook through data.sheet
    config = load_config(None, [f"data.data_dir={tmp_path}", "data.train_csv=book.xlsx", "data.sheet=coded",
                                "data.validation_fraction=0.2"])
    data = load_run_data(config)
    assert len(data.train) + len(data.validation) == len(table)


def test_excel_unicode_text_export_is_read(tmp_path, capsys):
    """Excel's "Unicode Text" (.txt): UTF-16 with a byte-order mark, tab-separated, Windows line ends."""
    table = annotations()
    table.loc[0, "chunk_text"] = "Müller said the Brexit deal costs £350m – “too much”."
    path = tmp_path / "export.txt"
    path.write_bytes(table.to_csv(sep="\t", index=False, lineterminator="\r\n").encode("utf-16"))
    assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    read = read_table(path, ["chunk_text", "frame_name"])
    assert read["chunk_text"].tolist() == table["chunk_text"].tolist()
    assert read["frame_name"].tolist() == table["frame_name"].tolist()
    assert main(["data", "check", str(path)]) in (0, 1)
    assert "not found" not in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_a_column_named_twice_is_an_error(tmp_path, capsys, suffix):
    """What a merge leaves behind: two frame_name columns; which one holds the labels is the user's call."""
    table = annotations().head(8)
    doubled = pd.concat([table, table[["frame_name"]]], axis=1)
    path = tmp_path / f"merged{suffix}"
    if suffix == ".csv":
        doubled.to_csv(path, index=False)
    else:
        book = Workbook()
        book.active.append(list(doubled.columns))
        for row in doubled.itertuples(index=False):
            book.active.append(list(row))
        book.save(path)
    assert main(["data", "check", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "names 'frame_name' more than once" in err and "'frame_name' at 2, 3" in err and str(path) in err


def synthetic_predictions(path, n=200):
    rng = np.random.default_rng(3)
    predicted = rng.choice(FRAMES, n)
    table = pd.DataFrame({"chunk_id": [f"c{i}" for i in range(n)], "chunk_text": [f"passage {i}" for i in range(n)],
                          "predicted": predicted})
    for label in FRAMES:
        table[f"p_{label}"] = np.where(predicted == label, 0.5, 0.1)
    table["margin"] = 1.0
    table.to_csv(path, index=False)
    return table


def test_coding_workbook_offers_the_labels_and_reads_back(tmp_path, capsys):
    predictions = tmp_path / "frames.csv"
    synthetic_predictions(predictions)
    sheet_path = tmp_path / "sheet.xlsx"
    assert main(["sample", str(predictions), "--n", "40", "--output", str(sheet_path), "--seed", "2"]) == 0
    book = load_workbook(sheet_path)
    coding = book["coding"]
    header = [cell.value for cell in coding[1]]
    assert header == ["id", "inclusion_probability", "stratum", "text", "label"]
    assert book["labels"].sheet_state == "hidden"
    assert [row[0].value for row in book["labels"].iter_rows()] == FRAMES
    validations = coding.data_validations.dataValidation
    assert len(validations) == 1 and validations[0].type == "list"
    assert validations[0].formula1 == f"=labels!$A$1:$A${len(FRAMES)}"
    assert str(validations[0].sqref) == "E2:E41" and validations[0].showErrorMessage
    assert coding["D2"].alignment.wrap_text and coding.column_dimensions["D"].width >= 80
    assert coding.freeze_panes == "A2"
    assert json.loads((tmp_path / "sheet.xlsx.design.json").read_text())["n"] == 40

    # a coder fills in the label column (openpyxl, as Excel would save it) and the sheet is read back
    truth = {}
    for index, row in enumerate(coding.iter_rows(min_row=2), start=0):
        label = FRAMES[index % len(FRAMES)]
        row[4].value = label
        truth[row[0].value] = label
    book.save(sheet_path)
    audit = read_coded_sheet(sheet_path, predictions)
    assert dict(zip(audit["id"], audit["gold"])) == truth and len(audit) == 40
    assert main(["estimate", str(predictions), "--audit", str(sheet_path), "--output-dir", str(tmp_path / "out")]) == 0

    # a label typed around the drop-down (Excel lets a paste through) is caught by the usual checks
    coding["E3"].value = "Brexit"
    book.save(sheet_path)
    with pytest.raises(DataError, match="label 'Brexit' is not in the label set"):
        read_coded_sheet(sheet_path, predictions)


def test_predict_and_evaluate_read_workbooks(trained_run, tmp_path):
    table = pd.read_csv(SAMPLE_DATA / "test.csv", dtype=str, keep_default_na=False)
    path = tmp_path / "test.xlsx"
    write_workbook(table, path)
    assert main(["--quiet", "evaluate", str(trained_run.run_dir), "--data", str(path),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    from_csv = tmp_path / "eval_csv"
    assert main(["--quiet", "evaluate", str(trained_run.run_dir), "--data", str(SAMPLE_DATA / "test.csv"),
                 "--output-dir", str(from_csv)]) == 0
    def predicted(folder) -> list[str]:  # the label None stays a label
        return pd.read_csv(folder / "predictions_eval.csv", dtype=str, keep_default_na=False)["predicted"].tolist()

    assert predicted(tmp_path / "eval") == predicted(from_csv)
    output = tmp_path / "labels.csv"
    assert main(["--quiet", "predict", str(trained_run.run_dir), "--input", str(path), "--output", str(output),
                 "--chunk-rows", "10"]) == 0
    assert len(pd.read_csv(output)) == len(table)
