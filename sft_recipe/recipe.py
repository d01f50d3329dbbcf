"""Recipe loading: YAML file, then `--key value` overrides, then type checks, into `SFTConfig`.

Precedence is CLI > YAML > dataclass default. Every key is checked against `SFTConfig`, so a
typo is an error with a suggestion instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .artifacts import RECIPE_FILENAME
from .config import SFTConfig, is_secret_key
from .errors import RecipeError

_FIELDS = {f.name: f for f in dataclasses.fields(SFTConfig)}
_HINTS = typing.get_type_hints(SFTConfig)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> SFTConfig:
    """Read a recipe file, apply CLI overrides, and return a validated config."""
    where = str(path) if path else "command line"
    values: dict[str, Any] = read_yaml(path) if path else {}
    values.update(parse_overrides(overrides or []))
    return build_config(values, where)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of key: value, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `["--lr", "1e-3", "--packing", "true"]` into typed values (parsed as YAML scalars)."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RecipeError(f"command line: expected --key value, got '{arg}'")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise RecipeError(f"command line: --{key} needs a value")
            raw = args[i + 1]
            i += 1
        try:
            values[key.replace("-", "_")] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            values[key.replace("-", "_")] = raw
        i += 1
    return values


def build_config(values: dict[str, Any], where: str) -> SFTConfig:
    unknown = [k for k in values if k not in _FIELDS]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, _FIELDS, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(f"{where}: unknown recipe key '{key}'{hint}")
    checked = {k: check_type(k, v, _HINTS[k], where) for k, v in values.items()}
    try:
        return SFTConfig(**checked)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None


def check_type(key: str, value: Any, hint: Any, where: str) -> Any:
    """Coerce `value` to `hint` where it is unambiguous (int→float, "1e-3"→float), else fail."""
    ok, result = _coerce(value, hint)
    if not ok:
        raise RecipeError(
            f"{where}: recipe key '{key}' expects {_describe(hint)}, got {value!r} ({type(value).__name__})"
        )
    return result


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, result = _coerce(value, arm)
            if ok:
                return True, result
        return False, None
    if hint is type(None):
        return value is None, None
    if hint is Any:
        return True, value
    if origin is Literal:
        return value in typing.get_args(hint), value
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # `--report_to wandb` means [wandb]
            value = [value]
        if not isinstance(value, list):
            return False, None
        items = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    if dataclasses.is_dataclass(hint):  # e.g. `lora:`, given as a mapping; SFTConfig validates its keys
        return isinstance(value, (dict, hint)), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def save_recipe(config: SFTConfig, directory: str | Path) -> Path:
    """Write the resolved recipe beside a checkpoint so later stages can inherit it.

    Secrets never reach this file: the config has no token fields, and pass-through keys that
    look like credentials are dropped.
    """
    data = config.to_dict()
    data["training_args"] = {k: v for k, v in data["training_args"].items() if not is_secret_key(k)}
    path = Path(directory) / RECIPE_FILENAME
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_saved_recipe(model_dir: str | Path) -> dict[str, Any]:
    """The resolved recipe stored with a checkpoint, or {} for a plain hub/`save_pretrained` model."""
    path = Path(model_dir) / RECIPE_FILENAME
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
