"""`packing: bfd`: whole rows packed into bins of at most `max_length` tokens by best-fit decreasing.

Rows are placed longest first (ties: lower index first); each goes into the open bin with the
SMALLEST remaining capacity that still holds it (best fit), or opens a new bin. Open bins are
indexed by remaining capacity in a segment tree over 0..max_length, so "smallest capacity >= n"
is O(log max_length) and packing is O(n log n). Among bins with equal capacity the most recently
touched one is used (a stack per capacity): the bins are a pure function of the lengths and seed.

Any-fit property: a bin is opened only when its first row fits no open bin, and bins only grow,
so the loads of any two bins sum to more than `max_length`: at most one bin is half full or less.

A row is never split (rows are already cut to `max_length` when tokenized), and a bin is stored as
its rows' tokens concatenated plus `row_lengths`: the collator turns it back into rows, so
`position_ids` restart per row and rows never attend to each other (collate.PackingCollator).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import datasets
import pyarrow.compute as pc


class CapacityTree:
    """Counts of open bins per remaining capacity 0..max_length, with 'first capacity >= x'."""

    def __init__(self, max_length: int) -> None:
        self.size = 1 << max_length.bit_length()  # the smallest power of two above max_length
        self.count = [0] * (2 * self.size)

    def add(self, capacity: int, delta: int) -> None:
        i = capacity + self.size
        while i:
            self.count[i] += delta
            i //= 2

    def first_at_least(self, x: int) -> int | None:
        """Smallest capacity >= x with at least one bin, or None."""
        count, size = self.count, self.size
        i = x + size
        if count[i]:
            return x
        while i > 1:  # climb until a right sibling (capacities above the current range) is non-empty
            if not i & 1 and count[i + 1]:
                i += 1
                break
            i //= 2
        else:
            return None
        while i < size:  # leftmost non-empty leaf below i
            i = 2 * i if count[2 * i] else 2 * i + 1
        return i - size


def pack_bfd(lengths: Sequence[int], max_length: int, seed: int | None = 0) -> list[list[int]]:
    """Bins of row indices (ascending within a bin) whose lengths sum to at most `max_length`; every
    index appears exactly once. Bins are shuffled with `random.Random(seed)` (None: opening order).
    Raises ValueError for a row longer than `max_length` or a negative length."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    lengths = [int(n) for n in lengths]
    for index, n in enumerate(lengths):
        if n < 0 or n > max_length:
            raise ValueError(f"row {index} has length {n}, outside 0..{max_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    tree = CapacityTree(max_length)
    by_capacity: dict[int, list[int]] = {}  # remaining capacity -> stack of bin ids
    bins: list[list[int]] = []
    for index in order:
        n = lengths[index]
        capacity = tree.first_at_least(n)
        if capacity is None:
            bin_id = len(bins)
            bins.append([index])
            remaining = max_length - n
        else:
            stack = by_capacity[capacity]
            bin_id = stack.pop()
            if not stack:
                del by_capacity[capacity]
            tree.add(capacity, -1)
            bins[bin_id].append(index)
            remaining = capacity - n
        by_capacity.setdefault(remaining, []).append(bin_id)
        tree.add(remaining, 1)
    for rows in bins:
        rows.sort()
    if seed is not None:
        random.Random(seed).shuffle(bins)
    return bins


def fill_rate(lengths: Sequence[int], bins: Sequence[Sequence[int]], max_length: int) -> float:
    """Tokens packed / (bins x max_length)."""
    return sum(lengths[i] for rows in bins for i in rows) / (len(bins) * max_length) if bins else 1.0


def pack_rows(rows, max_length: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """Training rows -> bins (`input_ids`, `labels` concatenated, `row_lengths`, `length`), and counts."""
    if "length" in rows.column_names:  # respects a selection (a mixture's draw), unlike the Arrow table
        lengths = [int(n) for n in rows["length"]]
    else:  # text blocks: one fixed length
        lengths = pc.list_value_length(rows.data.column("input_ids")).to_numpy().tolist()
    bins = pack_bfd(lengths, max_length, seed)

    def join(batch: dict[str, list]) -> dict[str, list]:
        picked = rows[[i for b in batch["rows"] for i in b]]
        out: dict[str, list] = {"input_ids": [], "labels": [], "row_lengths": [], "length": []}
        start = 0
        for b in batch["rows"]:
            ids = picked["input_ids"][start:start + len(b)]
            labels = picked["labels"][start:start + len(b)]
            start += len(b)
            out["input_ids"].append([t for row in ids for t in row])
            out["labels"].append([t for row in labels for t in row])
            out["row_lengths"].append([len(row) for row in ids])
            out["length"].append(sum(len(row) for row in ids))
        return out

    index = datasets.Dataset.from_dict({"rows": bins})
    packed = index.map(join, batched=True, batch_size=256, remove_columns=["rows"], desc="Packing (bfd)")
    stats = {"rows": len(lengths), "bins": len(bins), "max_length": max_length,
             "fill": fill_rate(lengths, bins, max_length)}
    return packed, stats
