"""Loading base models and tokenizers, attaching LoRA adapters, and loading trained runs.

The same code path takes the embedded CPU default and Mistral-7B on a GPU: the config decides the dtype,
4-bit quantization (QLoRA) and gradient checkpointing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import FrameSFTConfig
from .embedded import embedded_model_path, is_embedded
from .errors import ConfigError

log = logging.getLogger(__name__)


def resolve_model_path(base_model: str) -> str:
    """An embedded model's cached folder, an existing local folder, or a hub id passed through."""
    if is_embedded(base_model):
        return str(embedded_model_path(base_model))
    path = Path(base_model).expanduser()
    looks_like_path = base_model.startswith((".", "/", "~")) or path.exists() or base_model.count("/") > 1
    if looks_like_path:
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.base_model: {base_model!r} is not a model folder (no config.json there); "
                "give a local transformers folder, a hub id such as mistralai/Mistral-7B-v0.1, "
                "or embedded:smollm2-135m-instruct"
            )
        return str(path)
    return base_model


def process_state():
    """accelerate's view of this process (rank, world size, device); CPU processes use gloo under torchrun."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(config: FrameSFTConfig, device: torch.device) -> torch.dtype:
    """Weights dtype: bf16 on GPUs that have it, fp32 on CPU (CPU bf16 is applied as autocast in training)."""
    chosen = config.model.dtype
    if chosen == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[chosen]


def load_tokenizer(model_path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    if trust_remote_code:
        log.warning("trust_remote_code is ON: code shipped with %s will run", model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(config: FrameSFTConfig, model_path: str, device: torch.device, for_training: bool,
                    labels: list[str] | None = None, pad_token_id: int | None = None):
    """The causal LM (method sft) or the same model with a sequence-classification head (method classification)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = dict(dtype=pick_dtype(config, device), trust_remote_code=config.model.trust_remote_code)
    model_class = AutoModelForCausalLM
    if config.method == "classification":
        if labels is None:
            raise ValueError("the classification head needs the label set")
        model_class = AutoModelForSequenceClassification
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)}, pad_token_id=pad_token_id)
    if config.model.attn_implementation:
        kwargs["attn_implementation"] = config.model.attn_implementation
    if config.model.load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(device)
        kwargs["device_map"] = config.hardware.device_map or {"": torch.cuda.current_device()}
    elif config.hardware.device_map and device.type == "cuda":
        kwargs["device_map"] = config.hardware.device_map
    try:
        model = model_class.from_pretrained(model_path, **kwargs)
    except OSError as exc:
        raise ConfigError(f"model.base_model: cannot load {model_path!r}: {exc}") from None
    if "device_map" not in kwargs:
        model.to(device)
    if config.model.load_in_4bit and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.training.gradient_checkpointing
        )
    elif for_training and config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = not for_training
    return model


def four_bit_config(device: torch.device):
    if device.type != "cuda":
        raise ConfigError(
            "model.load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes (pip install 'framesft[gpu]'); "
            "set it to false on CPU"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
    )


def linear_module_names(model) -> set[str]:
    """Leaf names of the model's linear layers (q_proj, up_proj, ...): what LoRA can target."""
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear"):
            names.add(full_name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return names


def attach_lora(model, config: FrameSFTConfig):
    from peft import LoraConfig, get_peft_model

    training = config.training
    available = linear_module_names(model)
    unknown = [m for m in training.lora_target_modules if m not in available]
    if unknown:
        raise ConfigError(
            f"training.lora_target_modules: {unknown} not found in the model; its linear layers are "
            f"{sorted(available)}"
        )
    lora = LoraConfig(
        r=training.lora_r,
        lora_alpha=training.lora_alpha,
        lora_dropout=training.lora_dropout,
        target_modules=list(training.lora_target_modules),
        # SEQ_CLS makes PEFT train the new head ("score") in full and save it with the adapter
        task_type="SEQ_CLS" if config.method == "classification" else "CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, lora)


PICKLE_OVERRIDE = "FRAMESFT_TRUST_PICKLE"


def refuse_pickled_weights(folder: Path) -> None:
    """Weights must be safetensors: a pickle file (.bin/.pt/.pkl weights) can run code when it is loaded."""
    import os

    if (folder / "adapter_model.safetensors").is_file():
        return
    pickled = [p.name for p in folder.glob("*") if p.name in {"adapter_model.bin", "pytorch_model.bin"}
               or p.suffix in {".pkl", ".pickle"}]
    if pickled and os.environ.get(PICKLE_OVERRIDE) == "1":
        log.warning("loading pickle-based weights %s because %s=1", pickled, PICKLE_OVERRIDE)
        return
    raise ConfigError(
        f"{folder}: no adapter_model.safetensors"
        + (f"; found pickle-based weights {pickled}, which framesft refuses to load because unpickling can run "
           f"arbitrary code. Convert them to safetensors, or, only for files you trust, set {PICKLE_OVERRIDE}=1"
           if pickled else "")
    )


def load_adapter(base_model, adapter_dir: Path, trainable: bool = False):
    """Attach a saved LoRA adapter (safetensors only, see refuse_pickled_weights) to a base model."""
    from peft import PeftModel

    refuse_pickled_weights(adapter_dir)
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable,
                                     use_safetensors=(adapter_dir / "adapter_model.safetensors").is_file())
