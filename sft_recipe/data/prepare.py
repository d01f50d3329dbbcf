"""The single call that yields exactly the rows training sees: load -> formats -> split -> tokenize.

`prepare_data` is what `train`, `eval` and `preprocess` all run, so the rows `preprocess` writes
are the rows a run trains and evaluates on. Text is split by token position (see
`tokenization.tokenize_text`); every other format by a seeded random share of rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from ..config import SFTConfig
from ..console import interactive
from ..errors import DataError
from .builtin import is_builtin
from .formats import drop_empty_completions, normalise
from .load import load_source
from .stats import TokenStats, row_stats
from .tokenization import tokenize_messages, tokenize_prompt_completion, tokenize_text

log = logging.getLogger(__name__)
# Enough rows for a stable train-sample estimate; more only slows every evaluation down.
TRAIN_SAMPLE_MAX_ROWS = 1024
# datasets' per-step bars (format, tokenize) are worth a line only when a step takes a while.
BARS_FROM_ROWS = 100_000
BARS_FROM_FILE_BYTES = 64 * 2**20


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels (and length)
    eval: Any
    eval_raw: Any | None  # held-out rows before tokenization, for generation checks
    stats: dict[str, Any]


def prepare_data(config: SFTConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenize: exactly the rows training will see."""
    source = config.dataset or ""
    small_file = is_builtin(source) or (os.path.isfile(source) and os.path.getsize(source) < BARS_FROM_FILE_BYTES)
    with progress_bars(interactive() and not small_file):
        raw, dropped_empty = load_raw(config)
    with progress_bars(interactive() and len(raw) >= BARS_FROM_ROWS):
        return tokenize_splits(config, tokenizer, raw, dropped_empty)


def tokenize_splits(config: SFTConfig, tokenizer, raw, dropped_empty: int) -> PreparedData:
    """Split the loaded rows (by position for text) and tokenize both parts."""
    source = config.dataset or ""
    if config.dataset_format == "text":
        add_eos = not source.lower().endswith(".txt")  # a .txt is one running text, not documents
        train, eval_, split_stats = tokenize_text(raw, tokenizer, config.max_length, config.eval_fraction,
                                                  add_eos=add_eos, num_proc=config.num_proc)
        return PreparedData(train, eval_, None, {k: v.to_dict() for k, v in split_stats.items()})
    train_raw, eval_raw = split_rows(raw, config.eval_fraction, config.seed, source)
    if "messages" in train_raw.column_names:  # also prompt/completion given as message lists
        tokenized = {name: tokenize_messages(part, tokenizer, config)
                     for name, part in (("train", train_raw), ("eval", eval_raw))}
        stats = {name: s for name, (_, s) in tokenized.items()}
        train, eval_ = tokenized["train"][0], tokenized["eval"][0]
    else:
        train = tokenize_prompt_completion(train_raw, tokenizer, config.max_length, config.num_proc)
        eval_ = tokenize_prompt_completion(eval_raw, tokenizer, config.max_length, config.num_proc)
        stats = {"train": row_stats(len(train_raw), train), "eval": row_stats(len(eval_raw), eval_)}
    stats["train"] = stats["train"].add(TokenStats(rows=dropped_empty, dropped_empty=dropped_empty))
    for name, part in (("train", train), ("eval", eval_)):
        if len(part) == 0:
            raise DataError(
                f"{source}: the {name} split is empty after filtering ({stats[name].summary()}); "
                f"raise max_length (now {config.max_length}) or check the data"
            )
    return PreparedData(train, eval_, eval_raw, {k: v.to_dict() for k, v in stats.items()})


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """datasets' per-step bars only when `enabled`; the previous setting is restored afterwards."""
    was_enabled = datasets.is_progress_bar_enabled()
    if was_enabled and not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            datasets.enable_progress_bars()


def describe_stats(stats: dict[str, Any]) -> str:
    fields = set(TokenStats.__dataclass_fields__)
    return "; ".join(
        f"{name}: {TokenStats(**{k: v for k, v in s.items() if k in fields}).summary()}" for name, s in stats.items()
    )


def load_raw(config: SFTConfig):
    """Load the configured dataset split; return it normalised, plus the count of rows dropped
    for an empty response."""
    source = config.dataset
    assert source is not None
    dataset = load_source(source, config)
    if config.max_examples is not None:
        dataset = dataset.select(range(min(config.max_examples, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"{source}: the dataset is empty")
    dataset = normalise(dataset, config.dataset_format, source)
    if "completion" in dataset.column_names:
        return drop_empty_completions(dataset, source)
    return dataset, 0


def split_rows(dataset, eval_fraction: float, seed: int, source: str):
    """Hold out a seeded random `eval_fraction` of rows (text data is split by position instead)."""
    if len(dataset) < 2:
        raise DataError(f"{source}: need at least 2 rows to hold out an eval split, got {len(dataset)}")
    parts = dataset.train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]


def fixed_sample(rows, n: int, seed: int):
    """`n` rows chosen once with `seed`, kept in dataset order (all rows if there are fewer)."""
    if n >= len(rows):
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return rows.select(np.sort(picked))


def sample_train_rows(train, n_eval_rows: int, seed: int):
    """As many training rows as there are eval rows, at most TRAIN_SAMPLE_MAX_ROWS."""
    return fixed_sample(train, min(n_eval_rows, TRAIN_SAMPLE_MAX_ROWS), seed)
