"""Batching: dynamic padding, or padding-free packing (of a micro-batch's rows, or of `packing: bfd` bins).

Both collators take rows with `input_ids` and `labels` (extra columns are ignored) and never
shift labels: Hugging Face causal LMs shift inside the model (or inside our loss).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from .mask import IGNORE_INDEX


@dataclass
class PaddingCollator:
    """Right-pad to the longest row of the batch (optionally to a multiple of N).

    Labels are padded with -100 *by position*, never by matching the pad id, so an EOS that
    shares its id with the pad token is still trained.

    >>> collate = PaddingCollator(pad_token_id=0)
    >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                  {"input_ids": [8, 0], "labels": [-100, 0]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[-100, 6, 7], [-100, 0, -100]], [[1, 1, 1], [1, 1, 0]])
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"])
            labels[i, :n] = torch.as_tensor(f["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


class PackingCollator:
    """Padding-free packing: the batch's rows concatenated into one `[1, total]` row.

    `position_ids` restart at 0 for every row and there is no 2D attention mask, which is how
    transformers recognises packed sequences and keeps each row attending only to itself (SDPA
    and eager build a block-diagonal mask; flash-attention uses the varlen kernel). The first
    label of every row is -100, so no row learns to predict the next row's first token.
    Training must run with `use_cache=False`: with a cache, packed rows attend to each other.

    >>> collate = PackingCollator()
    >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                  {"input_ids": [8, 9], "labels": [-100, 9]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["position_ids"].tolist()
    ([[5, 6, 7, 8, 9]], [[-100, 6, 7, -100, 9]], [[0, 1, 2, 0, 1]])
    """

    def __init__(self, flash_attention: bool = False) -> None:
        self._flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self._flatten([row for f in features for row in unpack(f)])


def unpack(feature: dict[str, Any]) -> list[dict[str, Any]]:
    """A `packing: bfd` bin (rows concatenated, with `row_lengths`) back into its rows; a row as is."""
    if "row_lengths" not in feature:
        return [{"input_ids": feature["input_ids"], "labels": feature["labels"]}]
    ids, labels, starts = feature["input_ids"], feature["labels"], [0, *itertools.accumulate(feature["row_lengths"])]
    return [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in zip(starts, starts[1:])]


def make_collator(packing: bool | str, pad_token_id: int, pad_to_multiple_of: int | None = None,
                  flash_attention: bool = False):
    """`packing` false: padding; batch_concat (true) or bfd: padding-free (bfd's rows come in bins)."""
    if packing:
        return PackingCollator(flash_attention=flash_attention)
    return PaddingCollator(pad_token_id=pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
