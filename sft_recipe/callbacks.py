"""Trainer callbacks selectable from the recipe (`callbacks: [...]`).

Built-in names, the first three on by default (a recipe that sets `callbacks` replaces the list):

- `nan_guard`: stop with a one-line error as soon as a logged loss is NaN or Inf.
- `throughput`: add tokens/s (all and trainable), peak memory and ETA to every training log, so
  the console, wandb and TensorBoard all get them.
- `loss_curve`: write `output_dir/loss_curve.png` (train and eval loss vs step) after every eval
  and at the end; the model card embeds it.
- `samples`: greedy answers to fixed prompts (`sample_prompts`, else the first held-out prompts)
  at every eval, printed and, with wandb, logged as a table.
- `early_stopping`: transformers' EarlyStoppingCallback on eval loss (`early_stopping_patience`,
  default 3; setting the patience alone also enables it).

Any other entry is a dotted import path to a `TrainerCallback` class, e.g. `my_pkg.MyCallback`,
imported only when named and built with no arguments. With `report_to: [wandb]` the resolved
recipe is added to the wandb run config (main process only).
"""

from __future__ import annotations

import importlib
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from .config import SFTConfig
from .errors import RecipeError, UserError

log = logging.getLogger("sft_recipe")
LOSS_CURVE_FILENAME = "loss_curve.png"
DEFAULT_EARLY_STOPPING_PATIENCE = 3
SAMPLE_PROMPTS_FROM_EVAL = 3


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the user fixes it with a lower learning rate or other data/precision."""


class NanGuardCallback(TrainerCallback):
    """Stop at the first NaN/Inf loss instead of training on garbage for hours.

    `to_training_arguments` sets `logging_nan_inf_filter=False`, so the logged loss is the real one
    (the Trainer would otherwise replace a NaN with the running mean). Checked every logging step.
    """

    edits_logs = True  # runs before the loggers (see `loggers_last`), so the NaN is never reported as fine

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingDiverged(
                    f"{key} became {value} at step {state.global_step}; stopped training. Lower learning_rate, "
                    f"check the data, or use precision bf16/fp32 (last good checkpoint in {args.output_dir})"
                )


class ThroughputCallback(TrainerCallback):
    """Tokens per second, peak memory and ETA, added to every training log.

    Time counts training only: the gap before a step that follows an eval or a checkpoint save is
    left out. Token counts come from the logs: `num_input_tokens_seen` (non-padding tokens, the
    Trainer's count) and `trainable_tokens_seen` (tokens with a label, SFTTrainer's count), both
    summed over all processes.
    """

    edits_logs = True

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.mark = time.perf_counter()
        self.paused = False
        self.start_step = 0
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_seconds, self.mark, self.paused = 0.0, time.perf_counter(), False
        self.start_step = state.global_step
        self.last = {"seconds": 0.0, "num_input_tokens_seen": state.num_input_tokens_seen or 0,
                     "trainable_tokens_seen": 0}

    def on_step_begin(self, args, state, control, **kwargs):
        if self.paused:  # an eval or save happened since the last step: don't count it
            self.mark, self.paused = time.perf_counter(), False

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.train_seconds += now - self.mark
        self.mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self.paused = True

    def on_save(self, args, state, control, **kwargs):
        self.paused = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        added = throughput_metrics(logs, self.last, self.train_seconds)
        steps_done = state.global_step - self.start_step
        if steps_done > 0 and state.max_steps > 0:
            added["eta_seconds"] = self.train_seconds / steps_done * (state.max_steps - state.global_step)
        added.update(peak_memory_gb())
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)  # trainer_state.json keeps them too
        self.last = {"seconds": self.train_seconds, **{k: logs[k] for k in self.last if k in logs}}
        if state.is_world_process_zero:
            log.info("%s", format_throughput(state.global_step, state.max_steps, added))


def throughput_metrics(logs: dict[str, float], last: dict[str, float], seconds: float) -> dict[str, float]:
    """Rates since the previous log: `tokens_per_second` and `trainable_tokens_per_second`."""
    elapsed = seconds - last.get("seconds", 0.0)
    rates: dict[str, float] = {}
    if elapsed <= 0:
        return rates
    for count_key, rate_key in (("num_input_tokens_seen", "tokens_per_second"),
                                ("trainable_tokens_seen", "trainable_tokens_per_second")):
        if count_key in logs and count_key in last:
            rates[rate_key] = (logs[count_key] - last[count_key]) / elapsed
    return rates


def peak_memory_gb() -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, peak memory allocated by PyTorch."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"peak_rss_gb": rss / (2**30 if sys.platform == "darwin" else 2**20)}
    if torch.cuda.is_available():
        peak["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return peak


def format_throughput(step: int, max_steps: int, m: dict[str, float]) -> str:
    parts = [f"step {step}/{max_steps}"]
    if "tokens_per_second" in m:
        rate = f"{m['tokens_per_second']:,.0f} tok/s"
        if "trainable_tokens_per_second" in m:
            rate += f" ({m['trainable_tokens_per_second']:,.0f} trainable)"
        parts.append(rate)
    memory = f"peak RSS {m['peak_rss_gb']:.2f} GB"
    if "peak_cuda_gb" in m:
        memory += f", CUDA {m['peak_cuda_gb']:.2f} GB"
    parts.append(memory)
    if "eta_seconds" in m:
        minutes, seconds = divmod(int(m["eta_seconds"]), 60)
        parts.append(f"ETA {minutes // 60}h{minutes % 60:02d}m{seconds:02d}s")
    return " | ".join(parts)


class LossCurveCallback(TrainerCallback):
    """`output_dir/loss_curve.png`: train and eval loss against optimizer step (main process)."""

    def on_evaluate(self, args, state, control, **kwargs):
        self.write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(args, state)

    def write(self, args, state) -> None:
        if state.is_world_process_zero:
            plot_loss_curve(state.log_history, Path(args.output_dir) / LOSS_CURVE_FILENAME)


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Plot the `loss` and `eval_loss` entries of a Trainer log history; None if there are none."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no pyplot state

    series = {name: [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
              for name, key in (("train", "loss"), ("eval", "eval_loss"))}
    if not any(series.values()):
        return None
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for name, points in series.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, marker="o" if name == "eval" else None, markersize=3, label=f"{name} loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (trainable tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


class SamplesCallback(TrainerCallback):
    """Greedy generations for fixed prompts at every eval: printed, and a wandb.Table with wandb."""

    def __init__(self, prompts: list[str], max_new_tokens: int, generate_kwargs: dict[str, Any] | None = None) -> None:
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs or {}  # chat: stop tokens, no second BOS
        self.rows: list[list[Any]] = []  # every eval's samples, so the wandb table shows the progression

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.prompts or model is None or not state.is_world_process_zero:
            return
        from .generate import generate_answers

        answers = generate_answers(model, processing_class, self.prompts, max_new_tokens=self.max_new_tokens,
                                   **self.generate_kwargs)
        print(f"samples at step {state.global_step}:", flush=True)
        for prompt, answer in zip(self.prompts, answers):
            print(f"  {short(prompt)!r} -> {answer!r}", flush=True)
        self.rows += [[state.global_step, prompt, answer] for prompt, answer in zip(self.prompts, answers)]
        run = wandb_run(args)
        if run is not None:
            import wandb

            table = wandb.Table(columns=["step", "prompt", "generation"], data=self.rows)
            run.log({"eval/samples": table, "train/global_step": state.global_step})


def short(prompt: str) -> str:
    from .train import short_prompt

    return short_prompt(prompt)


class WandbRecipeCallback(TrainerCallback):
    """Put the resolved recipe into the wandb run config, beside the TrainingArguments that the
    Trainer's WandbCallback logs (which runs first and starts the run)."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        self.recipe = recipe

    def on_train_begin(self, args, state, control, **kwargs):
        run = wandb_run(args)
        if run is not None and state.is_world_process_zero:
            run.config.update({"recipe": self.recipe}, allow_val_change=True)


def wandb_run(args):
    """The active wandb run when the recipe reports to wandb, else None (wandb is never imported otherwise)."""
    if "wandb" not in (args.report_to or []):
        return None
    import wandb

    return wandb.run


def build_callbacks(config: SFTConfig, tokenizer, data: Any) -> list[TrainerCallback]:
    """The callbacks the recipe names, in order; see the module docstring."""
    callbacks: list[TrainerCallback] = []
    names = list(config.callbacks)
    if config.early_stopping_patience and "early_stopping" not in names:
        names.append("early_stopping")
    for name in names:
        if name == "nan_guard":
            callbacks.append(NanGuardCallback())
        elif name == "throughput":
            callbacks.append(ThroughputCallback())
        elif name == "loss_curve":
            callbacks.append(LossCurveCallback())
        elif name == "samples":
            prompts, generate_kwargs = sample_prompts(config, tokenizer, data)
            callbacks.append(SamplesCallback(prompts, config.max_new_tokens, generate_kwargs))
        elif name == "early_stopping":
            callbacks.append(EarlyStoppingCallback(
                early_stopping_patience=config.early_stopping_patience or DEFAULT_EARLY_STOPPING_PATIENCE))
        else:
            callbacks.append(import_callback(name))
    if "wandb" in config.report_to:
        callbacks.append(WandbRecipeCallback(config.to_dict()))  # secrets are rejected by SFTConfig
    return callbacks


def sample_prompts(config: SFTConfig, tokenizer, data: Any) -> tuple[list[str], dict[str, Any]]:
    """Formatted prompts (and generation settings) for the samples callback: the recipe's
    `sample_prompts` in the training template, else the first held-out prompts."""
    eval_raw = data.eval_raw if data is not None else None
    first = eval_raw.select(range(min(SAMPLE_PROMPTS_FROM_EVAL, len(eval_raw)))) if eval_raw is not None else None
    if config.dataset_format == "messages":
        from .chat import chat_prompt, last_turn_prompts, stop_token_ids

        chat = {"stop_token_ids": stop_token_ids(tokenizer), "add_special_tokens": False}  # template has BOS
        if config.sample_prompts:
            return [chat_prompt(tokenizer, [{"role": "user", "content": text}]) for text in config.sample_prompts], chat
        if first is not None and "messages" in first.column_names:
            return list(last_turn_prompts(first, tokenizer)[0]["prompt"]), chat
    elif config.sample_prompts:
        from .templates import format_prompt

        return [format_prompt(config.dataset_format, text) for text in config.sample_prompts], {}
    elif first is not None and "prompt" in first.column_names:
        return list(first["prompt"]), {}
    log.warning("callbacks: 'samples' has no prompts (set sample_prompts for dataset_format %s)",
                config.dataset_format)
    return [], {}


def import_callback(path: str) -> TrainerCallback:
    """`my_pkg.module.MyCallback` -> an instance; one-line RecipeErrors for bad paths."""
    module_name, _, attr = path.rpartition(".")
    if not module_name or module_name.startswith(".") or not attr:
        raise RecipeError(f"recipe key 'callbacks': '{path}' is not an absolute dotted path like my_pkg.MyCallback")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, ValueError, TypeError) as exc:
        raise RecipeError(f"recipe key 'callbacks': cannot import '{path}' ({exc})") from None
    except AttributeError:
        raise RecipeError(f"recipe key 'callbacks': module '{module_name}' has no attribute '{attr}'") from None
    if not (isinstance(target, type) and issubclass(target, TrainerCallback)):
        raise RecipeError(f"recipe key 'callbacks': '{path}' is not a transformers.TrainerCallback subclass")
    try:
        return target()
    except TypeError as exc:
        raise RecipeError(f"recipe key 'callbacks': '{path}' must be constructible with no arguments ({exc})") \
            from None


def loggers_last(trainer) -> None:
    """Run the callbacks that add values to the logs (throughput, nan_guard) before the loggers
    (wandb, TensorBoard, console printer), which would otherwise report the logs without them."""
    trainer.callback_handler.callbacks.sort(key=lambda cb: not getattr(cb, "edits_logs", False))


def finish_reporting(config: SFTConfig) -> None:
    """Close the wandb run after the final evaluation and generation metrics were logged (the
    Trainer leaves it open), so a second run in the same process starts a new one."""
    if "wandb" in config.report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()
