"""What the terminal shows: the console (stderr), tables of metrics and data findings, progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .metrics import HEADLINE, per_class_rows

console = Console(stderr=True)


def metrics_table(columns: dict[str, dict], title: str) -> Table:
    """Headline metrics side by side, one column per model/run."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for key in HEADLINE:
        table.add_row(key, *(f"{m[key]:.3f}" for m in columns.values()))
    return table


def per_class_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in per_class_rows(metrics):
        table.add_row(row["label"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    return table


def calibration_table(metrics: dict, title: str) -> Table:
    """ECE, Brier score and log loss before and after calibration (metrics["calibration"])."""
    calibration = metrics["calibration"]
    fitted = f"not fitted: {calibration['not_fitted']}" if calibration.get("not_fitted") else \
        f"temperature {calibration['temperature']:.2f}"
    table = Table(title=f"{title} ({fitted})")
    for column in ("measure", "raw", "calibrated"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for key, name in (("ece", "expected calibration error"), ("brier", "Brier score"), ("log_loss", "log loss")):
        table.add_row(name, f"{calibration['before'][key]:.3f}", f"{calibration['after'][key]:.3f}")
    return table


def agreement_table(metrics: dict, title: str) -> Table:
    """Krippendorff's alpha and Cohen's kappa with 95% intervals (metrics["agreement"])."""
    table = Table(title=title)
    for column in ("coders", "Krippendorff's alpha", "95% CI", "Cohen's kappa", "95% CI "):
        table.add_column(column, justify="left" if column == "coders" else "right")
    agreement = metrics["agreement"]
    rows = {"model vs gold": agreement["model_vs_gold"]}
    if "human_vs_human" in agreement:
        rows["humans (all coders)"] = agreement["human_vs_human"]
        rows.update(agreement["pairs"])
        rows["humans and model"] = agreement["humans_and_model"]
    for name, a in rows.items():
        kappa = (f"{a['cohen_kappa']:.3f}", f"{a['kappa_ci95'][0]:.3f} – {a['kappa_ci95'][1]:.3f}") \
            if "cohen_kappa" in a else ("", "")
        table.add_row(name, f"{a['krippendorff_alpha']:.3f}",
                      f"{a['alpha_ci95'][0]:.3f} – {a['alpha_ci95'][1]:.3f}", *kappa)
    return table


def plan_table(table, group_columns: list[str], half_width: float) -> Table:
    """`framesft plan`: per group, the audit size for 95% intervals of +- half_width, with and without the model."""
    result = Table(title=f"audit size for 95% intervals of +-{half_width:.3f} on every label")
    columns = [*group_columns, "corpus rows", "audit n (PPI++)", "audit alone n", "widest label",
               "half-width at n/2", "at n", "at 2n"]
    for column in columns:
        result.add_column(column, justify="left" if column in group_columns or column == "widest label" else "right")
    for _, row in table.iterrows():
        result.add_row(*[str(row[c]) for c in group_columns], str(row["rows"]), str(row["audit_n"]),
                       str(row["audit_alone_n"]), row["widest_label"], f"{row['half_width_at_half_n']:.3f}",
                       f"{row['half_width_at_n']:.3f}", f"{row['half_width_at_2n']:.3f}")
    return result


def shares_table(table, group_columns: list[str]) -> Table:
    """The share table: one row per group and label, the best estimate first."""
    best = "ppi" if "ppi" in table.columns else "pcc"
    out = Table(title=f"frame shares ({'PPI: model + audit' if best == 'ppi' else 'PCC: sampling noise only'})")
    for column in [*group_columns, "label", "rows", "cc", best, "95% CI"]:
        out.add_column(column, justify="left" if column in (*group_columns, "label") else "right")
    for row in table.itertuples(index=False):
        values = row._asdict()
        out.add_row(*(str(values[c]) for c in group_columns), values["label"], str(values["rows"]),
                    f"{values['cc']:.3f}", f"{values[best]:.3f}",
                    f"{values[best + '_low']:.3f} – {values[best + '_high']:.3f}")
    return out


def print_data_report(report) -> None:
    """One file's label counts and findings (framesft data check)."""
    console.print(f"[bold]{report.path}[/bold]: {report.rows} rows")
    table = Table()
    table.add_column("label")
    table.add_column("rows", justify="right")
    for label, count in report.label_counts.items():
        table.add_row(label, str(count))
    console.print(table)
    for finding in report.findings:
        style = "red" if finding.level == "error" else "yellow"
        console.print(f"[{style}]{finding.level}[/{style}]: {finding.message}")
    if not report.findings:
        console.print("[green]no problems found[/green]")


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "texts", enabled: bool = True,
                 transient: bool = False) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows done/total, rate, elapsed time and ETA on stderr (total None: unknown)."""
    if not enabled:
        yield lambda n: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=transient) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:.1f} {unit}/s" if speed else "")

        yield advance
