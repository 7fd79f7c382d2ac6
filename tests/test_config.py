from pathlib import Path

import pytest
import yaml

from framesft.config import FrameSFTConfig, load_config
from framesft.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

LEGACY_CONFIG = """
model:
  name: mistral-7b
  base_model: mistralai/Mistral-7B-v0.1
  trust_remote_code: false
data:
  data_dir: data/processed
  train_csv: train.csv
  validation_csv: val.csv
  test_csv: test.csv
  text_column: chunk_text
  label_column: frame_name
  max_length: 512
  label2id: {Conflict: 0, Moral Value: 1, Economic: 2, Powerlessness: 3, Human Impact: 4, None: 5}
  num_labels: 6
training:
  use_lora: true
  lora_r: 16
  lora_alpha: 32
  lora_dropout: 0.05
  lora_target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  num_epochs: 5
  batch_size: 4
  gradient_accumulation_steps: 8
  learning_rate: "5e-5"
  weight_decay: "0.01"
  warmup_steps: 100
  max_grad_norm: 1.0
  fp16: false
  bf16: true
  optimizer: adamw_torch
  lr_scheduler: cosine
  logging_steps: 10
  eval_steps: 100
  save_steps: 100
  save_total_limit: 3
  output_dir: outputs/mistral
  checkpoint_dir: outputs/mistral/checkpoints
hardware:
  gpu: true
  num_gpus: 1
  device_map: auto
evaluation:
  metric: f1_macro
  batch_size: 8
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_legacy_layout_loads_unchanged_with_string_numbers(tmp_path):
    config = load_config(write(tmp_path, LEGACY_CONFIG))
    assert config.training.learning_rate == pytest.approx(5e-5)
    assert config.training.weight_decay == pytest.approx(0.01)
    assert config.data.label2id["None"] == 5
    assert config.hardware.device_map == "auto"
    assert config.training.checkpoint_dir == "outputs/mistral/checkpoints"


def test_defaults_mirror_the_seed_settings():
    config = FrameSFTConfig()
    t = config.training
    assert (t.num_epochs, t.batch_size, t.learning_rate, t.gradient_accumulation_steps) == (5, 4, 5e-5, 8)
    assert (t.lora_r, t.lora_alpha, t.lora_dropout) == (16, 32, 0.05)
    assert set(t.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert t.early_stopping_patience == 3
    assert config.evaluation.metric == "f1_macro"
    assert config.tracking.project == "supervised-finetuning-brexit-debates"


def test_seed_mistral_config():
    config = load_config(REPO / "configs" / "mistral-7b-sft.yaml")
    assert config.model.base_model == "mistralai/Mistral-7B-v0.1"
    assert config.data.max_length == 512
    assert config.run_name() == "mistral-7b-sft-5e-05"
    assert "wandb" in config.tracking.report_to
    assert config.training.early_stopping_patience == 3


def test_accelerate_configs_are_valid_yaml():
    for path in (REPO / "configs" / "accelerate").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["distributed_type"], path


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_validates(name):
    load_config(REPO / "configs" / name)


def test_unknown_key_names_the_nearest_spelling(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "training:\n  learning_rte: 1e-4\n"))
    message = str(error.value)
    assert "training.learning_rte: unknown key" in message
    assert "did you mean 'learning_rate'" in message


def test_unknown_section_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="trainig: unknown key; did you mean 'training'"):
        load_config(write(tmp_path, "trainig:\n  num_epochs: 1\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training:\n  learning_rate: -0.001\n", "training.learning_rate: Input should be greater than 0"),
        ("training:\n  batch_size: four\n", "training.batch_size"),
        ("evaluation:\n  metric: auc\n", "evaluation.metric: must be one of 'f1_macro'"),
        ("data:\n  label2id: {a: 0, b: 2}\n", "ids must be 0..1"),
        ("data:\n  label2id: {a: 0, b: 1}\n  num_labels: 3\n", "num_labels is 3"),
        ("training:\n  fp16: true\n  bf16: true\n", "choose one"),
        ("data:\n  drop_near_duplicates: true\n  near_duplicate_threshold: null\n",
         "drop_near_duplicates needs the near-duplicate groups"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert expected in str(error.value)


def test_a_check_across_keys_names_them_without_echoing_the_whole_section(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "data:\n  train_csv: mine.csv\n  drop_near_duplicates: true\n"
                                    "  near_duplicate_threshold: null\n"))
    message = str(error.value)
    assert "data: drop_near_duplicates needs the near-duplicate groups" in message
    assert "mine.csv" not in message  # the section's other keys are not echoed


def test_cli_style_overrides_are_parsed_as_yaml():
    config = load_config(None, ["training.learning_rate=3e-5", "training.lora_target_modules=[q_proj, v_proj]",
                                "tracking.report_to=wandb"])
    assert config.training.learning_rate == pytest.approx(3e-5)
    assert config.training.lora_target_modules == ["q_proj", "v_proj"]
    assert config.tracking.report_to == ["wandb"]


def test_malformed_override_says_how_to_write_it():
    for bad in ["training.optim.lr=3e-5", "learning_rate 3e-5", "training.=1"]:
        with pytest.raises(ConfigError, match="section.key=value"):
            load_config(None, [bad])


def test_top_level_override_sets_the_method_and_unknown_top_level_keys_are_refused():
    assert load_config(None, ["method=classification"]).method == "classification"
    with pytest.raises(ConfigError, match=r"section.key=value, e.g. training.learning_rate="):
        load_config(None, ["learning_rate=3e-5"])


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model:\n  name: !!python/object/apply:os.system ['echo hacked']\n"))


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, LEGACY_CONFIG))
    again = load_config(write(tmp_path, config.to_yaml(), "resolved.yaml"))
    assert again == config
    assert yaml.safe_load(config.to_yaml())["training"]["learning_rate"] == pytest.approx(5e-5)


def test_keys_without_effect_are_reported_when_the_config_is_loaded(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    load_config(write(tmp_path, "training:\n  save_steps: 100\n"))
    assert "training.save_steps (100) has no effect" in caplog.text and "training.eval_steps" in caplog.text
    caplog.clear()
    load_config(write(tmp_path, "method: classification\nprompt:\n  instruction: Pick one.\n"))
    assert "prompt.* has no effect with method: classification" in caplog.text
    caplog.clear()
    load_config(write(tmp_path, "training:\n  checkpoint_every_n_layers: 2\n"))
    assert "checkpoint_every_n_layers (2) has no effect: training.gradient_checkpointing is false" in caplog.text
    caplog.clear()
    load_config(write(tmp_path, "training:\n  gradient_checkpointing: true\n  checkpoint_every_n_layers: 2\n"))
    assert caplog.text == ""
    # save_steps equal to eval_steps (the legacy layout) and a resolved config saved by a run: nothing to report
    resolved = load_config(write(tmp_path, LEGACY_CONFIG)).to_yaml()
    load_config(write(tmp_path, resolved, "resolved.yaml"))
    assert caplog.text == ""


def test_settings_that_cannot_work_are_errors_at_load_time(tmp_path):
    with pytest.raises(ConfigError, match="use_lora is false .full fine-tuning. but model.load_in_4bit is true"):
        load_config(write(tmp_path, "training:\n  use_lora: false\nmodel:\n  load_in_4bit: true\n"))
    with pytest.raises(ConfigError, match="gpu is false but num_gpus is 2"):
        load_config(write(tmp_path, "hardware:\n  gpu: false\n  num_gpus: 2\n"))
    with pytest.raises(ConfigError, match="data.delimiter"):
        load_config(write(tmp_path, "data:\n  delimiter: ';;'\n"))


def test_every_key_documents_itself():
    from framesft.config import describe_keys

    rows = describe_keys()
    assert len(rows) > 50
    undocumented = [row["key"] for row in rows if len(row["description"]) < 10]
    assert undocumented == []
    by_key = {row["key"]: row for row in rows}
    assert by_key["training.learning_rate"]["default"] == "5.0e-05"
    assert by_key["data.label2id"]["type"] == "dict[str, int] | None"
    assert by_key["evaluation.metric"]["type"].startswith("f1_macro | f1_micro")


def test_docs_key_table_is_generated_from_the_schema():
    """docs/configuration.md's table of keys is `framesft config --markdown`; regenerate it when this fails."""
    from framesft.config import keys_markdown_table

    readme = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    start, end = "<!-- config-keys:start (framesft config --markdown) -->\n", "<!-- config-keys:end -->"
    assert start in readme and end in readme
    assert readme.split(start, 1)[1].split(end, 1)[0] == keys_markdown_table()


def test_config_explain_prints_every_key(capsys):
    from framesft.cli import main
    from framesft.config import describe_keys

    assert main(["config", "--explain"]) == 0
    out = capsys.readouterr().out
    for row in describe_keys():
        assert row["key"] in out
