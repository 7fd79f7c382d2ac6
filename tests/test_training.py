"""End-to-end: train the tiny random Llama for real (a few steps), then evaluate and predict from its run folder."""

import json
import logging
import subprocess
import sys

import pandas as pd
import pytest
import torch

from framesft.inference import load_classifier, predict_texts
from framesft.methods.sft import AnswerOnlyCollator, answer_only_loss, full_sequence_loss
from framesft.training import train

from conftest import FRAMES, SAMPLE_DATA, tiny_config

pytestmark = pytest.mark.slow

RUN_FILES = [
    "config.yaml", "label_map.json", "data_report.json", "train.log", "trainer_state.json", "run_summary.json",
    "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
    "metrics_validation.json", "metrics_test.json", "per_class_test.csv", "confusion_matrix_test.csv",
    "confusion_matrix_test.png", "predictions_test.csv",
]


def test_run_folder_is_complete(trained_run):
    missing = [name for name in RUN_FILES if not (trained_run.run_dir / name).exists()]
    assert missing == []
    adapter_files = {p.suffix for p in (trained_run.run_dir / "adapter").iterdir()}
    assert adapter_files <= {".safetensors", ".json", ".jinja", ".md"}  # weights as safetensors, no pickles
    label_map = json.loads((trained_run.run_dir / "label_map.json").read_text())
    assert list(label_map["label2id"]) == sorted(FRAMES)  # no label2id in the config: sorted from the data
    data_report = json.loads((trained_run.run_dir / "data_report.json").read_text())
    assert data_report["training_rows"].startswith("all ") and data_report["validation_source"]


def test_loss_falls_and_validation_metrics_are_logged(trained_run):
    state = json.loads((trained_run.run_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 3
    assert losses[-1] < 0.7 * losses[0]
    evaluations = [entry for entry in state["log_history"] if "eval_f1_macro" in entry]
    assert len(evaluations) == 3  # once per epoch
    assert state["best_metric"] == max(e["eval_f1_macro"] for e in evaluations)


def test_test_metrics_are_real_and_predictions_are_valid_labels(trained_run):
    metrics = json.loads((trained_run.run_dir / "metrics_test.json").read_text())
    assert metrics["n"] == 24 and sum(map(sum, metrics["confusion_matrix"])) == 24
    predictions = pd.read_csv(trained_run.run_dir / "predictions_test.csv", keep_default_na=False)
    assert set(predictions["predicted"]) <= set(FRAMES)
    probabilities = predictions[[f"p_{label}" for label in metrics["labels"]]].sum(axis=1)
    assert probabilities.round(6).eq(1.0).all()
    accuracy = (predictions["predicted"] == predictions["label"]).mean()
    assert accuracy == pytest.approx(metrics["accuracy"])


def test_answer_only_loss_equals_the_full_sequence_loss(tiny_model_dir, tokenizer):
    """Projecting only the answer positions must give the same loss as the model's own full-logits loss."""
    from transformers import AutoModelForCausalLM

    from framesft.config import PromptSection
    from framesft.prompting import PromptBuilder

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    builder = PromptBuilder(tokenizer, FRAMES, PromptSection(), max_length=256)
    examples = [builder.encode_example(text, label) for text, label in
                [("Tariffs cost jobs.", "Economic"), ("A much longer passage about the moral duty " * 3, "Moral Value"),
                 ("Order.", "None")]]
    batch = AnswerOnlyCollator(tokenizer.pad_token_id)([e.__dict__ for e in examples])
    ours = answer_only_loss(model, batch)
    torch.testing.assert_close(ours, full_sequence_loss(model, batch), atol=1e-5, rtol=1e-5)

    # training.label_smoothing, against its definition: per answer token (1 - e) * NLL + e * mean over the
    # vocabulary of -log p, averaged over the answer tokens, from the full sequence's logits
    smoothing = 0.1
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       position_ids=batch["position_ids"]).logits[:, :-1].float(), -1)
        targets = batch["labels"][:, 1:]
        answer = targets != -100
        nll = -logp[answer].gather(-1, targets[answer][:, None]).squeeze(-1)
        expected = ((1 - smoothing) * nll + smoothing * -logp[answer].mean(-1)).mean()
        torch.testing.assert_close(answer_only_loss(model, batch, smoothing), expected, atol=1e-5, rtol=1e-5)
    assert answer_only_loss(model, batch, smoothing) > ours  # spreading mass costs likelihood on the answers


def test_cli_evaluate_and_predict_on_the_trained_run(trained_run, tmp_path):
    run = str(trained_run.run_dir)
    done = subprocess.run([sys.executable, "-m", "framesft.cli", "--quiet", "evaluate", run,
                           "--data", str(SAMPLE_DATA / "test.csv"), "--output-dir", str(tmp_path / "eval")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("metrics_eval.json", "per_class_eval.csv", "confusion_matrix_eval.png", "predictions_eval.csv"):
        assert (tmp_path / "eval" / name).is_file()
    same = json.loads((tmp_path / "eval" / "metrics_eval.json").read_text())
    assert same["f1_macro"] == pytest.approx(trained_run.metrics["test"]["f1_macro"], abs=1e-9)

    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"doc": ["d1", "d2", "d3"], "chunk_text": ["Tariffs cost jobs.", "Order, order.", "None"]}).to_csv(
        corpus, index=False)
    done = subprocess.run([sys.executable, "-m", "framesft.cli", "--quiet", "predict", run, "--input", str(corpus),
                           "--output", str(tmp_path / "out.parquet"), "--id-column", "doc"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["doc"].tolist() == ["d1", "d2", "d3"]
    assert set(out["predicted"]) <= set(FRAMES)
    assert {"margin", *(f"p_{label}" for label in FRAMES)} <= set(out.columns)

    done = subprocess.run([sys.executable, "-m", "framesft.cli", "predict", run, "--text", "The pound has fallen."],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("predicted,p_")
    assert done.stdout.splitlines()[1].split(",")[0] in FRAMES


def test_existing_run_folder_is_refused_without_overwrite(trained_run, tiny_model_dir):
    from framesft.errors import RunFolderError

    with pytest.raises(RunFolderError, match="already exists; pass --overwrite"):
        train(tiny_config(tiny_model_dir, trained_run.run_dir), show_progress=False)


def assert_saved_adapter_reproduces_written_predictions(run_dir):
    """The metrics a run writes are the ones its saved adapter reproduces (same probabilities, same labels)."""
    classifier = load_classifier(run_dir)
    written = pd.read_csv(run_dir / "predictions_test.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(SAMPLE_DATA / "test.csv", dtype=str, keep_default_na=False)
    frame = predict_texts(classifier, test["chunk_text"].tolist())
    columns = [f"p_{label}" for label in FRAMES]
    assert abs(frame[columns].to_numpy() - written[columns].astype(float).to_numpy()).max() < 1e-4
    assert frame["predicted"].tolist() == written["predicted"].tolist()


def test_in_memory_classifier_matches_reloaded_run(trained_run):
    assert_saved_adapter_reproduces_written_predictions(trained_run.run_dir)


def test_bf16_run_writes_the_metrics_its_adapter_reproduces(tiny_model_dir, tmp_path):
    """bf16 base weights and autocast train (forced, on every CPU: without native bf16 torch emulates it, slower),
    but the final metrics are computed without the trainer's autocast wrapper, on the merged model `evaluate`
    reloads."""
    config = tiny_config(tiny_model_dir, tmp_path / "run", bf16=True, num_epochs=1)
    config.model.dtype = "bfloat16"
    result = train(config, show_progress=False)
    plan = json.loads((result.run_dir / "run_summary.json").read_text())["compute_plan"]
    assert (plan["training_weights"], plan["scoring_weights"], plan["autocast"]) == ("bfloat16", "bfloat16", "bf16")
    assert_saved_adapter_reproduces_written_predictions(result.run_dir)


def test_run_trained_on_bf16_weights_reports_the_fp32_metrics_evaluate_reproduces(tiny_model_dir, tmp_path,
                                                                                   monkeypatch, caplog):
    """Where bf16 is the faster CPU choice (AMX, simulated here) training holds the base in bf16 but scoring
    uses fp32 weights: the run's final metrics come from the reloaded fp32 model, as `evaluate` computes them.
    The plan is decided once for training (and once more by the reload, which is `evaluate`'s own loading)."""
    import framesft.inference as inference
    import framesft.training as training
    from conftest import simulate_cpu
    from framesft.precision import resolve_plan

    simulate_cpu(monkeypatch, "amx")
    caplog.set_level(logging.INFO, logger="framesft")
    decided = []
    for module in (training, inference):
        monkeypatch.setattr(module, "resolve_plan", lambda *a, **k: decided.append(1) or resolve_plan(*a, **k))
    config = tiny_config(tiny_model_dir, tmp_path / "run", bf16=True, num_epochs=1)
    result = train(config, show_progress=False)
    assert len(decided) == 2
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    plan = summary["compute_plan"]
    assert (plan["training_weights"], plan["scoring_weights"], plan["autocast"]) == ("bfloat16", "float32", "bf16")
    assert plan["fused_cpu_ops"] == ["sparse_dropout", "fused_lora", "fused_norms", "fused_rotary"]
    assert plan["cpu"]["amx_bf16"]
    software = summary["software"]  # what produced the run
    assert {"python", "framesft", "torch", "transformers", "peft", "accelerate"} <= set(software)
    import transformers
    assert software["transformers"] == transformers.__version__
    logged = [line for line in (result.run_dir / "train.log").read_text().splitlines() if "compute plan:" in line]
    assert len(logged) == 1 and plan["line"] in logged[0]
    assert_saved_adapter_reproduces_written_predictions(result.run_dir)


def test_training_continues_from_a_saved_adapter(trained_run, tiny_model_dir, tmp_path):
    """training.init_adapter: the run starts from the saved LoRA weights (trainable), not from new ones."""
    from safetensors.torch import load_file

    from framesft.errors import ConfigError
    from framesft.methods import build_method
    from framesft.modeling import load_tokenizer
    from framesft.precision import resolve_plan
    from framesft.training import trainable_model

    saved = load_file(str(trained_run.run_dir / "adapter" / "adapter_model.safetensors"))
    config = tiny_config(tiny_model_dir, tmp_path / "run", init_adapter=str(trained_run.run_dir), max_steps=1)
    config.model.dtype = "float32"
    method = build_method(config, load_tokenizer(tiny_model_dir, False), trained_run.labels)
    model = trainable_model(config, tiny_model_dir, method, trained_run.labels, resolve_plan(config, torch.device("cpu")))
    loaded = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(saved) and all(p.requires_grad for p in loaded.values())
    for name, weights in saved.items():  # PEFT stores them without the adapter name
        match = [p for n, p in loaded.items() if n.replace(".default", "") == name]
        assert len(match) == 1 and torch.equal(match[0].detach(), weights), name
    result = train(config, show_progress=False)  # one step on top of the saved adapter, end to end
    assert result.global_step == 1 and (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()

    config.training.init_adapter = str(tmp_path)  # no adapter there: a clear error naming the key
    with pytest.raises(ConfigError, match="training.init_adapter"):
        trainable_model(config, tiny_model_dir, method, trained_run.labels, resolve_plan(config, torch.device("cpu")))


def test_neftune_noise_is_added_in_training_steps_only(tiny_model_dir, tmp_path, monkeypatch):
    """training.neftune_noise_alpha: each training forward pass gets embedding noise within the paper's bound;
    validation scoring during training and the run's final metrics see the clean embeddings."""
    import transformers.integrations.neftune as neftune

    calls = []  # (module in training mode, largest |noise|, alpha / sqrt(length x hidden) + the dtype's rounding)
    original = neftune.neftune_post_forward_hook

    def recording_hook(module, inputs, output):
        noised = original(module, inputs, output)
        bound = module.neftune_noise_alpha / (output.size(1) * output.size(2)) ** 0.5
        bound += torch.finfo(output.dtype).eps * output.abs().max().item()  # output + noise rounds (bf16 on CPU)
        calls.append((module.training, (noised - output).abs().max().item(), bound))
        return noised

    monkeypatch.setattr(neftune, "neftune_post_forward_hook", recording_hook)
    train(tiny_config(tiny_model_dir, tmp_path / "off", max_steps=2, eval_steps=2), show_progress=False)
    assert calls == []  # off by default

    config = tiny_config(tiny_model_dir, tmp_path / "on", max_steps=3, eval_steps=2, neftune_noise_alpha=5)
    result = train(config, show_progress=False)
    in_training = [c for c in calls if c[0]]
    assert len(in_training) == 3  # one forward pass per step (batch 4, no accumulation)
    assert all(0 < noise <= bound for _, noise, bound in in_training), in_training
    # validation after steps 2 and 3 runs in eval mode: the hook passes the embeddings through unchanged
    assert [noise for training, noise, _ in calls if not training] and all(
        noise == 0 for training, noise, _ in calls if not training)
    assert "neftune_noise_alpha: 5" in (result.run_dir / "config.yaml").read_text()
    assert_saved_adapter_reproduces_written_predictions(result.run_dir)  # final metrics from clean embeddings


def test_out_of_memory_retries_with_half_batch_and_double_accumulation(tiny_model_dir, tmp_path, monkeypatch):
    import framesft.training as training

    attempts = []
    real_run_training = training.run_training

    def run_training_that_runs_out_of_memory_once(trainer, *args, **kwargs):
        attempts.append((trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps))
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run_training(trainer, *args, **kwargs)

    monkeypatch.setattr(training, "run_training", run_training_that_runs_out_of_memory_once)
    config = tiny_config(tiny_model_dir, tmp_path / "oom", num_epochs=1, batch_size=4, gradient_accumulation_steps=2,
                         oom_retry=True)
    result = train(config, show_progress=False)
    assert attempts == [(4, 2), (2, 4)]
    assert result.global_step == 6  # 48 rows / effective batch 8: the same number of optimizer steps

    monkeypatch.setattr(training, "run_training", lambda *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("simulated")))
    from framesft.errors import FrameSFTError

    with pytest.raises(FrameSFTError, match="set training.oom_retry: true"):
        train(tiny_config(tiny_model_dir, tmp_path / "oom2", num_epochs=1), show_progress=False)


def test_classification_head_method_trains_evaluates_and_predicts(tiny_model_dir, tmp_path):
    """method: classification shares data, checks, metrics, early stopping and the run folder layout."""
    config = tiny_config(tiny_model_dir, tmp_path / "head", num_epochs=3, learning_rate=5e-3)
    config.method = "classification"
    result = train(config, show_progress=False)
    missing = [name for name in RUN_FILES if not (result.run_dir / name).exists()]
    assert missing == []
    state = json.loads((result.run_dir / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    assert len([e for e in state["log_history"] if "eval_f1_macro" in e]) == 3
    from safetensors import safe_open

    with safe_open(str(result.run_dir / "adapter" / "adapter_model.safetensors"), "pt") as handle:
        assert any("score" in key for key in handle.keys())  # the head is saved with the adapter
    classifier = load_classifier(result.run_dir)
    frame = predict_texts(classifier, ["The pound has fallen sharply.", "Order, order."])
    assert set(frame["predicted"]) <= set(FRAMES)
    assert frame[[f"p_{label}" for label in classifier.labels]].sum(axis=1).round(6).eq(1).all()
