"""Recipe loading: YAML file, then `--key value` overrides, then type checks, into `SFTConfig`.

Precedence is CLI > YAML > dataclass default. Every key is checked against `SFTConfig`, so a
typo is an error with a suggestion instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .config import SFTConfig
from .keys import is_secret_key
from ..errors import RecipeError, did_you_mean, one_line


class KeyedRecipeError(RecipeError):
    """A recipe error that already names where its key came from (file and line, or command line)."""

_FIELDS = {f.name: f for f in dataclasses.fields(SFTConfig)}
_HINTS = typing.get_type_hints(SFTConfig)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> SFTConfig:
    """Read a recipe file, apply CLI overrides, and return a validated config.

    A mistake is blamed on where it came from: the file (with the key's line) or the command line.
    """
    lines: dict[str, int] = {}
    from_file: dict[str, Any] = read_yaml(path, lines) if path else {}
    from_cli = parse_overrides(overrides or [])
    sources = {k: f"{path}: line {lines[k]}" if k in lines else str(path) for k in from_file}
    sources.update({k: "command line" for k in from_cli})
    values = {**from_file, **from_cli}
    try:
        return build_config(values, sources)
    except KeyedRecipeError:
        raise
    except RecipeError as exc:
        if not from_cli or not path:
            raise RecipeError(f"{path or 'command line'}: {exc}") from None
        try:  # the file alone is fine: the command line made it wrong
            build_config(from_file, sources)
        except RecipeError as alone:
            where = str(path) if str(alone) == str(exc) else f"{path} with the command line"
        else:
            where = "command line"
        raise RecipeError(f"{where}: {exc}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first given on line {seen[key]})", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, lines: dict[str, int] | None = None) -> dict[str, Any]:
    """The recipe file as a mapping; `lines` receives each top-level key's line number."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the "
                          "recipe as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=UniqueKeyLoader)
        data = UniqueKeyLoader(text).get_single_data() if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise RecipeError(f"{path}:{line} invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of key: value, got {type(data).__name__}")
    if lines is not None and isinstance(node, yaml.MappingNode):
        lines.update({str(k.value): k.start_mark.line + 1 for k, _ in node.value})
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


def build_config(values: dict[str, Any], where: str | dict[str, str]) -> SFTConfig:
    """Check keys and types, then validate the whole recipe. `where` names the source of every key,
    or of each key (a mapping); with a mapping, whole-recipe errors come back unprefixed."""
    if isinstance(where, str):
        try:
            return build_config(values, dict.fromkeys(values, where))
        except KeyedRecipeError:
            raise
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None
    sources = where
    unknown = [k for k in values if k not in _FIELDS]
    if unknown:
        key = str(unknown[0])
        raise KeyedRecipeError(f"{sources.get(key, 'recipe')}: unknown recipe key '{key}'{did_you_mean(key, _FIELDS)}")
    checked = {k: check_type(k, v, _HINTS[k], sources.get(k, "recipe")) for k, v in values.items()}
    return SFTConfig(**checked)


def check_type(key: str, value: Any, hint: Any, where: str) -> Any:
    """Coerce `value` to `hint` where it is unambiguous (int→float, "1e-3"→float), else fail."""
    ok, result = coerce(value, hint)
    if not ok:
        raise KeyedRecipeError(f"{where}: recipe key '{key}' expects {describe(hint)}, got {value!r} "
                               f"({type(value).__name__})")
    return result


def coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, value as `hint`) where the conversion is unambiguous, else (False, None)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, result = coerce(value, arm)
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
        items = [coerce(v, item) for v in value]
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


def describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def resolved_recipe(config: SFTConfig) -> dict[str, Any]:
    """The recipe as saved beside a model (plain YAML types, no credentials): what resume compares."""
    data = config.to_dict()
    data["training_args"] = {k: v for k, v in data["training_args"].items() if not is_secret_key(k)}
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))
