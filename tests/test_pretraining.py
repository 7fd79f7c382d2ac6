"""framesft pretrain (task-adaptive pretraining): the causal-LM loss equals the stock one, the pass lowers the
held-out perplexity, SFT starts from its adapter, and bad input or an interruption leaves nothing behind."""

import json

import pandas as pd
import pytest
import torch
from conftest import tiny_config

from framesft.errors import DataError, RunFolderError
from framesft.pretraining import CausalLMCollator, causal_lm_loss, pretrain


@pytest.fixture(scope="module")
def passages_file(tmp_path_factory):
    """The sample passages without their labels (pretraining must not need them)."""
    from framesft.config import resolve_data_dir

    train = pd.read_csv(resolve_data_dir("framesft:sample_data") / "train.csv")
    path = tmp_path_factory.mktemp("texts") / "passages.csv"
    train[["chunk_text"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def pretrained(tiny_model_dir, passages_file, tmp_path_factory):
    config = tiny_config(tiny_model_dir, tmp_path_factory.mktemp("unused"))
    config.model.dtype = "float32"
    run_dir = tmp_path_factory.mktemp("tapt") / "run"
    return pretrain(config, run_dir, [passages_file], epochs=2, show_progress=False)


def test_the_causal_lm_loss_is_the_stock_loss_on_padded_batches(tiny_model_dir):
    """Our loss (right padding, padding ignored) against transformers' own causal-LM loss, one row at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = [[5, 17, 300, 42, 8, 99], [7, 1000, 12], [3, 4]]
    batch = CausalLMCollator(pad_id=0)([{"input_ids": ids} for ids in rows])
    with torch.no_grad():
        ours = causal_lm_loss(model, batch, reduction="sum")
        stock = sum(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss * (len(ids) - 1)
                    for ids in rows)
    assert float(ours) == pytest.approx(float(stock), rel=1e-5)


def test_pretraining_lowers_the_held_out_perplexity_and_writes_a_complete_folder(pretrained):
    run_dir, summary = pretrained.run_dir, pretrained.summary
    assert sorted(p.name for p in run_dir.iterdir()) == ["adapter", "config.yaml", "pretrain_summary.json",
                                                         "train.log"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "pretrain_summary.json").read_text()) == summary
    assert summary["passages"] == 60 and summary["held_out_passages"] == 3  # 5% of the sample's 60 passages
    assert summary["training_passages"] == 57 and summary["global_step"] == 2 * 15  # 2 epochs of batches of 4
    perplexity = summary["held_out_perplexity"]
    assert perplexity["after"] < 0.9 * perplexity["before"]
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_sft_starts_from_the_pretrained_adapter(pretrained, tiny_model_dir, tmp_path):
    from framesft.training import train

    config = tiny_config(tiny_model_dir, tmp_path / "sft", init_adapter=str(pretrained.run_dir), max_steps=2)
    config.model.dtype = "float32"
    result = train(config, show_progress=False)
    assert result.global_step == 2 and (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # Two steps move the LoRA B matrices a little; from new LoRA weights (B = 0) they would lie as far from the
    # pretrained ones as those lie from 0.
    pretrained_b = lora_b_weights(pretrained.run_dir)
    trained_b = lora_b_weights(result.run_dir)
    distance = torch.cat([(trained_b[k] - pretrained_b[k]).flatten() for k in pretrained_b]).norm()
    size = torch.cat([w.flatten() for w in pretrained_b.values()]).norm()
    assert size > 0 and distance < 0.5 * size


def lora_b_weights(run_dir):
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return {name: w for name, w in weights.items() if "lora_B" in name}


def test_a_missing_text_column_names_the_file_and_leaves_no_folder(tiny_model_dir, tmp_path):
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"passage": ["one text here", "another one"]}).to_csv(texts, index=False)
    config = tiny_config(tiny_model_dir, tmp_path / "unused")
    with pytest.raises(DataError, match="chunk_text"):
        pretrain(config, tmp_path / "run", [texts], show_progress=False)
    assert not (tmp_path / "run").exists()


def test_an_interrupted_pass_leaves_nothing_and_an_existing_folder_is_kept(tiny_model_dir, passages_file,
                                                                            tmp_path, monkeypatch):
    from framesft import pretraining

    config = tiny_config(tiny_model_dir, tmp_path / "unused")
    config.model.dtype = "float32"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretraining.PretrainTrainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, tmp_path / "run", [passages_file], show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="--overwrite"):
        pretrain(config, tmp_path / "run", [passages_file], show_progress=False)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_one_passage_per_near_duplicate_group_the_first():
    """With data.drop_near_duplicates the default texts are the rows SFT trains on: the first of each group."""
    from framesft.pretraining import first_of_each_group

    words = "trade deal border customs fishing farmers jobs parliament vote people rights treaty".split()
    first = " ".join(words[(i * 7) % len(words)] + str(i) for i in range(60))  # 60 distinct words
    rewrite = first.replace("0 ", "0x ", 1)  # one word changed: nearly all 5-word phrases shared
    other = " ".join(reversed(first.split())).replace("1", "y")
    assert first_of_each_group([first, other, rewrite], 0.3) == [first, other]
    assert first_of_each_group([rewrite, first, other], 0.3) == [rewrite, other]
