"""Trainer callbacks selectable from the recipe."""

from __future__ import annotations

from typing import Any

from .config import SFTConfig


def build_callbacks(config: SFTConfig, tokenizer, data: Any) -> list:
    """The callbacks the recipe asks for."""
    from transformers import EarlyStoppingCallback

    callbacks: list = []
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return callbacks
