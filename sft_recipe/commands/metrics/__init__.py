"""Generation metrics as `evaluate` modules shipped inside the package (no hub download).

`evaluate.load("exact_match")` fetches a script from the hub; `evaluate.load(path)` on the
directories here does not, so generation metrics work offline and in air-gapped clusters.
Loss, perplexity and token accuracy need no generation and come from `SFTTrainer.evaluate`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent
GENERATION_METRICS = ("exact_match", "rouge_l")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """One of GENERATION_METRICS, loaded by path with `evaluate.load`."""
    return evaluate.load(str(METRICS_DIR / name))


def score_generations(predictions: list[str], references: list[str], prefix: str = "eval") -> dict[str, float]:
    """`{prefix}_exact_match` and `{prefix}_rouge_l` for generated answers against references."""
    results = [load_metric(name).compute(predictions=predictions, references=references) for name in GENERATION_METRICS]
    return {f"{prefix}_{key}": float(value) for result in results for key, value in result.items()}


def normalise_answer(text: str) -> str:
    """Whitespace-insensitive form of an answer: the rule exact match scores by."""
    return " ".join(text.split())
