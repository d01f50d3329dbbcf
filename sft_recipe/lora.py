"""LoRA and QLoRA adapters through peft (`pip install 'sft-recipe[lora]'`).

A recipe opts in with a `lora:` mapping; every key is optional:

    lora:
      r: 16                        # adapter rank
      alpha: 32                    # scaling = alpha / r
      dropout: 0.05
      target_modules: all-linear   # or a list of module names, e.g. [q_proj, v_proj]
      load_in_4bit: false          # QLoRA: 4-bit NF4 base weights (CUDA + bitsandbytes)

Only the adapter weights train; `best/` holds the adapter (adapter_config.json +
adapter_model.safetensors), which `sft-recipe generate` loads on top of its base model, and
`sft-recipe merge` folds into a plain full model.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from .errors import RecipeError, UserError

log = logging.getLogger("sft_recipe")

LORA_DEFAULTS: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear",
                                 "load_in_4bit": False}


def check_lora(lora: dict[str, Any]) -> dict[str, Any]:
    """The `lora:` mapping with defaults filled in; a one-line RecipeError for any bad key or value."""
    import difflib

    for key in lora:
        if key not in LORA_DEFAULTS:
            close = difflib.get_close_matches(str(key), LORA_DEFAULTS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"recipe key 'lora': unknown key '{key}'{hint}; known: {', '.join(LORA_DEFAULTS)}")
    values = {**LORA_DEFAULTS, **lora}
    r, alpha, dropout, targets = values["r"], values["alpha"], values["dropout"], values["target_modules"]
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise RecipeError(f"recipe key 'lora.r' must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise RecipeError(f"recipe key 'lora.alpha' must be a positive number, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise RecipeError(f"recipe key 'lora.dropout' must be in [0, 1), got {dropout!r}")
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
        raise RecipeError(f"recipe key 'lora.target_modules' must be 'all-linear' or a list of module names, "
                          f"got {targets!r}")
    if not isinstance(values["load_in_4bit"], bool):
        raise RecipeError(f"recipe key 'lora.load_in_4bit' must be true or false, got {values['load_in_4bit']!r}")
    return values


def quantization_config(lora: dict[str, Any] | None):
    """The 4-bit (NF4) `BitsAndBytesConfig` for QLoRA, or None. QLoRA needs a CUDA GPU and bitsandbytes."""
    if not lora or not check_lora(lora)["load_in_4bit"]:
        return None
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise RecipeError("recipe key 'lora.load_in_4bit' (QLoRA) needs a CUDA GPU; set it to false on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError("recipe key 'lora.load_in_4bit' (QLoRA) needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def _peft():
    try:
        import peft
    except ImportError:
        raise RecipeError("recipe key 'lora' needs peft: pip install 'sft-recipe[lora]'") from None
    return peft


def wrap_lora(model, lora: dict[str, Any]):
    """Freeze `model` and add trainable LoRA adapters (peft's `get_peft_model`)."""
    peft = _peft()
    values = check_lora(lora)
    if values["load_in_4bit"]:
        # Casts norms to fp32 and enables input grads so gradient checkpointing works on a frozen 4-bit base.
        model = peft.prepare_model_for_kbit_training(model)
    peft_config = peft.LoraConfig(
        task_type="CAUSAL_LM", r=values["r"], lora_alpha=values["alpha"], lora_dropout=values["dropout"],
        target_modules=values["target_modules"],
    )
    try:
        model = peft.get_peft_model(model, peft_config)
    except ValueError as exc:  # e.g. target modules not found in the model
        raise RecipeError(f"recipe key 'lora': {str(exc).splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %.2fM trainable of %.2fM parameters (%.2f%%)", trainable / 1e6, total / 1e6,
             100 * trainable / total)
    return model


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Fold a saved adapter into its base model and save a plain model (with tokenizer, recipe, card)."""
    from .model import load_for_inference
    from .recipe import RECIPE_FILENAME, load_recipe

    _peft()
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; not a LoRA adapter directory")
    model, tokenizer = load_for_inference(adapter_dir)
    merged = model.merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    for name in (RECIPE_FILENAME, "loss_curve.png"):
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, output_dir / name)
    if (adapter_dir / RECIPE_FILENAME).is_file():
        write_merged_card(output_dir, load_recipe(adapter_dir / RECIPE_FILENAME))
    log.info("merged %s into a full model in %s", adapter_dir, output_dir)
    return output_dir


def write_merged_card(output_dir: Path, config) -> None:
    """The adapter's card, rewritten for a plain model loaded from `output_dir` (not the adapter's repo)."""
    import dataclasses
    import json

    from .card import CARD_FILENAME, model_card

    results = Path(config.output_dir) / "eval_results.json"  # the training run's final metrics, if still there
    metrics = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    local = dataclasses.replace(config, hub_model_id=None, push_to_hub=False, output_dir=str(output_dir))
    curve = "loss_curve.png" if (output_dir / "loss_curve.png").is_file() else None
    text = model_card(local, metrics, str(output_dir), loss_curve=curve)
    (output_dir / CARD_FILENAME).write_text(text, encoding="utf-8")
