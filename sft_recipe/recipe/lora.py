"""The `lora:` recipe mapping as a small validated dataclass (peft is only needed to train).

Every key is optional; `lora: {}` means LoRA with these defaults:

    lora:
      r: 16                        # adapter rank
      alpha: 32                    # scaling = alpha / r
      dropout: 0.05
      target_modules: all-linear   # or a list of module names, e.g. [q_proj, v_proj]
      load_in_4bit: false          # QLoRA: 4-bit NF4 base weights (CUDA + bitsandbytes)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import RecipeError, reject_unknown_keys


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    load_in_4bit: bool = False

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | "LoraSettings") -> "LoraSettings":
        """Defaults filled in; a one-line RecipeError for any unknown key or bad value."""
        if isinstance(values, LoraSettings):
            return values
        reject_unknown_keys(values, [f.name for f in dataclasses.fields(cls)], 'lora')
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        r, alpha, dropout, targets = self.r, self.alpha, self.dropout, self.target_modules
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise RecipeError(f"recipe key 'lora.r' must be a positive integer, got {r!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise RecipeError(f"recipe key 'lora.alpha' must be a positive number, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise RecipeError(f"recipe key 'lora.dropout' must be in [0, 1), got {dropout!r}")
        if not (isinstance(targets, str) and targets) and not (
                isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
            raise RecipeError(f"recipe key 'lora.target_modules' must be 'all-linear' or a list of module names, "
                              f"got {targets!r}")
        if not isinstance(self.load_in_4bit, bool):
            raise RecipeError(f"recipe key 'lora.load_in_4bit' must be true or false, got {self.load_in_4bit!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
