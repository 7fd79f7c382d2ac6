"""The tables a run uses: read the files the config names, check them, fix the label set, split off validation.

Also the one way a labelled file is read for scoring (`evaluate`, `compare`, `baseline`): read, checked
against the run's label set, refused with every error listed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from .checks import (DataReport, check_lengths, check_table, check_tables, near_duplicate_groups, raise_on_errors,
                     rows_text)
from .config import DataSection, FrameSFTConfig
from .errors import DataError, FrameSFTError
from .tables import read_table

log = logging.getLogger(__name__)

DATA_CHECK_HINT = "\nRun `framesft data check FILE... --config CONFIG` for the full report."


@dataclass
class RunData:
    labels: list[str]
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None
    reports: list[DataReport] = field(default_factory=list)  # one per file, in the order the config names them
    validation_source: str = ""
    training_rows: str = ""  # which rows of the training file were used (all, or one per near-duplicate group)
    files: list[pd.DataFrame] = field(default_factory=list, repr=False)  # the files as read (before the split)


def read_data_file(path: str | Path, data: DataSection, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A file with the config's columns, encoding and delimiter."""
    columns = (data.text_column, data.label_column) if columns is None else columns
    return read_table(path, columns, data.encoding, data.delimiter, data.sheet)


def load_run_data(config: FrameSFTConfig) -> RunData:
    """Read and check every file the config names; raise one DataError listing all errors found."""
    data = config.data
    train_path = data.path("train_csv")
    paths = [train_path] + [data.path(key) for key in ("validation_csv", "test_csv") if getattr(data, key)]
    tables = [(str(path), read_data_file(path, data)) for path in paths]
    reports, labels, groups = check_tables(tables, data.text_column, data.label_column, data.labels_in_order(),
                                           data.num_labels, data.near_duplicate_threshold)
    raise_on_errors(reports, DATA_CHECK_HINT)

    by_key = dict(zip(["train_csv"] + [k for k in ("validation_csv", "test_csv") if getattr(data, k)],
                      (table for _, table in tables)))
    train, validation, test = by_key["train_csv"], by_key.get("validation_csv"), by_key.get("test_csv")
    training_rows = f"all {len(train)} rows of {train_path}"
    if data.drop_near_duplicates:
        train, groups = first_row_of_each_group(train, groups, data.text_column, data.near_duplicate_threshold)
        training_rows = (f"{len(train)} of {len(by_key['train_csv'])} rows of {train_path}: the first of each "
                         "near-duplicate group (data.drop_near_duplicates)")
        log.info("training on %s", training_rows)
    if validation is not None:
        validation_source = str(data.path("validation_csv"))
    else:
        validation_source = f"stratified {data.validation_fraction:.0%} split of {train_path} (seed {data.split_seed})"
        if groups is not None:
            validation_source += ", near-duplicate groups kept on one side"
        train, validation = stratified_split(train, data.label_column, data.validation_fraction, data.split_seed,
                                             groups)
    missing = sorted(set(labels) - set(validation[data.label_column]))
    if missing:
        log.warning("validation data has no examples of %s; their F1 counts as 0 in the macro average", missing)
    return RunData(labels, train, validation, test, reports, validation_source, training_rows,
                   [table for _, table in tables])


def first_row_of_each_group(table: pd.DataFrame, groups: Sequence[int], text_column: str,
                            threshold: float) -> tuple[pd.DataFrame, list[int]]:
    """The first row (file order) of each near-duplicate group, and the groups among the rows kept.

    The groups are found again on what is left: a phrase that was common in the whole file may be rare among
    the kept rows and join two of them, and the validation split must keep such a pair on one side too.
    """
    first = ~pd.Series(list(groups), index=table.index).duplicated()
    kept = table[first].reset_index(drop=True)
    return kept, near_duplicate_groups(list(kept[text_column]), threshold)


def check_run_lengths(data: RunData, text_column: str, count_tokens, max_text_tokens: int) -> None:
    """Over-long passages in every file of the run (needs the tokenizer, so it runs once the method exists)."""
    for report, table in zip(data.reports, data.files):
        before = len(report.findings)
        check_lengths(table[text_column], count_tokens, max_text_tokens, report.path, report)
        for finding in report.findings[before:]:
            log.warning("%s: %s", Path(report.path).name, finding.message)


def read_labelled_file(path: str | Path, data: DataSection, labels: list[str],
                       extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    """A labelled file to score a trained model on, checked against the model's label set."""
    table = read_data_file(path, data, [data.text_column, data.label_column, *extra_columns])
    raise_on_errors([check_table(table, str(path), data.text_column, data.label_column, labels)])
    return table


def read_coder_columns(table: pd.DataFrame, path: str, columns: Sequence[str],
                       labels: list[str]) -> dict[str, list[str]] | None:
    """Human coders' labels (one column each; an empty cell means not coded), checked against the label set."""
    if not columns:
        return None
    if len(columns) < 2:
        raise DataError(f"--coder-columns {','.join(columns)}: name at least two coders' columns "
                        "(human-human agreement needs two coders)")
    report = DataReport(path=path, rows=len(table))
    canonical = {label.casefold(): label for label in labels}
    coders = {}
    for column in columns:
        values = table[column].str.strip().map(lambda v: canonical.get(v.casefold(), v) if v else v)
        unknown = values[(values != "") & ~values.isin(labels)]
        for label in sorted(set(unknown)):
            report.add("error", f"column {column!r}: label {label!r} is not in the label set {labels} "
                                f"({rows_text(list(unknown.index[unknown == label]), path)})")
        coders[column] = values.tolist()
    raise_on_errors([report])
    return coders




def stratified_split(table: pd.DataFrame, label_column: str, fraction: float, seed: int,
                     groups: Sequence[int] | None = None):
    """A seeded, stratified train/validation split of one table.

    With `groups` (see near_duplicate_groups) whole groups go to one side: the split is drawn over groups,
    stratified by each group's label, so a paraphrase of a training passage never lands in validation.
    Without groups every row is its own group, which is the plain stratified split.
    """
    from sklearn.model_selection import train_test_split

    group_of_row = pd.Series(range(len(table)) if groups is None else list(groups), index=table.index)
    group_labels = table[label_column].groupby(group_of_row, sort=False).agg(lambda s: s.mode().iloc[0])
    counts = group_labels.value_counts()
    n_classes = len(counts)
    n_val = max(n_classes, round(len(group_labels) * fraction))
    rare = counts[counts < 2]
    grouped = len(group_labels) < len(table)  # some rows share a group
    unit = "groups of near-duplicate rows" if grouped else "rows"
    if len(rare) or n_val >= len(group_labels) - n_classes + 1:
        raise DataError(
            f"cannot split a stratified validation set from {len(table)} training rows: "
            + (f"labels {list(rare.index)} have fewer than 2 {unit}; " if len(rare) else "too few rows; ")
            + "provide data.validation_csv or add more examples"
            + (" (or set data.near_duplicate_threshold: null to split rows, not groups)" if grouped else "")
        )
    train_groups, validation_groups = train_test_split(
        list(group_labels.index), test_size=n_val, stratify=group_labels, random_state=seed)
    # rows follow their group's place in the shuffled order (with singleton groups: train_test_split's order)
    place = {group: i for i, group in enumerate(train_groups + validation_groups)}
    ordered = table.loc[sorted(table.index, key=lambda row: place[group_of_row[row]])]
    in_validation = group_of_row[ordered.index].isin(set(validation_groups))
    return ordered[~in_validation].reset_index(drop=True), ordered[in_validation].reset_index(drop=True)


def check_data_files(paths: Sequence[str | Path], config: FrameSFTConfig, with_tokenizer: bool = True,
                     text_column: str | None = None, label_column: str | None = None,
                     labels: list[str] | None = None) -> tuple[list[DataReport], str | None]:
    """`framesft data check`: the checks every run's data goes through, on any files; returns one report per file
    and, when the passage-length check was skipped, why (it needs the tokenizer of the config's model)."""
    from .methods import build_method  # transformers loads only for the length check
    from .modeling import load_tokenizer, resolve_model_path

    data = config.data
    text_column, label_column = text_column or data.text_column, label_column or data.label_column
    tables = [(str(path), read_table(path, [text_column, label_column], data.encoding, data.delimiter, data.sheet))
              for path in paths]
    reports, labels, _ = check_tables(tables, text_column, label_column, labels or data.labels_in_order(),
                                      data.num_labels, data.near_duplicate_threshold)
    if not with_tokenizer:
        return reports, None
    try:
        tokenizer = load_tokenizer(resolve_model_path(config.model.base_model), config.model.trust_remote_code)
        method = build_method(config, tokenizer, labels)
    except FrameSFTError as exc:
        return reports, f"skipped the passage-length check (it needs the model's tokenizer): {exc}"
    for report, (path, table) in zip(reports, tables):
        check_lengths(table[text_column], method.count_tokens, method.max_text_tokens, path, report)
    return reports, None
