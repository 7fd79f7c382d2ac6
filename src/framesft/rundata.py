"""Assembling the train/validation/test tables a run uses: read, check, split, fix the label set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .config import FrameSFTConfig
from .data import (
    DataReport,
    check_frame,
    check_lengths,
    check_near_duplicate_overlap,
    check_overlap,
    read_table,
    report_near_duplicates,
    stratified_split,
)
from .errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RunData:
    labels: list[str]
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None
    reports: list[DataReport] = field(default_factory=list)
    validation_source: str = ""


def configured_labels(config: FrameSFTConfig) -> list[str] | None:
    """Labels in id order from data.label2id, or None when the label set comes from the training data."""
    if config.data.label2id is None:
        return None
    return [label for label, _ in sorted(config.data.label2id.items(), key=lambda item: item[1])]


def load_run_data(config: FrameSFTConfig, count_tokens=None, max_text_tokens: int | None = None) -> RunData:
    """Read and check every file the config names; raise one DataError listing all errors found."""
    data = config.data
    columns = (data.text_column, data.label_column)
    labels = configured_labels(config)

    train_path = data.path("train_csv")
    train = read_table(train_path, columns)
    train_report = check_frame(train, str(train_path), *columns, labels)
    if labels is None:
        labels = sorted(train_report.label_counts)
    if data.num_labels is not None and len(labels) != data.num_labels:
        train_report.add("error", f"data.num_labels is {data.num_labels} but the training file has "
                                  f"{len(labels)} labels: {labels}")
    if len(train_report.label_counts) < 2:
        train_report.add("error", f"the training file has only one class {list(train_report.label_counts)}; "
                                  "a classifier needs at least two")
    reports = [train_report]
    groups = report_near_duplicates(train, str(train_path), data.text_column, data.near_duplicate_threshold,
                                    train_report)

    if data.validation_csv:
        validation_path = data.path("validation_csv")
        validation = read_table(validation_path, columns)
        reports.append(check_frame(validation, str(validation_path), *columns, labels))
        check_overlap(train, validation, str(validation_path), data.text_column, reports[-1])
        check_near_duplicate_overlap(train, validation, str(validation_path), data.text_column,
                                     data.near_duplicate_threshold, reports[-1])
        validation_source = str(validation_path)
    else:
        validation = None
        validation_source = f"stratified {data.validation_fraction:.0%} split of {train_path} (seed {data.split_seed})"
        if groups is not None:
            validation_source += ", near-duplicate groups kept on one side"

    test = None
    if data.test_csv:
        test_path = data.path("test_csv")
        test = read_table(test_path, columns)
        reports.append(check_frame(test, str(test_path), *columns, labels))
        check_overlap(train, test, str(test_path), data.text_column, reports[-1])
        check_near_duplicate_overlap(train, test, str(test_path), data.text_column,
                                     data.near_duplicate_threshold, reports[-1])

    if count_tokens is not None and max_text_tokens is not None:
        for report, frame in zip(reports, [train, validation, test]):
            if frame is not None:
                check_lengths(frame[data.text_column], count_tokens, max_text_tokens, report.path, report)

    raise_on_errors(reports)
    if validation is None:
        train, validation = stratified_split(train, data.label_column, data.validation_fraction, data.split_seed,
                                             groups)
    missing = sorted(set(labels) - set(validation[data.label_column]))
    if missing:
        log.warning("validation data has no examples of %s; their F1 counts as 0 in the macro average", missing)
    return RunData(labels, train, validation, test, reports, validation_source)


def raise_on_errors(reports: list[DataReport]) -> None:
    problems = [f"{report.path}: {finding.message}" for report in reports for finding in report.errors]
    if problems:
        raise DataError("data check failed:\n" + "\n".join(f"  - {p}" for p in problems)
                        + "\nRun `framesft data check FILE... --config CONFIG` for the full report.")
    for report in reports:
        for finding in report.findings:
            log.warning("%s: %s", Path(report.path).name, finding.message)
