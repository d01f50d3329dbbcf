"""Tokenizer calls shared by the encoders: prompts without a trailing EOS, and raw text as token ids.

In memory, tokenization runs in batched `datasets.map` calls: fast tokenizers encode a whole batch
in Rust, `num_proc` spreads large datasets over cores, and the map cache means a second run of the
same recipe does not tokenize again. Rows become training rows in `encode.py`; which tokens are
trained is decided in `mask.py`.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from ..errors import DataError
from .mask import to_blocks
from .prepared import map_fingerprint
from .stats import TokenStats

log = logging.getLogger(__name__)

# Below this many rows, process start-up costs more than it saves.
PARALLEL_MIN_ROWS = 20_000


def resolve_num_proc(num_proc: int | None, rows: int) -> int | None:
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if rows >= PARALLEL_MIN_ROWS else 1
    if num_proc > 1:
        # Each worker process tokenizes its own shard; Rust threads inside forks only contend.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        return num_proc
    return None


def prompt_ids_without_eos(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """Tokenize prompts with the tokenizer's own special tokens (BOS), minus a trailing EOS that
    some tokenizers (`add_eos_token=True`) append: EOS belongs after the completion only."""
    eos = tokenizer.eos_token_id
    adds_eos = tokenizer("a", add_special_tokens=True)["input_ids"][-1:] == [eos]

    def encode(prompts: list[str]) -> list[list[int]]:
        ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        return [p[:-1] if adds_eos and p[-1:] == [eos] else p for p in ids]

    return encode


def tokenize_text(dataset, tokenizer, max_length: int, eval_fraction: float, *, add_eos: bool,
                  num_proc: int | None = None):
    """Whole-corpus tokenization, a split by token position, and fixed-size blocks.

    The last `eval_fraction` of the token stream is validation (by position, like the classic
    tutorial, so no validation text leaks into training through shuffled lines). Each split is
    cut into `max_length` blocks with labels == input_ids; the model shifts them itself. The
    partial block at the end of each split is dropped and counted.
    """
    stream = token_stream(dataset, tokenizer, add_eos=add_eos, num_proc=num_proc)
    split = int(len(stream) * (1.0 - eval_fraction))
    parts, stats = {}, {}
    for name, ids in (("train", stream[:split]), ("eval", stream[split:])):
        unwanted = eval_fraction >= 1.0 if name == "train" else eval_fraction <= 0.0  # all rows on one side
        parts[name] = to_blocks(ids, max_length, name, allow_empty=unwanted)
        n_tokens = len(parts[name]) * max_length
        stats[name] = TokenStats(rows=len(parts[name]), kept=len(parts[name]), tokens=n_tokens,
                                 trainable_tokens=n_tokens, dropped_tokens=len(ids) - n_tokens)  # the partial block
        log.info("%s: %d tokens -> %d blocks of %d (%d tokens in the partial block dropped)",
                 name, len(ids), len(parts[name]), max_length, len(ids) - n_tokens)
    return parts["train"], parts["eval"], stats


def token_stream(dataset, tokenizer, *, add_eos: bool, num_proc: int | None = None):
    """The corpus as one pyarrow array of token ids, in order."""
    tokenized = encode_text(dataset, tokenizer, add_eos=add_eos, num_proc=num_proc)
    return tokenized.data.column("ids").combine_chunks().flatten()


def encode_text(dataset, tokenizer, *, add_eos: bool, num_proc: int | None = None):
    """Rows (lines of a .txt, documents of a .jsonl) -> an `ids` column, in a batched `datasets.map`
    whose cache a second run of the same recipe reuses.

    For a .txt read line by line (`keep_linebreaks`), the only difference from tokenizing the file
    in one piece is that a run of newlines is split at line ends: BPE merges never cross a row.
    """
    return dataset.map(text_encoder(tokenizer, add_eos), batched=True, remove_columns=dataset.column_names,
                       num_proc=resolve_num_proc(num_proc, len(dataset)), desc="Tokenizing",
                       new_fingerprint=map_fingerprint(dataset, tokenizer, "text", add_eos))


def text_encoder(tokenizer, add_eos: bool) -> Callable[[dict[str, list]], dict[str, list]]:
    """`{"text": [...]}` -> `{"ids": [...]}` (EOS after each document when `add_eos`); also used by streaming."""
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise DataError("the tokenizer has no EOS token to separate documents; set one")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return {"ids": [row + [eos] for row in ids] if add_eos else ids}

    return encode
