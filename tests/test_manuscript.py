"""Findings a paper can print: `framesft estimate` writes the share table as LaTeX (booktabs; it compiles with
pdflatex where a TeX engine is installed, which `make test` tries) and Markdown, the figures as PDF (fonts
embedded; pdftoppm renders it) and SVG, and methods.md; every number in them equals shares.csv."""

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

import pandas as pd
import pytest

from framesft.cli import main
from framesft.runfolder import provenance_path

from test_estimation import code_sheet, synthetic_predictions


def estimate_with_audit(tmp_path, by=("--by", "party")):
    predictions = tmp_path / "frames.parquet"
    table, truth = synthetic_predictions(predictions)
    sheet = tmp_path / "sheet.csv"
    assert main(["sample", str(predictions), "--n", "150", "--output", str(sheet), "--seed", "3"]) == 0
    code_sheet(sheet, dict(zip(table["chunk_id"], truth)), tmp_path / "coded.csv")
    out = tmp_path / "shares"
    assert main(["estimate", str(predictions), "--audit", str(tmp_path / "coded.csv"), *by,
                 "--output-dir", str(out)]) == 0
    return predictions, out


def numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"\d+\.\d{3}", text)]


def expected_numbers(shares: pd.DataFrame) -> list[float]:
    return [round(float(v), 3) for row in shares.itertuples() for v in (row.ppi, row.ppi_low, row.ppi_high)]


def test_table_in_latex_and_markdown_holds_the_csv_numbers(tmp_path):
    _, out = estimate_with_audit(tmp_path)
    shares = pd.read_csv(out / "shares.csv", keep_default_na=False)
    tex, md = (out / "shares.tex").read_text(), (out / "shares.md").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "simple random audit of 150 human-coded passages" in " ".join(tex.split())
    assert numbers(tex.split("\\end{tabular}")[0]) == expected_numbers(shares)
    assert numbers(md.split("\n\n")[0]) == expected_numbers(shares)
    assert md.count("\n| ") == len(shares) + 1  # a row per share under the header


def test_latex_compiles(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex: `make test` installs texlive-latex-recommended where apt-get can")
    _, out = estimate_with_audit(tmp_path)
    document = tmp_path / "paper.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                        f"\\input{{{out / 'shares.tex'}}}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000


def test_figures_as_pdf_with_embedded_fonts_and_svg(tmp_path):
    _, out = estimate_with_audit(tmp_path)
    pdf, svg = out / "shares_by_group.pdf", out / "shares_by_group.svg"
    assert pdf.read_bytes().startswith(b"%PDF") and (out / "shares_by_group.png").is_file()
    root = ElementTree.parse(svg).getroot()
    width = float(root.get("width").removesuffix("pt"))
    assert 200 < width < 320  # a journal column: 3.5 in is 252 pt (the tight bounding box moves it a little)
    if shutil.which("pdftoppm") is None or shutil.which("pdffonts") is None:
        pytest.skip("no poppler-utils (pdftoppm, pdffonts): `make test` installs them where apt-get can")
    rendered = subprocess.run(["pdftoppm", "-png", "-r", "150", "-singlefile", str(pdf), str(tmp_path / "page")],
                              capture_output=True, timeout=60)
    assert rendered.returncode == 0 and (tmp_path / "page.png").stat().st_size > 5000
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, timeout=60).stdout.splitlines()[2:]
    # columns: name, type, encoding, emb, sub, uni, object number, generation
    assert fonts and all(line.split()[-5] == "yes" for line in fonts), fonts


def test_over_time_figures_in_both_sizes(tmp_path):
    _, out = estimate_with_audit(tmp_path, by=("--time-column", "date", "--time-unit", "month"))
    for suffix in (".png", ".pdf", ".svg"):
        assert (out / f"shares_over_time{suffix}").stat().st_size > 5000
    shares = pd.read_csv(out / "shares.csv", keep_default_na=False)
    assert numbers((out / "shares.md").read_text().split("\n\n")[0]) == expected_numbers(shares)


def test_methods_paragraph_reads_its_figures_from_the_files(trained_run, tmp_path):
    predictions, out = estimate_with_audit(tmp_path)
    text = " ".join((out / "methods.md").read_text().split())
    assert "could not be described" in text and "150 of the 600 passages" in text and "PPI++" in text

    # the same with the provenance that `framesft predict` writes: the model comes from the run folder
    provenance_path(predictions).write_text(json.dumps({"run": str(trained_run.run_dir), "framesft_version": "9.9"}))
    out2 = tmp_path / "shares2"
    assert main(["estimate", str(predictions), "--audit", str(tmp_path / "coded.csv"), "--output-dir", str(out2)]) == 0
    text = " ".join((out2 / "methods.md").read_text().split())
    config = json.loads(json.dumps(__import__("yaml").safe_load((trained_run.run_dir / "config.yaml").read_text())))
    summary = json.loads((trained_run.run_dir / "run_summary.json").read_text())
    test = json.loads((trained_run.run_dir / "metrics_test.json").read_text())
    alpha = test["agreement"]["model_vs_gold"]
    assert config["model"]["base_model"] in text and f"rank {config['training']['lora_r']}" in text
    assert f"on {summary['train_examples']} labelled passages" in text and "framesft 9.9" in text
    assert f"alpha = {alpha['krippendorff_alpha']:.2f}" in text and f"{alpha['units']} held-out passages" in text
    assert "150 of the 600 passages" in text
