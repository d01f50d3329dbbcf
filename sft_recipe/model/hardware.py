"""What the machine offers, decided once: precision, attention kernel, loss chunk size.

Kept apart from `config.py` so that reading a recipe never imports torch: the `train` command
applies `release_host_memory` before torch loads.
"""

from __future__ import annotations

import importlib.util

import torch


def resolve_precision(precision: str) -> str:
    """`auto` means bf16 on a GPU that supports it and fp32 everywhere else (CPU stays fp32)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


# Bytes of fp32 logits one chunk of the trainable-token loss may hold.
LOSS_CHUNK_BUDGET = {"cuda": 1 << 30, "cpu": 256 << 20}
# On the CPU more than 256 tokens per chunk was no faster (equal-size chunks, the head's gradient
# added into in place): 256 and 441 tokens at Qwen2.5's head, 256 and one chunk of up to 500 at
# GPT-2's, within 2%; the logits chunk is then 148 MiB at Qwen2.5's vocabulary instead of 256.
LOSS_CHUNK_MAX_TOKENS = {"cuda": 8192, "cpu": 256}


def default_loss_chunk_size(vocab_size: int | None = None) -> int:
    """Tokens per chunk of the trainable-token loss: as many as fit the logits budget (a chunk's
    logits cost tokens x vocab x 4 bytes). Every chunk also adds its product into the head's
    weight-sized gradient, a full pass over vocab x hidden: few big chunks are what makes a 150k
    vocabulary fast, small ones what keeps memory flat. Without a vocabulary: 1024 on a GPU, 128
    on the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not vocab_size:
        return 1024 if device == "cuda" else 128
    return max(128, min(LOSS_CHUNK_MAX_TOKENS[device], LOSS_CHUNK_BUDGET[device] // (4 * vocab_size)))


def default_attention() -> str:
    """flash-attention 2 on a GPU where it is installed (varlen kernel for packing), else SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
