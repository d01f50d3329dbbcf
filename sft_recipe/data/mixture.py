"""Dataset mixtures: what `weight` means, once, for rows in memory and streamed, and which rows are drawn.

Weights are relative shares of the mixture's training items (rows; blocks of `max_length` tokens,
i.e. tokens, for text). Items are dealt to sources one at a time by `next_source`, Balinski and
Young's quota method: the next item goes to the source with the most weight per item it would then
hold, among those still below their share of the items so far, rounded up. Every prefix of n items
then gives each source floor or ceil of n x share (no rounding error of a whole item or more, at any
length), and the order depends only on the weights.
- **In memory** the mixture has as many training rows as its sources hold together, so no weight
  can make an epoch silently smaller or larger than the data; a source gives as many rows as the
  first `total` items dealt it (`draw_counts`: they add up exactly), Rows are never drawn with replacement,
so no row appears twice while another of the same source is left out. Draws depend only on the
seed and the source's position, so a mixture is the same on every process and after a resume
(the Trainer's seeded sampler then shuffles the mixed rows).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

from ..recipe.config import SFTConfig
from ..recipe.sources import DataSource

ROW_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int64")),
                                  "labels": datasets.List(datasets.Value("int64"))})


def source_config(config: SFTConfig, source: DataSource) -> SFTConfig:
    """The recipe as if `source` were its only `dataset:`; every per-source step reuses it."""
    return dataclasses.replace(config, dataset=source.path, datasets=None,  # type: ignore[arg-type]
                               dataset_format=source.format, dataset_split=source.split, dataset_config=source.config,
                               max_examples=source.max_examples, columns=source.columns, eval_dataset=None,
                               eval_split=None, eval_fraction=None)


def integer_weights(weights: list[float]) -> list[int]:
    """The weights as integers in the same ratios (exact, to a millionth), so that quotas compare exactly."""
    fractions = [Fraction(w).limit_denominator(10**6) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    return [int(f * scale) for f in fractions]


def next_source(counts: list[int], weights: list[int]) -> int:
    """The source the next item comes from (module docstring), given the items each holds and the
    `integer_weights`; ties go to the earlier source."""
    n, total = sum(counts) + 1, sum(weights)
    best, best_priority = -1, -1.0
    for k, (count, weight) in enumerate(zip(counts, weights)):
        if count * total < n * weight:  # below its share of n items, rounded up
            priority = weight / (count + 1)
            if priority > best_priority:
                best, best_priority = k, priority
    return best


def draw_counts(available: list[int], weights: list[float]) -> list[int]:
    """Rows wanted per source: those the first `sum(available)` items of `next_source` deal it."""
    whole = integer_weights(weights)
    counts = [0] * len(weights)
    for _ in range(sum(available)):
        counts[next_source(counts, whole)] += 1
    return counts


def draw_indices(available: int, wanted: int, seed: int, position: int) -> np.ndarray:
    """`wanted` row indices of a source of `available` rows: whole repeats, then a seeded draw
    without replacement (kept in row order)."""
    whole, rest = divmod(wanted, available)
    rng = np.random.default_rng([seed, position])
    picked = np.sort(rng.choice(available, size=rest, replace=False))
    return np.concatenate([np.tile(np.arange(available), whole), picked]).astype(np.int64)


def uniform_rows(rows) -> Any:
    """`input_ids`, `labels` (int64 lists) and `length` only, so that every format concatenates
    (text blocks are fixed-size lists; SFT rows carry extra counting columns)."""
    rows = rows.select_columns(["input_ids", "labels"])
    if rows.features != ROW_FEATURES:
        rows = rows.cast(ROW_FEATURES)
    lengths = pc.list_value_length(rows.with_format("arrow")["input_ids"]).to_numpy()  # selected rows only
    return rows.add_column("length", lengths.astype(np.int64).tolist())


def mix(parts: list[Any], sources: list[DataSource], seed: int) -> tuple[Any, list[int]]:
    """The mixed training rows (sources in order; the Trainer shuffles) and the count per source."""
    counts = draw_counts([len(p) for p in parts], [s.weight for s in sources])
    chosen = [part.select(draw_indices(len(part), n, seed, i)) for i, (part, n) in enumerate(zip(parts, counts))]
    return datasets.concatenate_datasets([c for c in chosen if len(c)]), counts


def concat_or_none(parts: list[Any]) -> Any | None:
    """Held-out raw rows of every source, when they share one schema (for generation checks)."""
    present = [p for p in parts if p is not None]
    if len(present) != len(parts) or len({tuple(sorted(p.column_names)) for p in present}) != 1:
        return None
    try:
        return datasets.concatenate_datasets(present)
    except ValueError:  # same names, different feature types
        return None


def describe_sources(sources: dict[str, dict[str, Any]]) -> str:
    """`gsm8k 7000 rows -> 8000 drawn (weight 2: 50.0%), eval 700; ...` for the start-of-run data line
    (streamed sources: `gsm8k streamed (weight 2: 50.0% of items), eval 256`)."""
    if all("drawn" not in s for s in sources.values()):
        return "; ".join(f"{name} streamed (weight {s['weight']:g}: {s['share']:.1%} of items), eval {s['eval_rows']}"
                         for name, s in sources.items())
    total = sum(s["drawn"] for s in sources.values()) or 1
    return "; ".join(f"{name} {s['available']} rows -> {s['drawn']} drawn (weight {s['weight']:g}: "
                     f"{s['drawn'] / total:.1%}), eval {s['eval_rows']}" for name, s in sources.items())
