"""`best/`: the model to use after training, with its tokenizer, the resolved recipe and the card.

Saved by every process together (sharded models need them all), documented by the main process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from .layout import BEST_DIRNAME, CHECKPOINT_PREFIX, save_recipe
from .card import write_model_card
from .checkpoints import saving
from ..recipe.config import SFTConfig
from ..errors import UserError

# What `save_pretrained` writes for the weights: one file, or an index over shards. A LoRA run's
# best/ holds the adapter (see `lora.py`).
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                "adapter_model.safetensors", "adapter_model.bin")  # peft's names; peft is optional

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
        source = checkpoint_weights(trainer, model)
        if source is not None:  # the weights in memory are that checkpoint's, byte for byte
            if trainer.args.should_save:
                link_weights(trainer, model, source, best)
        else:
            with full_state_dict(trainer):
                trainer.save_model(str(best))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            check_weights_written(best)
            save_recipe(config, best)
            write_model_card(best, config, metrics)  # README.md: base model, data, metrics, how to prompt
    trainer.accelerator.wait_for_everyone()
    # The run's summary says where best/ is; this line is for the log only.
    log.debug("best model (eval_loss %.4f) saved to %s", metrics.get("eval_loss", float("nan")), best)
    return best


def checkpoint_weights(trainer, model) -> list[Path] | None:
    """The best checkpoint's safetensors weight files, where they are exactly what best/ would write:
    the model in memory is that checkpoint (the Trainer loaded it back, or it is the last step), it
    was saved the same way (`save_pretrained` of a whole, unsharded, non-adapter model) and the
    files are all there. None otherwise: best/ is then written from memory."""
    state = trainer.state
    checkpoint = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
    # The Trainer leaves `best_model_checkpoint` at an older checkpoint when the best step was not saved.
    if (checkpoint is None or checkpoint.name != f"{CHECKPOINT_PREFIX}{state.best_global_step}"
            or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or not isinstance(model, PreTrainedModel)
            or getattr(model, "peft_config", None) or getattr(model, "hf_quantizer", None) is not None
            or not trainer.args.load_best_model_at_end):
        return None
    index = checkpoint / SAFE_WEIGHTS_INDEX_NAME
    names = {SAFE_WEIGHTS_INDEX_NAME, *json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()} \
        if index.is_file() else {SAFE_WEIGHTS_NAME}
    files = [checkpoint / name for name in sorted(names)]
    return files if all(f.is_file() for f in files) else None


def link_weights(trainer, model, files: list[Path], best: Path) -> None:
    """best/ as `save_model` writes it, except that the weights are hard links to the best
    checkpoint's files (a copy where the file system has no hard links): no second serialisation
    of the weights (1.5 s and 0.6 GB at Qwen2.5-0.5B), and no second copy on disk."""
    best.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(best, state_dict={})  # config, generation config (and custom code): no weights
    for stale in best.iterdir():
        if stale.name in WEIGHT_FILES or stale.name.startswith("model-") and stale.suffix == ".safetensors":
            stale.unlink()
    for source in files:
        try:
            os.link(source, best / source.name)
        except OSError:
            shutil.copy2(source, best / source.name)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(best)
    torch.save(trainer.args, best / TRAINING_ARGS_NAME)


@contextlib.contextmanager
def full_state_dict(trainer) -> Iterator[None]:
    """Under FSDP with `SHARDED_STATE_DICT` (fast, per-process checkpoints), `Trainer.save_model`
    writes no weights at all; best/ must be a whole model that `from_pretrained` loads, so its save
    gathers a FULL_STATE_DICT (on every process, as FSDP needs) and the checkpoints stay sharded."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    before = getattr(plugin, "state_dict_type", None)
    if plugin is None or "FULL_STATE_DICT" in str(before):
        yield
        return
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        yield
    finally:
        plugin.set_state_dict_type(before)


def check_weights_written(best: Path) -> None:
    """A best/ without weights would load as a fresh random model: refuse it in one line."""
    if not any((best / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{best}: the model's weights were not written (under DeepSpeed ZeRO-3 set "
                        "stage3_gather_16bit_weights_on_model_save: true); the last checkpoint-N holds the run")
