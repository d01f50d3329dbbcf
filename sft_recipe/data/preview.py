"""Human-readable rows: what `preprocess` prints so the mask can be checked by eye."""

from __future__ import annotations

from .mask import IGNORE_INDEX


def render_row(input_ids: list[int], labels: list[int], tokenizer) -> str:
    """Decode a row with the masked (untrained) spans wrapped in [MASKED: ...]."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:i])
            parts.append(f"[MASKED: {text}]" if labels[start] == IGNORE_INDEX else text)
            start = i
    return "".join(parts)


def show_rows(dataset, tokenizer, n: int) -> None:
    for i in range(min(n, len(dataset))):
        row = dataset[i]
        print(f"--- row {i} ({len(row['input_ids'])} tokens)")
        print(render_row(row["input_ids"], row["labels"], tokenizer))
