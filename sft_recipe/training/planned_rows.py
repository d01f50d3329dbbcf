"""The rows a memory plan is for: the worst case the recipe allows, or the prepared rows themselves.

Without prepared rows the plan assumes every micro-batch full of `max_length` rows, every token
trainable. Where the rows are already prepared (the data cache, or a `preprocess --output`
directory), it plans for their longest row and their largest trainable share instead, together:
a bound on every micro-batch they can make. That matters most for long-document SFT, a long
prompt and a short answer: the loss head only sees trainable tokens, and probing it on every
token of a long row is most of a plan's time on a CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from accelerate import PartialState

from ..data.prepare import prepare_data
from ..data.prepared import PreparedData, cached, is_prepared, load_prepared
from ..model.load import check_model
from ..recipe.config import SFTConfig


class PlannedRows(NamedTuple):
    """The longest row, the largest share of a row's tokens that is trained, and where they come from."""

    longest: int
    trainable_share: float
    source: str

    def trainable(self, length: int, chunk: int) -> int:
        """Trainable tokens of a probe row of `length`: the share, but at least a whole loss chunk
        (the chunk's logits are the same size from one trainable chunk on)."""
        return min(length, max(chunk, math.ceil(self.trainable_share * length)))


def shape_of(data: PreparedData, source: str) -> PlannedRows | None:
    """The longest row and the largest trainable share among the train and evaluation rows."""
    longest, share = 0, 0.0
    for rows in (data.train, data.eval):
        if rows is None or len(rows) == 0:
            continue
        for table in rows.with_format("arrow").iter(batch_size=10_000):
            labels = table.column("labels").combine_chunks()
            offsets = labels.offsets.to_numpy()
            offsets = offsets - offsets[0]
            trained = np.concatenate([[0], np.cumsum(labels.flatten().to_numpy() != -100)])
            lengths = np.diff(offsets)
            counts = trained[offsets[1:]] - trained[offsets[:-1]]
            longest = max(longest, int(lengths.max()))
            share = max(share, float((counts / np.maximum(lengths, 1)).max()))
    return PlannedRows(longest, share, source) if longest else None


def planned_rows(config: SFTConfig, tokenizer, prepare: bool) -> PlannedRows | None:
    """The prepared rows' shape, or None for the worst case. `prepare`: prepare them now if the
    cache will keep them (a budget run, which tokenizes them next anyway); else only read them."""
    if config.streaming:
        return None  # rows made on the fly: nothing to read ahead
    if is_prepared(config.dataset):
        return shape_of(load_prepared(config.dataset, tokenizer, config.max_length), f"the rows in {config.dataset}")
    data, where = cached(config, tokenizer)
    if data is None and prepare and where is not None:
        check_model(config, tokenizer)  # as `train` does before tokenizing: a wrong model is said first
        with PartialState().main_process_first():
            data = prepare_data(config, tokenizer)  # cached: the run reads them back, not again
    return shape_of(data, "the prepared rows (data cache)") if data is not None else None
