import json

import pandas as pd
import pytest

from framesft.checks import (
    check_near_duplicate_overlap,
    check_overlap,
    check_table,
    describe_near_duplicates,
    near_duplicate_groups,
)
from framesft.dataset import stratified_split
from framesft.tables import read_table
from framesft.errors import DataError

from conftest import write_csv

COLS = ("chunk_text", "frame_name")


def test_none_na_and_null_are_labels_not_missing_values(tmp_path):
    path = write_csv(tmp_path / "t.csv", [("a", "None"), ("b", "NA"), ("c", "null"), ("d", "")])
    frame = read_table(path, COLS)
    assert frame["frame_name"].tolist() == ["None", "NA", "null", ""]


def test_bom_is_dropped_from_the_first_column_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffchunk_text,frame_name\nhello,None\n".encode("utf-8"))
    frame = read_table(path, COLS)
    assert list(frame.columns) == list(COLS)
    assert frame.loc[0, "frame_name"] == "None"


def test_quoted_newlines_inside_texts_load(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('chunk_text,frame_name\n"first line\nsecond, line",Economic\nplain,None\n')
    frame = read_table(path, COLS)
    assert frame.loc[0, "chunk_text"] == "first line\nsecond, line"
    assert len(frame) == 2


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("chunk_text,frame_name\nok,None\ncaf\xe9 text,Economic\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 3 is not UTF-8.*0xe9"):
        read_table(path, COLS)


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "the file is empty"), (b"chunk_text,frame_name\n", "header but no rows")],
)
def test_empty_and_header_only_files(tmp_path, content, expected):
    path = tmp_path / "e.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        read_table(path, COLS)


def test_missing_column_suggests_the_close_name(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("a", "None")], header=("chunk_txt", "frame_name"))
    with pytest.raises(DataError, match="column 'chunk_text' not found.*did you mean 'chunk_txt'"):
        read_table(path, COLS)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.csv", COLS)


def test_jsonl_and_parquet_read_as_strings(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"chunk_text": t, "frame_name": l}) for t, l in [("a", "None"), ("b", "Economic")]))
    assert read_table(jsonl, COLS)["frame_name"].tolist() == ["None", "Economic"]
    parquet = tmp_path / "d.parquet"
    pd.DataFrame({"chunk_text": ["a"], "frame_name": ["None"], "n": [3]}).to_parquet(parquet)
    frame = read_table(parquet, COLS)
    assert frame.loc[0, "frame_name"] == "None" and frame.loc[0, "n"] == "3"


def test_check_reports_rows_of_every_problem(tmp_path):
    rows = [
        ("Tariffs will cost jobs.", "Economic"),   # row 2
        ("   ", "Conflict"),                        # row 3: blank text
        ("A procedural remark.", ""),               # row 4: missing label
        ("They betrayed us.", "Betrayal"),          # row 5: outside the set
        ("Tariffs will cost jobs.", "Economic"),   # row 6: duplicate
        ("Same text twice.", "Conflict"),           # row 7
        ("Same text twice.", "Moral Value"),        # row 8: conflicting labels
        ("Order, order.", " none "),                # row 9: case/space variant
    ]
    frame = read_table(write_csv(tmp_path / "t.csv", rows), COLS)
    report = check_table(frame, "t.csv", *COLS, ["Conflict", "Economic", "Moral Value", "None"])
    messages = {f.level + ": " + f.message for f in report.findings}
    text = "\n".join(sorted(messages))
    assert "error: 1 empty or whitespace-only texts in column 'chunk_text' (row 3)" in text
    assert "error: 1 rows have no label in column 'frame_name' (row 4)" in text
    assert "error: label 'Betrayal' is not in the label set" in text and "(row 5)" in text
    assert "duplicate texts (rows 6, 8)" in text
    assert "texts appear with different labels (rows 7, 8)" in text
    assert "warning: 1 labels differ from the label set only in case or spaces (' none '); normalised (row 9)" in text
    assert frame.loc[7, "frame_name"] == "None"  # normalised in place
    assert len(report.errors) == 4


def test_leakage_between_train_and_test(tmp_path):
    train = pd.DataFrame({"chunk_text": ["a", "b"], "frame_name": ["None", "Economic"]})
    test = pd.DataFrame({"chunk_text": ["c", "b"], "frame_name": ["None", "Economic"]})
    report = check_table(test, "test.csv", *COLS, None)
    check_overlap(train, test, "test.csv", "chunk_text", report)
    assert any("also appear in the training file" in f.message and "row 3" in f.message for f in report.errors)


def test_stratified_split_is_seeded_and_keeps_every_class():
    frame = pd.DataFrame({"chunk_text": [f"t{i}" for i in range(40)], "frame_name": ["A", "B", "C", "D"] * 10})
    train_a, val_a = stratified_split(frame, "frame_name", 0.2, seed=1)
    train_b, val_b = stratified_split(frame, "frame_name", 0.2, seed=1)
    assert val_a.equals(val_b)
    assert sorted(val_a["frame_name"]) == ["A", "A", "B", "B", "C", "C", "D", "D"]
    assert set(train_a["chunk_text"]).isdisjoint(val_a["chunk_text"])


def test_split_too_small_for_stratification_says_what_to_do():
    frame = pd.DataFrame({"chunk_text": ["a", "b", "c"], "frame_name": ["A", "A", "B"]})
    with pytest.raises(DataError, match=r"labels \['B'\] have fewer than 2 rows.*validation_csv"):
        stratified_split(frame, "frame_name", 0.2, seed=1)


def _passage(seed: int, words: int = 80) -> str:
    import random

    vocabulary = ("trade deal border customs fishing farmers jobs parliament vote people rights treaty money "
                  "market backstop ireland union europe agreement minister house debate families future").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocabulary) + str(rng.randint(0, 99)) for _ in range(words))


def _paraphrase(text: str, every: int) -> str:
    """Change every `every`-th word: 5-word phrases survive only between the changes."""
    return " ".join(w + "x" if i % every == 0 else w for i, w in enumerate(text.split()))


def test_near_duplicate_groups_join_paraphrases_and_keep_distinct_passages_apart():
    base, other = _passage(1), _passage(2)
    close, loose = _paraphrase(base, every=10), _paraphrase(base, every=4)  # ~50% and 0% of phrases shared
    groups = near_duplicate_groups([base, other, close, loose, _paraphrase(close, every=10)], threshold=0.3)
    assert groups[0] == groups[2] == groups[4]  # transitively: the paraphrase of the paraphrase too
    assert len({groups[0], groups[1], groups[3]}) == 3
    assert len(set(near_duplicate_groups([base, close], threshold=0.6))) == 2  # the threshold is honoured


def test_split_by_groups_never_puts_a_group_on_both_sides():
    rows = []
    for i in range(60):
        base = _passage(i)
        rows += [(base, "ABC"[i % 3]), (_paraphrase(base, every=10), "ABC"[i % 3])]
    frame = pd.DataFrame(rows, columns=COLS)
    groups = near_duplicate_groups(list(frame["chunk_text"]), 0.3)
    assert len(set(groups)) == 60
    train, validation = stratified_split(frame, "frame_name", 0.1, seed=3, groups=groups)
    group_of = dict(zip(frame["chunk_text"], groups))
    assert {group_of[t] for t in train["chunk_text"]}.isdisjoint({group_of[t] for t in validation["chunk_text"]})
    assert len(validation) == 12 and sorted(set(validation["frame_name"])) == ["A", "B", "C"]
    plain_train, plain_validation = stratified_split(frame, "frame_name", 0.1, seed=3)
    assert not {group_of[t] for t in plain_train["chunk_text"]}.isdisjoint(
        {group_of[t] for t in plain_validation["chunk_text"]})  # what the grouping prevents


def test_near_duplicates_are_reported_in_the_file_and_across_files():
    base = _passage(7)
    train = pd.DataFrame([(base, "A"), (_paraphrase(base, every=10), "A"), (_passage(8), "B")], columns=COLS)
    report = check_table(train, "train.csv", *COLS, None)
    describe_near_duplicates(near_duplicate_groups(list(train["chunk_text"]), 0.3), "train.csv", report)
    assert [f.message for f in report.findings] == [
        "2 texts have near-duplicates in the same file (paraphrases or overlapping passages; 1 groups, "
        "e.g. rows 2, 3); a validation split keeps each group on one side so they cannot inflate validation scores"]
    test = pd.DataFrame([(_passage(9), "A"), (_paraphrase(_passage(8), every=12), "B")], columns=COLS)
    report = check_table(test, "test.csv", *COLS, None)
    check_near_duplicate_overlap(train, test, "test.csv", "chunk_text", 0.3, report)
    assert len(report.findings) == 1 and "1 texts are near-duplicates of training texts" in report.findings[0].message
    assert "row 3" in report.findings[0].message and report.findings[0].level == "warning"


def test_run_data_split_keeps_paraphrases_together_unless_turned_off(tmp_path):
    from framesft.config import load_config
    from framesft.dataset import load_run_data

    rows = []
    for i in range(30):
        base = _passage(100 + i)
        rows += [(base, "AB"[i % 2]), (_paraphrase(base, every=10), "AB"[i % 2])]
    write_csv(tmp_path / "train.csv", rows)
    overrides = [f"data.data_dir={tmp_path}", "data.validation_fraction=0.2"]

    grouped = load_run_data(load_config(None, overrides))
    assert grouped.validation_source.endswith("near-duplicate groups kept on one side")
    assert "60 texts have near-duplicates in the same file" in grouped.reports[0].findings[0].message

    def stems(frame):  # a passage and its paraphrase share their second word (the first one is changed)
        return {text.split()[1] for text in frame["chunk_text"]}

    assert stems(grouped.train).isdisjoint(stems(grouped.validation)) and len(grouped.validation) == 12

    plain = load_run_data(load_config(None, overrides + ["data.near_duplicate_threshold=null"]))
    assert "near-duplicate" not in plain.validation_source and not plain.reports[0].findings
    assert not stems(plain.train).isdisjoint(stems(plain.validation))


def test_dropping_near_duplicates_trains_on_the_first_row_of_each_group_as_if_the_file_held_only_those(tmp_path):
    from framesft.config import load_config
    from framesft.dataset import load_run_data

    bases = [_passage(200 + i) for i in range(30)]
    rows = []
    for i, base in enumerate(bases):  # the passage first, then two rewrites of it
        label = "AB"[i % 2]
        rows += [(base, label), (_paraphrase(base, every=10), label), (_paraphrase(base, every=9), label)]
    write_csv(tmp_path / "train.csv", rows)
    overrides = [f"data.data_dir={tmp_path}", "data.validation_fraction=0.2"]

    dropped = load_run_data(load_config(None, overrides + ["data.drop_near_duplicates=true"]))
    kept = pd.concat([dropped.train, dropped.validation])["chunk_text"]
    assert sorted(kept) == sorted(bases)
    assert dropped.training_rows.startswith("30 of 90 rows of")
    assert "first of each near-duplicate group" in dropped.training_rows
    assert len(dropped.validation) == 6

    # the same split as training on a file that holds only the first rows (how the accuracy campaign measured it)
    write_csv(tmp_path / "originals.csv", [row for row in rows if row[0] in set(bases)])
    by_file = load_run_data(load_config(None, overrides + ["data.train_csv=originals.csv"]))
    pd.testing.assert_frame_equal(dropped.train, by_file.train)
    pd.testing.assert_frame_equal(dropped.validation, by_file.validation)

    everything = load_run_data(load_config(None, overrides))
    assert everything.training_rows.startswith("all 90 rows")
    assert len(everything.train) + len(everything.validation) == 90


def test_grouped_split_too_small_says_how_to_split_rows_instead():
    base = _passage(5)
    frame = pd.DataFrame([(base, "A"), (_paraphrase(base, every=10), "A"), (_passage(6), "B"), (_passage(7), "B")],
                         columns=COLS)
    groups = near_duplicate_groups(list(frame["chunk_text"]), 0.3)
    with pytest.raises(DataError, match=r"labels \['A'\] have fewer than 2 groups.*near_duplicate_threshold: null"):
        stratified_split(frame, "frame_name", 0.2, seed=1, groups=groups)
