"""`framesft estimate`: the flow (coded sheet read, shares estimated, findings written) and its outputs: the
share table (CSV and Parquet), figures (PNG) and one HTML page that works offline (figures embedded), saying
plainly what the intervals cover."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

from .audit import read_coded_sheet
from .errors import RunFolderError
from .estimation import estimate_shares
from .files import atomic_directory
from .plots import png_bytes, png_data_uri, shares_by_group_figure, shares_over_time_figure


def estimate_findings(predictions: str | Path, output_dir: str | Path, audit: str | Path | None = None,
                      by: Sequence[str] = (), time_column: str | None = None, time_unit: str = "month",
                      id_column: str | None = None, labels: list[str] | None = None, encoding: str = "utf-8",
                      delimiter: str | None = None, sheet: str | None = None) -> tuple[pd.DataFrame, Path]:
    """`framesft estimate`: read the coded audit sheet (if any), estimate the shares, write the findings folder;
    returns the share table and the folder."""
    coded = None
    if audit is not None:
        coded = read_coded_sheet(audit, predictions, labels, id_column=id_column, encoding=encoding,
                                 delimiter=delimiter, sheet=sheet)
    by = list(by)
    table = estimate_shares(predictions, coded, by, time_column, time_unit, id_column)
    folder = write_findings(table, output_dir, by, time_column, str(predictions), str(audit) if audit else None)
    return table, folder


def write_findings(table: pd.DataFrame, output_dir: str | Path, by: list[str], time_column: str | None,
                   source: str, audit_source: str | None) -> Path:
    """Write shares.csv, shares.parquet, shares_*.png and shares.html into a new folder (all or nothing)."""
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise RunFolderError(f"{output} already exists and is not empty; choose another --output-dir")
    group = by[0] if by else None
    figures = {}
    if time_column:
        figures["shares_over_time"] = shares_over_time_figure(table, group)
    else:
        figures["shares_by_group"] = shares_by_group_figure(table, group)
    with atomic_directory(output) as staging:
        table.to_csv(staging / "shares.csv", index=False)
        table.to_parquet(staging / "shares.parquet", index=False)
        images = {}
        for name, figure in figures.items():
            png = png_bytes(figure)
            (staging / f"{name}.png").write_bytes(png)
            images[name] = png_data_uri(png)
        (staging / "shares.html").write_text(findings_html(table, images, source, audit_source), encoding="utf-8")
    return output


def coverage_note(audit_source: str | None) -> str:
    if audit_source is None:
        return ("No audit sample: the intervals cover sampling noise only, not the classifier's errors. Shares "
                "counted from a classifier are biased wherever it errs, and differently between groups; draw an "
                "audit with `framesft sample`, code it, and pass it with --audit.")
    return (f"Audit sample {audit_source}: the PPI intervals cover sampling noise and the classifier's errors "
            "(prediction-powered inference); CC and PCC intervals still cover sampling noise only.")


def findings_html(table: pd.DataFrame, images: dict[str, str], source: str, audit_source: str | None) -> str:
    shown = table.drop(columns=["intervals_cover"])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                    for v in row) + "</tr>" for row in shown.itertuples(index=False))
    pictures = "".join(f'<img alt="{name.replace("_", " ")}" src="{uri}">' for name, uri in images.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>framesft frame shares</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }} th, td {{ border: 1px solid #ccc; padding: 0.2rem 0.4rem; }}
th {{ background: #f0f3f7; }} img {{ max-width: 100%; }} .note {{ background: #fff6d6; padding: 0.6rem; }}
#shares-table {{ overflow-x: auto; }}
</style></head><body>
<h1>Frame shares</h1>
<p>Predictions: {html.escape(source)}</p>
<p class="note" id="coverage">{html.escape(coverage_note(audit_source))}</p>
{pictures}
<h2>Table</h2>
<p>cc: classify-and-count; pcc: mean calibrated probability; audit: the human-coded audit alone; ppi:
prediction-powered estimate; *_low/*_high: 95% interval.</p>
<div id="shares-table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
</body></html>
"""
