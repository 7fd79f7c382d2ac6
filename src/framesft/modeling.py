"""Base models and tokenizers, LoRA adapters or full fine-tuning.

The same code path takes the embedded CPU default and Mistral-7B on a GPU: the compute plan (precision.py)
decides the device and the dtype, the config 4-bit quantization (QLoRA) and gradient checkpointing; the method
(methods/) decides the model class and what PEFT trains besides LoRA.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import FrameSFTConfig
from .embedded import embedded_model_path, is_embedded
from .errors import ConfigError
from .files import refuse_pickled_weights
from .methods import method_class
from .precision import ComputePlan, settle_cpu_math_kernels

log = logging.getLogger(__name__)


def resolve_model_path(base_model: str) -> str:
    """An embedded model's cached folder, an existing local folder, or a hub id that can be loaded here (it is
    in the local Hugging Face cache, or the hub can be reached)."""
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
    check_hub_model_available(base_model)
    return base_model


def check_hub_model_available(repo_id: str) -> None:
    """Fail early, before any run folder exists, when a hub model is neither cached nor downloadable."""
    import os

    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        reason = hub_unreachable_reason(repo_id)
        if reason is None:
            return
    cache = constants.HF_HUB_CACHE
    raise ConfigError(
        f"model.base_model: {repo_id!r} is not in the local Hugging Face cache ({cache}) and cannot be downloaded "
        f"({reason}). Either download it on a machine with network access into the cache that HF_HOME points to "
        f"(e.g. `HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')} hf download {repo_id}`, then use the "
        "same HF_HOME here), or set model.base_model to a local folder holding the model (config.json, weights, "
        "tokenizer)"
    )


def hub_unreachable_reason(repo_id: str) -> str | None:
    """None when the hub answers for this model; otherwise why it cannot be downloaded."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
        return None
    except GatedRepoError:
        return None  # reachable; the download itself says how to accept the licence / log in
    except RepositoryNotFoundError:
        return "the hub has no such model, or it is private: check the id, or log in with `hf auth login`"
    except Exception as exc:  # noqa: BLE001 - any network failure means: not reachable from here
        return f"the hub is not reachable: {type(exc).__name__}"


def load_tokenizer(model_path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    if trust_remote_code:
        log.warning("trust_remote_code is ON: code shipped with %s will run", model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"model.base_model: cannot load the tokenizer of {model_path!r}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(config: FrameSFTConfig, model_path: str, plan: ComputePlan, for_training: bool,
                    labels: list[str] | None = None, pad_token_id: int | None = None):
    """The base model in the class the method trains (causal LM, or with a sequence-classification head), on the
    plan's device in the plan's training or scoring dtype."""
    settle_cpu_math_kernels()
    device = plan.torch_device
    method = method_class(config.method)
    # use_kernels=False: from 5.25, with the `kernels` package (now a dependency), transformers "kernelizes" a model
    # by default and again on every train()/eval(), resetting the forward of each layer it knows (RMSNorm among
    # them) to its own choice: that undid the fused CPU norms, and its kernels come from the Hub at run time.
    kwargs = dict(dtype=plan.weights_dtype(for_training), trust_remote_code=config.model.trust_remote_code,
                  use_kernels=False, **method.model_kwargs(labels, pad_token_id))
    if config.model.attn_implementation:
        kwargs["attn_implementation"] = config.model.attn_implementation
    if config.model.load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(device)
        kwargs["device_map"] = config.hardware.device_map or {"": torch.cuda.current_device()}
    elif config.hardware.device_map and device.type == "cuda":
        kwargs["device_map"] = config.hardware.device_map
    try:
        model = method.model_class().from_pretrained(model_path, **kwargs)
    except OSError as exc:
        raise ConfigError(f"model.base_model: cannot load {model_path!r}: {exc}") from None
    if "device_map" not in kwargs:
        model.to(device)
    if config.model.load_in_4bit and for_training:
        from peft import prepare_model_for_kbit_training

        # Checkpointing is switched on below, the same way as without 4-bit weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if for_training and config.training.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                              every_n_layers=config.training.checkpoint_every_n_layers)
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


def make_trainable(model, config: FrameSFTConfig):
    """What training.use_lora asks for: LoRA adapters on the frozen model, or (full fine-tuning) the model's own
    weights trainable."""
    return attach_lora(model, config) if config.training.use_lora else unfreeze_for_full_finetuning(model)


def unfreeze_for_full_finetuning(model):
    """Every weight trainable except the input token embeddings, and with them an LM head tied to them (Gemma,
    SmolLM2). A prompt's tokens are all known words, and the embedding table is most of a small model (Gemma 3
    270M: 168M of its 268M parameters, a 262,144-token vocabulary): training it would more than double the
    optimizer's memory and step time to move rows that the answer tokens barely touch."""
    model.requires_grad_(True)
    model.get_input_embeddings().requires_grad_(False)
    trainable, _ = count_parameters(model)
    log.info("full fine-tuning: about %.1f GB for the trained weights, their gradients and AdamW's two moments "
             "(16 bytes per trained parameter, activations not included)", trainable * 16 / 1e9)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, each shared (tied) tensor counted once; for a LoRA model as PEFT counts."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def attach_lora(model, config: FrameSFTConfig):
    """New LoRA adapters as training.lora_* describe them, or (training.init_adapter) a saved adapter to train
    further."""
    from peft import LoraConfig, get_peft_model

    training = config.training
    if training.init_adapter:
        return continue_adapter(model, Path(training.init_adapter))
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
        task_type=method_class(config.method).peft_task_type,
        bias="none",
    )
    return get_peft_model(model, lora)


def continue_adapter(model, path: Path):
    """A saved adapter, trainable: a run folder's adapter/ or an adapter folder itself (safetensors only)."""
    from peft import PeftModel

    folder = path / "adapter" if (path / "adapter").is_dir() else path
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"training.init_adapter: {path} holds no adapter (no adapter_config.json in it or in its "
                          "adapter/ folder); give a run folder that `framesft train` wrote")
    refuse_pickled_weights(folder)
    log.info("training continues from the adapter in %s", folder)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True, use_safetensors=True)


def load_adapter(base_model, adapter_dir: Path):
    """Attach a saved LoRA adapter (safetensors only, see refuse_pickled_weights) to a base model, for inference."""
    from peft import PeftModel

    refuse_pickled_weights(adapter_dir)
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=False,
                                     use_safetensors=(adapter_dir / "adapter_model.safetensors").is_file())
