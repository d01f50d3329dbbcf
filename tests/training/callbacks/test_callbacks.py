"""Recipe-selectable callbacks: names, defaults, user callbacks by import path, and what each one does."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import base_recipe
from transformers import (
    EarlyStoppingCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from sft_recipe.training.callbacks import (
    NanGuardCallback,
    TrainingDiverged,
    build_callbacks,
    loggers_last,
)
from sft_recipe.training.callbacks.loss_curve import LossCurveCallback, plot_loss_curve
from sft_recipe.training.callbacks.reporting import WandbRecipeCallback
from sft_recipe.training.callbacks.samples import SamplesCallback
from sft_recipe.training.callbacks.throughput import (
    ThroughputCallback,
    throughput_parts,
    throughput_metrics,
)
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.errors import RecipeError


class PoisonWeights(TrainerCallback):
    """A user callback (loaded by dotted path in a test below) that makes the model output NaN."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


class NeedsArguments(TrainerCallback):
    def __init__(self, level):
        self.level = level


def config(**kw) -> SFTConfig:
    return SFTConfig(dataset="a.jsonl", model_name="m", **kw)


def test_default_callbacks_are_nan_guard_throughput_and_loss_curve():
    kinds = [type(cb) for cb in build_callbacks(config(), None, None)]
    assert kinds == [NanGuardCallback, ThroughputCallback, LossCurveCallback]


def test_a_recipe_list_replaces_the_defaults_and_patience_enables_early_stopping():
    callbacks = build_callbacks(config(callbacks=["loss_curve"], early_stopping_patience=2), None, None)
    assert [type(cb) for cb in callbacks] == [LossCurveCallback, EarlyStoppingCallback]
    assert callbacks[1].early_stopping_patience == 2
    assert build_callbacks(config(callbacks=[]), None, None) == []


def test_wandb_reporting_adds_the_recipe_to_the_run_config():
    callbacks = build_callbacks(config(callbacks=[], report_to=["wandb"]), None, None)
    assert [type(cb) for cb in callbacks] == [WandbRecipeCallback]
    assert callbacks[0].recipe["model_name"] == "m"


def test_samples_use_sample_prompts_in_the_training_template():
    (cb,) = build_callbacks(config(callbacks=["samples"], sample_prompts=["Add 2 and 3."], max_new_tokens=5),
                            None, None)
    assert isinstance(cb, SamplesCallback) and cb.max_new_tokens == 5
    assert cb.prompts[0].endswith("### Instruction:\nAdd 2 and 3.\n\n### Response:\n")


def test_user_callback_by_dotted_path():
    (cb,) = build_callbacks(config(callbacks=["test_callbacks.PoisonWeights"]), None, None)
    assert isinstance(cb, PoisonWeights)


@pytest.mark.parametrize("path, message", [
    ("no_such_pkg.Callback", "cannot import 'no_such_pkg.Callback'"),
    ("test_callbacks.Missing", "module 'test_callbacks' has no attribute 'Missing'"),
    ("test_callbacks.config", "is not a transformers.TrainerCallback subclass"),
    ("test_callbacks.NeedsArguments", "must be constructible with no arguments"),
    (".Relative", "is not an absolute dotted path"),
    ("..pkg.Relative", "is not an absolute dotted path"),
    ("pkg..Double", "cannot import 'pkg..Double'"),
])
def test_bad_callback_paths_are_one_line_recipe_errors(path, message):
    with pytest.raises(RecipeError, match=message) as info:
        build_callbacks(config(callbacks=[path]), None, None)
    assert "\n" not in str(info.value)


def test_unknown_builtin_name_suggests_the_closest():
    with pytest.raises(RecipeError, match="unknown callback 'loss_curv'.*did you mean 'loss_curve'"):
        config(callbacks=["loss_curv"])


def test_nan_guard_stops_on_nan_or_inf_loss_only():
    guard, args = NanGuardCallback(), TrainingArguments(output_dir="out", report_to="none")
    state, control = TrainerState(global_step=7), TrainerControl()
    guard.on_log(args, state, control, logs={"loss": 2.5, "grad_norm": float("inf")})  # a finite loss is fine
    for logs in ({"loss": float("nan")}, {"eval_loss": float("inf")}):
        with pytest.raises(TrainingDiverged, match="became .* at step 7; stopped training"):
            guard.on_log(args, state, control, logs=logs)


def test_throughput_rates_are_token_deltas_over_training_seconds():
    last = {"seconds": 10.0, "num_input_tokens_seen": 1000, "trainable_tokens_seen": 100}
    logs = {"loss": 1.0, "num_input_tokens_seen": 5000, "trainable_tokens_seen": 900}
    assert throughput_metrics(logs, last, 12.0) == {"tokens_per_second": 2000.0, "trainable_tokens_per_second": 400.0}
    assert throughput_metrics({"loss": 1.0}, last, 12.0) == {}  # no counts, no rates
    line = " | ".join(["step 30/100", *throughput_parts({"tokens_per_second": 2000.0, "trainable_tokens_per_second": 400.0,
                                                         "peak_rss_gb": 1.5, "eta_seconds": 3725.0})])
    assert line == "step 30/100 | 2,000 tok/s (400 trainable) | peak RSS 1.50 GB | ETA 1h02m05s"


def test_loggers_run_after_the_callbacks_that_add_to_the_logs():
    class Handler:
        callbacks = [EarlyStoppingCallback(), "wandb-logger", ThroughputCallback(), NanGuardCallback()]

    class Trainer:
        callback_handler = Handler()

    loggers_last(Trainer())
    assert [type(cb).__name__ for cb in Trainer.callback_handler.callbacks] == [
        "ThroughputCallback", "NanGuardCallback", "EarlyStoppingCallback", "str"]


def test_loss_curve_png_from_log_history(tmp_path):
    history = [{"loss": 3.0, "step": 1}, {"loss": 2.0, "step": 2}, {"eval_loss": 2.2, "step": 2},
               {"train_runtime": 1.0, "step": 2}]
    path = plot_loss_curve(history, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curve([{"train_runtime": 1.0, "step": 2}], tmp_path / "none.png") is None


def test_nan_from_a_user_callback_stops_training_with_one_line(tmp_path, alpaca_file, bpe_tokenizer_dir, capsys):
    """End to end: a dotted-path user callback poisons the weights at step 2; nan_guard stops the
    run at the next log with a one-line error (exit 2). With report_to unset, wandb stays silent."""
    from conftest import write_recipe

    from sft_recipe.cli import main

    recipe = base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, max_steps=4, eval_steps=4, save_steps=4,
                         callbacks=["nan_guard", "throughput", "test_callbacks.PoisonWeights"])
    wandb_runs = set(os.listdir(os.environ["WANDB_DIR"])) if os.path.isdir(os.environ["WANDB_DIR"]) else set()
    code = main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))])
    out, err = capsys.readouterr()
    assert code == 2
    error = [line for line in err.splitlines() if line.startswith("sft-recipe: error:")]
    assert len(error) == 1 and "loss became nan at step 3; stopped training" in error[0]
    assert "Traceback" not in err
    assert "wandb" not in (out + err).lower()
    now = set(os.listdir(os.environ["WANDB_DIR"])) if os.path.isdir(os.environ["WANDB_DIR"]) else set()
    assert now == wandb_runs


def test_samples_for_chat_data_use_the_chat_template_and_its_stop_tokens(toy_tokenizer):
    from types import SimpleNamespace

    from datasets import Dataset

    from sft_recipe.data.chat_template import setup_chat_template

    cfg = config(callbacks=["samples"], dataset_format="messages", chat_template="chatml")
    setup_chat_template(toy_tokenizer, cfg)
    conversation = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat"},
                    {"role": "user", "content": "a dog"}, {"role": "assistant", "content": "ran"}]
    data = SimpleNamespace(eval_raw=Dataset.from_dict({"messages": [conversation]}))
    (cb,) = build_callbacks(cfg, toy_tokenizer, data)
    # the held-out conversation up to its last user turn, with the generation prompt
    assert cb.prompts == ["<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\nsat<|im_end|>\n"
                          "<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n"]
    assert toy_tokenizer.convert_tokens_to_ids("<|im_end|>") in cb.generate_kwargs["stop_token_ids"]
    assert cb.generate_kwargs["add_special_tokens"] is False  # the rendered template holds any BOS
    (cb,) = build_callbacks(config(callbacks=["samples"], dataset_format="messages", chat_template="chatml",
                                   sample_prompts=["yes"]), toy_tokenizer, data)
    assert cb.prompts == ["<|im_start|>user\nyes<|im_end|>\n<|im_start|>assistant\n"]
