"""What the machine offers, decided once: precision, attention kernel, loss chunk size.

Kept apart from `config.py` so that reading a recipe never imports torch: the `train` command
applies `release_host_memory` before torch loads.
"""

from __future__ import annotations

import importlib.util

import torch


def on_gpu() -> bool:
    return torch.cuda.is_available()


def resolve_precision(precision: str) -> str:
    """`auto` means bf16 on a GPU that supports it and fp32 everywhere else (CPU stays fp32)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def default_loss_chunk_size() -> int:
    """Chunk logits cost tokens x vocab x 4 bytes. On a GPU, 1024-token chunks keep the matmuls
    big enough to fill it; on the CPU, 128 rows already run at full speed and host memory is
    what runs out (1024 x GPT-2's vocabulary would be 196 MiB per chunk)."""
    return 1024 if torch.cuda.is_available() else 128


def default_attention() -> str:
    """flash-attention 2 on a GPU where it is installed (varlen kernel for packing), else SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
