"""CPU speed work (issue 13): LoRA's cheaper dropout and fused layer, the measured bf16-or-fp32 choice,
merged adapters.

The dropout tests check the drops against the distribution they must have (independent Bernoulli drops with
probability p), not against itself."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from framesft.cpu_lora import SparseDropout, dropped_positions, use_sparse_dropout

from conftest import SAMPLE_DATA


def binomial_z(successes: int, trials: int, p: float) -> float:
    return (successes - trials * p) / math.sqrt(trials * p * (1 - p))


def drop_mask(count: int, p: float, batch: int | None = None) -> torch.Tensor:
    positions = dropped_positions(count, p, batch)
    assert positions.dtype == torch.int64 and bool((positions[1:] > positions[:-1]).all())  # sorted, distinct
    assert len(positions) == 0 or (positions[0] >= 0 and positions[-1] < count)
    mask = torch.zeros(count, dtype=torch.bool)
    mask[positions] = True
    return mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_dropout_drops_each_element_with_probability_p(p):
    torch.manual_seed(0)
    dropped = drop_mask(4_001_000, p)
    assert abs(binomial_z(int(dropped.sum()), len(dropped), p)) < 4.5


@pytest.mark.parametrize("few_gaps_at_a_time", [False, True])  # many batches, each starting where the last ended
def test_dropped_elements_are_independent_of_their_neighbours_and_of_their_place(few_gaps_at_a_time):
    """Neighbours at distances 1, 2 and 7 are dropped together at p^2; each of 8 places in a short tensor is
    dropped at p, whatever the batch of gaps it came from; the gaps between drops are geometric."""
    from scipy.stats import chisquare

    torch.manual_seed(1)
    p = 0.2
    drop = drop_mask(2_000_000, p, 1000 if few_gaps_at_a_time else None)
    for distance in (1, 2, 7):
        both = int((drop[:-distance] & drop[distance:]).sum())
        assert abs(binomial_z(both, len(drop) - distance, p * p)) < 4.5
    gaps = torch.diff(torch.nonzero(drop).flatten())
    observed = torch.bincount(gaps.clamp(max=12))[1:].numpy()  # gaps 1..11, and 12 or more
    expected = np.array([p * (1 - p) ** (k - 1) for k in range(1, 12)] + [(1 - p) ** 11]) * len(gaps)
    assert chisquare(observed, expected).pvalue > 1e-4
    places = torch.stack([drop_mask(8, p, 3 if few_gaps_at_a_time else None) for _ in range(20_000)])
    for place in range(8):
        assert abs(binomial_z(int(places[:, place].sum()), 20_000, p)) < 4.5


def test_sparse_dropout_keeps_the_expected_value_and_its_gradient_drops_the_same_elements():
    torch.manual_seed(2)
    dropout = SparseDropout(0.1).train()
    x = torch.full((2000, 500), 3.0, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(3.0 / 0.9))
    standard_error = 3.0 / 0.9 * math.sqrt(0.1 * 0.9 / y.numel())
    assert abs(y.mean().item() - 3.0) < 5 * standard_error
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.tensor(1 / 0.9))
    transposed = x.detach().t()  # a non-contiguous input: drops by position in its own shape
    assert dropout(transposed).shape == (500, 2000)


def test_sparse_dropout_is_the_identity_in_eval_mode_and_repeats_under_a_seed():
    dropout = SparseDropout(0.3)
    x = torch.randn(64, 32)
    assert dropout.eval()(x) is x
    dropout.train()
    torch.manual_seed(5)
    first = dropout(x)
    torch.manual_seed(5)
    assert torch.equal(first, dropout(x))
    assert not torch.equal(first, dropout(x))
    with pytest.raises(ValueError):
        SparseDropout(1.0)


def test_every_lora_dropout_is_replaced(tiny_model_dir, tmp_path):
    from conftest import tiny_config
    from framesft.modeling import attach_lora, load_base_model
    from framesft.precision import resolve_plan

    config = tiny_config(tiny_model_dir, tmp_path / "run")
    plan = resolve_plan(config, torch.device("cpu"))
    model = attach_lora(load_base_model(config, tiny_model_dir, plan, for_training=True), config)
    layers = model.get_base_model().config.num_hidden_layers
    assert use_sparse_dropout(model) == layers * len(config.training.lora_target_modules)
    assert not any(isinstance(m, torch.nn.Dropout) for name, m in model.named_modules() if "lora_dropout" in name)


ALL_FUSED = ("sparse_dropout", "fused_lora", "fused_norms", "fused_rotary")


@pytest.mark.parametrize("kind, training_weights, autocast, fused", [
    ("amx", "bfloat16", "bf16", ALL_FUSED),          # bf16 3.8x fp32: bf16 weights, autocast
    ("avx512_bf16", "float32", None, ALL_FUSED),      # bf16 half of fp32: fp32 and the fused operations
    ("avx2", "float32", None, ALL_FUSED),             # no native bf16: never bf16
    ("zen5", "bfloat16", "bf16", ALL_FUSED),          # AMD Zen 5: bf16 4.5x fp32, as AMX
])
def test_compute_plan_follows_the_measured_cpu(monkeypatch, tiny_model_dir, tmp_path, kind, training_weights,
                                                autocast, fused):
    from conftest import simulate_cpu, tiny_config
    from framesft.precision import resolve_plan

    simulate_cpu(monkeypatch, kind)
    cpu = torch.device("cpu")
    config = tiny_config(tiny_model_dir, tmp_path / "run", bf16=True)
    plan = resolve_plan(config, cpu)
    assert (plan.device, plan.training_weights, plan.autocast, plan.fused_cpu_ops) == ("cpu", training_weights,
                                                                                         autocast, fused)
    assert plan.scoring_weights == "float32"  # scoring stays fp32 on every CPU
    assert plan.reloads_for_scoring == (training_weights != "float32")
    assert plan.weights_dtype(for_training=True) == getattr(torch, training_weights)
    line = plan.line()
    assert line.startswith("compute plan: cpu; training weights " + training_weights) and "\n" not in line
    assert plan.to_dict()["line"] == line and plan.to_dict()["fused_cpu_ops"] == list(fused)

    config.training.bf16 = False  # no autocast without training.bf16
    assert resolve_plan(config, cpu).autocast is None
    config.model.dtype = "float32"  # an explicit dtype is obeyed for training and scoring, on every CPU
    plan = resolve_plan(config, cpu)
    assert (plan.training_weights, plan.scoring_weights, plan.fused_cpu_ops) == ("float32", "float32", ALL_FUSED)
    config.model.dtype = "bfloat16"
    config.training.bf16 = True
    plan = resolve_plan(config, cpu)
    assert (plan.training_weights, plan.scoring_weights, plan.fused_cpu_ops) == ("bfloat16", "bfloat16", ALL_FUSED)
    assert ("emulated" in plan.reason) == (kind == "avx2")
    config.training.bf16 = False  # bf16 weights without autocast: x and the fp32 LoRA weights differ, PEFT's layer
    assert resolve_plan(config, cpu).fused_cpu_ops == ("sparse_dropout", "fused_norms", "fused_rotary")
    config.model.dtype = "float16"  # the fused norms and rotary serve float32 and bfloat16 only
    assert resolve_plan(config, cpu).fused_cpu_ops == ("sparse_dropout",)


def test_the_plan_installs_exactly_its_fused_operations(monkeypatch, tiny_model_dir, tmp_path):
    """What the plan names is what training installs: all four, on fp32 weights and on bf16 under autocast."""
    from conftest import simulate_cpu, tiny_config
    from framesft.methods import build_method
    from framesft.modeling import load_tokenizer
    from framesft.precision import resolve_plan
    from framesft.training import trainable_model

    config = tiny_config(tiny_model_dir, tmp_path / "run", bf16=True)
    method = build_method(config, load_tokenizer(tiny_model_dir, False), ["A", "B"])
    for kind, frozen_dtype in (("avx512_bf16", torch.float32), ("amx", torch.bfloat16)):
        simulate_cpu(monkeypatch, kind)
        plan = resolve_plan(config, torch.device("cpu"))
        assert plan.fused_cpu_ops == ALL_FUSED, kind
        model = trainable_model(config, tiny_model_dir, method, ["A", "B"], plan)
        norms = [m for m in model.modules() if "fused_norm_offset" in m.__dict__]
        lora_forwards = [m for m in model.modules() if "lora_A" in m.__dict__.get("_modules", {})
                         and "forward" in m.__dict__]
        assert len(norms) == 2 * 2 + 1 and lora_forwards, kind
        assert any(isinstance(m, SparseDropout) for m in model.modules()), kind
        frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {frozen_dtype}, kind


def test_matmul_probe_measures_a_positive_rate():
    from framesft.precision import measure_matmul_gflops

    assert measure_matmul_gflops(torch.float32, size=128, repeats=2) > 0.1


def test_merged_adapter_scores_as_the_unmerged_one(trained_run):
    import pandas as pd

    from framesft.inference import load_classifier

    texts = pd.read_csv(SAMPLE_DATA / "test.csv", dtype=str, keep_default_na=False)["chunk_text"].tolist()
    merged = load_classifier(trained_run.run_dir)
    unmerged = load_classifier(trained_run.run_dir, merge=False)
    assert not hasattr(merged.model, "peft_config") and hasattr(unmerged.model, "peft_config")
    a = merged.score(texts, show_progress=False)
    b = unmerged.score(texts, show_progress=False)
    assert a.labels == b.labels == trained_run.labels
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
    assert a.predictions == b.predictions


def test_bf16_base_keeps_lora_weights_in_fp32(tiny_model_dir, tmp_path):
    """Frozen weights held in bf16 once; what the optimizer updates (LoRA) stays fp32."""
    from conftest import tiny_config
    from framesft.modeling import attach_lora, load_base_model
    from framesft.precision import resolve_plan

    config = tiny_config(tiny_model_dir, tmp_path / "run")
    config.model.dtype = "bfloat16"
    plan = resolve_plan(config, torch.device("cpu"))
    model = attach_lora(load_base_model(config, tiny_model_dir, plan, for_training=True), config)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for name, p in model.named_parameters() if not p.requires_grad and "norm" not in name}
    assert trainable == {torch.float32}
    assert frozen == {torch.bfloat16}


@pytest.mark.parametrize("every_n_layers", [1, 2])
def test_gradient_checkpointing_recomputes_the_same_dropout_masks(tiny_model_dir, tmp_path, every_n_layers,
                                                                  monkeypatch):
    """Checkpointing (the memory knob, training.gradient_checkpointing) reruns layers' forward in the backward
    pass, drawing LoRA's dropout masks again: the gradients must equal those of the run that kept its activations,
    which they only do if the recomputation draws the same masks."""
    import framesft.cpu_lora as cpu_lora
    from conftest import tiny_config
    from framesft.methods import build_method
    from framesft.modeling import load_tokenizer
    from framesft.precision import resolve_plan
    from framesft.training import trainable_model

    ids = torch.randint(5, 200, (3, 40), generator=torch.Generator().manual_seed(0))
    gradients, mask_draws = {}, {}
    draws = []
    drawing = cpu_lora.dropped_positions
    monkeypatch.setattr(cpu_lora, "dropped_positions", lambda *args: draws.append(1) or drawing(*args))
    for checkpointing in (False, True):
        config = tiny_config(tiny_model_dir, tmp_path / "run", gradient_checkpointing=checkpointing,
                             checkpoint_every_n_layers=every_n_layers, lora_dropout=0.3)
        method = build_method(config, load_tokenizer(tiny_model_dir, False), ["A", "B"])
        torch.manual_seed(0)
        plan = resolve_plan(config, torch.device("cpu"))
        model = trainable_model(config, tiny_model_dir, method, ["A", "B"], plan).train()
        draws.clear()
        for name, parameter in sorted(model.named_parameters()):
            if "lora_B" in name:  # B starts at zero, which would leave A without a gradient
                with torch.no_grad():
                    parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
        torch.manual_seed(1)
        model(input_ids=ids).logits[:, -1].pow(2).mean().backward()
        gradients[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        mask_draws[checkpointing] = len(draws)
        layers = model.get_base_model().config.num_hidden_layers
    per_layer = mask_draws[False] // layers
    recomputed_layers = len(range(0, layers, every_n_layers))
    assert mask_draws[True] == mask_draws[False] + recomputed_layers * per_layer  # the backward really recomputed
    assert gradients[False].keys() == gradients[True].keys()
    for name, gradient in gradients[False].items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradients[True][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def lora_layer(p: float, bias: bool):
    """One PEFT LoRA layer (r 4, alpha 8) over a frozen nn.Linear, with B non-zero so A gets a gradient."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("proj", torch.nn.Linear(24, 40, bias=bias))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=p, target_modules=["proj"]))
    use_sparse_dropout(model)
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    return model, layer


def forward_and_gradients(model, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    original = x.clone()
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    assert torch.equal(x.detach(), original)  # the fused layer zeroes dropped inputs in place only for a moment
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out.detach(), {"x": x.grad, **grads}


@pytest.mark.parametrize("p,bias", [(0.0, False), (0.3, False), (0.3, True)])
def test_fused_lora_layer_computes_what_peft_computes(p, bias):
    """Output and gradients (input, A, B) of the fused layer equal PEFT's forward with the same dropout mask."""
    from framesft.cpu_lora import use_fused_lora

    x = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(1))
    model, layer = lora_layer(p, bias)
    expected, expected_grads = forward_and_gradients(model, x, seed=5)
    model.zero_grad()
    assert use_fused_lora(model) == 1
    fused, fused_grads = forward_and_gradients(model, x, seed=5)  # the same seed draws the same mask
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == expected_grads.keys() == {"x", "base_model.model.proj.lora_A.default.weight",
                                                           "base_model.model.proj.lora_B.default.weight"}
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    if p:  # the dropout did drop: another seed gives another output
        assert not torch.allclose(forward_and_gradients(model, x, seed=6)[0], fused)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_lora_under_bf16_autocast_computes_what_peft_computes(p):
    """The plan where bf16 is fast: frozen weights in bf16, LoRA weights fp32, bf16 autocast. The fused layer's
    output and gradients are PEFT's under the same autocast to bf16 rounding (no further from fp32 arithmetic
    than PEFT's), and the LoRA weights get fp32 gradients."""
    from framesft.cpu_lora import use_fused_lora

    x = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    model, layer = lora_layer(p, False)
    exact_model, _ = lora_layer(p, False)  # the same weights (seeded), all fp32, no autocast: the reference
    exact, exact_grads = forward_and_gradients(exact_model, x.float(), seed=5)
    layer.base_layer.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_grads = forward_and_gradients(model, x, seed=5)
        model.zero_grad()
        assert use_fused_lora(model) == 1
        assert type(model(x).grad_fn).__name__ == "_FusedLoraLinearBackward"
        model.zero_grad()
        fused, fused_grads = forward_and_gradients(model, x, seed=5)
    assert fused.dtype == expected.dtype == torch.bfloat16
    assert fused_grads.keys() == expected_grads.keys()
    assert {fused_grads[n].dtype for n in fused_grads if "lora" in n} == {torch.float32}
    for name, value, reference in [("output", fused, expected), *((n, fused_grads[n], g)
                                                                   for n, g in expected_grads.items())]:
        exact_value = exact if name == "output" else exact_grads[name]
        assert reference.abs().sum() > 0, name
        scale = exact_value.float().abs().max()
        fused_error = (value.float() - exact_value.float()).abs().max() / scale
        peft_error = (reference.float() - exact_value.float()).abs().max() / scale
        assert fused_error < 0.02, name  # bf16 keeps 8 bits: relative rounding about 0.004 per operation
        assert fused_error <= 2 * peft_error + 0.005, name
        torch.testing.assert_close(value.float(), reference.float(), rtol=0.03, atol=0.03 * float(scale), msg=name)


def test_fused_lora_runs_only_in_training_and_leaves_the_rest_to_peft():
    from framesft.cpu_lora import use_fused_lora

    model, layer = lora_layer(0.3, False)
    use_fused_lora(model)
    x = torch.randn(5, 24)
    assert type(model(x).grad_fn).__name__ == "_FusedLoraLinearBackward"
    model.eval()  # scoring: PEFT's forward, no dropout
    with torch.no_grad():
        expected = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * 2.0
    torch.testing.assert_close(model(x), expected)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast over fp32 frozen weights: PEFT's forward
        assert type(model(x).grad_fn).__name__ != "_FusedLoraLinearBackward"
    model.merge_adapter()  # merged weights: PEFT's forward
    assert type(model(x).grad_fn).__name__ != "_FusedLoraLinearBackward"
    model.unmerge_adapter()
    layer.base_layer.bias = torch.nn.Parameter(torch.zeros(40))  # a trained bias (PEFT's bias="all")
    assert type(model(x).grad_fn).__name__ != "_FusedLoraLinearBackward"


def test_cli_processes_plan_for_the_simulated_cpu(cpu_kind, tmp_path):
    """Under --cpu-kind the framesft processes the tests start see the same CPU as the test process."""
    import subprocess
    import sys

    from conftest import CPU_KINDS
    from framesft.precision import cpu_flags

    code = "from framesft.precision import cpu_flags, cpu_prefers_bf16; print(sorted(cpu_flags() & {'amx_bf16', " \
           "'avx512_bf16'}), cpu_prefers_bf16())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = cpu_flags() if cpu_kind == "native" else CPU_KINDS[cpu_kind][0]
    assert done.stdout.split("]")[0] + "]" == str(sorted(expected & {"amx_bf16", "avx512_bf16"}))
    if cpu_kind == "amx":
        assert done.stdout.strip().endswith("True")


# ------------------------------------------------------------------ fp32 scoring's linear layers through oneDNN


def count_onednn_calls(monkeypatch) -> list[int]:
    """Counts the calls of precision.onednn_linear (through which a routed layer computes) from now on."""
    import framesft.precision as precision

    calls, route = [0], precision.onednn_linear

    def counted(*args, **kwargs):
        calls[0] += 1
        return route(*args, **kwargs)

    monkeypatch.setattr(precision, "onednn_linear", counted)
    return calls


def test_onednn_linear_layers_score_as_the_stock_ones(tiny_model_dir, tmp_path, monkeypatch):
    """Routed through oneDNN, every nn.Linear of a scoring model gives fp32 results: the same labels and scores up
    to float rounding as ATen's; the weights are the same tensors (tied ones stay tied)."""
    from conftest import tiny_config
    from framesft.methods import build_method
    from framesft.modeling import load_base_model, load_tokenizer
    from framesft.precision import resolve_plan, use_onednn_linears

    config = tiny_config(tiny_model_dir, tmp_path / "run")
    config.evaluation.onednn_linears = False
    model = load_base_model(config, tiny_model_dir, resolve_plan(config, torch.device("cpu")), for_training=False)
    model.eval()
    labels = ["Conflict", "Economic", "None"]
    scorer = build_method(config, load_tokenizer(tiny_model_dir, False), labels).scorer(model)
    texts = pd.read_csv(SAMPLE_DATA / "test.csv", keep_default_na=False)["chunk_text"].tolist()[:24]
    calls = count_onednn_calls(monkeypatch)
    stock = scorer.score_texts(texts).scores
    assert calls[0] == 0
    weights = {name: p.data_ptr() for name, p in model.named_parameters()}
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert use_onednn_linears(model) == len(linears) > 0
    routed = scorer.score_texts(texts).scores
    assert calls[0] >= len(linears)
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == weights
    assert np.array_equal(routed.argmax(axis=1), stock.argmax(axis=1))
    assert np.abs(routed - stock).max() < 1e-4 * max(1.0, np.abs(stock).max())


def test_a_onednn_linear_layer_steps_aside_where_it_would_compute_something_else():
    """bf16 inputs and anything autograd must differentiate take the stock forward, bit for bit."""
    from framesft.precision import use_onednn_linears

    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    stock = torch.nn.Linear(16, 8)
    stock.load_state_dict(layer.state_dict())
    use_onednn_linears(layer)
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        assert torch.allclose(layer(x), stock(x), rtol=1e-5, atol=1e-6)
    trained = layer(x.requires_grad_())  # gradients wanted: ATen's forward, with its backward
    assert torch.equal(trained, stock(x)) and trained.grad_fn is not None
    trained.sum().backward()
    assert layer.weight.grad is not None
    bf16 = layer.to(torch.bfloat16)
    stock = stock.to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(bf16(x.detach().bfloat16()), stock(x.detach().bfloat16()))


def test_a_onednn_result_that_is_not_fp32_is_never_taken(monkeypatch):
    """The probe compares oneDNN's result with ATen's: a build that rounded fp32 inputs to bf16 (allowed under
    torch's bf16 matmul precision) measures 0 and the plan keeps ATen, however fast it is."""
    import framesft.precision as precision

    assert precision.measure_linear_gflops("onednn", size=256) > 0  # oneDNN's fp32 result passes on this CPU
    rounding = lambda x, weight, bias=None: torch.nn.functional.linear(x.bfloat16(), weight.bfloat16()).float()
    monkeypatch.setattr(precision, "onednn_linear", rounding)
    assert precision.measure_linear_gflops("onednn", size=256) == 0.0
    # the plan's rates as cpu_fp32_linear_rates measures them (uncached here: --cpu-kind replaces that function)
    monkeypatch.setattr(precision, "cpu_fp32_linear_rates",
                        lambda: {route: precision.measure_linear_gflops(route, size=256) for route in ("aten", "onednn")})
    assert not precision.cpu_prefers_onednn_fp32()


@pytest.mark.parametrize("kind, onednn, cascade", [
    ("zen5", True, False),          # oneDNN fp32 2.2x MKL: bf16 is then 2.1x fp32 scoring, too little to cascade
    ("amx", False, True),           # oneDNN level with MKL; bf16 3.8x fp32: the cascade
    ("avx512_bf16", False, False),
    ("avx2", False, False),
])
def test_the_plan_routes_fp32_scoring_through_onednn_where_it_measures_faster(monkeypatch, tiny_model_dir, tmp_path,
                                                                              kind, onednn, cascade):
    from conftest import simulate_cpu, tiny_config
    from framesft.errors import ConfigError
    from framesft.precision import resolve_plan

    simulate_cpu(monkeypatch, kind)
    cpu = torch.device("cpu")
    config = tiny_config(tiny_model_dir, tmp_path / "run", bf16=True)
    plan = resolve_plan(config, cpu)
    assert (plan.onednn_linears, plan.scoring_cascade, plan.scoring_weights) == (onednn, cascade, "float32")
    assert ("oneDNN linear layers" in plan.line()) is onednn
    assert plan.to_dict()["cpu"]["fp32_linear_gflops"]["onednn"] > 0
    config.evaluation.onednn_linears = False  # never: on Zen 5 the cascade pays again against MKL's fp32
    plan = resolve_plan(config, cpu)
    assert not plan.onednn_linears and plan.scoring_cascade is (kind in ("zen5", "amx"))
    assert plan.cpu.fp32_linear_gflops is None  # not measured where nothing depends on it
    config.evaluation.onednn_linears = True  # always: on every CPU
    assert resolve_plan(config, cpu).onednn_linears
    config.model.dtype = "bfloat16"
    with pytest.raises(ConfigError, match="evaluation.onednn_linears is true but model.dtype is bfloat16"):
        resolve_plan(config, cpu)
    config.evaluation.onednn_linears = None  # bf16 weights: nothing to route
    assert not resolve_plan(config, cpu).onednn_linears


def test_corpus_prediction_through_onednn_has_the_aten_labels(trained_run, tmp_path, monkeypatch):
    from conftest import simulate_cpu
    from framesft.corpus import predict_corpus

    texts = pd.read_csv(SAMPLE_DATA / "test.csv", keep_default_na=False)
    corpus = tmp_path / "corpus.csv"
    texts[["chunk_text"]].to_csv(corpus, index=False)
    calls = count_onednn_calls(monkeypatch)
    simulate_cpu(monkeypatch, "avx2")  # ATen's fp32
    predict_corpus(trained_run.run_dir, corpus, tmp_path / "aten.csv", show_progress=False)
    assert calls[0] == 0
    simulate_cpu(monkeypatch, "zen5")  # oneDNN's fp32, no cascade
    predict_corpus(trained_run.run_dir, corpus, tmp_path / "onednn.csv", show_progress=False)
    assert calls[0] > 0
    aten = pd.read_csv(tmp_path / "aten.csv", keep_default_na=False)
    routed = pd.read_csv(tmp_path / "onednn.csv", keep_default_na=False)
    assert list(routed["predicted"]) == list(aten["predicted"])
    probabilities = [c for c in aten.columns if c.startswith("p_")]
    assert np.abs(routed[probabilities].to_numpy() - aten[probabilities].to_numpy()).max() < 1e-4
