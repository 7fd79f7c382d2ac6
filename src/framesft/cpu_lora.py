"""LoRA training on CPU: a cheaper dropout mask and one fused operation per adapted linear layer.

PEFT applies `nn.Dropout` to the input of every LoRA adapter: seven per layer with adapters on all projections.
On CPU the stock dropout draws one Bernoulli sample per element, and profiling SmolLM2 training showed those
draws (`aten::bernoulli_`) taking about a quarter of every step, more than attention. `keep_mask` draws the
same kind of mask from 16-bit lanes of 64-bit random words (numpy's SFC64 generator, seeded from torch's, so a
seeded run repeats itself; it fills words about twice as fast as torch's CPU generator) and keeps it as one byte
per element instead of a float copy. It is dropout all the same: each element is zeroed independently with
probability p (rounded to a multiple of 2^-16) and the kept ones are scaled by 1 / (1 - p), so the layer's
expected output is unchanged.

On this machine a training step's elementwise work is bound by memory bandwidth (about 10 GB/s), so passes over
activation-sized tensors cost as much as matmuls. `_FusedLoraLinear` computes a LoRA layer with five such passes
fewer than PEFT's module-by-module forward and backward, and saves less for the backward pass.
`benchmarks/training_throughput.py` measures both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LANE_BITS = 16  # random bits per element


class _ScaleByMask(torch.autograd.Function):
    """x * keep * scale, saving the one-byte mask (not a float copy) for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)  # where(): multiplying by a bool tensor would copy it

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask with each element False (dropped) independently with probability p (to within 2^-16)."""
    count = 1
    for size in shape:
        count *= size
    seed = int(torch.randint(0, 2**62, (1,)))  # from torch's generator: torch.manual_seed repeats the masks
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)  # every bit of every word uniform
    lanes = torch.from_numpy(words.view(np.int16)[:count])  # four 16-bit lanes per word, uniform in int16
    return lanes.ge(round(p * (1 << LANE_BITS)) - (1 << (LANE_BITS - 1))).view(shape)


class MaskDropout(nn.Module):
    """Drop-in for `nn.Dropout(p)` in training (identity in eval mode), with a cheaper mask on CPU."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return _ScaleByMask.apply(x, keep_mask(x.shape, self.p), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_mask_dropout(model) -> int:
    """Replace the nn.Dropout on every LoRA adapter's input by MaskDropout (CPU only: on GPUs the stock dropout
    is already cheap). Returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = MaskDropout(dropout.p)
                replaced += 1
    return replaced


class _FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + s * (dropout(x) A^T) B^T as one operation, for a frozen W and b.

    Against PEFT's module-by-module path it saves five passes over activation-sized tensors per layer and step
    (the dropout's rescaling and the LoRA scaling fold into the small rank-r products and the LoRA sum into the
    base matmul via addmm, forward and backward: six, less the one that rebuilds the dropped input for A's
    gradient), and it keeps the layer's input x plus a one-byte mask for the backward pass instead of a float copy
    of the dropped input: q, k and v (and gate and up) read the same x, so one saved tensor serves three (two)
    adapters.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float):
        rows = x.reshape(-1, x.shape[-1])
        keep = keep_mask(rows.shape, p) if p > 0 else None
        dropped = rows if keep is None else torch.where(keep, rows, 0.0)
        scale = scaling / (1.0 - p)  # dropout's 1 / (1 - p) applied to the rank-r product, not the input
        low_rank = torch.mm(dropped, lora_a.t())
        out = torch.nn.functional.linear(rows, weight, bias).addmm_(low_rank, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, keep, weight, lora_a, lora_b, low_rank)
        ctx.scale = scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, keep, weight, lora_a, lora_b, low_rank = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_low_rank = torch.mm(grad_rows, lora_b).mul_(ctx.scale)  # [tokens, r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            through_lora = torch.mm(grad_low_rank, lora_a)
            if keep is not None:
                through_lora = torch.where(keep, through_lora, 0.0)
            grad_x = torch.addmm(through_lora, grad_rows, weight).view(x.shape)
        if ctx.needs_input_grad[3]:
            rows = x.reshape(-1, x.shape[-1])
            grad_a = torch.mm(grad_low_rank.t(), rows if keep is None else torch.where(keep, rows, 0.0))
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(grad_rows.t(), low_rank).mul_(ctx.scale)
        return grad_x, None, None, grad_a, grad_b, None, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT lora.Linear.forward, fused where it is plain LoRA training in one dtype; PEFT's own forward else."""
    adapters = self.active_adapters
    if (not self.training or args or kwargs or self.merged or self.disable_adapters or len(adapters) != 1
            or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant
            or torch.is_autocast_enabled(x.device.type)):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    base, lora_a, lora_b = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
    trains_a_bias = self.lora_B[name].bias is not None or (base.bias is not None and base.bias.requires_grad)
    if base.weight.requires_grad or trains_a_bias or x.dtype != base.weight.dtype or lora_a.dtype != x.dtype:
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, (nn.Dropout, MaskDropout)) else 0.0
    return _FusedLoraLinear.apply(x, base.weight, base.bias, lora_a, lora_b, float(self.scaling[name]), p)


def use_fused_lora(model) -> int:
    """Route the training forward of every PEFT LoRA linear layer over a plain nn.Linear through
    _FusedLoraLinear (CPU only; layers that do not qualify at call time run PEFT's forward). Returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and type(module.base_layer) is nn.Linear:
            module.forward = _fused_forward.__get__(module)
            fused += 1
    return fused
