"""Peak memory and time of `framesft estimate` at 100k and 1M prediction rows: aggregation streams, so the
larger file must not need ten times the memory.

    .venv/bin/python benchmarks/estimate_memory.py

Synthetic prediction files (Parquet, six labels, a party and a date column) with an audit sample of 500 coded
rows; the estimate groups by party and month. The baseline in the same run is the same estimate on the smaller
file. Each size runs in its own process (peak RSS = its ru_maxrss). Writes benchmarks/results/estimate_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "estimate_memory.json"
LABELS = ["Conflict", "Moral Value", "Economic", "Powerlessness", "Human Impact", "None"]

CHILD = """
import resource, sys, time
from framesft.audit import read_coded_sheet
from framesft.estimation import estimate_shares
start = time.perf_counter()
audit = read_coded_sheet(sys.argv[2], sys.argv[1])
table = estimate_shares(sys.argv[1], audit, by=["party"], time_column="date", time_unit="month")
print("RESULT", len(table), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_predictions(path: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """Written in slices of 100k rows, so making the file does not itself need the memory we measure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer, audit_rows = None, []
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        logits = rng.normal(0, 1.5, (size, len(LABELS)))
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        table = pd.DataFrame({
            "chunk_id": [f"c{i}" for i in range(start, start + size)],
            "party": rng.choice(["Con", "Lab", "LD", "SNP"], size),
            "date": (pd.Timestamp("2016-01-01") + pd.to_timedelta(rng.integers(0, 1460, size), "D")).strftime("%Y-%m-%d"),
            "predicted": [LABELS[k] for k in probabilities.argmax(axis=1)]})
        for k, label in enumerate(LABELS):
            table[f"p_{label}"] = probabilities[:, k]
        table["margin"] = 0.0
        batch = pa.Table.from_pandas(table, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, batch.schema)
        writer.write_table(batch)
        audit_rows.append(table.sample(n=max(1, 500 * size // n), random_state=seed))
    writer.close()
    audit = pd.concat(audit_rows).head(500)
    return pd.DataFrame({"id": audit["chunk_id"], "inclusion_probability": 500 / n, "stratum": "all",
                         "text": "passage " + audit["chunk_id"], "label": rng.choice(LABELS, len(audit))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for n in args.sizes:
            predictions, sheet = Path(work) / f"p{n}.parquet", Path(work) / f"sheet{n}.csv"
            write_predictions(predictions, n).to_csv(sheet, index=False)
            done = subprocess.run([sys.executable, "-c", CHILD, str(predictions), str(sheet)], capture_output=True,
                                  text=True, env=os.environ)
            line = [l for l in done.stdout.splitlines() if l.startswith("RESULT")]
            if done.returncode or not line:
                raise SystemExit(done.stderr[-3000:])
            _, rows, seconds, rss = line[-1].split()
            results[str(n)] = {"table_rows": int(rows), "seconds": round(float(seconds), 2),
                               "peak_rss_mib": round(float(rss), 1),
                               "file_mib": round(predictions.stat().st_size / 2 ** 20, 1)}
            print(n, results[str(n)], flush=True)
    small, large = (results[str(n)] for n in (min(args.sizes), max(args.sizes)))
    report = {"benchmark": "framesft estimate: peak memory and time by prediction file size",
              "grouping": "party x month, audit of 500 coded rows, 6 labels", "cores": os.cpu_count(),
              "sizes": results,
              "ratios": {"rows": max(args.sizes) / min(args.sizes),
                         "peak_rss_large_over_small": round(large["peak_rss_mib"] / small["peak_rss_mib"], 2),
                         "seconds_large_over_small": round(large["seconds"] / small["seconds"], 2)}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
