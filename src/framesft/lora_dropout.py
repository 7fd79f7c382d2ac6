"""LoRA's input dropout with a cheaper random mask (CPU training).

PEFT applies `nn.Dropout` to the input of every LoRA adapter: seven per layer with adapters on all projections.
On CPU the stock dropout draws one Bernoulli sample per element, and profiling SmolLM2 training showed those
draws (`aten::bernoulli_`) taking about a quarter of every step, more than attention. `MaskDropout` draws the
same kind of mask from 16-bit random integers, four per 64-bit draw, and keeps the mask as one byte per element
for the backward pass instead of a float copy. It is dropout all the same: each element is zeroed independently
with probability p (p is rounded to a multiple of 2^-15, i.e. to within 0.00002) and the kept ones are scaled by
1 / (1 - p), so the layer's expected output is unchanged. The draws come from torch's generator, so a seeded
run repeats itself. `benchmarks/training_throughput.py` measures the gain.
"""

from __future__ import annotations

import torch
from torch import nn

LANE_BITS = 15  # random bits used per element: int64.random_() fills 63 bits, so every 16-bit lane has 15


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


def keep_mask(shape: torch.Size, p: float, device=None) -> torch.Tensor:
    """A boolean mask with each element False (dropped) independently with probability p (to within 2^-15)."""
    count = 1
    for size in shape:
        count *= size
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = draws.view(torch.int16)[:count]  # four 16-bit lanes per draw; the low 15 bits of each are uniform
    threshold = round(p * (1 << LANE_BITS))
    return (lanes & ((1 << LANE_BITS) - 1)).ge(threshold).view(shape)


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
        return _ScaleByMask.apply(x, keep_mask(x.shape, self.p, x.device), 1.0 / (1.0 - self.p))

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
