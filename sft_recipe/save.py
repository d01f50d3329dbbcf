"""Output directory handling: resume detection before training, `best/` after it."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import SFTConfig
from .errors import UserError
from .recipe import save_recipe

log = logging.getLogger("sft_recipe")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def prepare_output_dir(config: SFTConfig, args) -> str | None:
    """Make sure `output_dir` is writable; return the checkpoint to resume from, if any.

    Re-running a recipe with the same `output_dir` resumes from its last *complete* checkpoint;
    `overwrite_output_dir: true` deletes old checkpoints and starts fresh.
    """
    out = Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{out}: output_dir is not writable ({exc.strerror or exc})") from None
    if config.overwrite_output_dir:
        if args.process_index == 0:
            for checkpoint in out.glob("checkpoint-*"):
                shutil.rmtree(checkpoint, ignore_errors=True)
        return None
    checkpoint = last_complete_checkpoint(out)
    if checkpoint is not None:
        log.warning("resuming from %s (pass --overwrite_output_dir true to start fresh)", checkpoint)
    return str(checkpoint) if checkpoint else None


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer state was written, i.e. whose save finished."""
    candidates = sorted(
        (int(m.group(1)), p) for p in out.glob("checkpoint-*")
        if p.is_dir() and (m := CHECKPOINT_RE.match(p.name)) and (p / "trainer_state.json").is_file()
    )
    return candidates[-1][1] if candidates else None


def save_best(trainer, config: SFTConfig, metrics: dict[str, Any]) -> Path:
    """Save the best model (loaded at the end of training), its tokenizer and the resolved recipe."""
    best = Path(config.output_dir) / "best"
    model = trainer.accelerator.unwrap_model(trainer.model)
    # Generation should stop where training taught the model to stop.
    model.generation_config.eos_token_id = trainer.processing_class.eos_token_id
    model.generation_config.pad_token_id = trainer.processing_class.pad_token_id
    model.config.use_cache = True  # training ran without a KV cache; inference wants it back
    trainer.save_model(str(best))
    if trainer.is_world_process_zero():
        save_recipe(config, best)
    trainer.accelerator.wait_for_everyone()
    log.info("best model (eval_loss %.4f) saved to %s", metrics.get("eval_loss", float("nan")), best)
    return best


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
