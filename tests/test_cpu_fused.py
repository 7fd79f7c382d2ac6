"""The fused RMSNorm and rotary embedding of CPU training (cpu_fused.py): their gradients against finite
differences, their results against transformers' own code, and where they must step aside."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from framesft import cpu_fused
from framesft.cpu_fused import use_fused_norms, use_fused_rotary


def test_fused_norm_gradient_matches_finite_differences():
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: cpu_fused._RMSNorm.apply(x, scale, 1e-6), (x,))


def test_fused_rotary_gradient_matches_finite_differences():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.randn(2, 1, 5, 4, dtype=torch.float64)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    assert torch.autograd.gradcheck(lambda x: cpu_fused._Rotary.apply(x, cos, sin), (x,))


def output_and_input_gradient(module: torch.nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_()
    out = module(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), x.grad, type(out.grad_fn).__name__


@pytest.mark.parametrize("norm_class", [LlamaRMSNorm, Gemma3RMSNorm])  # x/rms * w and x/rms * (1 + w)
def test_fused_norms_compute_what_transformers_computes(norm_class):
    norm = norm_class(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    norm.weight.requires_grad_(False)  # LoRA training: frozen
    x = 3 * torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    expected, expected_grad, stock_backward = output_and_input_gradient(norm, x)
    assert use_fused_norms(torch.nn.Sequential(norm)) == 1
    assert norm.fused_norm_offset == (1.0 if norm_class is Gemma3RMSNorm else 0.0)
    out, grad, fused_backward = output_and_input_gradient(norm, x)
    assert (stock_backward, fused_backward) != ("_RMSNormBackward",) * 2 and fused_backward == "_RMSNormBackward"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


class MeanAbsRMSNorm(torch.nn.Module):
    """Named like an RMSNorm, computes something else: must be left alone."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(8))
        self.eps = 1e-6

    def forward(self, x):
        return x / (x.abs().mean(-1, keepdim=True) + self.eps) * self.weight


def test_fused_norms_run_only_where_they_compute_the_same(monkeypatch):
    norm = Gemma3RMSNorm(8).requires_grad_(False)
    odd = MeanAbsRMSNorm().requires_grad_(False)
    assert use_fused_norms(torch.nn.Sequential(norm, odd)) == 1 and "forward" not in odd.__dict__
    calls = []
    fused_apply = cpu_fused._RMSNorm.apply
    monkeypatch.setattr(cpu_fused._RMSNorm, "apply", lambda *args: calls.append(1) or fused_apply(*args))
    x = torch.randn(4, 8, requires_grad=True)
    norm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves a norm's elementwise work alone
        norm(x)
    assert len(calls) == 2
    with torch.no_grad():  # scoring: transformers' code, as `framesft evaluate` runs it
        norm(x)
    norm(x.detach().bfloat16().requires_grad_())  # a bf16 input over a float32 weight: mixed dtypes
    norm(x.detach().half().requires_grad_())
    norm.weight.requires_grad_(True)  # a trained norm weight needs its gradient: transformers' code
    norm(x)
    assert len(calls) == 2
    norm.requires_grad_(False).bfloat16()  # bf16 weights and input: the compute plan where bf16 is fast
    norm(x.detach().bfloat16().requires_grad_())
    assert len(calls) == 3


def bf16_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.double() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("norm_class", [LlamaRMSNorm, Gemma3RMSNorm])
def test_fused_norms_in_bf16_are_as_accurate_as_transformers(norm_class):
    """In bf16 (weights and activations, under autocast as the plan trains) the fused norm's output and input
    gradient lie as close to a float64 computation of the same bf16 numbers as transformers' own norm does."""
    generator = torch.Generator().manual_seed(0)
    norm = norm_class(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
    norm.requires_grad_(False).bfloat16()
    x = (3 * torch.randn(2, 9, 64, generator=generator)).bfloat16()
    weights = torch.linspace(-1, 1, 64)
    reference_norm = norm_class(64, eps=1e-6).double().requires_grad_(False)
    with torch.no_grad():
        reference_norm.weight.copy_(norm.weight.double())
    reference, reference_grad, _ = output_and_input_gradient(reference_norm, x.double())

    def run():
        x_ = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = norm(x_)
        (out.float() * weights).sum().backward()
        return out, x_.grad, type(out.grad_fn).__name__

    stock = run()
    assert use_fused_norms(torch.nn.Sequential(norm)) == 1
    fused = run()
    assert fused[2] == "_RMSNormBackward" and stock[2] != fused[2]
    assert fused[0].dtype == fused[1].dtype == stock[0].dtype == torch.bfloat16
    for got, expected, reference_ in ((fused[0], stock[0], reference), (fused[1], stock[1], reference_grad)):
        assert bf16_error(got, reference_) <= max(1.5 * bf16_error(expected, reference_), 2 ** -8)
        assert bf16_error(got, expected.double()) <= 2 ** -6  # and close to transformers' bf16 result


def test_fused_norms_cover_every_norm_of_the_embedded_models():
    from framesft.config import FrameSFTConfig
    from framesft.modeling import load_base_model, resolve_model_path
    from framesft.precision import resolve_plan

    for base_model, norms in [("embedded:smollm2-135m-instruct", 30 * 2 + 1), ("embedded:gemma3-270m", 18 * 6 + 1)]:
        config = FrameSFTConfig.model_validate({"model": {"base_model": base_model, "dtype": "float32"}})
        plan = resolve_plan(config, torch.device("cpu"))
        model = load_base_model(config, resolve_model_path(base_model), plan, for_training=True)
        assert use_fused_norms(model) == norms, base_model


def stock_rotary():
    return getattr(modeling_llama.apply_rotary_pos_emb, "fused_original", modeling_llama.apply_rotary_pos_emb)


def test_fused_rotary_computes_what_transformers_computes(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    original = stock_rotary()
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", original)  # restored after the test
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert use_fused_rotary(model) == 1 and use_fused_rotary(model) == 0  # once per modeling module
    fused = modeling_llama.apply_rotary_pos_emb
    assert fused.fused_original is original
    generator = torch.Generator().manual_seed(0)
    # as the attention layers pass them: [batch, seq, heads, dim] projections transposed to [batch, heads, seq, dim]
    q = torch.randn(2, 7, 4, 16, generator=generator).transpose(1, 2)
    k = torch.randn(2, 7, 2, 16, generator=generator).transpose(1, 2)
    angles = torch.randn(2, 7, 8, generator=generator)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    results = {}
    for name, function in [("stock", original), ("fused", fused)]:
        q_, k_ = q.clone().requires_grad_(), k.clone().requires_grad_()
        q_out, k_out = function(q_, k_, cos, sin)
        (q_out.sum(-1) * torch.arange(7.0)).sum().add((k_out * k_out).sum()).backward()
        results[name] = (q_out.detach(), k_out.detach(), q_.grad, k_.grad, type(q_out.grad_fn).__name__)
    assert results["fused"][4] == "_RotaryBackward" and results["stock"][4] != "_RotaryBackward"
    for expected, got in zip(results["stock"][:4], results["fused"][:4]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # scoring runs the original
        assert fused(q, k, cos, sin)[0].grad_fn is None
        torch.testing.assert_close(fused(q, k, cos, sin)[0], original(q, k, cos, sin)[0], rtol=0, atol=0)
    # [batch, seq, heads, dim] with the heads' axis named, by position and by keyword, with and without gradients
    q_, k_ = q.transpose(1, 2).requires_grad_(), k.transpose(1, 2).requires_grad_()
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            expected = original(q_, k_, cos, sin, unsqueeze_dim=2)
            for got in (fused(q_, k_, cos, sin, 2), fused(q_, k_, cos, sin, unsqueeze_dim=2)):
                assert (type(got[0].grad_fn).__name__ == "_RotaryBackward") == grad
                for e, g in zip(expected, got):
                    torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_fused_rotary_in_bf16_is_as_accurate_as_transformers(monkeypatch, tiny_model_dir):
    """bf16 queries, keys, cos and sin under autocast (as the plan trains where bf16 is fast): the fused rotary's
    outputs and gradients lie as close to a float64 computation as transformers' own do; mixed dtypes step aside."""
    from transformers import AutoModelForCausalLM

    original = stock_rotary()
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", original)
    assert use_fused_rotary(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) == 1
    fused = modeling_llama.apply_rotary_pos_emb
    generator = torch.Generator().manual_seed(0)
    q = 3 * torch.randn(2, 4, 7, 16, generator=generator)
    k = 3 * torch.randn(2, 2, 7, 16, generator=generator)
    angles = 20 * torch.rand(2, 7, 8, generator=generator)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    weights = torch.randn(2, 4, 7, 16, generator=generator), torch.randn(2, 2, 7, 16, generator=generator)

    def run(function, dtype):
        q_, k_ = q.detach().to(dtype).requires_grad_(), k.detach().to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            outputs = function(q_, k_, cos.to(dtype), sin.to(dtype))
        sum((out.double() * w).sum() for out, w in zip(outputs, weights)).backward()
        return [*outputs, q_.grad, k_.grad], type(outputs[0].grad_fn).__name__

    # the reference computes in float64 from the same bf16-rounded inputs
    q, k, cos, sin = (t.bfloat16().double() for t in (q, k, cos, sin))
    reference, _ = run(original, torch.float64)
    stock, stock_backward = run(original, torch.bfloat16)
    got, fused_backward = run(fused, torch.bfloat16)
    assert fused_backward == "_RotaryBackward" and stock_backward != fused_backward
    for g, s, r in zip(got, stock, reference):
        assert g.dtype == s.dtype == torch.bfloat16
        assert bf16_error(g, r) <= max(1.5 * bf16_error(s, r), 2 ** -8)
        assert bf16_error(g, s.double()) <= 2 ** -6
    q_, k_ = q.detach().bfloat16().requires_grad_(), k.detach().bfloat16().requires_grad_()
    assert type(fused(q_, k_, cos.float(), sin.float())[0].grad_fn).__name__ != "_RotaryBackward"  # mixed dtypes


def test_fused_rotary_leaves_another_convention_alone(monkeypatch):
    """A modeling module whose rotary rotates interleaved pairs (GPT-J style) keeps its own function."""

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):
        def rotate(x):
            return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin

    modeling = types.ModuleType("transformers.models.fake.modeling_fake")
    modeling.apply_rotary_pos_emb = interleaved
    monkeypatch.setitem(sys.modules, modeling.__name__, modeling)
    layer = type("FakeAttention", (torch.nn.Module,), {"__module__": modeling.__name__})()
    assert use_fused_rotary(layer) == 0 and modeling.apply_rotary_pos_emb is interleaved


def test_training_over_bf16_weights_with_fused_norms_and_rotary_is_as_accurate_as_stock(monkeypatch, tiny_model_dir,
                                                                                         tmp_path):
    """The plan where bf16 is fast (bf16 frozen weights under bf16 autocast, every fused operation): loss and LoRA
    gradients with the fused norms and rotary lie as close to a float32 computation over the same bf16-rounded
    weights as those with transformers' own code do (bf16 rounding differs, so no exact equality)."""
    from conftest import tiny_config
    from framesft.methods import build_method
    from framesft.modeling import load_tokenizer
    from framesft.precision import resolve_plan
    from framesft.training import trainable_model

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", stock_rotary())
    models = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(tiny_model_dir, tmp_path / dtype, lora_dropout=0.1, bf16=True)
        config.model.dtype = dtype  # explicit, so that both plans run on every CPU
        plan = resolve_plan(config, torch.device("cpu"))
        assert (plan.training_weights, plan.autocast) == ((dtype, "bf16") if dtype == "bfloat16" else (dtype, None))
        method = build_method(config, load_tokenizer(tiny_model_dir, False), ["A", "B"])
        models[dtype] = trainable_model(config, tiny_model_dir, method, ["A", "B"], plan).train()
    reference, model = models["float32"], models["bfloat16"]
    with torch.no_grad():  # the reference: the same bf16 weights and LoRA weights, computed in float32
        for (name, ref), (_, parameter) in zip(sorted(reference.named_parameters()), sorted(model.named_parameters())):
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
            ref.copy_(parameter.float())
    norms = [m for m in model.modules() if "fused_norm_offset" in m.__dict__]
    assert len(norms) == 2 * 2 + 1 and hasattr(modeling_llama.apply_rotary_pos_emb, "fused_original")
    ids = torch.randint(5, 200, (3, 40), generator=torch.Generator().manual_seed(0))
    calls = []
    for function in (cpu_fused._RMSNorm, cpu_fused._Rotary):
        monkeypatch.setattr(function, "apply", lambda *args, apply=function.apply: calls.append(1) or apply(*args))

    def loss_and_gradients(model, autocast):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout draws in every pass
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad])

    fused = loss_and_gradients(model, True)
    assert len(calls) == 2 * (2 + 2) + 1
    for norm in norms + [m for m in reference.modules() if "fused_norm_offset" in m.__dict__]:
        del norm.forward  # transformers' code, in the bf16 model and the float32 reference
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", stock_rotary())
    stock = loss_and_gradients(model, True)
    expected = loss_and_gradients(reference, False)
    assert len(calls) == 2 * (2 + 2) + 1
    loss_error = {name: abs(result[0] - expected[0]) for name, result in (("fused", fused), ("stock", stock))}
    gradient_error = {name: float((result[1] - expected[1]).norm() / expected[1].norm())
                      for name, result in (("fused", fused), ("stock", stock))}
    assert loss_error["fused"] <= max(1.5 * loss_error["stock"], 1e-3 * expected[0]), loss_error
    assert gradient_error["fused"] <= max(1.5 * gradient_error["stock"], 2 ** -8), gradient_error
    # bf16 rounding, not a different computation: the loss within 1%; the gradients of this random tiny model are
    # chaotic enough that bf16 moves its first layer's by half their size, either way (0.57 stock, 0.54 fused)
    assert max(loss_error.values()) < 0.01 * expected[0] and max(gradient_error.values()) < 0.8


def test_training_with_fused_norms_and_rotary_gives_the_stock_gradients(monkeypatch, tiny_model_dir, tmp_path):
    """The whole model as `trainable_model` builds it for CPU training: loss and LoRA gradients with the fused norms and
    rotary equal those with transformers' own (the same dropout draws under the same seed)."""
    from conftest import tiny_config
    from framesft.methods import build_method
    from framesft.modeling import load_tokenizer
    from framesft.precision import resolve_plan
    from framesft.training import trainable_model

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", stock_rotary())
    config = tiny_config(tiny_model_dir, tmp_path / "run", lora_dropout=0.1)
    config.model.dtype = "float32"  # the path under test, on every CPU (auto takes bf16 where AMX makes it faster)
    method = build_method(config, load_tokenizer(tiny_model_dir, False), ["A", "B"])
    torch.manual_seed(0)
    model = trainable_model(config, tiny_model_dir, method, ["A", "B"], resolve_plan(config, torch.device("cpu"))).train()
    norms = [m for m in model.modules() if "fused_norm_offset" in m.__dict__]
    assert len(norms) == 2 * 2 + 1 and hasattr(modeling_llama.apply_rotary_pos_emb, "fused_original")
    for name, parameter in sorted(model.named_parameters()):
        if "lora_B" in name:
            with torch.no_grad():
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    ids = torch.randint(5, 200, (3, 40), generator=torch.Generator().manual_seed(0))
    calls = []  # the fused pass must really run the fused operations (float32 weights: see the config's dtype)
    for function in (cpu_fused._RMSNorm, cpu_fused._Rotary):
        monkeypatch.setattr(function, "apply", lambda *args, apply=function.apply: calls.append(1) or apply(*args))
    losses, gradients = {}, {}
    for fused in (True, False):
        if not fused:  # back to transformers' code
            for norm in norms:
                del norm.forward
            monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", stock_rotary())
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses[fused] = loss.item()
        gradients[fused] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(calls) == 2 * (2 + 2) + 1  # per layer two norms, rotary on q and k; the final norm
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    for name, gradient in gradients[False].items():
        assert gradient.abs().sum() > 0, name
        scale = float(gradient.abs().max())  # float32 rounding, relative to the gradient's size (up to 11 here)
        torch.testing.assert_close(gradients[True][name], gradient, rtol=1e-4, atol=1e-4 * scale, msg=name)


# ------------------------------------------------------------------------------------------ what is in effect


def test_every_planned_fused_op_routes_every_module_at_the_first_training_step(tiny_model_dir, tmp_path, caplog):
    """A real training run: for each fused operation the plan names, run_summary.json records how many modules it
    routed when the first step began, read off the model, and that is all the model has. A transformers release
    that resets the forwards, or renames what we replace, turns this red instead of quietly slowing training."""
    import json
    import logging

    from conftest import tiny_config
    from framesft.training import train

    caplog.set_level(logging.INFO, logger="framesft")
    config = tiny_config(tiny_model_dir, tmp_path / "run", lora_dropout=0.1, num_epochs=1, max_steps=2)
    result = train(config, show_progress=False)
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    planned = summary["compute_plan"]["fused_cpu_ops"]
    assert planned, "the CPU plan installs fused operations on every CPU kind"
    routed = summary["fused_cpu_ops_routed"]
    assert sorted(routed) == sorted(planned)
    expected_present = {"sparse_dropout": 2 * 7, "fused_lora": 2 * 7, "fused_norms": 2 * 2 + 1, "fused_rotary": 1}
    for name in planned:
        assert routed[name] == {"routed": expected_present[name], "present": expected_present[name]}, name
    assert "fused CPU ops at the first training step: " in caplog.text and "was planned but routes" not in caplog.text


def test_the_check_warns_when_a_library_resets_the_fused_forwards(tiny_model_dir, tmp_path, caplog):
    """What transformers 5.25's Hub kernels did on every train(): the forward installed on each norm is removed
    again. The check reads that off the model and warns in one line naming the operation."""
    import logging

    from conftest import tiny_config
    from framesft.methods import build_method
    from framesft.modeling import load_tokenizer
    from framesft.precision import resolve_plan
    from framesft.training import check_fused_cpu_ops, trainable_model

    config = tiny_config(tiny_model_dir, tmp_path / "run")
    config.model.dtype = "float32"
    plan = resolve_plan(config, torch.device("cpu"))
    method = build_method(config, load_tokenizer(tiny_model_dir, False), ["A", "B"])
    model = trainable_model(config, tiny_model_dir, method, ["A", "B"], plan)
    assert check_fused_cpu_ops(model, plan, "now")["fused_norms"] == {"routed": 5, "present": 5}
    for module in model.modules():
        module.__dict__.pop("forward", None)  # as kernels' kernelize falls back to the class's forward
    caplog.set_level(logging.WARNING, logger="framesft")
    counts = check_fused_cpu_ops(model, plan, "now")
    assert counts["fused_norms"] == {"routed": 0, "present": 5}
    warned = [r.getMessage() for r in caplog.records if "fused_norms was planned but routes 0 of 5" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]


def test_hub_kernels_stay_off_so_train_mode_keeps_the_fused_norms(tiny_model_dir, tmp_path):
    """transformers 5.25 with `kernels` installed kernelizes models loaded with its default use_kernels and undoes
    the fused norms on every train(); framesft loads with use_kernels=False. With kernels' default left on, the
    same model loses them (the failure this guards against, shown to be real on this install)."""
    pytest.importorskip("kernels", reason="transformers older than 5.25 does not install the kernels package")
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config
    from framesft.cpu_fused import fused_norms_in_effect
    from framesft.modeling import load_base_model
    from framesft.precision import resolve_plan

    config = tiny_config(tiny_model_dir, tmp_path / "run")
    config.model.dtype = "float32"
    ours = load_base_model(config, tiny_model_dir, resolve_plan(config, torch.device("cpu")), for_training=True)
    use_fused_norms(ours)
    ours.eval().train()
    assert fused_norms_in_effect(ours) == (5, 5)
    kernelized = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # transformers' default
    if not getattr(kernelized, "use_kernels", False):
        pytest.skip("this transformers does not kernelize by default")
    use_fused_norms(kernelized)
    kernelized.eval().train()
    assert fused_norms_in_effect(kernelized) == (0, 5)
