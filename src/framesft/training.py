"""Training: fine-tune a LoRA adapter (or, with training.use_lora false, the whole model) on the transformers
Trainer, keep the best checkpoint by a validation metric, evaluate it and write the run folder.

`train()` comes first and outlines a run; the functions after it follow in the order it calls them. What
differs between generative SFT and the classification head (encoding, collator, loss, scorer) comes from the
method (methods/); what we add to the stock Trainer is in `LabelTrainer`:
- the method's loss (generative SFT: cross-entropy on the answer tokens only, with the LM head run at the
  answer positions only);
- validation by label scoring: real classification metrics (`eval_f1_macro`, ...) that drive early stopping
  and best-checkpoint selection.
Works unchanged under `accelerate launch`/`torchrun` (DDP): the trainer shards the training data, validation is
scored in shards and gathered, and only the main process writes files and logs to W&B.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from .calibration import save_temperature
from .config import FrameSFTConfig
from .dataset import RunData, check_run_lengths, load_run_data
from .errors import FrameSFTError, TrainingInterrupted
from .evaluation import evaluate_texts, write_evaluation
from .inference import Classifier, load_classifier, merged_for_scoring
from .methods import Method, build_method
from .metrics import classification_metrics, headline
from .cpu_fused import fused_norms_in_effect, fused_rotary_in_effect, use_fused_norms, use_fused_rotary
from .cpu_lora import fused_lora_in_effect, sparse_dropout_in_effect, use_fused_lora, use_sparse_dropout
from .modeling import count_parameters, load_base_model, load_tokenizer, make_trainable, resolve_model_path
from .precision import (FUSED_LORA, FUSED_NORMS, FUSED_ROTARY, SPARSE_DROPOUT, ComputePlan, check_process_count,
                        onednn_linears_in_effect, process_state, resolve_plan, use_onednn_linears)
from .run_report import render_report
from .runfolder import (CONFIG_FILE, software_versions, SUMMARY_FILE, TRAINER_STATE_FILE, attach_log_file, checkpoint_folder, detach_log_file, prepare_run_folder, read_run_config, save_trained_weights, validate_checkpoint, write_run_metadata)
from .files import write_json, write_text
from .tracking import finish_tracking, log_final_metrics, start_tracking

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    metrics: dict[str, dict] = field(default_factory=dict)  # split -> metrics
    train_seconds: float = 0.0
    trainable_parameters: int = 0
    global_step: int = 0


def train(config: FrameSFTConfig, run_dir: str | Path | None = None, overwrite: bool = False,
          resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Fine-tune, select the best checkpoint by the validation metric, evaluate, and write the run folder."""
    model_path = resolve_model_path(config.model.base_model)  # a model that cannot be loaded stops us here
    state = process_state(config)  # device and rank (hardware.gpu decides CPU or GPU)
    check_process_count(config, state.num_processes)
    main = state.is_main_process
    run_dir = Path(run_dir or config.training.output_dir)
    if main:
        prepare_run_folder(run_dir, overwrite, resume)
    state.wait_for_everyone()
    log_file = attach_log_file(run_dir) if main else None
    preparing = True  # until training starts, a failure removes the run folder it created
    try:
        set_seed(config.training.seed)
        if main:
            if resume:
                warn_if_config_changed(run_dir, config)
            write_text(run_dir / CONFIG_FILE, config.to_yaml())
        log.info("processes: %d (device %s)", state.num_processes, state.device)
        plan = resolve_plan(config, state.device)  # dtypes, autocast, fused CPU ops: decided once, here
        log.info(plan.line())

        # 1. tokenizer, data and method: everything that bad input can break, before any training
        tokenizer = load_tokenizer(model_path, config.model.trust_remote_code)
        data = load_run_data(config)
        method = build_method(config, tokenizer, data.labels)
        check_run_lengths(data, config.data.text_column, method.count_tokens, method.max_text_tokens)
        if main:
            write_run_metadata(run_dir, data, config.data.label_column)

        # 2. model with LoRA (or fully trainable), and the trainer
        def build(config: FrameSFTConfig) -> LabelTrainer:
            model = trainable_model(config, model_path, method, data.labels, plan)
            return build_trainer(config, model, method, data, run_dir, state, plan, show_progress)

        trainer = build(config)

        # 3. training (from the last checkpoint with --resume), best checkpoint loaded at the end
        preparing = False
        trainer, train_seconds, config = train_with_oom_retry(trainer, build, config, run_dir, resume)

        # 4. adapter (or model), final metrics, summary and report
        result = TrainResult(run_dir, data.labels, train_seconds=train_seconds,
                             trainable_parameters=count_parameters(trainer.model)[0],
                             global_step=trainer.state.global_step)
        if main:
            save_trained_weights(trainer.model, tokenizer, run_dir)
            write_json(run_dir / TRAINER_STATE_FILE, dataclasses.asdict(trainer.state))
            # Without the trainer's mixed-precision wrapper: the run's final metrics are then the ones that
            # `framesft evaluate` reproduces from the saved adapter, not a bf16-autocast variant of them.
            classifier = final_classifier(trainer, config, data.labels, method, run_dir, plan)
            evaluate_and_summarise(result, classifier, data, trainer, plan, show_progress)
        state.wait_for_everyone()
        return result
    except BaseException:
        if main and preparing and not resume:
            # Failed before training started (bad data, config or model, or Ctrl-C while loading): leave nothing
            # that could pass for a run, and nothing that would need --overwrite next time.
            detach_log_file(log_file)
            log_file = None
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        finish_tracking()
        detach_log_file(log_file)


def final_classifier(trainer: LabelTrainer, config: FrameSFTConfig, labels: list[str], method: Method,
                     run_dir: Path, plan: ComputePlan) -> Classifier:
    """The trained model as `framesft evaluate` will load it, so that the run's final metrics are the ones the
    saved adapter reproduces: merged, without the trainer's mixed-precision wrapper, and reloaded from the run
    folder where scoring uses other base weights than training did (bf16 for training, fp32 for scoring on CPU)."""
    if plan.reloads_for_scoring:
        return load_classifier(run_dir, plan.torch_device)
    final_model = merged_for_scoring(trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False))
    if plan.onednn_linears:  # as load_classifier scores
        use_onednn_linears(final_model)
        log.info("scoring: oneDNN linear layers %d/%d", *onednn_linears_in_effect(final_model))
    return Classifier(config, labels, final_model, method.tokenizer, method)


def warn_if_config_changed(run_dir: Path, config: FrameSFTConfig) -> None:
    if read_run_config(run_dir) != config:
        log.warning("the config differs from the one this run started with (%s); resuming with the new one",
                    run_dir / CONFIG_FILE)


# ------------------------------------------------------------------------------------------ model and trainer


def trainable_model(config: FrameSFTConfig, model_path: str, method: Method, labels: list[str],
                    plan: ComputePlan):
    base = load_base_model(config, model_path, plan, for_training=True, labels=labels,
                           pad_token_id=method.tokenizer.pad_token_id)
    model = make_trainable(base, config)
    install_fused_cpu_ops(model, plan)
    trainable, total = count_parameters(model)
    log.info("%s: %s trainable of %s parameters (%.2f%%)", "LoRA" if config.training.use_lora else "full fine-tuning",
             f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


# cpu_lora.py, cpu_fused.py: on CPU dropout's draws and memory-bound passes dominate a step. Each operation: how
# to install it, and how to read off the model what it routes now (routed, present).
FUSED_CPU_OPS = {SPARSE_DROPOUT: (use_sparse_dropout, sparse_dropout_in_effect),
                 FUSED_LORA: (use_fused_lora, fused_lora_in_effect),
                 FUSED_NORMS: (use_fused_norms, fused_norms_in_effect),
                 FUSED_ROTARY: (use_fused_rotary, fused_rotary_in_effect)}
WHAT_EACH_OP_ROUTES = {SPARSE_DROPOUT: "LoRA dropouts", FUSED_LORA: "LoRA linear layers",
                       FUSED_NORMS: "RMSNorm modules", FUSED_ROTARY: "modeling modules' rotary embeddings"}


def install_fused_cpu_ops(model, plan: ComputePlan) -> dict[str, dict[str, int]]:
    """The plan's fused CPU operations, installed on the model; then what each routes, read off the model."""
    for name in plan.fused_cpu_ops:
        FUSED_CPU_OPS[name][0](model)
    return check_fused_cpu_ops(model, plan, "installed")


def fused_cpu_ops_in_effect(model, plan: ComputePlan) -> dict[str, dict[str, int]]:
    """For each planned operation, how many modules it routes now and how many the model has."""
    counts = {}
    for name in plan.fused_cpu_ops:
        routed, present = FUSED_CPU_OPS[name][1](model)
        counts[name] = {"routed": routed, "present": present}
    return counts


def check_fused_cpu_ops(model, plan: ComputePlan, when: str) -> dict[str, dict[str, int]]:
    """Log what the planned operations route, and warn in one line for each that routes fewer modules than the
    model has: the plan's line then names an operation that is not (wholly) in effect, and the step is slower."""
    import transformers

    counts = fused_cpu_ops_in_effect(model, plan)
    if counts:
        log.info("fused CPU ops %s: %s", when, ", ".join(f"{name} {c['routed']}/{c['present']}"
                                                          for name, c in counts.items()))
    for name, c in counts.items():
        if c["routed"] < c["present"] or not c["present"]:
            log.warning("%s was planned but routes %d of %d %s %s (transformers %s): those run the library's own "
                        "code", name, c["routed"], c["present"], WHAT_EACH_OP_ROUTES[name], when,
                        transformers.__version__)
    return counts


class FusedOpsCheck(TrainerCallback):
    """What the fused CPU operations route when the first training step starts: after the Trainer has put the
    model in training mode, where a library that resets layers' forwards (transformers' Hub kernels do, on every
    train()) would have undone them since they were installed."""

    def __init__(self, plan: ComputePlan):
        self.plan = plan
        self.at_first_step: dict[str, dict[str, int]] | None = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.at_first_step is None and model is not None and self.plan.fused_cpu_ops:
            self.at_first_step = check_fused_cpu_ops(model, self.plan, "at the first training step")
        return control


def build_trainer(config: FrameSFTConfig, model, method: Method, data: RunData, run_dir: Path, state,
                  plan: ComputePlan, show_progress: bool) -> LabelTrainer:
    text_column, label_column = config.data.text_column, config.data.label_column
    train_examples = [method.encode_example(text, label)
                      for text, label in zip(data.train[text_column], data.train[label_column])]
    report_to = start_tracking(config, run_dir, is_main_process=state.is_main_process)
    callbacks: list[TrainerCallback] = [GracefulStop(), FusedOpsCheck(plan)]
    if config.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    trainer = LabelTrainer(
        model=model,
        args=training_arguments(config, checkpoint_folder(config, run_dir), report_to, plan),
        train_dataset=train_examples,
        eval_dataset=train_examples[:1],  # unused: LabelTrainer.evaluate scores the validation set itself
        data_collator=method.collator(),
        processing_class=method.tokenizer,
        callbacks=callbacks,
        method=method,
        validate=ShardedValidation(method, data, config, state),
    )
    if not show_progress:
        trainer.remove_callback(ProgressCallback)
    return trainer


def training_arguments(config: FrameSFTConfig, checkpoint_dir: Path, report_to: list[str],
                       plan: ComputePlan) -> TrainingArguments:
    t = config.training
    per_epoch = t.eval_steps is None
    if t.fp16 and not plan.on_gpu:
        raise FrameSFTError("training.fp16 needs a CUDA GPU; on CPU set it to false (training.bf16 uses native "
                            "bf16 where the CPU has it)")
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
        neftune_noise_alpha=t.neftune_noise_alpha,  # transformers' hook: training forward passes only
        optim=t.optimizer,
        logging_steps=t.logging_steps,
        # A checkpoint at every evaluation, so the best one can be kept (training.save_steps has no say).
        eval_strategy="epoch" if per_epoch else "steps",
        eval_steps=None if per_epoch else t.eval_steps,
        save_strategy="epoch" if per_epoch else "steps",
        save_steps=None if per_epoch else t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=config.evaluation.metric,
        greater_is_better=True,
        bf16=plan.autocast == "bf16",
        fp16=plan.autocast == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        report_to=report_to or "none",
        run_name=config.run_name(),
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        use_cpu=not plan.on_gpu,
    )


class LabelTrainer(Trainer):
    """The transformers Trainer with the method's loss and validation by label scoring."""

    # compute_loss returns a per-micro-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, method: Method, validate: Callable[[torch.nn.Module], dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        self.validate = validate

    def _issue_warnings_after_load(self, load_result) -> None:
        # Reloading the best checkpoint of a fully fine-tuned model with tied weights (Gemma, SmolLM2): the LM head
        # is saved once, under the embedding's name, so its own key counts as missing although the shared tensor
        # was loaded. Only real gaps are worth a warning.
        tied = tied_parameter_aliases(self.model)
        super()._issue_warnings_after_load(
            load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in tied]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.method.loss(model, inputs)
        return (loss, None) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        start = time.perf_counter()
        label_metrics = self.validate(self.model)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in headline(label_metrics).items()}
        metrics[f"{metric_key_prefix}_samples"] = label_metrics["n"]
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 2)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def tied_parameter_aliases(model) -> set[str]:
    """Names under which a parameter appears a second time (an LM head tied to the token embeddings)."""
    return ({name for name, _ in model.named_parameters(remove_duplicate=False)}
            - {name for name, _ in model.named_parameters()})


class ShardedValidation:
    """Validation metrics from label scoring; with several processes each scores a shard and all gather."""

    def __init__(self, method: Method, data: RunData, config: FrameSFTConfig, state):
        self.method = method
        self.labels = data.labels
        self.inputs = [method.encode_input(text) for text in data.validation[config.data.text_column]]
        self.truth = data.validation[config.data.label_column].tolist()
        self.state = state

    def __call__(self, model) -> dict:
        rank, world = self.state.process_index, self.state.num_processes
        mine = list(range(rank, len(self.inputs), world))
        scores = self.method.scorer(model).score_prompts([self.inputs[i] for i in mine]).scores
        gathered = [(mine, scores)]
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, (mine, scores))
        full = np.zeros((len(self.inputs), len(self.labels)))
        for indices, shard in gathered:
            full[indices] = shard
        predictions = [self.labels[i] for i in full.argmax(axis=1)]
        return classification_metrics(self.truth, predictions, self.labels)


class GracefulStop(TrainerCallback):
    """Turns SIGINT/SIGTERM into "save a checkpoint after this step, then stop".

    A second signal stops at once (the last saved checkpoint is still there to resume from).
    """

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


# ------------------------------------------------------------------------------------------ training


def train_with_oom_retry(trainer: LabelTrainer, build: Callable[[FrameSFTConfig], LabelTrainer],
                         config: FrameSFTConfig, run_dir: Path, resume: bool):
    """Train; on CUDA out-of-memory (with training.oom_retry) start again with half the batch and twice the
    accumulation. Returns the trainer that finished, the training seconds and the config it really used."""
    while True:
        try:
            return trainer, run_training(trainer, checkpoint_folder(config, run_dir), run_dir, resume), config
        except torch.cuda.OutOfMemoryError:
            config = smaller_batch_config(config)  # raises when retrying is off or impossible
            if trainer.is_world_process_zero():
                write_text(run_dir / CONFIG_FILE, config.to_yaml())  # the config the run really used
            del trainer
            free_accelerator_memory()
            trainer = build(config)


def run_training(trainer: LabelTrainer, checkpoint_dir: Path, run_dir: Path, resume: bool) -> float:
    last_checkpoint = get_last_checkpoint(str(checkpoint_dir)) if resume and checkpoint_dir.is_dir() else None
    if resume:
        log.info("resuming from %s", last_checkpoint or "the start (no checkpoint saved yet)")
        if last_checkpoint:
            validate_checkpoint(last_checkpoint)
    graceful_stop = next(c for c in trainer.callback_handler.callbacks if isinstance(c, GracefulStop))
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
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ results


def evaluate_and_summarise(result: TrainResult, classifier: Classifier, data: RunData, trainer: LabelTrainer,
                           plan: ComputePlan, show_progress: bool) -> None:
    """Final metrics of the best checkpoint on validation (and test) data, written into the run folder."""
    text_col, label_col = classifier.config.data.text_column, classifier.config.data.label_column
    splits = {"validation": data.validation, **({"test": data.test} if data.test is not None else {})}
    not_fitted = None
    for split, table in splits.items():
        # The temperature is fitted on the validation split and then applied to the test split as it is.
        metrics, predictions = evaluate_texts(classifier, table[text_col].tolist(), table[label_col].tolist(),
                                              f"final {split}", show_progress, calibrate=split == "validation")
        if split == "validation":
            classifier.temperature = metrics["calibration"]["temperature"]  # the test split is scored with it
            not_fitted = metrics["calibration"].get("not_fitted")
            save_temperature(result.run_dir, classifier.temperature, "validation split", len(table),
                             metrics["calibration"], not_fitted)
        elif not_fitted:
            metrics["calibration"]["not_fitted"] = not_fitted
        write_evaluation(result.run_dir, split, metrics, predictions)
        result.metrics[split] = metrics
    write_json(result.run_dir / SUMMARY_FILE, {
        "train_seconds": round(result.train_seconds, 1),
        "global_step": result.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "trainable_parameters": result.trainable_parameters,
        "train_examples": len(trainer.train_dataset),
        "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in trainer.train_dataset),
        "processes": trainer.args.world_size,
        "compute_plan": plan.to_dict(),
        # what the planned fused CPU operations routed at the first step ({} when none were planned)
        "fused_cpu_ops_routed": next((c.at_first_step for c in trainer.callback_handler.callbacks
                                      if isinstance(c, FusedOpsCheck)), None) or {},
        "software": software_versions(classifier.config.model.base_model),
        "metrics": {split: headline(m) for split, m in result.metrics.items()},
    })
    log_final_metrics(result.metrics)
    render_report(result.run_dir)
