"""Generative SFT with LoRA on the transformers Trainer.

What we add to the stock Trainer:
- `AnswerOnlyCollator`: left-pads each batch, so every example's answer sits at the end of the row;
- `FrameTrainer.compute_loss`: the LM head runs only at the answer positions (`logits_to_keep`), and the loss
  covers the answer tokens and the end-of-turn token only;
- `FrameTrainer.evaluate`: real classification metrics from label scoring on the validation set
  (`eval_f1_macro`, ...), which drive early stopping and best-checkpoint selection.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import FrameSFTConfig
from .errors import FrameSFTError, RunFolderError, TrainingInterrupted
from .heads import HeadCollator, encode_passage, head_loss
from .inference import ADAPTER_DIR, CONFIG_FILE, LABEL_MAP_FILE, Classifier, evaluate_frame
from .metrics import classification_metrics, headline
from .modeling import attach_lora, load_base_model, load_tokenizer, resolve_model_path
from .prompting import IGNORE_INDEX, PromptBuilder
from .report import render_report
from .reporting import write_evaluation, write_json, write_text
from .rundata import RunData, load_run_data
from .scoring import pad_batch, positions_from_mask
from .tracking import finish_tracking, log_final_metrics, start_tracking

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ batching


class AnswerOnlyCollator:
    """Left-pads input ids and labels; position ids restart at each row's first real token."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, "left")
        labels, _ = pad_batch([e["labels"] for e in examples], IGNORE_INDEX, "left")
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask), "labels": labels}


def answer_only_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens, projecting to the vocabulary only where they are.

    With left padding the answers end every row; the last K+1 positions (K = longest answer in the batch)
    hold every logit the loss needs, so the LM head never runs over the prompt.
    """
    labels = batch["labels"]
    answer_width = int((labels != IGNORE_INDEX).sum(dim=1).max())
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=answer_width + 1,
        use_cache=False,
    )
    logits = outputs.logits[:, :-1].float()  # position t predicts token t+1
    targets = labels[:, -answer_width:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def full_sequence_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stock causal-LM loss (logits at every position, cross-entropy where labels are set): the same value
    as answer_only_loss at a higher cost; the reference the benchmarks measure our shortcut against."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False).loss


# ------------------------------------------------------------------------------------------ trainer


def make_trainer_class():
    from transformers import Trainer

    class FrameTrainer(Trainer):
        # compute_loss returns a per-micro-batch mean; the Trainer divides it by the accumulation steps.
        loss_is_scaled_for_ga = False

        def __init__(self, *args, frame_evaluator=None, loss_fn=answer_only_loss, **kwargs):
            super().__init__(*args, **kwargs)
            self.frame_evaluator = frame_evaluator
            self.loss_fn = loss_fn

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self.loss_fn(model, inputs)
            return (loss, None) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            start = time.perf_counter()
            frame_metrics = self.frame_evaluator(self.model)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in headline(frame_metrics).items()}
            metrics[f"{metric_key_prefix}_samples"] = frame_metrics["n"]
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 2)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return FrameTrainer


# ------------------------------------------------------------------------------------------ interruption


def make_graceful_stop():
    """A callback that turns SIGINT/SIGTERM into "save a checkpoint after this step, then stop".

    A second signal stops at once (the last saved checkpoint is still there to resume from).
    """
    from transformers import TrainerCallback

    class GracefulStop(TrainerCallback):
        def __init__(self):
            self.received: str | None = None
            self.previous = {}

        def install(self) -> None:
            if threading.current_thread() is not threading.main_thread():
                return  # signal handlers can only be set from the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)

        def restore(self) -> None:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            self.previous = {}

        def _handle(self, signum, frame):
            if self.received:
                self.restore()
                raise KeyboardInterrupt
            self.received = signal.Signals(signum).name
            log.warning("%s received: saving a checkpoint after this step, then stopping "
                        "(send it again to stop at once)", self.received)

        def on_step_end(self, args, state, control, **kwargs):
            if self.received:
                control.should_save = True
                control.should_training_stop = True
            return control

    return GracefulStop()


def validate_checkpoint(checkpoint: str) -> None:
    """Fail early, with a way out, if the checkpoint to resume from is damaged."""
    from safetensors import safe_open

    from .modeling import refuse_pickled_weights

    folder = Path(checkpoint)
    refuse_pickled_weights(folder)
    problems = []
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json unreadable ({exc})")
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
            list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        problems.append(f"adapter_model.safetensors unreadable ({exc})")
    if not (folder / "optimizer.pt").is_file():
        problems.append("optimizer.pt missing")
    if problems:
        raise RunFolderError(
            f"cannot resume from {folder}: {'; '.join(problems)}. Delete that checkpoint folder to resume from the "
            "one before it, or start again with --overwrite"
        )


# ------------------------------------------------------------------------------------------ run folder


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    metrics: dict[str, dict] = field(default_factory=dict)  # split -> metrics
    train_seconds: float = 0.0
    trainable_parameters: int = 0
    global_step: int = 0


def prepare_run_folder(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunFolderError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); start without --resume")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunFolderError(
                f"run folder {run_dir} already exists; pass --overwrite to replace it, --resume to continue it, "
                "or choose another folder with --run-dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def checkpoint_folder(config: FrameSFTConfig, run_dir: Path) -> Path:
    return Path(config.training.checkpoint_dir) if config.training.checkpoint_dir else run_dir / "checkpoints"


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


# ------------------------------------------------------------------------------------------ training


def training_arguments(config: FrameSFTConfig, checkpoint_dir: Path, report_to: list[str], run_dir: Path,
                       device: torch.device):
    from transformers import TrainingArguments

    t = config.training
    per_epoch = t.eval_steps is None
    if t.save_steps and t.eval_steps and t.save_steps != t.eval_steps:
        log.warning("training.save_steps (%s) differs from eval_steps (%s); checkpoints are saved at every "
                    "evaluation so the best one can be kept", t.save_steps, t.eval_steps)
    bf16 = t.bf16
    if bf16 and device.type == "cpu" and not cpu_supports_bf16():
        log.warning("training.bf16 is set but this CPU has no native bf16; training in fp32")
        bf16 = False
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler,
        optim=t.optimizer,
        logging_steps=t.logging_steps,
        eval_strategy="epoch" if per_epoch else "steps",
        eval_steps=None if per_epoch else t.eval_steps,
        save_strategy="epoch" if per_epoch else "steps",
        save_steps=None if per_epoch else t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=config.evaluation.metric,
        greater_is_better=True,
        bf16=bf16,
        fp16=t.fp16,
        seed=t.seed,
        data_seed=t.seed,
        report_to=report_to or "none",
        run_name=config.run_name(),
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
    )


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def encode_input(config: FrameSFTConfig, tokenizer, builder: PromptBuilder | None, text: str) -> list[int]:
    """What the model reads for one passage: the SFT prompt, or the passage alone for the head."""
    if builder is None:
        return encode_passage(tokenizer, text, config.data.max_length)
    return builder.encode_prompt(text)


def encode_frame(config: FrameSFTConfig, tokenizer, builder: PromptBuilder | None, data: RunData) -> list[dict]:
    """Training examples: prompt + answer with answer-only labels (SFT), or passage + class index (head)."""
    text_column, label_column = config.data.text_column, config.data.label_column
    examples = []
    for text, label in zip(data.train[text_column], data.train[label_column]):
        if builder is None:
            examples.append({"input_ids": encode_input(config, tokenizer, None, text),
                             "labels": data.labels.index(label)})
        else:
            encoded = builder.encode_example(text, label)
            examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    return examples


def train(config: FrameSFTConfig, run_dir: str | Path | None = None, overwrite: bool = False,
          resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Fine-tune, select the best checkpoint by validation F1 macro, evaluate, and write the run folder.

    Works unchanged under `accelerate launch`/`torchrun` (DDP): the trainer shards the training data, the
    validation set is scored in shards and gathered, and only the main process writes files and logs to W&B.
    """
    from transformers import set_seed

    from .modeling import process_state

    state = process_state()
    main = state.is_main_process
    run_dir = Path(run_dir or config.training.output_dir)
    if main:
        prepare_run_folder(run_dir, overwrite, resume)
    state.wait_for_everyone()
    log_handler = attach_log_file(run_dir) if main else None
    checkpoint_dir = checkpoint_folder(config, run_dir)
    try:
        set_seed(config.training.seed)
        if main:
            if resume:
                warn_if_config_changed(run_dir, config)
            write_text(run_dir / CONFIG_FILE, config.to_yaml())
        if config.model.trust_remote_code:
            log.warning("model.trust_remote_code is ON: code from the model repository will be executed")
        log.info("processes: %d (device %s)", state.num_processes, state.device)

        model_path = resolve_model_path(config.model.base_model)
        tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
        data, builder = load_data_and_prompt(config, tokenizer)
        if main:
            write_run_metadata(run_dir, data, config.data.label_column)
        while True:
            model = lora_model(config, model_path, state.device, data.labels, tokenizer.pad_token_id)
            trainer, graceful_stop = build_trainer(config, model, tokenizer, builder, data, run_dir,
                                                   checkpoint_dir, state, show_progress)
            try:
                train_seconds = run_training(trainer, graceful_stop, checkpoint_dir, run_dir, resume)
                break
            except torch.cuda.OutOfMemoryError:
                config = smaller_batch_config(config)  # raises when retrying is off or impossible
                if main:
                    write_text(run_dir / CONFIG_FILE, config.to_yaml())  # the config the run really used
                del trainer, model
                free_accelerator_memory()

        result = TrainResult(run_dir, data.labels, train_seconds=train_seconds,
                             trainable_parameters=model.get_nb_trainable_parameters()[0],
                             global_step=trainer.state.global_step)
        if main:
            save_adapter(trainer.model, tokenizer, run_dir / ADAPTER_DIR)
            write_json(run_dir / "trainer_state.json", dataclasses.asdict(trainer.state))
            # Without the trainer's mixed-precision wrapper: the run's final metrics are then the ones that
            # `framesft evaluate` reproduces from the saved adapter, not a bf16-autocast variant of them.
            final_model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
            classifier = Classifier(config, data.labels, final_model, tokenizer, builder)
            evaluate_and_summarise(result, classifier, data, trainer, show_progress)
        state.wait_for_everyone()
        return result
    except FrameSFTError:
        if main and not resume and not checkpoint_dir.exists():
            # Failed before any training happened (bad data, config or model): leave nothing behind that
            # could pass for a run, and nothing that would need --overwrite next time.
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        finish_tracking()
        if log_handler is not None:
            logging.getLogger().removeHandler(log_handler)
            log_handler.close()


def smaller_batch_config(config: FrameSFTConfig) -> FrameSFTConfig:
    """Half the batch, double the accumulation: the effective batch size stays the same."""
    t = config.training
    if not t.oom_retry or t.batch_size == 1:
        hint = "set training.oom_retry: true" if not t.oom_retry else "lower data.max_length or use QLoRA"
        raise FrameSFTError(f"CUDA out of memory at training.batch_size {t.batch_size}; {hint}")
    retry = config.model_copy(deep=True)
    retry.training.batch_size = t.batch_size // 2
    retry.training.gradient_accumulation_steps = t.gradient_accumulation_steps * 2
    log.warning("CUDA out of memory at batch size %d: retrying from the start with batch size %d and gradient "
                "accumulation %d (effective batch %d unchanged)", t.batch_size, retry.training.batch_size,
                retry.training.gradient_accumulation_steps, t.batch_size * t.gradient_accumulation_steps)
    return retry


def free_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_adapter(model, tokenizer, target: Path) -> None:
    """Adapter (safetensors) + tokenizer, written to a staging folder and renamed: never half-written."""
    import tempfile

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_run_metadata(run_dir: Path, data: RunData, label_column: str) -> None:
    write_json(run_dir / "data_report.json", {"validation_source": data.validation_source,
                                              "reports": [r.to_dict() for r in data.reports]})
    write_json(run_dir / LABEL_MAP_FILE, {"label2id": {l: i for i, l in enumerate(data.labels)},
                                          "id2label": {i: l for i, l in enumerate(data.labels)}})
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    write_json(run_dir / "label_distribution.json", {
        name: {label: int((frame[label_column] == label).sum()) for label in data.labels}
        for name, frame in splits.items() if frame is not None
    })


def lora_model(config: FrameSFTConfig, model_path: str, device: torch.device, labels: list[str], pad_token_id: int):
    if not config.training.use_lora:
        raise RunFolderError("training.use_lora: false is not supported; framesft trains LoRA adapters")
    base = load_base_model(config, model_path, device, for_training=True, labels=labels, pad_token_id=pad_token_id)
    model = attach_lora(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def make_frame_evaluator(config: FrameSFTConfig, tokenizer, builder: PromptBuilder | None, data: RunData, state):
    """Validation metrics from label scoring; with several processes each scores a shard and all gather."""
    text_col, label_col = config.data.text_column, config.data.label_column
    prompts = [encode_input(config, tokenizer, builder, text) for text in data.validation[text_col]]
    labels = data.validation[label_col].tolist()

    def evaluate(model) -> dict:
        scorer = Classifier(config, data.labels, model, tokenizer, builder).scorer()
        mine = list(range(state.process_index, len(prompts), state.num_processes))
        scores = scorer.score_prompts([prompts[i] for i in mine]).scores
        if state.num_processes > 1:
            gathered = [None] * state.num_processes
            torch.distributed.all_gather_object(gathered, (mine, scores))
        else:
            gathered = [(mine, scores)]
        full = np.zeros((len(prompts), len(data.labels)))
        for indices, shard in gathered:
            full[indices] = shard
        predictions = [data.labels[i] for i in full.argmax(axis=1)]
        return classification_metrics(labels, predictions, data.labels)

    return evaluate


def build_trainer(config, model, tokenizer, builder, data, run_dir, checkpoint_dir, state, show_progress):
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import ProgressCallback

    train_examples = encode_frame(config, tokenizer, builder, data)
    report_to = start_tracking(config, run_dir, is_main_process=state.is_main_process)
    graceful_stop = make_graceful_stop()
    callbacks = [graceful_stop]
    if config.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(config, checkpoint_dir, report_to, run_dir, state.device),
        train_dataset=train_examples,
        eval_dataset=train_examples[:1],  # unused: FrameTrainer.evaluate scores the validation set itself
        data_collator=(HeadCollator if config.method == "classification" else AnswerOnlyCollator)(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        frame_evaluator=make_frame_evaluator(config, tokenizer, builder, data, state),
        loss_fn=head_loss if config.method == "classification" else answer_only_loss,
    )
    if not show_progress:
        trainer.remove_callback(ProgressCallback)
    return trainer, graceful_stop


def run_training(trainer, graceful_stop, checkpoint_dir: Path, run_dir: Path, resume: bool) -> float:
    from transformers.trainer_utils import get_last_checkpoint

    last_checkpoint = get_last_checkpoint(str(checkpoint_dir)) if resume and checkpoint_dir.is_dir() else None
    if resume:
        log.info("resuming from %s", last_checkpoint or "the start (no checkpoint saved yet)")
        if last_checkpoint:
            validate_checkpoint(last_checkpoint)
    start = time.perf_counter()
    graceful_stop.install()
    log.info("training started: Ctrl-C or SIGTERM saves a checkpoint after the current step and stops")
    try:
        trainer.train(resume_from_checkpoint=last_checkpoint)
    finally:
        graceful_stop.restore()
    if graceful_stop.received:
        raise TrainingInterrupted(
            f"training stopped by {graceful_stop.received} at step {trainer.state.global_step}; a checkpoint "
            f"was saved in {checkpoint_dir}. Continue with: framesft train CONFIG --run-dir {run_dir} --resume"
        )
    return time.perf_counter() - start


def evaluate_and_summarise(result: TrainResult, classifier: Classifier, data: RunData, trainer,
                           show_progress: bool) -> None:
    """Final metrics of the best checkpoint on validation (and test) data, written into the run folder."""
    text_col, label_col = classifier.config.data.text_column, classifier.config.data.label_column
    splits = {"validation": data.validation, **({"test": data.test} if data.test is not None else {})}
    for split, frame in splits.items():
        metrics, predictions = evaluate_frame(classifier, frame[text_col].tolist(), frame[label_col].tolist(),
                                              f"final {split}", show_progress)
        write_evaluation(result.run_dir, split, metrics, predictions)
        result.metrics[split] = metrics
    write_json(result.run_dir / "run_summary.json", {
        "train_seconds": round(result.train_seconds, 1),
        "global_step": result.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "trainable_parameters": result.trainable_parameters,
        "train_examples": len(trainer.train_dataset),
        "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in trainer.train_dataset),
        "processes": trainer.args.world_size,
        "metrics": {split: headline(m) for split, m in result.metrics.items()},
    })
    log_final_metrics(result.metrics)
    render_report(result.run_dir)


def warn_if_config_changed(run_dir: Path, config: FrameSFTConfig) -> None:
    from .config import load_config

    saved = load_config(run_dir / CONFIG_FILE)
    if saved != config:
        log.warning("the config differs from the one this run started with (%s); resuming with the new one",
                    run_dir / CONFIG_FILE)


def load_data_and_prompt(config: FrameSFTConfig, tokenizer) -> tuple[RunData, PromptBuilder | None]:
    """Labels come from the data unless the config fixes them, and the prompt needs the labels."""
    from .rundata import configured_labels

    if config.method == "classification":  # no prompt: the head reads the passage, truncated to max_length
        return load_run_data(config, lambda t: len(tokenizer(t, add_special_tokens=True)["input_ids"]),
                             config.data.max_length), None
    labels = configured_labels(config)
    if labels is None:
        labels = load_run_data(config).labels  # first pass only to learn the label set
    builder = PromptBuilder(tokenizer, labels, config.prompt, config.data.max_length)
    data = load_run_data(config, builder.count_tokens, builder.max_text_tokens)
    return data, builder
