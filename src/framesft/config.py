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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

EMBEDDED_DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
BUNDLED_SAMPLE_DATA = "framesft:sample_data"

DEFAULT_INSTRUCTION = (
    "Classify the framing of the following passage from a UK parliamentary debate. "
    "Choose exactly one frame from the list."
)


class Section(BaseModel):
    # Unknown keys are errors (typos must not be silently ignored); values are coerced where lossless.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelSection(Section):
    name: str = "smollm2-135m-instruct"
    base_model: str = EMBEDDED_DEFAULT_MODEL
    trust_remote_code: bool = False
    # framesft additions
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    load_in_4bit: bool = False
    attn_implementation: str | None = None


class DataSection(Section):
    data_dir: str = "."
    train_csv: str = "train.csv"
    validation_csv: str | None = None
    test_csv: str | None = None
    text_column: str = "chunk_text"
    label_column: str = "frame_name"
    max_length: int = Field(512, gt=0)
    label2id: dict[str, int] | None = None
    num_labels: int | None = Field(None, gt=1)
    # framesft additions
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 42
    # Paraphrases / overlapping windows: rows sharing this fraction of their 5-word phrases are one group,
    # kept on one side of the validation split and reported; null turns the check off.
    near_duplicate_threshold: float | None = Field(0.3, gt=0, le=1)

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


class TrainingSection(Section):
    use_lora: bool = True
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    num_epochs: float = Field(5, gt=0)
    batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(8, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: float = Field(0.1, ge=0)  # >= 1: steps; < 1: a fraction of all steps
    max_grad_norm: float = Field(1.0, gt=0)
    fp16: bool = False
    bf16: bool = False
    optimizer: str = "adamw_torch"
    lr_scheduler: str = "linear"
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(None, gt=0)  # None: evaluate (and save) once per epoch
    save_steps: int | None = Field(None, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    output_dir: str = "runs/frames-sft"
    checkpoint_dir: str | None = None  # default: <output_dir>/checkpoints
    # framesft additions
    seed: int = 42
    early_stopping_patience: int | None = Field(3, gt=0)
    gradient_checkpointing: bool = False
    max_steps: int | None = Field(None, gt=0)  # cap on optimizer steps, mainly for smoke tests
    oom_retry: bool = False  # on CUDA out-of-memory: retry with half the batch and twice the accumulation

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
    gpu: bool = False
    num_gpus: int = Field(0, ge=0)
    device_map: str | dict[str, Any] | None = None


class EvaluationSection(Section):
    metric: Literal["f1_macro", "f1_micro", "f1_weighted", "accuracy", "precision", "recall"] = "f1_macro"
    batch_size: int = Field(8, gt=0)
    # framesft additions
    token_budget: int = Field(4096, gt=0)  # max (padded) prompt tokens per scoring batch
    length_normalize: bool = False  # divide each label's log-likelihood by its token count


class PromptSection(Section):
    template: Literal["auto", "chat", "plain"] = "auto"
    system_prompt: str | None = None
    instruction: str = DEFAULT_INSTRUCTION
    label_definitions: dict[str, str] = Field(default_factory=dict)


class TrackingSection(Section):
    report_to: list[Literal["wandb", "tensorboard", "none"]] = Field(default_factory=list)
    project: str = "supervised-finetuning-brexit-debates"
    run_name: str = "{model_name}-sft-{learning_rate}"

    @field_validator("report_to", mode="before")
    @classmethod
    def _accept_a_single_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class FrameSFTConfig(Section):
    # sft: the model generates the label (scored per label); classification: a sequence-classification head
    method: Literal["sft", "classification"] = "sft"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)

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
    return validate_config(raw, source=str(path) if path else "defaults")


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
    message = err["msg"]
    if err["type"] == "literal_error":
        message = "must be one of " + message.removeprefix("Input should be ")
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
