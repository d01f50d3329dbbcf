"""The real entry point, end to end: train -> output_dir/best -> generate; preprocess; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import base_recipe, write_jsonl, write_recipe

from sft_recipe.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_run(tmp_path, alpaca_file, bpe_tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir))
    return recipe, tmp_path / "out"


def test_train_then_generate(tiny_run, capsys):
    recipe, out = tiny_run
    assert main(["train", str(recipe), "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2"]) == 0
    for name in ("trainer_state.json", "train_results.json", "eval_results.json"):
        assert (out / name).is_file(), name
    state = json.loads((out / "trainer_state.json").read_text())
    eval_losses = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert len(eval_losses) >= 2
    best = out / "best"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sft_recipe.yaml"):
        assert (best / name).is_file(), name
    assert state["best_metric"] == pytest.approx(min(eval_losses))
    capsys.readouterr()
    assert main(["generate", str(best), "Sort the numbers in ascending order.", "--input", "3 1 2",
                 "--max_new_tokens", "5"]) == 0
    answer = capsys.readouterr().out
    assert answer.endswith("\n") and "### Response" not in answer


def test_preprocess_writes_training_rows(tiny_run, tmp_path, capsys):
    recipe, _ = tiny_run
    assert main(["preprocess", str(recipe), "--output", str(tmp_path / "pp"), "--show", "1",
                 "--max_length", "1024"]) == 0
    printed = capsys.readouterr().out
    assert "[MASKED: Below is an instruction" in printed and "]" in printed
    train = datasets.load_from_disk(str(tmp_path / "pp" / "train"))
    eval_ = datasets.load_from_disk(str(tmp_path / "pp" / "eval"))
    assert {"input_ids", "labels"} <= set(train.column_names)
    assert len(train) + len(eval_) == 64  # nothing dropped at this max_length
    assert "rows 57: kept 57, truncated 0, dropped 0 empty + 0 prompt too long" in printed


def test_user_error_is_one_line_exit_2_no_traceback(tmp_path, alpaca_file, bpe_tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.yaml", {**base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir),
                                                "learnig_rate": 1.0})
    proc = subprocess.run([sys.executable, "-m", "sft_recipe", "train", str(recipe)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2
    line = next(i + 1 for i, text in enumerate(recipe.read_text().splitlines()) if text.startswith("learnig_rate"))
    assert proc.stderr.strip() == (f"sft-recipe: error: {recipe}: line {line}: unknown recipe key 'learnig_rate' "
                                   "(did you mean 'learning_rate'?)")
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("rows", "extra", "message"), [
    ([{"instruction": "a", "output": "b"}] * 4, {"max_length": 8},
     "the train split is empty after filtering"),
    ([{"instruction": "a", "output": 1}], {}, "row 1: key 'output' must be a string"),
])
def test_data_errors_through_the_cli(tmp_path, bpe_tokenizer_dir, capsys, rows, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", {**base_recipe(tmp_path, data, bpe_tokenizer_dir), **extra})
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(data) in err


def test_missing_model_dir_for_generate(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "hi"]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_no_arguments_lists_the_commands_one_line_each(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "preprocess", "generate", "chat", "eval", "merge", "tokenizer"):
        assert sum(line.startswith(f"  {command} ") for line in out.splitlines()) == 1, command
    assert "sft-recipe train recipes/demo.yaml" in out


def test_train_help_groups_the_recipe_keys_as_the_docs_do(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headers[-6:] == ["model and tokenizer:", "data:", "batching:", "optimisation:",
                            "evaluation, logging, saving:", "escape hatch:"]
    assert out.index("batching:") < out.index("--batch_size") < out.index("optimisation:")
    assert "--verbose" in out
