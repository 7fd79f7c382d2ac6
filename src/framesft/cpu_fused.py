"""RMSNorm and rotary position embedding for training on CPU, each as one operation with its own backward pass.

A CPU training step's elementwise work is bound by memory bandwidth (see cpu_lora.py), and transformers writes
both of these as chains of small tensor operations that autograd records one by one. Gemma's RMSNorm
(`x * rsqrt(mean(x^2) + eps) * (1 + w)`) makes about four passes over the activation forward and eight backward,
and Gemma 3 has six per layer (four on the residual stream, one each on the queries and keys). The rotary
embedding (`q * cos + rotate_half(q) * sin`, with `rotate_half` a concatenation of a negated copy) makes five
forward and four backward. Written out by hand they take two forward and three or four backward; with the
frozen norm weights of LoRA training no weight gradient is needed. `benchmarks/training_throughput.py` measures
the whole step.

Both replacements are checked against the model's own code on a random input before they are installed, and
they only run where the original would compute the same thing: CPU tensors of one dtype, float32 or bfloat16,
gradients enabled, a frozen norm weight. Anything else (scoring, GPUs, mixed dtypes, a model whose norm or rotary
differs) runs transformers' code unchanged. In bfloat16 (the compute plan on CPUs where bf16 is fast: bf16 frozen
weights under autocast) the norm computes in float32 and rounds its result once, as Gemma's own norm does, and
saves the bf16 input instead of float32 copies; the rotary computes in bf16 as transformers' does, with fewer
roundings. Autocast does not touch either (no matmuls), so they run under it too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn


class _RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * scale over the last dimension, for a constant float32 `scale` (the frozen weight, plus 1
    for Gemma). Backward: dx = rstd * (g*scale - x * rstd^2 * mean(g*scale * x)), in four passes. A bf16 x is
    computed in float32 (the products with the float32 scale promote) and the result rounded to bf16 once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
        # vector_norm reads x once without writing x^2; rstd is one number per row, float32 at least
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
        rstd = rstd.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, scale, rstd)
        return torch.mul(x, scale).mul_(rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale, rstd = ctx.saved_tensors
        grad_scaled = torch.mul(grad, scale)  # float32 at least
        x32 = x.to(grad_scaled.dtype)  # x itself when it is float32; for bf16 the backward's one float32 copy
        coefficient = torch.linalg.vecdot(grad_scaled, x32, dim=-1).unsqueeze(-1).mul_(rstd.pow(3)).div_(-x.shape[-1])
        return grad_scaled.mul_(rstd).addcmul_(x32, coefficient).to(x.dtype), None, None


def _norm_eps(module: nn.Module) -> float | None:
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    return float(eps) if isinstance(eps, (int, float)) else None


FUSED_DTYPES = (torch.float32, torch.bfloat16)


def _fusable(*tensors: torch.Tensor) -> bool:
    """Where the fused operations apply: CPU tensors of one dtype, float32 or bfloat16, in a pass that records
    gradients (autocast or not: it leaves these elementwise operations alone)."""
    dtype = tensors[0].dtype
    return (torch.is_grad_enabled() and dtype in FUSED_DTYPES
            and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors))


def _fused_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if weight.requires_grad or not _fusable(x, weight):
        return type(self).forward(self, x)
    scale = weight.float() + self.fused_norm_offset if self.fused_norm_offset else weight.float()
    return _RMSNorm.apply(x, scale, self.fused_norm_eps)


def _probe_generator() -> torch.Generator:
    """Random probe inputs from their own generator: installing the fused operations leaves torch's global random
    state (dropout, LoRA initialisation) as it was."""
    return torch.Generator().manual_seed(0)


def _norm_offset(module: nn.Module, eps: float) -> float | None:
    """0 (Llama: x / rms * w) or 1 (Gemma: x / rms * (1 + w)), whichever reproduces the module's own forward on a
    random input; None if neither does (a norm written differently is left alone)."""
    probe = torch.randn(3, module.weight.shape[0], generator=_probe_generator())
    with torch.no_grad():
        expected = type(module).forward(module, probe)
        weight = module.weight.float()
        for offset in (0.0, 1.0):
            if torch.allclose(_RMSNorm.apply(probe, weight + offset, eps), expected, rtol=1e-4, atol=1e-5):
                return offset
    return None


def _is_rms_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1


def fused_norms_in_effect(model: nn.Module) -> tuple[int, int]:
    """(routed, present): the RMSNorm modules whose forward is the fused one now, and all RMSNorm modules. Read
    off the modules themselves, so a library that resets forwards after use_fused_norms shows up here."""
    norms = [module for module in model.modules() if _is_rms_norm(module)]
    routed = sum(getattr(module.__dict__.get("forward"), "__func__", None) is _fused_norm_forward for module in norms)
    return routed, len(norms)


def use_fused_norms(model: nn.Module) -> int:
    """Route every RMSNorm of the model whose forward the fused one reproduces through _RMSNorm (in training, on
    CPU, in float32 or bfloat16; see the module docstring). Returns how many."""
    fused = 0
    for module in model.modules():
        if not _is_rms_norm(module):
            continue
        eps = _norm_eps(module)
        offset = None if eps is None or module.weight.device.type != "cpu" else _norm_offset(module, eps)
        if offset is None:
            continue
        module.fused_norm_offset, module.fused_norm_eps = offset, eps
        module.forward = _fused_norm_forward.__get__(module)
        fused += 1
    return fused


class _Rotary(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1) for the two halves of the last dimension."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        out = torch.mul(x, cos)
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        grad_x = torch.mul(grad, cos)  # the transpose of rotate_half is (y2, -y1)
        grad_x[..., :half].addcmul_(grad[..., half:], sin[..., half:])
        grad_x[..., half:].addcmul_(grad[..., :half], sin[..., :half], value=-1)
        return grad_x, None, None


def _fused_rotary(original: Callable) -> Callable:
    """A stand-in for a modeling module's apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1) that uses _Rotary
    where it applies and calls `original` otherwise."""

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if (len(args) + len(kwargs) > 1 or set(kwargs) - {"unsqueeze_dim"} or cos.requires_grad or sin.requires_grad
                or not _fusable(q, k, cos, sin) or cos.dim() + 1 != q.dim() or q.shape[-1] % 2
                or not q.shape[-1] == k.shape[-1] == cos.shape[-1] == sin.shape[-1]):
            return original(q, k, cos, sin, *args, **kwargs)
        unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return _Rotary.apply(q, cos, sin), _Rotary.apply(k, cos, sin)

    apply_rotary_pos_emb.fused_original = original
    return apply_rotary_pos_emb


def _rotary_matches(original: Callable, fused: Callable) -> bool:
    generator = _probe_generator()
    q = torch.randn(2, 3, 5, 8, generator=generator).requires_grad_()
    k = torch.randn(2, 1, 5, 8, generator=generator).requires_grad_()
    angles = torch.randn(2, 5, 4, generator=generator)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    weights = torch.randn(2, 3, 5, 8, generator=generator), torch.randn(2, 1, 5, 8, generator=generator)

    def outputs_and_gradients(function):
        q.grad = k.grad = None
        outputs = function(q, k, cos, sin)
        sum((out * weight).sum() for out, weight in zip(outputs, weights)).backward()
        return *outputs, q.grad, k.grad

    try:
        expected, got = outputs_and_gradients(original), outputs_and_gradients(fused)
    except (TypeError, RuntimeError, ValueError):
        return False
    return all(torch.allclose(e, g, rtol=1e-5, atol=1e-6) for e, g in zip(expected, got))


def _rotary_modules(model: nn.Module) -> list:
    """The transformers modeling modules the model's layers come from that define apply_rotary_pos_emb."""
    names = sorted({type(module).__module__ for module in model.modules()})
    return [sys.modules[name] for name in names if name.startswith("transformers.models.") and name in sys.modules
            and callable(getattr(sys.modules[name], "apply_rotary_pos_emb", None))]


def fused_rotary_in_effect(model: nn.Module) -> tuple[int, int]:
    """(routed, present): the model's modeling modules whose apply_rotary_pos_emb is the fused one now, and all
    that define one."""
    modules = _rotary_modules(model)
    return sum(hasattr(m.apply_rotary_pos_emb, "fused_original") for m in modules), len(modules)


def use_fused_rotary(model: nn.Module) -> int:
    """Replace `apply_rotary_pos_emb` in the transformers modeling modules the model's layers come from, where the
    fused one reproduces it (in training, on CPU, in float32 or bfloat16; see the module docstring). It is
    module-wide, so other models of the same family in this process get it too: outside training they run the
    original, and in training the same computation. Returns how many modeling modules were changed."""
    replaced = 0
    for modeling in _rotary_modules(model):
        original = modeling.apply_rotary_pos_emb
        if hasattr(original, "fused_original"):
            continue  # already replaced, by an earlier model of this family
        fused = _fused_rotary(original)
        if _rotary_matches(original, fused):
            modeling.apply_rotary_pos_emb = fused
            replaced += 1
    return replaced
