"""Corpus-scale prediction: streaming, resumable, shardable across processes.

The input is read in chunks of `chunk_rows` (CSV, TSV, JSONL, Parquet, or a DuckDB table/query), so memory does
not grow with the corpus. Each finished chunk is written atomically as a numbered part file in
`<output>.parts/`; a rerun of the same command skips the parts that exist. When every chunk is done the parts
are merged into the output under a temporary name, renamed into place, and the parts folder is removed: an
output file that exists is always complete and holds every input row exactly once.

Under `accelerate launch` / `torchrun` with N processes, process k handles chunks k, k+N, k+2N, ...; the main
process merges after all have finished.

Independent jobs (a SLURM array, Kubernetes jobs) share a corpus with `--shard K/N`: chunk i belongs to shard
i mod N, every shard writes its parts into the same parts folder on a shared file system, marks itself done
(`shard-K-of-N.json`) when all its chunks have parts, and the last shard to finish merges (or `--merge` does,
refusing while shards are missing). Within a shard, the processes of a `torchrun` launch share its chunks again.
A rerun of a killed shard skips its finished chunks, so every row is in the output exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from . import __version__
from .adaptation import adaptation_provenance
from .cascade import MarginCascade, summed_tallies
from .errors import DataError, FrameSFTError, RunFolderError
from .files import atomic_path, read_json, write_json, write_json_once
from .runfolder import (ENSEMBLE_FILE, check_run_folder, is_ensemble, provenance_path, read_label_map,
                        read_run_config)
from .tables import (DELIMITED_SUFFIXES, csv_options, iter_delimited_chunks, iter_jsonl_records, read_workbook,
                     require_columns, text_encoding)
from .terminal import progress_bar

log = logging.getLogger(__name__)

DUCKDB_SUFFIXES = {".duckdb", ".ddb", ".db"}
SCORING_ROUTE_FILE = "scoring_route.json"  # in a prediction's parts folder: see scoring_route


@dataclass
class CorpusSource:
    path: Path
    text_column: str
    id_column: str | None = None
    query: str | None = None  # DuckDB only: SQL, or a table name
    chunk_rows: int = 1000
    encoding: str = "utf-8"  # CSV/TSV only
    delimiter: str | None = None  # CSV/TSV only; None: by suffix
    keep_columns: tuple[str, ...] = ()  # input columns carried into the output (date, party, speaker, ...)
    sheet: str | None = None  # .xlsx only; None: the first sheet

    def columns(self) -> list[str]:
        """The input columns prediction reads: the text, the id and the columns to keep."""
        wanted = [self.text_column, *([self.id_column] if self.id_column else []), *self.keep_columns]
        return list(dict.fromkeys(wanted))

    def describe(self) -> dict:
        stat = self.path.stat()
        return {"input": str(self.path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
                "text_column": self.text_column, "id_column": self.id_column, "query": self.query,
                "chunk_rows": self.chunk_rows, "encoding": self.encoding, "delimiter": self.delimiter,
                "keep_columns": list(self.keep_columns), "sheet": self.sheet}


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
    elif suffix in DELIMITED_SUFFIXES:
        chunks = iter_delimited_chunks(path, text_encoding(path, source.encoding), source.delimiter, source.chunk_rows)
    elif suffix == ".xlsx":  # a sheet holds at most about a million rows: read whole, then cut
        table = read_workbook(path, source.sheet)
        chunks = (table.iloc[i:i + source.chunk_rows] for i in range(0, len(table), source.chunk_rows))
    elif suffix in {".jsonl", ".json"}:
        chunks = _jsonl_chunks(source)
    else:
        raise DataError(f"{path}: unsupported input type {suffix!r}; use CSV, TSV, TXT (Excel Unicode Text), XLSX, "
                        "JSONL, Parquet or DuckDB")
    start = 0
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)
        if start == 0:
            require_columns(chunk, source.columns(), path, source.encoding, source.delimiter)
        chunk["_row"] = range(start, start + len(chunk))
        start += len(chunk)
        yield chunk


def _jsonl_chunks(source: CorpusSource) -> Iterator[pd.DataFrame]:
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

    columns = source.columns()
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
        if suffix in DELIMITED_SUFFIXES:
            encoding = text_encoding(source.path, source.encoding)
            return sum(len(c) for c in pd.read_csv(source.path, usecols=[0], chunksize=50_000,
                                                   **csv_options(source.path, encoding, source.delimiter)))
    except Exception:  # noqa: BLE001 - the count only feeds the progress bar
        return None
    return None


# ------------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` independent jobs: the chunks i with i mod count == index."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N' as --shard takes it: K from 0 to N-1 (SLURM: --array=0-7 with --shard $SLURM_ARRAY_TASK_ID/8)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise DataError(f"--shard {text}: write K/N, e.g. --shard 0/8 for the first of 8 jobs") from None
        if count < 1 or not 0 <= index < count:
            raise DataError(f"--shard {text}: K runs from 0 to N-1 (the first of 8 jobs is 0/8, the last 7/8)")
        return cls(index, count)

    def owns(self, chunk: int, process_index: int = 0, num_processes: int = 1) -> bool:
        """Whether this shard's process `process_index` (of its `num_processes`) scores chunk `chunk`."""
        return chunk % self.count == self.index and (chunk // self.count) % num_processes == process_index

    def worker(self, process_index: int, num_processes: int) -> int:
        """A number for the process across all shards (the cascade tallies are kept per worker)."""
        return self.index * num_processes + process_index


def shard_marker(parts: Path, shard: Shard) -> Path:
    return parts / f"shard-{shard.index}-of-{shard.count}.json"


def finished_shards(parts: Path, count: int) -> dict[int, dict]:
    return {k: read_json(shard_marker(parts, Shard(k, count))) for k in range(count)
            if shard_marker(parts, Shard(k, count)).is_file()}


# ------------------------------------------------------------------------------------------ parts


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def prepare_parts(output: Path, source: CorpusSource, run_dir: Path, is_main: bool, shards: int = 1,
                  engine: str = "local") -> Path:
    """Create or reopen the parts folder; refuse to mix parts from a different input, run, number of shards or
    scoring engine."""
    parts = parts_folder(output)
    manifest = {"source": source.describe(), "run": str(Path(run_dir).resolve()), "output": str(output)}
    if shards > 1:
        manifest["shards"] = shards
    if engine != "local":
        manifest["engine"] = engine
    manifest_path = parts / "manifest.json"
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if previous != manifest:
            raise FrameSFTError(
                f"{parts} holds partial results of a different prediction (other input, run or settings); "
                f"delete that folder to start over"
            )
        log.info("resuming: %d finished chunks found in %s", len(list(parts.glob("part-*.parquet"))), parts)
    elif is_main:  # shards starting together race to write it: one wins, and the others must agree with it
        if write_json_once(manifest_path, manifest) != json.loads(json.dumps(manifest)):
            raise FrameSFTError(f"{parts} holds partial results of a different prediction (other input, run or "
                                "number of shards); delete that folder to start over")
    return parts


def scoring_route(parts: Path, config, state) -> dict[str, bool]:
    """How this prediction scores, decided once and kept with its parts: whether the linear layers go through
    oneDNN and whether the bf16 cascade runs are chosen by measuring the CPU, and a measurement taken under load
    can choose otherwise. A resumed attempt, and every process of a multi-process one, take the route the first
    attempt's main process chose (with shards: the first shard's), so that all rows of one output are scored alike."""
    from .precision import resolve_plan

    path = parts / SCORING_ROUTE_FILE
    if state.is_main_process and not path.is_file():
        plan = resolve_plan(config, state.device)  # shards racing here: the first to write decides for all
        write_json_once(path, {"onednn_linears": plan.onednn_linears, "bf16_cascade": plan.scoring_cascade})
    state.wait_for_everyone()
    return read_json(path)


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.parquet"


def tally_path(parts: Path, index: int) -> Path:
    return parts / f"cascade-{index:06d}.json"


def resume_cascade_state(cascade: MarginCascade, parts: Path, process_index: int) -> None:
    """A resumed prediction continues the bf16 cascade of the interrupted attempt (recorded with its chunks): its
    bound, instead of probing its own first chunk, and its counts of passages scored and rescored, which decide
    whether it steps aside. Which passages are rescored in fp32 depends on both, so only then does a resumed
    output equal an uninterrupted one. This process index's records when there are any (each process measured
    its own bound), else the widest bound recorded. A record whose chunk has no part (the attempt stopped between
    the two writes) is left out: this attempt scores that chunk again."""
    recorded = [read_json(path) for path in sorted(parts.glob("cascade-*.json"))
                if part_path(parts, int(path.stem.split("-")[1])).is_file()]
    recorded = [t for t in recorded if t.get("bound") is not None]
    if not recorded:
        return
    mine = [t for t in recorded if t.get("process") == process_index]
    source = mine[0] if mine else max(recorded, key=lambda t: t["bound"])
    tally = cascade.tally
    tally.bound, tally.largest_change = source["bound"], source["largest_change"]
    tally.fast_passages = sum(t["fast_passages"] for t in mine)
    tally.rescored = sum(t["rescored"] for t in mine)
    tally.stepped_aside = any(t.get("stepped_aside", False) for t in mine)
    log.info("resuming with the bf16 cascade bound %.4f measured by the interrupted attempt", source["bound"])


def write_part(parts: Path, index: int, table: pd.DataFrame) -> None:
    with atomic_path(part_path(parts, index)) as tmp:
        table.to_parquet(tmp, index=False)


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
                    part = pd.read_parquet(part_path(parts, i))
                    part.to_csv(handle, index=False, header=(i == 0))
                    rows += len(part)
    shutil.rmtree(parts)
    return rows


# ------------------------------------------------------------------------------------------ prediction


def predict_corpus(run_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                   text_column: str | None = None, id_column: str | None = None, query: str | None = None,
                   chunk_rows: int = 1000, show_progress: bool = True, encoding: str | None = None,
                   delimiter: str | None = None, keep_columns: Sequence[str] = (),
                   sheet: str | None = None, shard: Shard | str | None = None, merge: bool = False,
                   engine: str = "local", server: str | None = None) -> int | None:
    """Label every row of a corpus, streaming and resumable; returns the row count.

    CSV/TSV input is read with the run's data.encoding and data.delimiter unless `encoding`/`delimiter` are
    given (`sheet`: which sheet of an .xlsx workbook). `keep_columns` are copied from the input into the output,
    after the id. Under `accelerate launch`/`torchrun` every process scores its share of the chunks and the main
    process merges; the other processes return None.

    `shard` ("K/N" or a Shard): score shard K of N independent jobs only; the last shard to finish merges and
    returns the row count, the others return None. `merge` (with the shard count, e.g. shard="0/8"): merge the
    shards' parts without scoring, refusing while any shard has not finished.
    """
    # torch and the model load only when predicting (sample and estimate read corpora through this module too)
    from .inference import load_classifier
    from .precision import process_state
    from .scoring import predictions_table

    output = Path(output_path)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard or Shard()
    if output.suffix.lower() not in {".csv", ".parquet"}:
        raise DataError(f"--output {output}: write .csv or .parquet")
    if output.exists():
        raise RunFolderError(f"{output} already exists; delete it or choose another --output")
    check_run_folder(Path(run_dir))
    config = read_run_config(Path(run_dir))
    data = config.data.with_format(encoding, delimiter, sheet)
    source = CorpusSource(Path(input_path), text_column or data.text_column, id_column, query, chunk_rows,
                          data.encoding, data.delimiter, tuple(keep_columns), data.sheet)
    if merge:
        return merge_shards(Path(run_dir), config, output, shard.count if shard.count > 1 else None, explicit=True)
    state = process_state(config)
    clash = {"predicted", "margin", *(f"p_{label}" for label in read_label_map(Path(run_dir)))} & set(keep_columns)
    if clash:
        raise DataError(f"--keep-columns {sorted(clash)}: these names are prediction columns; rename them in the input")
    if engine not in ("local", "vllm") or (engine == "vllm") != bool(server):
        raise DataError(f"--engine {engine}: give --engine local, or --engine vllm with --server URL")
    parts = prepare_parts(output, source, Path(run_dir), state.is_main_process, shard.count, engine)
    state.wait_for_everyone()
    try:
        if engine == "vllm":
            from .vllm_engine import load_remote_classifier

            classifier = load_remote_classifier(run_dir, server)
        else:
            classifier = load_classifier(run_dir, device=state.device, scoring=scoring_route(parts, config, state))
    except BaseException:
        if state.is_main_process and not any(parts.glob("part-*.parquet")) and shard.count == 1:
            shutil.rmtree(parts, ignore_errors=True)  # nothing scored yet: leave nothing that a next try must delete
        raise
    total = count_rows(source) if state.is_main_process else None
    if total is not None and shard.count > 1:
        total = None  # this shard's share is known only chunk by chunk
    worker = shard.worker(state.process_index, state.num_processes)
    scorer = classifier.scorer()
    cascade = scorer if isinstance(scorer, MarginCascade) else None
    if cascade:
        resume_cascade_state(cascade, parts, worker)
    state.wait_for_everyone()  # no process writes a part before every process has read what the last attempt left
    n_chunks = 0
    description = "predicting" if shard.count == 1 else f"predicting shard {shard.index}/{shard.count}"
    with progress_bar(total, description, unit="rows",
                      enabled=show_progress and state.is_main_process) as advance:
        for index, chunk in enumerate(iter_chunks(source)):
            n_chunks += 1
            if not shard.owns(index, state.process_index, state.num_processes) or part_path(parts, index).is_file():
                advance(len(chunk) if state.num_processes == 1 and shard.owns(index) else 0)
                continue
            texts = chunk[source.text_column].tolist()
            tally_before = cascade.tally.as_dict() if cascade else None
            result = predictions_table(texts, classifier.calibrated(scorer.score_texts(texts))).drop(columns=["text"])
            result.insert(0, id_column or "row", chunk[id_column].values if id_column else chunk["_row"].values)
            for position, column in enumerate(c for c in keep_columns if c != id_column):
                result.insert(1 + position, column, chunk[column].values)
            if cascade:  # before the part, so that every chunk with a part has its tally, whichever attempt it was
                write_json(tally_path(parts, index), {"process": worker, **cascade.tally.since(tally_before)})
            write_part(parts, index, result)
            advance(len(chunk) * state.num_processes)
    if cascade:
        log.info("%s", cascade.tally.summary())
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    if shard.count == 1:
        write_provenance(Path(run_dir), classifier.config, output, state.num_processes, chunk_tallies(parts, n_chunks),
                         engine=engine)
        return merge_parts(parts, n_chunks, output)
    write_json(shard_marker(parts, shard), {"chunks": n_chunks, "processes": state.num_processes})
    return merge_shards(Path(run_dir), classifier.config, output, shard.count)


def chunk_tallies(parts: Path, n_chunks: int) -> list[dict]:
    return [read_json(tally_path(parts, i)) for i in range(n_chunks) if tally_path(parts, i).is_file()]


def merge_shards(run_dir: Path, config, output: Path, count: int | None, explicit: bool = False) -> int | None:
    """Merge the parts of `count` shards (None: as many as the parts folder was started with) once every shard has
    marked itself done; returns the row count, or None when shards are still missing (the last of them will
    merge) or another shard is merging. `explicit` (`--merge`): refuse, naming the missing shards, instead of
    waiting for them."""
    parts = parts_folder(output)
    if not (parts / "manifest.json").is_file():
        raise RunFolderError(f"{parts} does not exist: no shard of this prediction has started; run the shards "
                             "first (the same command with --shard K/N for K = 0 ... N-1)")
    recorded = read_json(parts / "manifest.json").get("shards", 1)
    if recorded == 1:
        raise DataError(f"{parts} is not a sharded prediction; run the same command without --merge to finish it")
    if count is not None and recorded != count:
        raise DataError(f"{parts} was started with {recorded} shards, not {count}; give --shard K/{recorded}")
    count = recorded
    done = finished_shards(parts, count)
    missing = [k for k in range(count) if k not in done]
    if missing:
        if explicit:
            raise FrameSFTError(f"{parts}: shards {missing} of {count} have not finished; run them (the same "
                                f"command with --shard K/{count}) and merge again")
        log.info("%d of %d shards done; the last of shards %s to finish merges", len(done), count, missing)
        return None
    chunk_counts = {record["chunks"] for record in done.values()}
    if len(chunk_counts) != 1:
        raise DataError(f"{parts}: the shards read different numbers of chunks ({sorted(chunk_counts)}): the input "
                        "changed between them; delete that folder and predict again")
    n_chunks = chunk_counts.pop()
    unscored = sorted({i % count for i in range(n_chunks) if not part_path(parts, i).is_file()})
    if unscored:
        raise FrameSFTError(f"{parts}: shards {unscored} are marked done but miss parts (deleted?); run them again "
                            f"with --shard K/{count}")
    try:  # shards finishing together both see every shard done: one merges
        os.close(os.open(parts / "merging", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        if not explicit:
            log.info("another shard is merging %s (if none is, run the same command with --merge)", parts)
            return None
    processes = sum(record["processes"] for record in done.values())
    engine = read_json(parts / "manifest.json").get("engine", "local")
    write_provenance(run_dir, config, output, processes, chunk_tallies(parts, n_chunks), shards=count, engine=engine)
    return merge_parts(parts, n_chunks, output)


def write_provenance(run_dir: Path, config, output: Path, processes: int = 1,
                     cascade_tallies: Sequence[dict] = (), shards: int = 1, engine: str = "local") -> None:
    """Next to the predictions, the run that wrote them: `estimate`'s methods paragraph reads the model from it,
    and an adapted run records which passages it was fitted on (`estimate` refuses them as audit). Written
    before the predictions themselves, so a prediction file never lacks it."""
    record = {"run": str(run_dir.resolve()), "base_model": config.model.base_model, "method": config.method,
              "framesft_version": __version__, "processes": processes}
    if shards > 1:
        record["shards"] = shards
    if engine != "local":
        record["engine"] = engine
    if is_ensemble(run_dir):
        record["ensemble"] = read_json(run_dir / ENSEMBLE_FILE)["members"]
    adapted_on = adaptation_provenance(run_dir)
    if adapted_on:
        record["adapted_on"] = adapted_on
    if cascade_tallies:  # with several processes each measured its own bound on its own chunks
        record["bf16_cascade"] = combined_tally(cascade_tallies)
    write_json(provenance_path(output), record)


def combined_tally(chunk_tallies: Sequence[dict]) -> dict:
    """The cascade tallies of every chunk (each tagged with the process that scored it) as one record: counts
    summed, the widest bound; each process's own under `per_process` where there were several. Counted per
    chunk, a prediction resumed after an interruption still accounts for every row it wrote."""
    by_process: dict[int, list[dict]] = {}
    for tally in chunk_tallies:
        by_process.setdefault(tally["process"], []).append(tally)
    per_process = [{"process": process, **summed_tallies(tallies)} for process, tallies in sorted(by_process.items())]
    combined = {key: value for key, value in summed_tallies(per_process).items() if key != "process"}
    if len(per_process) > 1:
        combined["per_process"] = per_process
    return combined
