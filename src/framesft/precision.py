"""How a process computes: device, weight dtypes, mixed precision and the CPU training operations framesft fuses,
decided once per process (`resolve_plan`), logged in one line, stored in run_summary.json and passed down.

On a GPU the config decides. On a CPU the machine does too, and CPUs differ a lot: with AMX a bf16 matmul runs
several times faster than fp32; with AVX512-BF16 alone it runs at about half the fp32 rate on the Intel Xeons
this was tuned on but 4.5 times faster on an AMD Zen 5 EPYC (989 vs 219 GFLOP/s on 2 cores); without either bf16
is emulated. So where the CPU has native bf16 the plan measures both rates (`cpu_matmul_rates`): the flags
alone cannot tell. fp32 scoring has two routes for its linear layers: ATen's default (Intel MKL's BLAS) and
oneDNN's own fp32 kernels, which give fp32 results too; on the AMD Zen 5 EPYC MKL runs AVX2-class code and
oneDNN ran 2.1-2.4x faster on every layer shape of the embedded models (benchmarks/fp32_linear_routes.py,
2026-12-01), so the plan measures both as well
(`cpu_fp32_linear_rates`). Tests pin the plan they depend on (model.dtype, evaluation keys, or patched rates), so
the suite takes the same paths on every CPU.
"""

from __future__ import annotations

import functools
import logging
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import FrameSFTConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

# bf16 must beat fp32 by this much in the matmul probe before CPU training holds its frozen weights in bf16.
BF16_MIN_SPEEDUP = 1.2
# oneDNN's fp32 linear layer must beat ATen's by this much in its probe before fp32 scoring routes through it.
ONEDNN_MIN_SPEEDUP = 1.2
# ...and agree with it to this relative error: a true fp32 result (bf16-rounded inputs would differ by about 4e-3),
# so a oneDNN build that rounded fp32 inputs to bf16 on some CPU would never be taken for fp32.
FP32_AGREEMENT = 1e-5
# The bf16 margin cascade scores where a bf16 matmul measures at least this many times faster than the fp32
# route scoring would use. A cascade passage costs 1/k + s of an fp32 one (k: bf16's speed-up on whole scoring
# calls, about 0.55-0.75 of the matmul ratio measured on Zen 5; s: the share rescored, 0.3-0.5 on real passages),
# so it pays from a matmul ratio of about 3: AMX (3.8 against MKL) does; Zen 5 against oneDNN's fp32 (about 2)
# does not, against MKL (4.3) it did.
CASCADE_MIN_SPEEDUP = 3.0

# The operations of cpu_lora.py and cpu_fused.py that CPU training installs, by name.
SPARSE_DROPOUT, FUSED_LORA, FUSED_NORMS, FUSED_ROTARY = "sparse_dropout", "fused_lora", "fused_norms", "fused_rotary"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------ the device


def use_gpu(config: FrameSFTConfig | None) -> bool:
    """hardware.gpu: true requires a CUDA GPU, false keeps to the CPU, null takes a GPU when there is one."""
    available = torch.cuda.is_available()
    wanted = None if config is None else config.hardware.gpu
    if wanted and not available:
        raise ConfigError("hardware.gpu is true but PyTorch sees no CUDA GPU here (a CPU-only torch build, or "
                          "CUDA_VISIBLE_DEVICES hides them); set hardware.gpu: false (or null) to run on the CPU")
    return available if wanted is None else wanted


def pick_device(config: FrameSFTConfig | None = None) -> torch.device:
    return torch.device("cuda" if use_gpu(config) else "cpu")


def process_state(config: FrameSFTConfig | None = None):
    """accelerate's view of this process (rank, world size, device); CPU processes use gloo under torchrun."""
    from accelerate import PartialState

    return PartialState(cpu=not use_gpu(config))


def check_process_count(config: FrameSFTConfig, num_processes: int) -> None:
    """hardware.num_gpus: the run must have one process per GPU, as many as the config says."""
    wanted = config.hardware.num_gpus
    if wanted and wanted != num_processes:
        raise ConfigError(
            f"hardware.num_gpus is {wanted} but this run has {num_processes} process(es); start it with "
            f"`accelerate launch --num_processes {wanted} -m framesft.cli train ...` or `torchrun --nproc_per_node "
            f"{wanted} -m framesft.cli train ...`, or set hardware.num_gpus to {num_processes} (or null)"
        )


# ------------------------------------------------------------------------------------------ the CPU


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_model_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown")


def cpu_supports_bf16() -> bool:
    """Native bf16 instructions (AVX512-BF16 or AMX); without them torch emulates bf16 arithmetic."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def measure_matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 3) -> float:
    """One measurement of this CPU's matmul rate for one dtype, in GFLOP/s (about 25 ms in fp32)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    a @ b  # warm-up: kernel selection and first-touch allocation
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


@functools.cache
def cpu_matmul_rates() -> dict[torch.dtype, float]:
    """This CPU's matmul rates in bf16 and fp32: for each, the best of three measurements taken in turns with the
    other (about 150 ms, once per process). Best-of and in turns, because a single measurement can be caught by a
    passing slowdown of the machine (one once chose bf16 at 0.6x the speed)."""
    rates = {torch.bfloat16: 0.0, torch.float32: 0.0}
    for _ in range(3):
        for dtype in rates:
            rates[dtype] = max(rates[dtype], measure_matmul_gflops(dtype))
    return rates


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear through oneDNN's own kernels (the operation torch's compiler emits for CPU linear layers)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def measure_linear_gflops(route: str, size: int = 1024, repeats: int = 3) -> float:
    """One measurement of an fp32 linear layer's rate through ATen ("aten") or oneDNN ("onednn"), in GFLOP/s;
    0 where oneDNN is unavailable or its result is not an fp32 one (FP32_AGREEMENT against ATen)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, size, generator=generator)
    weight = torch.randn(size, size, generator=generator)
    linear = torch.nn.functional.linear if route == "aten" else onednn_linear
    try:
        result = linear(x, weight)  # warm-up: kernel selection and first-touch allocation
    except (RuntimeError, AttributeError):  # a torch built without oneDNN
        return 0.0
    if route != "aten":
        reference = torch.nn.functional.linear(x, weight)
        if (result - reference).abs().max() > FP32_AGREEMENT * reference.abs().max():
            return 0.0
    start = time.perf_counter()
    for _ in range(repeats):
        linear(x, weight)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


@functools.cache
def cpu_fp32_linear_rates() -> dict[str, float]:
    """This CPU's fp32 linear-layer rates through ATen and through oneDNN: the best of three measurements taken in
    turns (about 100 ms, once per process), as cpu_matmul_rates does."""
    rates = {"aten": 0.0, "onednn": 0.0}
    for _ in range(3):
        for route in rates:
            rates[route] = max(rates[route], measure_linear_gflops(route))
    return rates


def _onednn_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward through oneDNN where it computes the same thing: fp32 input and weights on the CPU,
    nothing to differentiate (the oneDNN operation has no backward pass); otherwise the stock forward."""
    if (x.dtype == self.weight.dtype == torch.float32 and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
        return onednn_linear(x, self.weight, self.bias)
    return torch.nn.functional.linear(x, self.weight, self.bias)


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Route every nn.Linear of a scoring model through oneDNN (the plan's onednn_linears); returns how many.
    The weights stay where they are (tied ones stay tied): only each layer's forward changes."""
    layers = [module for module in model.modules() if type(module) is torch.nn.Linear]
    for layer in layers:
        layer.forward = types.MethodType(_onednn_linear_forward, layer)
    return len(layers)


def onednn_linears_in_effect(model: torch.nn.Module) -> tuple[int, int]:
    """(routed, present): nn.Linear layers whose forward goes through oneDNN now, and all nn.Linear layers."""
    layers = [module for module in model.modules() if type(module) is torch.nn.Linear]
    return (sum(getattr(l.__dict__.get("forward"), "__func__", None) is _onednn_linear_forward for l in layers),
            len(layers))


def cpu_prefers_onednn_fp32() -> bool:
    """Whether fp32 scoring should route its linear layers through oneDNN: measured ONEDNN_MIN_SPEEDUP times
    faster than ATen's BLAS, with fp32 results (AMD EPYCs; on Intel CPUs MKL is oneDNN's match)."""
    rates = cpu_fp32_linear_rates()
    return rates["onednn"] >= ONEDNN_MIN_SPEEDUP * rates["aten"]


def cpu_prefers_bf16() -> bool:
    """Whether frozen weights should be held in bf16 for CPU training: the CPU has native bf16 and a bf16 matmul
    measures at least BF16_MIN_SPEEDUP times faster than fp32 (AMX; AMD Zen 5; not the Xeons with AVX512-BF16
    alone)."""
    if not cpu_supports_bf16():
        return False
    rates = cpu_matmul_rates()
    return rates[torch.bfloat16] >= BF16_MIN_SPEEDUP * rates[torch.float32]


@dataclass(frozen=True)
class CpuFacts:
    """Which CPU a plan (and a benchmark figure) comes from: figures from AMX and other CPUs are never mixed up."""

    model: str
    amx_bf16: bool
    avx512_bf16: bool
    fp32_gflops: float | None = None  # measured only where the choice depends on it
    bf16_gflops: float | None = None
    fp32_linear_gflops: dict[str, float] | None = None  # an fp32 linear layer through ATen and through oneDNN

    @property
    def kind(self) -> str:
        return "AMX" if self.amx_bf16 else ("AVX512-BF16" if self.avx512_bf16 else "no native bf16")


def cpu_facts(measured: bool, linear_routes: bool = False) -> CpuFacts:
    """The CPU's model and flags; measured: its bf16 and fp32 matmul rates; linear_routes: oneDNN's fp32 rate."""
    flags = cpu_flags()
    rates = cpu_matmul_rates() if measured else {}
    routes = {route: round(rate, 1) for route, rate in cpu_fp32_linear_rates().items()} if linear_routes else None
    return CpuFacts(cpu_model_name(), "amx_bf16" in flags, "avx512_bf16" in flags,
                    round(rates[torch.float32], 1) if rates else None,
                    round(rates[torch.bfloat16], 1) if rates else None, routes)


# Elementwise ops that PyTorch hands to Intel MKL's vector math library (VML) for float32/float64 CPU tensors
# (ATen/cpu/vml.h).
MKL_VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
               "tan", "tanh", "trunc")


@functools.cache
def settle_cpu_math_kernels() -> None:
    """Call each MKL VML op once on one element, before any real work in this process.

    oneMKL picks a VML function's kernel on its first call; when that first call runs on several intra-op threads
    at once, one thread can run a low-accuracy kernel over its chunk (pytorch/pytorch#188792), so the same batch
    could score differently in two processes. A one-element call runs in the calling thread only, so the choice is
    made before threads can race."""
    for name in MKL_VML_OPS:
        for dtype in (torch.float32, torch.float64):
            getattr(torch, name)(torch.full((1,), 0.5, dtype=dtype))


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class ComputePlan:
    """Everything that decides how this process computes; see resolve_plan."""

    device: str                       # "cpu", or "cuda:N" (this process's GPU)
    training_weights: str             # dtype of the frozen base weights while training ("float32", "bfloat16", ...)
    scoring_weights: str              # dtype of the base weights for scoring (evaluate, predict, final metrics)
    scoring_cascade: bool             # score in bf16 first, fp32 where the margin is close (cascade.py)
    onednn_linears: bool              # fp32 scoring's linear layers through oneDNN's fp32 kernels (use_onednn_linears)
    autocast: str | None              # mixed precision the trainer runs under: "bf16", "fp16" or None
    fused_cpu_ops: tuple[str, ...]    # framesft's CPU training operations installed (cpu_lora.py, cpu_fused.py)
    cpu: CpuFacts | None              # None on a GPU
    reason: str                       # why these dtypes

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def on_gpu(self) -> bool:
        return self.torch_device.type == "cuda"

    def weights_dtype(self, for_training: bool) -> torch.dtype:
        return DTYPES[self.training_weights if for_training else self.scoring_weights]

    @property
    def reloads_for_scoring(self) -> bool:
        """Training and scoring hold the base weights in different dtypes: the final metrics come from the run
        reloaded as `framesft evaluate` loads it."""
        return self.training_weights != self.scoring_weights

    def line(self) -> str:
        fused = ", ".join(self.fused_cpu_ops) or "none"
        ways = [way for way, used in (("oneDNN linear layers", self.onednn_linears),
                                      ("bf16 margin cascade", self.scoring_cascade)) if used]
        scoring = self.scoring_weights + (f" ({', '.join(ways)})" if ways else "")
        text = (f"compute plan: {self.device}; training weights {self.training_weights}, autocast "
                f"{self.autocast or 'off'}, fused CPU ops: {fused}; scoring weights {scoring} ({self.reason})")
        if self.cpu is not None:
            rates = (f", matmul fp32 {self.cpu.fp32_gflops:.0f} / bf16 {self.cpu.bf16_gflops:.0f} GFLOP/s"
                     if self.cpu.fp32_gflops else "")
            routes = self.cpu.fp32_linear_gflops
            if routes:
                rates += f", fp32 linear ATen {routes['aten']:.0f} / oneDNN {routes['onednn']:.0f} GFLOP/s"
            text += f"; CPU {self.cpu.model} ({self.cpu.kind}{rates})"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "fused_cpu_ops": list(self.fused_cpu_ops), "line": self.line()}


def resolve_plan(config: FrameSFTConfig, device: torch.device | None = None) -> ComputePlan:
    """The one place that decides device, weight dtypes, autocast, fused CPU operations and the scoring routes for a
    config.

    model.dtype auto: on a GPU bf16 where supported, else fp16. On a CPU fp32 for scoring on every CPU (bf16
    weights changed a few percent of predictions, short of the agreement we ask of a default; its linear layers
    through oneDNN where that measures faster, see onednn_linears; where bf16 is much faster still the bf16 margin
    cascade keeps fp32's labels at close to bf16 speed, see scoring_cascade), and for training
    bf16 only where cpu_prefers_bf16() (AMX); the LoRA weights stay fp32 either way. An explicit model.dtype is
    obeyed for both. Autocast on a CPU only over bf16 weights (over fp32 weights it would cast every frozen weight
    at every step). The fused norms and rotary run in float32 and bfloat16, with or without autocast; the fused LoRA
    layer in float32 and under bf16 autocast over bf16 weights; the sparse dropout everywhere."""
    device = device or pick_device(config)
    chosen = config.model.dtype
    training_cfg = config.training
    full = not training_cfg.use_lora  # full fine-tuning: the weights train, so they stay fp32 (config refuses half)
    if device.type == "cuda":
        auto = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        weights = auto if chosen == "auto" else chosen
        autocast = "bf16" if training_cfg.bf16 else ("fp16" if training_cfg.fp16 else None)
        reason = "model.dtype auto on a GPU" if chosen == "auto" else f"model.dtype {chosen}"
        return ComputePlan(str(device), training_weights="float32" if full else weights, scoring_weights=weights,
                           scoring_cascade=False, onednn_linears=False, autocast=autocast, fused_cpu_ops=(),
                           cpu=None,
                           reason=reason + ("; full fine-tuning trains fp32 weights" if full else ""))

    measured = chosen == "auto" and cpu_supports_bf16()
    if chosen != "auto":
        training, scoring, reason = chosen, chosen, f"model.dtype {chosen}"
        if chosen == "bfloat16" and not cpu_supports_bf16():
            reason += ", emulated: this CPU has no native bf16"
    elif cpu_prefers_bf16():
        training, scoring = ("float32" if full else "bfloat16"), "float32"
        reason = "bf16 matmul measured faster than fp32 on this CPU; scoring in fp32"
        if full:
            reason += "; full fine-tuning trains fp32 weights, under bf16 autocast where training.bf16"
    else:
        training, scoring = "float32", "float32"
        reason = ("bf16 matmul not faster than fp32 on this CPU" if measured
                  else "this CPU has no native bf16")
    if full:
        # Mixed precision over weights that change every step: the casts are the price of training them.
        autocast = "bf16" if training_cfg.bf16 and chosen == "auto" and cpu_prefers_bf16() else None
        # No LoRA layers to fuse or drop out on, and trained norm weights make the fused norm step aside.
        fused = (FUSED_ROTARY,) if autocast is None and training == "float32" else ()
    else:
        autocast = "bf16" if training_cfg.bf16 and training == "bfloat16" else None
        if (training, autocast) in (("float32", None), ("bfloat16", "bf16")):
            fused = (SPARSE_DROPOUT, FUSED_LORA, FUSED_NORMS, FUSED_ROTARY)
        elif training == "bfloat16":  # no autocast: the fp32 LoRA weights meet bf16 inputs, PEFT's forward casts
            fused = (SPARSE_DROPOUT, FUSED_NORMS, FUSED_ROTARY)
        else:  # float16 weights: the fused operations serve float32 and bfloat16 only
            fused = (SPARSE_DROPOUT,)
    onednn = onednn_linears(config, scoring)
    cascade = scoring_cascade(config, scoring, bf16_much_faster=measured and bf16_pays_for_cascade(onednn))
    linear_routes = config.evaluation.onednn_linears is None and scoring == "float32"  # measured for the choice
    return ComputePlan("cpu", training_weights=training, scoring_weights=scoring, scoring_cascade=cascade,
                       onednn_linears=onednn, autocast=autocast, fused_cpu_ops=fused,
                       cpu=cpu_facts(measured, linear_routes), reason=reason)


def onednn_linears(config: FrameSFTConfig, scoring_weights: str) -> bool:
    """evaluation.onednn_linears on a CPU: null routes fp32 scoring's linear layers through oneDNN where it measures
    faster than ATen's BLAS (cpu_prefers_onednn_fp32); true forces it on any CPU, false never.
    Only fp32 weights take the route."""
    wanted = config.evaluation.onednn_linears
    if wanted and scoring_weights != "float32":
        raise ConfigError(f"evaluation.onednn_linears is true but model.dtype is {config.model.dtype}: the route "
                          "serves fp32 weights; set model.dtype to auto (or float32), or evaluation.onednn_linears "
                          "to null")
    if wanted is None:
        return scoring_weights == "float32" and cpu_prefers_onednn_fp32()
    return wanted


def bf16_pays_for_cascade(onednn: bool) -> bool:
    """bf16 matmul measures CASCADE_MIN_SPEEDUP times faster than the fp32 route scoring takes (oneDNN's or ATen's)."""
    fp32 = cpu_fp32_linear_rates()["onednn"] if onednn else cpu_matmul_rates()[torch.float32]
    return cpu_prefers_bf16() and cpu_matmul_rates()[torch.bfloat16] >= CASCADE_MIN_SPEEDUP * fp32


def scoring_cascade(config: FrameSFTConfig, scoring_weights: str, bf16_much_faster: bool) -> bool:
    """evaluation.bf16_cascade on a CPU: null scores through the bf16 margin cascade (cascade.py) where bf16
    measured much faster than fp32 scoring (bf16_pays_for_cascade: AMX), so fp32 labels come at close to bf16 speed;
    elsewhere the plan stays fp32. true forces it (slower without native bf16: the tests use it on every CPU); it
    needs fp32 scoring weights."""
    wanted = config.evaluation.bf16_cascade
    if wanted and scoring_weights != "float32":
        raise ConfigError(f"evaluation.bf16_cascade is true but model.dtype is {config.model.dtype}: the cascade "
                          "keeps the labels of fp32 weights; set model.dtype to auto (or float32), or "
                          "evaluation.bf16_cascade to null")
    return bf16_much_faster if wanted is None else wanted
