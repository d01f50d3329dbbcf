"""What preprocessing did to the data: counts logged at the start of a run and saved with it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class TokenStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_empty: int = 0
    dropped_too_long: int = 0
    dropped_other: int = 0
    dropped_tokens: int = 0
    tokens: int = 0
    trainable_tokens: int = 0

    @property
    def trainable_share(self) -> float:
        return self.trainable_tokens / self.tokens if self.tokens else 0.0

    def add(self, other: "TokenStats") -> "TokenStats":
        return TokenStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def summary(self) -> str:
        return (f"rows {self.rows}: kept {self.kept}, truncated {self.truncated}, dropped {self.dropped_empty} "
                f"empty + {self.dropped_too_long} prompt too long + {self.dropped_other} other "
                f"(+{self.dropped_tokens} tail tokens); {self.tokens} tokens, {self.trainable_share:.1%} trainable")

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "trainable_share": self.trainable_share}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TokenStats":
        """Back from `to_dict` (derived keys such as `trainable_share` are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def total_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The `to_dict` counts of several sources, added up (a mixture's train or eval line)."""
    return functools.reduce(TokenStats.add, map(TokenStats.from_dict, parts), TokenStats()).to_dict()
