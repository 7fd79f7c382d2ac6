import json
import subprocess
import sys

import pytest

from framesft.cli import build_parser, main

COMMANDS = ["train", "pretrain", "evaluate", "predict", "data", "demo", "config", "baseline", "export", "compare"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: framesft " + command in capsys.readouterr().out


def test_top_level_help_lists_commands_and_examples():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text
    assert "examples:" in text


def test_baseline_command_on_the_sample_data(tmp_path, capsys):
    output = tmp_path / "baseline.json"
    assert main(["baseline", "configs/demo.yaml", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["split"] == "test" and result["train_rows"] == 48 and result["metrics"]["n"] == 24
    assert 0 <= result["metrics"]["f1_macro"] <= 1


def test_config_command_prints_the_resolved_config(capsys):
    assert main(["config", "configs/mistral-7b-sft.yaml", "--set", "training.learning_rate=3e-5"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 3.0e-05" in out and "base_model: mistralai/Mistral-7B-v0.1" in out


def test_data_check_exit_status(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("chunk_text,frame_name\nhello,Economic\n   ,None\n")
    done = subprocess.run([sys.executable, "-m", "framesft.cli", "data", "check", str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "empty or whitespace-only texts" in done.stderr and "row 3" in done.stderr
    good = subprocess.run([sys.executable, "-m", "framesft.cli", "data", "check",
                           "src/framesft/resources/sample_data/train.csv", "src/framesft/resources/sample_data/test.csv"],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "no problems found" in good.stderr
