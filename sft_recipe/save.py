"""`best/`: the model to use after training, with its tokenizer, the resolved recipe and the card.

Saved by every process together (sharded models need them all), documented by the main process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .artifacts import BEST_DIRNAME
from .card import write_model_card
from .checkpoints import saving
from .config import SFTConfig
from .recipe import save_recipe

log = logging.getLogger("sft_recipe")


def save_best(trainer, config: SFTConfig, metrics: dict[str, Any]) -> Path:
    """Save the best model (loaded at the end of training), its tokenizer, the resolved recipe and the
    model card."""
    best = Path(config.output_dir) / BEST_DIRNAME
    model = trainer.accelerator.unwrap_model(trainer.model)
    # Generation should stop where training taught the model to stop.
    model.generation_config.eos_token_id = trainer.processing_class.eos_token_id
    model.generation_config.pad_token_id = trainer.processing_class.pad_token_id
    model.config.use_cache = True  # training ran without a KV cache; inference wants it back
    with saving(best, config):
        trainer.save_model(str(best))
        if trainer.is_world_process_zero():
            save_recipe(config, best)
            write_model_card(best, config, metrics)  # README.md: base model, data, metrics, how to prompt
    trainer.accelerator.wait_for_everyone()
    # The run's summary says where best/ is; this line is for the log only.
    log.debug("best model (eval_loss %.4f) saved to %s", metrics.get("eval_loss", float("nan")), best)
    return best
