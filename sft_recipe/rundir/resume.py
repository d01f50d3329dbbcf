"""Resume rules: a re-run continues the run that is in output_dir, or refuses; it never mixes two.

Every complete checkpoint carries the resolved recipe it was trained with (`sft_recipe.yaml`). A
re-run compares its own recipe with that one, by each key's declared resume rule:
- keys in `TRAJECTORY_FREE` may differ (they change cadence, reporting or memory, not the weights);
- keys in `EXTENDING` may differ to train a finished or stopped run further (the learning-rate
  schedule is then computed for the new length, from the step reached);
- any other difference (model, data, learning rate, batch shape, seed, schedule ...) is refused,
  naming the keys and the ways out.
A run that already finished (`run_finished.json` at the newest checkpoint's step), run again with
no extending change, does nothing and says where its `best/` is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .layout import (BEST_DIRNAME, FINISHED_FILENAME, RECIPE_FILENAME, RESULTS_FILENAME, TRAINER_STATE_FILENAME,
                     write_atomically)
from ..recipe.config import SFTConfig
from ..recipe.keys import EXTENDS, FREE, keys_where
from ..errors import UserError
from ..recipe.files import read_yaml, resolved_recipe

log = logging.getLogger("sft_recipe")

# Both derived from each key's declaration (`recipe/keys.py`: resume=free | extends | fixed).
EXTENDING = frozenset(keys_where(SFTConfig, resume=EXTENDS))
TRAJECTORY_FREE = frozenset(keys_where(SFTConfig, resume=FREE))


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Recipe keys whose values differ (`training_args.x` for the pass-through mapping)."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if key == "training_args" and isinstance(old, dict) and isinstance(new, dict):
            keys += [f"training_args.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            keys.append(key)
    return keys


def check_resume(config: SFTConfig, checkpoint: str | None) -> dict[str, Any] | None:
    """Refuse a resume whose recipe changes the trajectory; if the run already finished and nothing
    extends it, return its final metrics (the caller then does nothing), else None."""
    if checkpoint is None:
        return None
    path = Path(checkpoint) / RECIPE_FILENAME
    if not path.is_file():
        log.warning("%s carries no recipe (written by an older sft-recipe): resuming without checking that the "
                    "settings match", checkpoint)
        return None
    changed = changed_keys(read_yaml(path), resolved_recipe(config))
    refused = [k for k in changed if k not in TRAJECTORY_FREE and k not in EXTENDING]
    if refused:
        raise UserError(f"{config.output_dir}: resuming from {checkpoint} with changed settings ({', '.join(refused)}) "
                        f"would mix two runs; keep them as they were, pass --overwrite_output_dir true to start over, "
                        f"or use a new output_dir")
    if changed:
        log.info("resuming with changed settings: %s", ", ".join(changed))
    return finished_metrics(config, Path(checkpoint), extended=any(k in EXTENDING for k in changed))


def finished_metrics(config: SFTConfig, checkpoint: Path, extended: bool) -> dict[str, Any] | None:
    """The final metrics of a run that finished at `checkpoint`'s step, unless it is being extended."""
    out = Path(config.output_dir)
    try:
        finished = json.loads((out / FINISHED_FILENAME).read_text(encoding="utf-8"))
        step = json.loads((checkpoint / TRAINER_STATE_FILENAME).read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(finished, dict) or finished.get("global_step") != step:
        return None  # trained past the finish (an extension in progress): resume it
    if extended and (config.max_steps is None or config.max_steps > step):
        return None
    try:
        metrics = json.loads((out / RESULTS_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    log.warning("%s: this run already finished at step %d; nothing to do (best model in %s; raise max_steps or "
                "num_epochs to train further, or pass --overwrite_output_dir true to start over)",
                config.output_dir, step, out / BEST_DIRNAME)
    return metrics if isinstance(metrics, dict) else {}


def mark_finished(config: SFTConfig, global_step: int) -> None:
    """After best/ is saved: the run ended at `global_step` (a re-run then does nothing)."""
    write_atomically(Path(config.output_dir) / FINISHED_FILENAME, json.dumps({"global_step": global_step}) + "\n")
