"""The single call that yields exactly the rows training sees: load -> formats -> split -> tokenize.

`prepare_data` is what `train`, `eval` and `preprocess` all run, so the rows `preprocess` writes
are the rows a run trains and evaluates on. Text is split by token position (see
`tokenization.tokenize_text`); every other format by a seeded random share of rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
from accelerate import PartialState

from ..recipe.config import SFTConfig
from ..console import interactive
from ..formats import Form, describe_mapping, map_columns, normalise
from ..errors import DataError
from .builtin import is_builtin
from .load import is_one_text, load_source
from .mixture import concat_or_none, describe_sources, mix, source_config, uniform_rows
from .packing import pack_rows
from .stats import TokenStats, total_stats
from .stream_mixture import prepare_stream_mixture
from .streaming import prepare_stream
from .encode import encode_rows, enforce_fidelity, has_response, say_drops
from .fidelity import FidelityReport
from .mask import DROP_EMPTY
from .prepared import PreparedData, cached, is_prepared, load_prepared, save_prepared
from .tokenization import tokenize_text

log = logging.getLogger(__name__)
# Enough rows for a stable train-sample estimate; more only slows every evaluation down.
TRAIN_SAMPLE_MAX_ROWS = 1024
# datasets' per-step bars (format, tokenize) are worth a line only when a step takes a while.
BARS_FROM_ROWS = 100_000
BARS_FROM_FILE_BYTES = 64 * 2**20


def prepare_data(config: SFTConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenize: exactly the rows training will see."""
    if config.streaming:  # streaming.py: training rows made on the fly, eval rows from the stream's start;
        data = PreparedData(*prepare_stream_mixture(config, tokenizer)) if config.datasets else \
            PreparedData(*prepare_stream(config, tokenizer))  # stream_mixture.py: one stream per source
        for s in [s for s in config.datasets or [] if s.eval]:  # an entry's own evaluation rows, read whole
            rows = with_eval_sets(data, config, [s.eval], tokenizer, named=False)
            data.eval_parts = {**(data.eval_parts or {}), s.name: rows.eval}
            data.stats["sources"][s.name].update(eval_rows=len(rows.eval), eval=rows.stats["eval"])
            data.eval = datasets.concatenate_datasets(list(data.eval_parts.values()))
            data.stats["eval"] = total_stats([source["eval"] for source in data.stats["sources"].values()])
            data.eval_raw = concat_or_none([data.eval_raw, rows.eval_raw]) if len(data.eval) > len(rows.eval) \
                else rows.eval_raw
        return with_eval_sets(data, config, config.eval_sets, tokenizer) if config.eval_sets else data
    if is_prepared(config.dataset):  # `preprocess --output`: the rows as they were prepared
        return load_prepared(config.dataset, tokenizer, config.max_length)
    data, where = cached(config, tokenizer)
    if data is not None:
        return data
    data = prepare_mixture(config, tokenizer) if config.datasets else prepare_source(config, tokenizer)
    if config.eval_sets:
        data = with_eval_sets(data, config, config.eval_sets, tokenizer)
    if config.packing == "bfd":  # train rows only: eval scores rows, and its loss is per token anyway
        data.train, data.stats["packing"] = pack_rows(data.train, config.max_length, config.seed)
    if where is not None and PartialState().is_local_main_process:
        save_prepared(data, where, where.name, tokenizer, replace=False)
    return data


def prepare_mixture(config: SFTConfig, tokenizer) -> PreparedData:
    """Each source prepared (and split, unless it has its own `eval:` rows) on its own, so every source
    is evaluated; the training rows drawn by weight (see `mixture.py`); the held-out rows of every
    source kept whole."""
    sources = config.datasets or []
    prepared = []
    for s in sources:
        part = prepare_source(source_config(config, s), tokenizer, 0.0 if s.eval else config.eval_share)
        prepared.append(with_eval_sets(part, config, [s.eval], tokenizer, named=False) if s.eval else part)
    train, counts = mix([uniform_rows(p.train) for p in prepared], sources, config.seed)
    eval_parts = {s.name: uniform_rows(p.eval) for s, p in zip(sources, prepared) if len(p.eval)}
    stats: dict[str, Any] = {name: total_stats([p.stats[name] for p in prepared]) for name in ("train", "eval")}
    stats["sources"] = {
        s.name: {"path": s.path, "format": s.format, "weight": s.weight, "available": len(p.train), "drawn": n,
                 "eval_rows": len(p.eval), "train": p.stats["train"], "eval": p.stats["eval"]}
        for s, p, n in zip(sources, prepared, counts)
    }
    eval_rows = datasets.concatenate_datasets(list(eval_parts.values())) if eval_parts else \
        uniform_rows(prepared[0].eval)
    return PreparedData(train, eval_rows, concat_or_none([p.eval_raw for p in prepared if len(p.eval)]), stats,
                        eval_parts or None)


def prepare_source(config: SFTConfig, tokenizer, share: float | None = None) -> PreparedData:
    """One source: load, validate, split (`share` of its rows held out; the recipe's by default) and tokenize."""
    source = config.dataset or ""
    small_file = is_builtin(source) or (os.path.isfile(source) and os.path.getsize(source) < BARS_FROM_FILE_BYTES)
    with progress_bars(interactive() and not small_file):
        raw, dropped_empty = load_raw(config)
    with progress_bars(interactive() and len(raw) >= BARS_FROM_ROWS):
        return tokenize_splits(config, tokenizer, raw, dropped_empty, config.eval_share if share is None else share)


def with_eval_sets(data: PreparedData, config: SFTConfig, sets: list, tokenizer, named: bool = True) -> PreparedData:
    """`data` evaluated on evaluation sets of their own (each read whole, with the same validation,
    fidelity audit and counts as training rows) instead of held-out rows; several sets are also
    reported one by one (`eval_<name>_loss`)."""
    parts = {s.name: prepare_source(source_config(config, s), tokenizer, 1.0) for s in sets}
    rows = {name: uniform_rows(p.eval) for name, p in parts.items()}
    stats = dict(data.stats, eval=total_stats([p.stats["eval"] for p in parts.values()]))
    several = named and len(sets) > 1
    if several:
        stats["eval_sets"] = {name: p.stats["eval"] for name, p in parts.items()}
    eval_rows = datasets.concatenate_datasets(list(rows.values())) if len(rows) > 1 else next(iter(rows.values()))
    eval_raw = concat_or_none([p.eval_raw for p in parts.values()])
    return PreparedData(data.train, eval_rows, eval_raw, stats, rows if several else data.eval_parts)


def tokenize_splits(config: SFTConfig, tokenizer, raw, dropped_empty: int, share: float) -> PreparedData:
    """Split the loaded rows (by position for text; 0 and 1 keep them all on one side) and tokenize both."""
    source = config.dataset or ""
    if config.form is Form.TEXT:
        train, eval_, split_stats = tokenize_text(raw, tokenizer, config.max_length, share,
                                                  add_eos=not is_one_text(source), num_proc=config.num_proc)
        return PreparedData(train, eval_, None, {k: v.to_dict() for k, v in split_stats.items()})
    train_raw, eval_raw = split_rows(raw, share, config.seed, source)
    report = FidelityReport(source)
    (train, train_stats), (eval_, eval_stats) = (encode_rows(part, tokenizer, config, report)
                                                 for part in (train_raw, eval_raw))
    enforce_fidelity(report, config)
    stats = {"train": train_stats, "eval": eval_stats}
    side = "eval" if share >= 1.0 else "train"  # where the rows dropped before the split would have gone
    stats[side] = stats[side].add(TokenStats(rows=dropped_empty, dropped_empty=dropped_empty))
    for name, part in (("train", train), ("eval", eval_)):
        if len(part) == 0 and (share < 1.0 if name == "train" else share > 0.0):
            raise DataError(f"{source}: the {name} split is empty after filtering ({stats[name].summary()}); "
                            f"raise max_length (now {config.max_length}) or check the data")
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
    line = "; ".join(f"{name}: {TokenStats.from_dict(s).summary()}" for name, s in stats.items()
                     if name in ("train", "eval"))
    if "packing" in stats:
        p = stats["packing"]
        line += (f"; packed {p['rows']} train rows into {p['bins']} bins of {p['max_length']} tokens, "
                 f"{p['fill']:.1%} full")
    return f"{line}; sources: {describe_sources(stats['sources'])}" if "sources" in stats else line


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
    dataset = map_columns(dataset, config.columns, source)
    try:
        dataset = normalise(dataset, config.dataset_format, source)
    except DataError as exc:
        if config.columns and "missing column" in str(exc):  # say which mapping left it missing
            raise DataError(f"{exc}; columns mapping: {describe_mapping(config.columns)}") from None
        raise
    if "completion" in dataset.column_names:
        return drop_empty_completions(dataset, source)
    return dataset, 0


def split_rows(dataset, eval_fraction: float, seed: int, source: str):
    """Hold out a seeded random `eval_fraction` of rows (text data is split by position instead); 0
    holds nothing out, 1 holds every row out (an evaluation set), both in file order."""
    if eval_fraction <= 0.0 or eval_fraction >= 1.0:
        nothing = dataset.select([])
        return (dataset, nothing) if eval_fraction <= 0.0 else (nothing, dataset)
    if len(dataset) < 2:
        raise DataError(f"{source}: need at least 2 rows to hold out an eval split, got {len(dataset)}")
    parts = dataset.train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]


def eval_rows_and_parts(data: PreparedData, max_eval_samples: int | None, seed: int) -> tuple[Any, dict | None]:
    """The rows every evaluation scores (at most `max_eval_samples`, per source for a mixture) and,
    for a mixture, the same rows per source."""
    if data.eval_parts is None:
        return (fixed_sample(data.eval, max_eval_samples, seed) if max_eval_samples else data.eval), None
    parts = {name: fixed_sample(part, max_eval_samples, seed) if max_eval_samples else part
             for name, part in data.eval_parts.items()}
    return datasets.concatenate_datasets(list(parts.values())), parts


def fixed_sample(rows, n: int, seed: int):
    """`n` rows chosen once with `seed`, kept in dataset order (all rows if there are fewer)."""
    if n >= len(rows):
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return rows.select(np.sort(picked))


def sample_train_rows(train, n_eval_rows: int, seed: int):
    """As many training rows as there are eval rows, at most TRAIN_SAMPLE_MAX_ROWS."""
    return fixed_sample(train, min(n_eval_rows, TRAIN_SAMPLE_MAX_ROWS), seed)


def drop_empty_completions(dataset, source: str):
    """Rows without a response (`encode.has_response`) are dropped before the split, counted, and
    the run fails if nothing is left."""
    keep = [i for i, c in enumerate(dataset["completion"]) if has_response(c)]
    dropped = len(dataset) - len(keep)
    if not keep:
        raise DataError(f"{source}: every response is empty; nothing to train on")
    if dropped:
        say_drops(Counter({DROP_EMPTY: dropped}))
        dataset = dataset.select(keep)
    return dataset, dropped
