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

Each lives in its own module here; this one is the registry. To add a built-in: write the
class in a new module, add its name to `recipe.keys.BUILTIN_CALLBACKS` and a branch to
`build_callbacks`. Any other entry is a dotted import path to a `TrainerCallback` class, e.g. `my_pkg.MyCallback`,
imported only when named and built with no arguments. With `report_to: [wandb]` the resolved
recipe is added to the wandb run config (main process only).
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from ...recipe.config import SFTConfig
from ...errors import RecipeError, UserError
from .loss_curve import LossCurveCallback
from .reporting import WandbRecipeCallback
from .samples import SamplesCallback, sample_prompts
from .throughput import ThroughputCallback

log = logging.getLogger("sft_recipe")
DEFAULT_EARLY_STOPPING_PATIENCE = 3


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
                raise TrainingDiverged(f"{key} became {value} at step {state.global_step}; stopped training. Lower "
                                       f"learning_rate, check the data, or use precision bf16/fp32 (last good "
                                       f"checkpoint in {args.output_dir})")


def build_callbacks(config: SFTConfig, tokenizer, data: Any) -> list[TrainerCallback]:
    """The callbacks the recipe names, in order; see the module docstring."""
    callbacks: list[TrainerCallback] = []
    names = list(config.callbacks)
    if config.early_stopping_patience and "early_stopping" not in names:
        names.append("early_stopping")
    plain = {"nan_guard": NanGuardCallback, "throughput": ThroughputCallback, "loss_curve": LossCurveCallback}
    for name in names:
        if name in plain:
            callbacks.append(plain[name]())
        elif name == "samples":
            prompts, generate_kwargs = sample_prompts(config, tokenizer, data)
            callbacks.append(SamplesCallback(prompts, config.max_new_tokens, generate_kwargs, config.dataset_format))
        elif name == "early_stopping":
            callbacks.append(EarlyStoppingCallback(
                early_stopping_patience=config.early_stopping_patience or DEFAULT_EARLY_STOPPING_PATIENCE))
        else:
            callbacks.append(import_callback(name))
    if "wandb" in config.report_to:
        callbacks.append(WandbRecipeCallback(config.to_dict()))  # secrets are rejected by SFTConfig
    return callbacks


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
        raise RecipeError(f"recipe key 'callbacks': '{path}' must be constructible with no arguments ({exc})") from None


def loggers_last(trainer) -> None:
    """Run the callbacks that add values to the logs (throughput, nan_guard) before the loggers
    (wandb, TensorBoard, console printer), which would otherwise report the logs without them."""
    trainer.callback_handler.callbacks.sort(key=lambda cb: not getattr(cb, "edits_logs", False))
