"""The data-source recipe keys as small validated values: `columns:` and each `datasets:` entry.

    datasets:                                # a mixture, instead of `dataset:`
      - path: ../shared/data/gsm8k_alpaca.json
        format: alpaca
        weight: 2                            # relative share of the training rows (tokens for text)
      - path: ../shared/data/roleplay_alpaca.json
        format: alpaca
        columns: {instruction: prompt, output: reply}   # format name: the dataset's own name
        name: roleplay                       # eval_roleplay_loss; default: the file's stem
        split: train                         # optional, like config and max_examples

Pure data, like `recipe.lora`: nothing here reads files.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RecipeError, reject_unknown_keys
from ..formats import DEFAULT_FORMAT, get_format


def check_columns(columns: Any, where: str) -> dict[str, str] | None:
    """`columns` must map format column names onto dataset column names, both strings."""
    if columns is None:
        return None
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in columns.items()):
        raise RecipeError(f"recipe key '{where}' must map format columns to dataset columns, e.g. "
                          f"{{instruction: question, output: answer}}, got {columns!r}")
    return dict(columns)


@dataclass(frozen=True)
class DataSource:
    """One `datasets:` entry; `name` defaults to a sanitised file stem (or hub id tail)."""

    path: str
    format: str = DEFAULT_FORMAT
    split: str = "train"
    config: str | None = None
    max_examples: int | None = None
    columns: dict[str, str] | None = None
    weight: float = 1.0
    name: str = ""

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | "DataSource", index: int) -> "DataSource":
        """Defaults filled in; a one-line RecipeError for an unknown key or a bad value."""
        if isinstance(values, DataSource):
            return values
        where = f"datasets[{index}]"
        if not isinstance(values, dict):
            raise RecipeError(f"recipe key '{where}' must be a mapping with at least 'path', got {values!r}")
        reject_unknown_keys(values, [f.name for f in dataclasses.fields(cls)], where)
        if not isinstance(values.get("path"), str) or not values["path"]:
            raise RecipeError(f"recipe key '{where}.path' is required (a hub id, local file or directory)")
        source = dict(values)
        source["columns"] = check_columns(source.get("columns"), f"{where}.columns")
        source["name"] = source.get("name") or default_name(source["path"])
        weight = source.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise RecipeError(f"recipe key '{where}.weight' must be a positive number, got {weight!r}")
        source["weight"] = float(weight)
        get_format(source.get("format", DEFAULT_FORMAT), f"{where}.format")
        max_examples = source.get("max_examples")
        if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                         or max_examples <= 0):
            raise RecipeError(f"recipe key '{where}.max_examples' must be a positive integer, got {max_examples!r}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", source["name"]):
            raise RecipeError(f"recipe key '{where}.name' may hold only letters, digits and _ (it names the "
                              f"metric eval_<name>_loss), got {source['name']!r}")
        return cls(**source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_name(path: str) -> str:
    """`../data/gsm8k_alpaca.json` -> `gsm8k_alpaca`; `org/Some-Set` -> `Some_Set`."""
    stem = Path(path.rstrip("/")).stem or "dataset"
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or "dataset"


def check_sources(sources: list[Any]) -> list[DataSource]:
    """Every entry validated; names made unique (a second `train.jsonl` becomes `train_2`)."""
    if not isinstance(sources, list) or not sources:
        raise RecipeError("recipe key 'datasets' must be a non-empty list of {path, format, weight, ...}")
    checked = [DataSource.from_mapping(s, i) for i, s in enumerate(sources)]
    seen: Counter[str] = Counter()
    for i, source in enumerate(checked):
        seen[source.name] += 1
        if seen[source.name] > 1:
            checked[i] = dataclasses.replace(source, name=f"{source.name}_{seen[source.name]}")
    return checked
