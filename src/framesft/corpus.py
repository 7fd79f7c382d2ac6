"""Corpus-scale prediction: streaming, resumable, shardable across processes.

The input is read in chunks of `chunk_rows` (CSV, TSV, JSONL, Parquet, or a DuckDB table/query), so memory does
not grow with the corpus. Each finished chunk is written atomically as a numbered part file in
`<output>.parts/`; a rerun of the same command skips the parts that exist. When every chunk is done the parts
are merged into the output under a temporary name, renamed into place, and the parts folder is removed: an
output file that exists is always complete and holds every input row exactly once.

Under `accelerate launch` / `torchrun` with N processes, process k handles chunks k, k+N, k+2N, ...; the main
process merges after all have finished.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from .data import require_columns
from .errors import DataError, FrameSFTError
from .reporting import atomic_path, write_json

log = logging.getLogger(__name__)

DUCKDB_SUFFIXES = {".duckdb", ".ddb", ".db"}


@dataclass
class CorpusSource:
    path: Path
    text_column: str
    id_column: str | None = None
    query: str | None = None  # DuckDB only: SQL, or a table name
    chunk_rows: int = 1000

    def describe(self) -> dict:
        stat = self.path.stat()
        return {"input": str(self.path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
                "text_column": self.text_column, "id_column": self.id_column, "query": self.query,
                "chunk_rows": self.chunk_rows}


def iter_chunks(source: CorpusSource) -> Iterator[pd.DataFrame]:
    """Chunks of at most `chunk_rows` rows as string DataFrames, with a `_row` column (0-based input row)."""
    path = source.path
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in DUCKDB_SUFFIXES:
        chunks = _duckdb_chunks(source)
    elif suffix == ".parquet":
        chunks = _parquet_chunks(source)
    elif suffix in {".csv", ".tsv"}:
        chunks = _csv_chunks(source, "\t" if suffix == ".tsv" else ",")
    elif suffix in {".jsonl", ".json"}:
        chunks = _jsonl_chunks(source)
    else:
        raise DataError(f"{path}: unsupported input type {suffix!r}; use CSV, TSV, JSONL, Parquet or DuckDB")
    start = 0
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)
        if start == 0:
            require_columns(chunk, [source.text_column] + ([source.id_column] if source.id_column else []), path)
        chunk["_row"] = range(start, start + len(chunk))
        start += len(chunk)
        yield chunk


def _csv_chunks(source: CorpusSource, sep: str) -> Iterator[pd.DataFrame]:
    try:
        yield from pd.read_csv(source.path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                               encoding="utf-8-sig", chunksize=source.chunk_rows)
    except UnicodeDecodeError:
        from .data import describe_bad_utf8

        raise DataError(f"{source.path}: {describe_bad_utf8(source.path)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{source.path}: the file is empty") from None


def _jsonl_chunks(source: CorpusSource) -> Iterator[pd.DataFrame]:
    from .data import iter_jsonl_records

    records: list[dict] = []
    for record in iter_jsonl_records(source.path):
        records.append(record)
        if len(records) == source.chunk_rows:
            yield pd.DataFrame.from_records(records)
            records = []
    if records:
        yield pd.DataFrame.from_records(records)


def _parquet_chunks(source: CorpusSource) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    columns = [source.text_column] + ([source.id_column] if source.id_column else [])
    parquet = pq.ParquetFile(source.path)
    missing = [c for c in columns if c not in parquet.schema_arrow.names]
    if missing:
        require_columns(pd.DataFrame(columns=parquet.schema_arrow.names), missing, source.path)
    for batch in parquet.iter_batches(batch_size=source.chunk_rows, columns=columns):
        yield batch.to_pandas().astype(str)


def _duckdb_chunks(source: CorpusSource) -> Iterator[pd.DataFrame]:
    import duckdb

    if not source.query:
        raise FrameSFTError(f"{source.path} is a DuckDB database: pass --query with a table name or "
                            "a SELECT statement, e.g. --query \"SELECT id, chunk_text FROM chunks\"")
    query = source.query if source.query.lstrip().lower().startswith(("select", "with", "from")) \
        else f'SELECT * FROM "{source.query}"'
    connection = duckdb.connect(str(source.path), read_only=True)
    try:
        try:
            reader = connection.sql(query).to_arrow_reader(source.chunk_rows)
        except duckdb.Error as exc:
            raise DataError(f"{source.path}: the query failed: {exc}") from None
        for batch in reader:
            yield batch.to_pandas().astype(str)
    finally:
        connection.close()


def count_rows(source: CorpusSource) -> int | None:
    """Total rows for the progress bar, where that is cheap to know."""
    suffix = source.path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(source.path).metadata.num_rows
        if suffix in DUCKDB_SUFFIXES and source.query:
            import duckdb

            with duckdb.connect(str(source.path), read_only=True) as connection:
                inner = source.query if " " in source.query.strip() else f'SELECT * FROM "{source.query}"'
                return connection.execute(f"SELECT count(*) FROM ({inner})").fetchone()[0]
        if suffix in {".csv", ".tsv"}:
            sep = "\t" if suffix == ".tsv" else ","
            return sum(len(c) for c in pd.read_csv(source.path, sep=sep, usecols=[0], dtype=str,
                                                   keep_default_na=False, encoding="utf-8-sig", chunksize=50_000))
    except Exception:  # noqa: BLE001 - the count only feeds the progress bar
        return None
    return None


# ------------------------------------------------------------------------------------------ parts


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def prepare_parts(output: Path, source: CorpusSource, run_dir: Path, is_main: bool) -> Path:
    """Create or reopen the parts folder; refuse to mix parts from a different input or run."""
    parts = parts_folder(output)
    manifest = {"source": source.describe(), "run": str(Path(run_dir).resolve()), "output": str(output)}
    manifest_path = parts / "manifest.json"
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if previous != manifest:
            raise FrameSFTError(
                f"{parts} holds partial results of a different prediction (other input, run or settings); "
                f"delete that folder to start over"
            )
        log.info("resuming: %d finished chunks found in %s", len(list(parts.glob("part-*.parquet"))), parts)
    elif is_main:
        parts.mkdir(parents=True, exist_ok=True)
        write_json(manifest_path, manifest)
    return parts


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.parquet"


def write_part(parts: Path, index: int, frame: pd.DataFrame) -> None:
    with atomic_path(part_path(parts, index)) as tmp:
        frame.to_parquet(tmp, index=False)


def merge_parts(parts: Path, n_chunks: int, output: Path) -> int:
    """Concatenate the parts in order into `output` (streaming: one part in memory at a time)."""
    import pyarrow.parquet as pq

    missing = [i for i in range(n_chunks) if not part_path(parts, i).is_file()]
    if missing:
        raise FrameSFTError(f"{parts}: chunks {missing[:10]} have no results; run the same command again")
    rows = 0
    with atomic_path(output) as tmp:
        if output.suffix.lower() == ".parquet":
            writer = None
            for i in range(n_chunks):
                table = pq.read_table(part_path(parts, i))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
            if writer is not None:
                writer.close()
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                for i in range(n_chunks):
                    frame = pd.read_parquet(part_path(parts, i))
                    frame.to_csv(handle, index=False, header=(i == 0))
                    rows += len(frame)
    shutil.rmtree(parts)
    return rows
