"""LoRA training on CPU: a cheaper dropout and one fused operation per adapted linear layer.

PEFT applies `nn.Dropout` to the input of every LoRA adapter: seven per layer with adapters on all projections.
On CPU the stock dropout draws one Bernoulli sample per element, and profiling SmolLM2 training showed those
draws (`aten::bernoulli_`) taking about a quarter of every step, more than attention. At LoRA's usual rates (0.05,
0.1) most elements are kept, so `dropped_positions` draws only the elements to drop, as the gaps between them
(geometric gaps between independent Bernoulli drops), and `SparseDropout` and the fused layer zero just those:
the work is proportional to the few dropped elements, not to the whole activation. It is dropout all the same:
each element is dropped independently with probability p and the kept ones are scaled by 1 / (1 - p), so the
layer's expected output is unchanged; torch's generator draws it, so a seeded run repeats itself and gradient
checkpointing's recomputation draws the same drops.

On a CPU a training step's elementwise work is bound by memory bandwidth, so passes over activation-sized
tensors cost as much as matmuls. `_FusedLoraLinear` computes a LoRA layer with eight such passes fewer than
PEFT's module-by-module forward and backward, and saves less for the backward pass (the benchmarks measure it).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn


def dropped_positions(count: int, p: float, batch: int | None = None) -> torch.Tensor:
    """Sorted flat positions of the elements dropout drops among `count`, each independently with probability p.

    The gap from one drop to the next is geometric (1 + the number of kept elements in between), drawn by
    inverting uniforms from torch's generator; float32 uniforms cap a gap where (1 - p)^gap = 2^-24, a bias of
    6e-8. `batch` (gaps drawn at a time) is for tests; by default the expected number of drops plus six standard
    deviations, so one batch nearly always reaches the end."""
    if p <= 0 or count == 0:
        return torch.empty(0, dtype=torch.int64)
    expected = count * p
    batch = batch or math.ceil(expected + 6 * math.sqrt(expected) + 16)
    log_keep = math.log1p(-p)
    chunks, last = [], -1
    while last < count - 1:
        gaps = torch.rand(batch).neg_().log1p_().div_(log_keep).to(torch.int64).add_(1)  # geometric, from 1
        positions = gaps.cumsum_(0).add_(last)
        chunks.append(positions)
        last = int(positions[-1])
    positions = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return positions[: int(torch.searchsorted(positions, count))]


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """The elements of a contiguous tensor as one dimension, in row-major order."""
    return tensor.view(-1)


@contextmanager
def _zeroed(rows: torch.Tensor, positions: torch.Tensor):
    """`rows` (contiguous) with the elements at flat `positions` set to zero for the duration of the block, then
    restored bit for bit: dropout's input for a matmul without a dropped copy of the activation. It writes through
    `.data`, which has its own version counter: the tensor is saved for other adapters' backward passes (q, k and v
    share it), and autograd would otherwise take the temporary change for a modification."""
    flat = _flat(rows.data)
    values = flat.take(positions)
    flat.index_fill_(0, positions, 0.0)
    try:
        yield rows
    finally:
        flat.index_copy_(0, positions, values)


class _ScaleAndDrop(torch.autograd.Function):
    """x * scale with the elements at flat `positions` zeroed; the backward zeroes the same positions."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(positions)
        ctx.scale = scale
        out = x.mul(scale).contiguous()
        _flat(out).index_fill_(0, positions, 0.0)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (positions,) = ctx.saved_tensors
        grad = grad.mul(ctx.scale).contiguous()
        _flat(grad).index_fill_(0, positions, 0.0)
        return grad, None, None


class SparseDropout(nn.Module):
    """Drop-in for `nn.Dropout(p)` in training (identity in eval mode) that draws only the dropped positions."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return _ScaleAndDrop.apply(x, dropped_positions(x.numel(), self.p), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_sparse_dropout(model) -> int:
    """Replace the nn.Dropout on every LoRA adapter's input by SparseDropout (CPU only: on GPUs the stock dropout
    is already cheap). Returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = SparseDropout(dropout.p)
                replaced += 1
    return replaced


def sparse_dropout_in_effect(model) -> tuple[int, int]:
    """(routed, present): LoRA input dropouts that are SparseDropout now, and all LoRA input dropouts with p > 0."""
    dropouts = [dropout for module in model.modules() if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict)
                for dropout in module.lora_dropout.values() if getattr(dropout, "p", 0) > 0]
    return sum(isinstance(dropout, SparseDropout) for dropout in dropouts), len(dropouts)


class _FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + s * (dropout(x) A^T) B^T as one operation, for a frozen W and b.

    Against PEFT's module-by-module path it saves eight passes over activation-sized tensors per layer and step:
    dropout never writes a dropped copy of x (it zeroes the few dropped elements of x in place around the rank-r
    matmul and restores them, forward and backward), its 1 / (1 - p) and the LoRA scaling fold into the small
    rank-r products, and the LoRA sum goes into the base matmul via addmm, forward and backward. For the backward
    pass it keeps the layer's input x and the dropped positions instead of a float copy of the dropped input: q,
    k and v (and gate and up) read the same x, so one saved tensor serves three (two) adapters.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        dropped = dropped_positions(rows.numel(), p)
        scale = scaling / (1.0 - p)  # dropout's 1 / (1 - p) applied to the rank-r product, not the input
        with _zeroed(rows, dropped):
            low_rank = torch.mm(rows, lora_a.t())
        out = torch.nn.functional.linear(rows, weight, bias).addmm_(low_rank, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, dropped, weight, lora_a, lora_b, low_rank)
        ctx.scale = scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, dropped, weight, lora_a, lora_b, low_rank = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_low_rank = torch.mm(grad_rows, lora_b).mul_(ctx.scale)  # [tokens, r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            through_lora = torch.mm(grad_low_rank, lora_a)
            _flat(through_lora).index_fill_(0, dropped, 0.0)
            grad_x = torch.addmm(through_lora, grad_rows, weight).view(x.shape)
        if ctx.needs_input_grad[3]:
            rows = x.reshape(-1, x.shape[-1]).contiguous()
            with _zeroed(rows, dropped):
                grad_a = torch.mm(grad_low_rank.t(), rows)
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(grad_rows.t(), low_rank).mul_(ctx.scale)
        return grad_x, None, None, grad_a, grad_b, None, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT lora.Linear.forward, fused where it is plain LoRA training (in one dtype, or under autocast over
    frozen weights already in the autocast dtype); PEFT's own forward else."""
    adapters = self.active_adapters
    if (not self.training or args or kwargs or self.merged or self.disable_adapters or len(adapters) != 1
            or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    base, lora_a, lora_b = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
    trains_a_bias = self.lora_B[name].bias is not None or (base.bias is not None and base.bias.requires_grad)
    if base.weight.requires_grad or trains_a_bias:
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, (nn.Dropout, SparseDropout)) else 0.0
    scaling = float(self.scaling[name])
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # Mixed precision over half-precision frozen weights (the compute plan on CPUs where bf16 is fast): the
        # whole layer in the autocast dtype, as autocast would run each matmul, and the LoRA weights (fp32, they
        # train) cast to it here, so their gradients come back through the casts in fp32. PEFT's own forward
        # would instead copy x to fp32 for the adapter and autocast would copy it back.
        dtype = torch.get_autocast_dtype(device)
        if base.weight.dtype != dtype:
            return type(self).forward(self, x, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return _FusedLoraLinear.apply(x.to(dtype), base.weight, base.bias, lora_a.to(dtype), lora_b.to(dtype),
                                          scaling, p)
    if x.dtype != base.weight.dtype or lora_a.dtype != x.dtype:
        return type(self).forward(self, x, *args, **kwargs)
    return _FusedLoraLinear.apply(x, base.weight, base.bias, lora_a, lora_b, scaling, p)


def fused_lora_in_effect(model) -> tuple[int, int]:
    """(routed, present): PEFT LoRA linear layers whose forward is the fused one now, and all of them."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    layers = [module for module in model.modules() if isinstance(module, LoraLinear)]
    return sum(getattr(m.__dict__.get("forward"), "__func__", None) is _fused_forward for m in layers), len(layers)


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
