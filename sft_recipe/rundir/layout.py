"""Every file and directory name a run writes, defined once.

`output_dir/` holds `checkpoint-N/` (each marked complete by `COMPLETE_MARKER`), the loss curve, the
log of every metric and the Trainer's `*_results.json`; `output_dir/best/` is the model to use, with the resolved recipe
and the model card beside the weights. Later commands (`generate`, `chat`, `eval`, `merge`) find
what they need by these names, so they must never be spelled anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..recipe.config import SFTConfig
from ..recipe.files import read_yaml, resolved_recipe

BEST_DIRNAME = "best"
CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete"  # written last, after every process finished saving
RECIPE_FILENAME = "sft_recipe.yaml"  # the resolved recipe saved beside a model
CARD_FILENAME = "README.md"  # the model card (also the hub page)
LOSS_CURVE_FILENAME = "loss_curve.png"
TRAIN_LOG_FILENAME = "train_log.jsonl"  # every raw log dict of a run, one JSON object per line, with its step
RESULTS_FILENAME = "eval_results.json"  # final metrics (Trainer's save_metrics("eval") and `sft-recipe eval`)
TRAINER_STATE_FILENAME = "trainer_state.json"
LOCK_FILENAME = ".sft_recipe.lock"  # host, pid and start time of the run that owns output_dir
FINISHED_FILENAME = "run_finished.json"  # written after best/: the step the run ended at
ADAPTER_CONFIG_FILENAME = "adapter_config.json"  # present in a LoRA adapter directory
STREAM_STATE_FILENAME = "stream_state_{rank}.json"  # in checkpoint-N/: each process's stream position


def save_recipe(config: SFTConfig, directory: str | Path) -> Path:
    """Write the resolved recipe beside a checkpoint so later stages can inherit it.

    Secrets never reach this file: the config has no token fields, and pass-through keys that
    look like credentials are dropped.
    """
    path = Path(directory) / RECIPE_FILENAME
    write_atomically(path, yaml.safe_dump(resolved_recipe(config), sort_keys=False))
    return path


def write_atomically(path: Path, text: str, durable: bool = False) -> None:
    """`text` as `path` through a temporary file and a rename, so `path` is never half-written
    (`durable`: synced to the disk before the rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_saved_recipe(model_dir: str | Path) -> dict[str, Any]:
    """The resolved recipe stored with a checkpoint, or {} for a plain hub/`save_pretrained` model."""
    path = Path(model_dir) / RECIPE_FILENAME
    if not path.is_file():
        return {}
    return read_yaml(path)
