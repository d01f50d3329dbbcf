"""The console of a run: one live bar on a terminal, plain lines elsewhere, one line per evaluation.

It replaces transformers' ProgressCallback / PrinterCallback, which print every raw log dict.
Those dicts go to `output_dir/train_log.jsonl` (one JSON object per log, with its step) and to the
`sft_recipe.metrics` logger at DEBUG (on the console with `--verbose`); wandb and TensorBoard get
them as before.

- On a terminal: a tqdm bar of optimizer steps with loss, learning rate, trainable tokens/s and
  peak memory (from the `throughput` callback) and its ETA.
- Elsewhere (CI, `| tee`): `step 50/900 | loss 3.810 | lr 2.94e-03 | 7,198 tok/s ...` every
  `logging_steps`; no carriage returns.
- Each evaluation: `Step: 150, Validation Loss: 1.136, Validation Perplexity: 3.1, Token Accuracy: 61.7%`,
  with `Training Loss:` first when a fixed training sample is scored (`train_sample_loss`, on for
  text): the same rows, same code, so over-fitting shows as the gap. An evaluation of the best
  model after training is labelled `Best model (step N)`.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.utils import logging as hf_logging

from ...rundir.layout import TRAIN_LOG_FILENAME
from ...console import METRICS_LOGGER, interactive
from .throughput import throughput_parts

metrics_log = logging.getLogger(METRICS_LOGGER)


class ConsoleCallback(TrainerCallback):
    def __init__(self, live: bool | None = None) -> None:
        self.live = interactive() if live is None else live
        self.bar: Any = None
        self.printed_steps: set[int] = set()
        self.exit = ExitStack()
        self.log_path: Path | None = None  # set by training: `sft-recipe eval` writes no training log

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.log_path = Path(args.output_dir) / TRAIN_LOG_FILENAME
        if state.global_step == 0:  # a fresh run starts a fresh log; a resumed one appends
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("", encoding="utf-8")
        if hf_logging.is_progress_bar_enabled():  # "Writing model shards" at every checkpoint: not news
            hf_logging.disable_progress_bar()
            self.exit.callback(hf_logging.enable_progress_bar)
        if self.live:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True, leave=True)
            self.exit.enter_context(logging_redirect_tqdm())  # our log lines print above the bar

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **logs}
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
        metrics_log.debug("%s", record)
        if "loss" not in logs:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(format_bar_postfix(logs), refresh=True)
        else:
            print(format_train_line(state.global_step, state.max_steps, logs), flush=True)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
            return
        step = state.global_step
        label = f"Step: {step}" if step not in self.printed_steps else f"Best model (step {state.best_global_step})"
        if self.log_path is None and step == 0 and not args.eval_on_start:
            label = "Saved model"  # `sft-recipe eval`: no training in this run
        self.printed_steps.add(step)
        self.write(format_eval_line(label, metrics))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.exit.close()

    def write(self, line: str) -> None:
        """A line above the live bar, or a plain line."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)


def use_console(trainer, callback: ConsoleCallback | None = None) -> ConsoleCallback:
    """Swap transformers' printers (raw dicts) for the console callback."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    callback = callback or ConsoleCallback()
    trainer.add_callback(callback)
    return callback


def format_train_line(step: int, max_steps: int, logs: dict[str, float]) -> str:
    """`step 50/900 | loss 3.810 | lr 2.94e-03 | 7,198 tok/s (485 trainable) | peak RSS 0.72 GB | ETA ...`"""
    parts = [f"step {step}/{max_steps}", f"loss {logs['loss']:.4f}"]
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    return " | ".join(parts + throughput_parts(logs))


def format_bar_postfix(logs: dict[str, float]) -> str:
    """The live bar's tail: loss, learning rate, trainable tokens/s, peak memory (tqdm shows the ETA)."""
    parts = [f"loss {logs['loss']:.4f}"]
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if "trainable_tokens_per_second" in logs:
        parts.append(f"{logs['trainable_tokens_per_second']:,.0f} trainable tok/s")
    if "peak_cuda_gb" in logs:
        parts.append(f"peak {logs['peak_cuda_gb']:.2f} GB CUDA")
    elif "peak_rss_gb" in logs:
        parts.append(f"peak {logs['peak_rss_gb']:.2f} GB")
    return ", ".join(parts)


def format_eval_line(label: str, metrics: dict[str, float]) -> str:
    """One evaluation, one line (see the module docstring)."""
    parts = [label]
    if "train_sample_loss" in metrics:
        parts.append(f"Training Loss: {metrics['train_sample_loss']:.3f}")
    parts.append(f"Validation Loss: {metrics['eval_loss']:.3f}")
    perplexity = metrics.get("eval_perplexity")
    if perplexity is not None and math.isfinite(perplexity):
        parts.append(f"Validation Perplexity: {perplexity:.{1 if perplexity >= 10 else 2}f}")
    if "eval_token_accuracy" in metrics:
        parts.append(f"Token Accuracy: {metrics['eval_token_accuracy']:.1%}")
    return ", ".join(parts)
