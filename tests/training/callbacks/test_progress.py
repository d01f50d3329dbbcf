"""The console of a run: plain lines off a terminal, one line per evaluation, no raw dicts, no
warnings, the summary last, and the best model evaluated once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import base_recipe, write_recipe
from transformers import PrinterCallback, ProgressCallback

from sft_recipe.training.callbacks.progress import (
    ConsoleCallback,
    format_eval_line,
    format_train_line,
)
from sft_recipe.cli import main
from sft_recipe.commands.train import best_model_metrics

REPO = Path(__file__).resolve().parents[3]


def test_train_line_and_eval_line():
    logs = {"loss": 3.81, "learning_rate": 0.00294, "tokens_per_second": 7198.0, "trainable_tokens_per_second": 485.0,
            "peak_rss_gb": 0.72, "eta_seconds": 222.0}
    assert format_train_line(50, 900, logs) == \
        "step 50/900 | loss 3.8100 | lr 2.94e-03 | 7,198 tok/s (485 trainable) | peak RSS 0.72 GB | ETA 0h03m42s"
    metrics = {"eval_loss": 1.136, "eval_perplexity": 3.114, "eval_token_accuracy": 0.6174, "eval_runtime": 0.6}
    assert format_eval_line("Step: 150", metrics) == \
        "Step: 150, Validation Loss: 1.136, Validation Perplexity: 3.11, Token Accuracy: 61.7%"
    text = {"eval_loss": 5.163, "eval_perplexity": 174.77, "train_sample_loss": 4.311}
    assert format_eval_line("Step: 500", text) == \
        "Step: 500, Training Loss: 4.311, Validation Loss: 5.163, Validation Perplexity: 174.8"


class FakeTrainer:
    def __init__(self, best_step: int, history: list[dict]) -> None:
        self.state = SimpleNamespace(best_global_step=best_step, global_step=6, log_history=history)
        self.evaluations = 0

    def evaluate(self):
        self.evaluations += 1
        return {"eval_loss": 0.5}


def test_the_best_model_is_evaluated_once_and_reused_when_it_is_the_last_step():
    history = [{"loss": 2.0, "step": 3}, {"eval_loss": 0.9, "step": 3}, {"eval_loss": 0.7, "eval_perplexity": 2.0,
                                                                          "step": 6}]
    last_is_best = FakeTrainer(6, history)
    assert best_model_metrics(last_is_best) == {"eval_loss": 0.7, "eval_perplexity": 2.0}
    assert last_is_best.evaluations == 0  # the evaluation at step 6 was of this very model
    earlier_best = FakeTrainer(3, history)
    assert best_model_metrics(earlier_best) == {"eval_loss": 0.5} and earlier_best.evaluations == 1


def test_the_console_callback_replaces_the_trainers_printers(tmp_path, alpaca_file, bpe_tokenizer_dir, monkeypatch):
    """In process: the Trainer's printers are gone, and evaluation runs once per eval step plus at
    most once for a best model that is not the last step."""
    from sft_recipe.training.trainer import SFTTrainer

    calls = []
    original = SFTTrainer.evaluation_loop

    def counting(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "evaluation_loop", counting)
    seen = {}
    original_train = SFTTrainer.train

    def train(self, *args, **kwargs):
        seen["callbacks"] = [type(cb) for cb in self.callback_handler.callbacks]
        return original_train(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "train", train)
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir))
    assert main(["train", str(recipe)]) == 0
    assert ConsoleCallback in seen["callbacks"]
    assert PrinterCallback not in seen["callbacks"] and ProgressCallback not in seen["callbacks"]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert calls[:2] == [3, 6]  # the evaluations during training
    assert len(calls) == 2 + (state["best_global_step"] != 6)


@pytest.mark.slow
def test_console_of_a_tiny_run_off_a_terminal(tmp_path, alpaca_file, bpe_tokenizer_dir):
    """As CI or `| tee` sees it: plain lines, no raw dict, no warning, no carriage return, no
    library progress bar; one line per evaluation; the summary last, with the run's real paths."""
    out = tmp_path / "run out"  # a space: the commands must quote it
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(
        tmp_path, alpaca_file, bpe_tokenizer_dir, output_dir=str(out), generation_eval_samples=3, max_new_tokens=4))
    env = {k: v for k, v in os.environ.items() if k != "HF_DATASETS_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "sft_recipe", "train", str(recipe)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert "{'" not in console and '{"' not in console  # no raw metric dict
    assert "warn" not in console.lower() and "missing keys" not in console
    assert "\r" not in console and "it/s" not in console and "examples/s" not in console  # no bars
    assert done.stderr == ""
    lines = console.splitlines()
    assert [line.split(",")[0] for line in lines if line.startswith("Step: ")] == ["Step: 3", "Step: 6"]
    assert sum(line.startswith("step ") and "| loss " in line for line in lines) == 6  # logging_steps 1
    assert sum(line.startswith("Best model (step ") for line in lines) <= 1
    summary = console[console.index("done in "):]
    best = out / "best"
    assert f"saved        {best}/" in summary
    assert f"loss curve   {out / 'loss_curve.png'}" in summary
    assert f"{out / 'train_log.jsonl'} (every log)" in summary
    assert f"sft-recipe generate '{best}' 'Reverse the order of the words.'" not in summary  # not builtin data
    assert f"sft-recipe generate '{best}' 'Give three tips for staying healthy.'" in summary
    assert f"sft-recipe eval '{best}'" in summary and f"hf upload YOUR-NAME/run-out '{best}'" in summary
    assert "exact match  " in summary and "on 3 held-out prompts (untrained model: " in summary
    assert lines[-1].startswith("-----")
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert "eval_exact_match" in logged[-1]  # the generation check is logged too
