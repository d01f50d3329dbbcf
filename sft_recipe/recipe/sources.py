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
        eval: {split: test}                  # optional: its own evaluation rows (a path, or a mapping)

    eval_dataset: data/valid.jsonl           # or {path, format, columns, split, config, max_examples},
                                             # or {name: path-or-mapping, ...}: several named sets

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
    eval: "DataSource | None" = None  # this source's own evaluation rows (a mixture entry's `eval:`)

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | "DataSource", index: int | str) -> "DataSource":
        """Defaults filled in; a one-line RecipeError for an unknown key or a bad value."""
        if isinstance(values, DataSource):
            return values
        where = f"datasets[{index}]" if isinstance(index, int) else index
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
        if source.get("eval") is not None:
            source["eval"] = eval_source(source["eval"], f"{where}.eval", source["path"],
                                         source.get("format", DEFAULT_FORMAT), source["name"], source["columns"],
                                         source.get("config"))
        if not re.fullmatch(r"[A-Za-z0-9_]+", source["name"]):
            raise RecipeError(f"recipe key '{where}.name' may hold only letters, digits and _ (it names the "
                              f"metric eval_<name>_loss), got {source['name']!r}")
        return cls(**source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def eval_source(value: Any, where: str, path: str, format: str, name: str,
                columns: dict[str, str] | None = None, config: str | None = None) -> DataSource:
    """An evaluation set: a path, or a mapping whose `path` defaults to the training source's (so
    `{split: test}` is that source's test split) and whose format and columns default to its too."""
    if isinstance(value, DataSource):
        return value
    if isinstance(value, str):
        value = {"path": value}
    if isinstance(value, dict) and columns and "columns" not in value:
        value = {**value, "columns": columns}
    if isinstance(value, dict) and config and "config" not in value and value.get("path", path) == path:
        value = {**value, "config": config}  # the same hub dataset: its configuration too
    if not isinstance(value, dict):
        raise RecipeError(f"recipe key '{where}' must be a path or a mapping {{path, split, format, columns, ...}}, "
                          f"got {value!r}")
    value = {k: v for k, v in value.items() if not (k == "weight" and v == 1.0 or k == "eval" and v is None)}
    if "weight" in value or "eval" in value:  # (a saved recipe writes the defaults: those pass)
        raise RecipeError(f"recipe key '{where}' is an evaluation set: it takes no "
                          f"'{'weight' if 'weight' in value else 'eval'}'")
    return DataSource.from_mapping({"format": format, "name": name, **value, "path": value.get("path", path)}, where)


def eval_sets(value: Any, path: str | None, format: str, columns: dict[str, str] | None,
              config: str | None = None) -> list[DataSource]:
    """`eval_dataset:` as a list of sets: one path or mapping (named `eval`), or {name: path-or-mapping}."""
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, DataSource) for v in value):
        return value
    if isinstance(value, str) or (isinstance(value, dict) and ("path" in value or "split" in value)):
        return [eval_source(value, "eval_dataset", path or "", format, "eval", columns, config)]
    if not isinstance(value, dict) or not value:
        raise RecipeError("recipe key 'eval_dataset' must be a path, a mapping {path, split, format, ...}, or "
                          f"named sets {{name: path-or-mapping}}, got {value!r}")
    sets = []
    for name, one in value.items():
        sets.append(eval_source(one, f"eval_dataset.{name}", path or "", format, str(name), columns, config))
    return sets


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


def check_evaluation(config: Any) -> None:
    """Where a recipe's evaluation rows come from, said once (`SFTConfig.validate`); a run without
    any refuses what needs them."""
    if config.eval_split is not None:
        if config.datasets is not None:
            raise RecipeError("recipe key 'eval_split' names the dataset's own split; a mixture gives each "
                              "entry its own 'eval:' (e.g. eval: {split: test})")
        if config.eval_dataset is not None:
            raise RecipeError("set 'eval_split' (the dataset's own split) or 'eval_dataset', not both")
    if config.eval_fraction is not None and (config.eval_dataset is not None or config.eval_split is not None):
        raise RecipeError("set 'eval_fraction' (rows held out of the training data) or "
                          f"'{'eval_split' if config.eval_split else 'eval_dataset'}' (evaluation rows of "
                          "their own), not both")
    config.eval_sets  # parsed now: a bad eval_dataset is one line before anything runs
    if config.evaluates:
        return
    needs = [k for k, on in (("generation_eval_samples", config.generation_eval_samples),
                             ("early_stopping_patience", config.early_stopping_patience),
                             ("callbacks: early_stopping", "early_stopping" in config.callbacks),
                             ("eval_on_start", config.eval_on_start)) if on]
    if needs:
        off = "streaming_eval_examples: 0" if config.streaming else "eval_fraction: 0"
        raise RecipeError(f"recipe key '{needs[0]}' needs evaluation rows, and this recipe has none ({off}, "
                          "no eval_dataset); hold rows out or give an eval_dataset")
