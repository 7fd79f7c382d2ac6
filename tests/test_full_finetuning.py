"""Full fine-tuning (training.use_lora: false): the model's own weights train, the token embeddings stay frozen, the
run folder holds the whole model in model/, and everything that reads a run (evaluate, predict, export) uses it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from framesft.config import load_config
from framesft.errors import ConfigError, RunFolderError
from framesft.precision import resolve_plan

from conftest import simulate_cpu, tiny_config


@pytest.mark.slow
def test_full_finetuning_trains_every_weight_but_the_embeddings_and_the_run_reproduces_itself(tiny_model_dir,
                                                                                               tmp_path, caplog):
    from framesft.export import export_merged
    from test_training import assert_saved_adapter_reproduces_written_predictions

    from framesft.training import train

    config = tiny_config(tiny_model_dir, tmp_path / "run", use_lora=False)
    result = train(config, show_progress=False)
    # the best checkpoint was reloaded (2 epochs, one checkpoint each) without a false alarm about the tied LM head
    assert "missing keys" not in caplog.text
    run_dir = result.run_dir
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "model" / "config.json").is_file()
    assert not (run_dir / "adapter").exists()

    base = load_file(f"{tiny_model_dir}/model.safetensors")
    tuned = load_file(str(run_dir / "model" / "model.safetensors"))
    assert set(tuned) == set(base)
    embedding = "model.embed_tokens.weight"
    assert torch.equal(tuned[embedding], base[embedding])  # frozen, and with it the tied LM head
    changed = [name for name in base if name != embedding and not torch.equal(tuned[name], base[name])]
    assert changed == [name for name in base if name != embedding]  # every other weight moved, norms included

    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["trainable_parameters"] == sum(t.numel() for n, t in base.items() if n != embedding)
    plan = summary["compute_plan"]
    assert (plan["training_weights"], plan["autocast"]) == ("float32", None)
    assert plan["fused_cpu_ops"] == ["fused_rotary"]  # no LoRA layers; trained norm weights keep the stock norm
    state = json.loads((run_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < 0.7 * losses[0]

    # evaluate/predict reload the model folder and reproduce the run's own predictions; export writes it out
    assert_saved_adapter_reproduces_written_predictions(run_dir)
    exported = load_file(str(export_merged(run_dir, tmp_path / "export") / "model.safetensors"))
    assert all(torch.equal(exported[name], tuned[name]) for name in tuned)


def test_full_finetuning_plan_trains_fp32_weights_on_every_kind_of_cpu_and_gpu(monkeypatch):
    full = load_config(None, ["training.use_lora=false", "training.bf16=true"])
    simulate_cpu(monkeypatch, "amx")  # LoRA would train over bf16 weights here; trained weights stay fp32
    plan = resolve_plan(full, torch.device("cpu"))
    assert (plan.training_weights, plan.scoring_weights, plan.autocast, plan.fused_cpu_ops) == (
        "float32", "float32", "bf16", ())
    lora = resolve_plan(load_config(None, ["training.bf16=true"]), torch.device("cpu"))
    assert (lora.training_weights, lora.autocast) == ("bfloat16", "bf16")

    simulate_cpu(monkeypatch, "avx2")  # bf16 slower: fp32 without autocast, the fused rotary (weightless) only
    plan = resolve_plan(full, torch.device("cpu"))
    assert (plan.training_weights, plan.autocast, plan.fused_cpu_ops) == ("float32", None, ("fused_rotary",))

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    plan = resolve_plan(full, torch.device("cuda:0"))  # the plan only: nothing is placed on the GPU
    assert (plan.training_weights, plan.scoring_weights, plan.autocast) == ("float32", "bfloat16", "bf16")
    assert plan.reloads_for_scoring and "full fine-tuning trains fp32 weights" in plan.reason


def test_full_finetuning_refuses_what_cannot_train_and_notes_the_lora_keys(caplog):
    for overrides, fragment in [
        (["model.load_in_4bit=true"], "4-bit weights cannot be trained themselves"),
        (["model.dtype=float16"], "model.dtype is float16: the optimizer would update the weights in half"),
        (["training.init_adapter=runs/tapt"], "training: init_adapter continues a LoRA adapter, but use_lora is false"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_config(None, ["training.use_lora=false", *overrides])
        assert fragment in str(error.value) and "\n  - :" not in str(error.value)
    load_config(None, ["training.use_lora=false", "training.lora_r=8", "training.lora_alpha=16"])
    assert "training.lora_r, training.lora_alpha have no effect: training.use_lora is false" in caplog.text


def test_pretraining_refuses_full_finetuning_before_loading_anything(tmp_path):
    from framesft.pretraining import pretrain

    with pytest.raises(ConfigError, match="framesft pretrain trains a LoRA adapter"):
        pretrain(load_config(None, ["training.use_lora=false"]), tmp_path / "tapt")
    assert not (tmp_path / "tapt").exists()


def test_a_run_folder_without_adapter_or_model_is_refused_with_both_names(tmp_path):
    from framesft.runfolder import check_run_folder

    for name in ("config.yaml", "label_map.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(RunFolderError, match="missing adapter/, or model/ after full fine-tuning"):
        check_run_folder(tmp_path)
    (tmp_path / "model").mkdir()
    check_run_folder(tmp_path)


@pytest.mark.slow
def test_classification_head_fully_fine_tuned_saves_and_reloads_its_head(tiny_model_dir, tmp_path):
    from test_training import assert_saved_adapter_reproduces_written_predictions

    from framesft.training import train

    config = tiny_config(tiny_model_dir, tmp_path / "head", use_lora=False, num_epochs=1)
    config.method = "classification"
    result = train(config, show_progress=False)
    tuned = load_file(str(result.run_dir / "model" / "model.safetensors"))
    assert tuned["score.weight"].shape[0] == len(result.labels)  # the new head, trained and saved with the model
    assert_saved_adapter_reproduces_written_predictions(result.run_dir)
