"""`framesft estimate`: the flow (coded sheet read, shares estimated, findings written) and its outputs: the
share table (CSV and Parquet), figures (PNG) and one HTML page that works offline (figures embedded), saying
plainly what the intervals cover; and for the manuscript: the table as LaTeX (booktabs) and Markdown, the figures
as PDF and SVG sized for a journal column, and methods.md, a methods paragraph whose every figure is read from
the run and findings files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import __version__
from .audit import read_coded_sheet
from .errors import RunFolderError
from .estimation import ALL, estimate_shares, is_stratified
from .files import atomic_directory, read_json
from .plots import png_bytes, png_data_uri, save_vector_figures, shares_by_group_figure, shares_over_time_figure
from .runfolder import SUMMARY_FILE, read_provenance, read_run_config


def estimate_findings(predictions: str | Path, output_dir: str | Path, audit: str | Path | None = None,
                      by: Sequence[str] = (), time_column: str | None = None, time_unit: str = "month",
                      id_column: str | None = None, labels: list[str] | None = None, encoding: str = "utf-8",
                      delimiter: str | None = None, sheet: str | None = None,
                      calibrate_folds: int | None = None) -> tuple[pd.DataFrame, Path]:
    """`framesft estimate`: read the coded audit sheet (if any), estimate the shares, write the findings folder;
    returns the share table and the folder."""
    coded = None
    if audit is not None:
        coded = read_coded_sheet(audit, predictions, labels, id_column=id_column, encoding=encoding,
                                 delimiter=delimiter, sheet=sheet)
    by = list(by)
    table = estimate_shares(predictions, coded, by, time_column, time_unit, id_column,
                            calibrate_folds=calibrate_folds)
    design = None if coded is None else {"n": len(coded), "stratified": is_stratified(coded),
                                         "strata": int(coded["stratum"].nunique())}
    folder = write_findings(table, output_dir, by, time_column, str(predictions), str(audit) if audit else None,
                            design)
    return table, folder


def write_findings(table: pd.DataFrame, output_dir: str | Path, by: list[str], time_column: str | None,
                   source: str, audit_source: str | None, audit_design: dict | None = None) -> Path:
    """Write shares.csv, shares.parquet, shares_*.png and shares.html, and for the manuscript shares.tex,
    shares.md, shares_*.pdf/.svg and methods.md, into a new folder (all or nothing)."""
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise RunFolderError(f"{output} already exists and is not empty; choose another --output-dir")
    group = by[0] if by else None
    draw = (lambda column=False: shares_over_time_figure(table, group, column)) if time_column else \
        (lambda column=False: shares_by_group_figure(table, group, column))
    figures = {"shares_over_time" if time_column else "shares_by_group": draw()}
    group_columns = by + (["period"] if time_column else [])
    printed, note = manuscript_table(table, group_columns, audit_design)
    with atomic_directory(output) as staging:
        table.to_csv(staging / "shares.csv", index=False)
        table.to_parquet(staging / "shares.parquet", index=False)
        images = {}
        for name, figure in figures.items():
            png = png_bytes(figure)
            (staging / f"{name}.png").write_bytes(png)
            images[name] = png_data_uri(png)
            save_vector_figures(lambda: draw(column=True), staging / name)
        (staging / "shares.html").write_text(findings_html(table, images, source, audit_source), encoding="utf-8")
        (staging / "shares.tex").write_text(latex_table(printed, note), encoding="utf-8")
        (staging / "shares.md").write_text(markdown_table(printed, note), encoding="utf-8")
        (staging / "methods.md").write_text(methods_paragraph(table, source, audit_design), encoding="utf-8")
    return output


# ------------------------------------------------------------------------------------------ for the manuscript


def manuscript_table(table: pd.DataFrame, group_columns: list[str],
                     audit_design: dict | None) -> tuple[pd.DataFrame, str]:
    """The best estimate of each share (PPI with an audit, else PCC) with its 95% interval, three decimals, and
    the note that says what it is."""
    estimate = "ppi" if "ppi" in table.columns else "pcc"
    printed = pd.DataFrame({column: table[column].replace(ALL, "all") for column in group_columns})
    printed["Frame"] = table["label"]
    printed["Passages"] = table["rows"].astype(int)
    printed["Share"] = table[estimate].map(lambda v: f"{v:.3f}")
    printed["95% CI"] = [f"[{low:.3f}, {high:.3f}]" for low, high in zip(table[f"{estimate}_low"],
                                                                        table[f"{estimate}_high"])]
    if estimate == "ppi":
        design = "stratified" if audit_design and audit_design["stratified"] else "simple random"
        n = audit_design["n"] if audit_design else int(table["audit_rows"].max())
        note = (f"Prediction-powered estimates (PPI++, Angelopoulos et al. 2023) combining the model's calibrated "
                f"probabilities for every passage with a {design} audit of {n} human-coded passages; 95% "
                "intervals cover sampling noise and classifier error.")
    else:
        note = ("Mean calibrated probability of each frame (probabilistic classify-and-count); 95% intervals cover "
                "sampling noise only, not classifier error (no audit sample).")
    return printed, note


def latex_table(printed: pd.DataFrame, note: str) -> str:
    """A booktabs table (pandas' to_latex escapes the labels), the note under it."""
    body = printed.to_latex(index=False, escape=True, caption="Frame shares with 95\\% intervals",
                            label="tab:frame-shares", column_format="l" * (len(printed.columns) - 3) + "rrr")
    escaped = note.replace("%", "\\%").replace("&", "\\&")
    return body.replace("\\end{tabular}\n", "\\end{tabular}\n\\par\\smallskip\\footnotesize " + escaped + "\n")


def markdown_table(printed: pd.DataFrame, note: str) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    numeric = ("Passages", "Share", "95% CI")  # right-aligned
    lines = ["| " + " | ".join(printed.columns) + " |",
             "| " + " | ".join("---:" if c in numeric else "---" for c in printed.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in printed.itertuples(index=False)]
    return "\n".join(lines) + f"\n\n{note}\n"


def methods_paragraph(table: pd.DataFrame, source: str, audit_design: dict | None) -> str:
    """A methods paragraph to adapt: every figure comes from the prediction file's provenance, the run folder it
    names, and the share table; what cannot be found is said, not invented."""
    provenance = read_provenance(source)
    run = Path(provenance["run"]) if provenance.get("run") else None
    parts = []
    if provenance.get("ensemble"):
        members = provenance["ensemble"]
        parts.append(f"Passages were classified into {table['label'].nunique()} frames by an ensemble of "
                     f"{len(members)} fine-tuned models ("
                     + "; ".join(f"{m['base_model']}, weight {m['weight']:.2f}" for m in members)
                     + "): each model's probabilities were calibrated by temperature scaling and the ensemble's "
                     f"probability of a frame is their weighted mean (framesft "
                     f"{provenance.get('framesft_version', __version__)}).")
    elif run is not None and (run / "config.yaml").is_file():
        config = read_run_config(run)
        summary = read_json(run / SUMMARY_FILE)
        t = config.training
        method = ("generative supervised fine-tuning (the model generates the frame label; every label is scored "
                  "by its log-likelihood)" if config.method == "sft" else "a sequence-classification head")
        parts.append(f"Passages were classified into {table['label'].nunique()} frames with "
                     f"{config.model.base_model} "
                     f"fine-tuned by {method} with LoRA (rank {t.lora_r}, alpha {t.lora_alpha}, dropout "
                     f"{t.lora_dropout}; learning rate {t.learning_rate:g}, up to {t.num_epochs:g} epochs) on "
                     f"{summary.get('train_examples', 'an unrecorded number of')} labelled passages, using framesft "
                     f"{provenance.get('framesft_version', __version__)}.")
        test = read_json(run / "metrics_test.json") or read_json(run / "metrics_validation.json")
        agreement = test.get("agreement", {}).get("model_vs_gold")
        if agreement:
            low, high = agreement["alpha_ci95"]
            split = "test" if (run / "metrics_test.json").is_file() else "validation"
            parts.append(f"On {agreement['units']} held-out passages ({split} split) the model's agreement with the "
                         f"human gold labels was Krippendorff's alpha = {agreement['krippendorff_alpha']:.2f} "
                         f"(95% bootstrap interval {low:.2f} to {high:.2f}; F1 macro {test['f1_macro']:.2f}).")
        if provenance.get("adapted_on"):
            parts.append("The model's label probabilities were recalibrated (a temperature and one bias per label) "
                         "on coded passages that are not part of the audit sample.")
    else:
        parts.append(f"(The model could not be described: {source} has no readable record of the run that wrote it; "
                     "predict it again with `framesft predict` to have one.)")
    if str(table["calibration"].iloc[0]).startswith("temperature refitted"):
        parts.append("The model's probabilities were recalibrated on the audit sample by cross-fitted temperature "
                     "scaling (each audited passage's probability from a temperature fitted on the other folds; "
                     "Zrnic and Candes 2024).")
    N = int(table["rows"].max())
    if audit_design:
        design = (f"a stratified random sample ({audit_design['strata']} strata, weighted by inclusion "
                  "probabilities as in design-based supervised learning, Egami et al. 2023)"
                  if audit_design["stratified"] else "a simple random sample")
        parts.append(f"To correct the shares for classification error, {audit_design['n']} of the {N} passages, "
                     f"drawn as {design}, were coded by hand. Frame shares were estimated by prediction-powered "
                     "inference (PPI++, Angelopoulos et al. 2023), which combines the model's calibrated "
                     "probabilities for all passages with the audit and gives 95% intervals that cover both sampling "
                     "noise and the classifier's errors.")
    else:
        parts.append(f"Frame shares of the {N} passages are mean calibrated probabilities; without a hand-coded audit "
                     "sample their intervals do not cover the classifier's errors.")
    return ("# Methods paragraph (framesft estimate)\n\nAdapt to your paper; every figure below was read from "
            "the run and findings files.\n\n" + " ".join(parts) + "\n")


def coverage_note(audit_source: str | None) -> str:
    if audit_source is None:
        return ("No audit sample: the intervals cover sampling noise only, not the classifier's errors. Shares "
                "counted from a classifier are biased wherever it errs, and differently between groups; draw an "
                "audit with `framesft sample`, code it, and pass it with --audit.")
    return (f"Audit sample {audit_source}: the PPI intervals cover sampling noise and the classifier's errors "
            "(prediction-powered inference); CC and PCC intervals still cover sampling noise only.")


def findings_html(table: pd.DataFrame, images: dict[str, str], source: str, audit_source: str | None) -> str:
    shown = table.drop(columns=["intervals_cover", "calibration"])
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
<p id="calibration">Probabilities: {html.escape(str(table["calibration"].iloc[0]))}.</p>
{pictures}
<h2>Table</h2>
<p>cc: classify-and-count; pcc: mean calibrated probability; audit: the human-coded audit alone; ppi:
prediction-powered estimate; *_low/*_high: 95% interval.</p>
<div id="shares-table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
</body></html>
"""
