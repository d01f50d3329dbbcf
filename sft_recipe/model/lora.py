"""LoRA and QLoRA adapters through peft (`pip install 'sft-recipe[lora]'`).

A recipe opts in with a `lora:` mapping (`recipe.lora.LoraSettings`). Only the adapter weights
train; `best/` holds the adapter (adapter_config.json + adapter_model.safetensors), which
`sft-recipe generate` loads on top of its base model, and `sft-recipe merge` (`export.py`) folds
into a plain full model. peft is imported only when a recipe asks for LoRA: it is an optional
dependency.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from transformers import BitsAndBytesConfig

from ..errors import RecipeError
from ..recipe.lora import LoraSettings

log = logging.getLogger("sft_recipe")


def quantization_config(lora: LoraSettings | dict | None):
    """The 4-bit (NF4) `BitsAndBytesConfig` for QLoRA, or None. QLoRA needs a CUDA GPU and bitsandbytes."""
    if lora is None or not LoraSettings.from_mapping(lora).load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise RecipeError("recipe key 'lora.load_in_4bit' (QLoRA) needs a CUDA GPU; set it to false on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError("recipe key 'lora.load_in_4bit' (QLoRA) needs bitsandbytes: pip install bitsandbytes")
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def peft_module():
    """peft, or a one-line RecipeError saying how to install it."""
    try:
        import peft  # optional dependency: imported only when a recipe uses LoRA
    except ImportError:
        raise RecipeError("recipe key 'lora' needs peft: pip install 'sft-recipe[lora]'") from None
    return peft


def wrap_lora(model, lora: LoraSettings | dict):
    """Freeze `model` and add trainable LoRA adapters (peft's `get_peft_model`)."""
    peft = peft_module()
    values = LoraSettings.from_mapping(lora)
    if values.load_in_4bit:
        # Casts norms to fp32 and enables input grads so gradient checkpointing works on a frozen 4-bit base.
        model = peft.prepare_model_for_kbit_training(model)
    peft_config = peft.LoraConfig(task_type="CAUSAL_LM", r=values.r, lora_alpha=values.alpha,
                                  lora_dropout=values.dropout, target_modules=values.target_modules)
    try:
        model = peft.get_peft_model(model, peft_config)
    except ValueError as exc:  # e.g. target modules not found in the model
        raise RecipeError(f"recipe key 'lora': {str(exc).splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %.2fM trainable of %.2fM parameters (%.2f%%)", trainable / 1e6, total / 1e6,
             100 * trainable / total)
    return model
