"""`sft-recipe merge`: fold a saved LoRA adapter into its base model and save a plain model,
with its tokenizer, the recipe, the loss curve and a model card rewritten for the merged model."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from ..rundir.layout import (ADAPTER_CONFIG_FILENAME, CARD_FILENAME, LOSS_CURVE_FILENAME, RECIPE_FILENAME,
                             RESULTS_FILENAME)
from ..rundir.card import model_card
from ..errors import UserError
from ..model.lora import peft_module
from ..model.load import load_for_inference
from ..recipe.files import load_recipe

log = logging.getLogger("sft_recipe")


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Fold a saved adapter into its base model and save a plain model (with tokenizer, recipe, card)."""
    peft_module()
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not (adapter_dir / ADAPTER_CONFIG_FILENAME).is_file():
        raise UserError(f"{adapter_dir}: no {ADAPTER_CONFIG_FILENAME}; not a LoRA adapter directory")
    model, tokenizer = load_for_inference(adapter_dir)
    merged = model.merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    for name in (RECIPE_FILENAME, LOSS_CURVE_FILENAME):
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, output_dir / name)
    if (adapter_dir / RECIPE_FILENAME).is_file():
        write_merged_card(output_dir, load_recipe(adapter_dir / RECIPE_FILENAME))
    log.info("merged %s into a full model in %s", adapter_dir, output_dir)
    return output_dir


def write_merged_card(output_dir: Path, config) -> None:
    """The adapter's card, rewritten for a plain model loaded from `output_dir` (not the adapter's repo)."""
    results = Path(config.output_dir) / RESULTS_FILENAME  # the training run's final metrics, if still there
    metrics = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    local = dataclasses.replace(config, hub_model_id=None, push_to_hub=False, output_dir=str(output_dir))
    curve = LOSS_CURVE_FILENAME if (output_dir / LOSS_CURVE_FILENAME).is_file() else None
    text = model_card(local, metrics, str(output_dir), loss_curve=curve)
    (output_dir / CARD_FILENAME).write_text(text, encoding="utf-8")
