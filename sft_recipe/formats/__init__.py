"""The data formats a recipe may name, and the one internal form each becomes (`base.Form`).

Each format is one adapter module; this registry names them. Adding a format is a `Format`
subclass in its own module and one `register` call (a test does it: `tests/formats/`). The
in-memory path (`normalise`) and the streaming path (`canonical_row`) go through the same adapter
and the same column mapping; everything downstream asks the rows' `Form`, never a format's name.

Pure Python over rows and `datasets` objects handed in: nothing here imports torch or transformers.
"""

from __future__ import annotations

from typing import Any

from ..errors import RecipeError, did_you_mean
from .alpaca import ALPACA
from .base import Form, Format, describe_mapping, map_columns, map_row_columns
from .messages import MESSAGES
from .prompt_completion import PROMPT_COMPLETION
from .text import TEXT

_REGISTRY: dict[str, Format] = {}


def register(adapter: Format) -> Format:
    """Make `adapter` a format that recipes (`dataset_format`, `datasets[].format`) may name."""
    if not adapter.name or not isinstance(adapter.form, Form):
        raise ValueError(f"a format needs a name and a Form, got {adapter.name!r} / {adapter.form!r}")
    _REGISTRY[adapter.name] = adapter
    return adapter


for _adapter in (ALPACA, PROMPT_COMPLETION, TEXT, MESSAGES):
    register(_adapter)

DEFAULT_FORMAT = ALPACA.name


def format_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_format(name: str, key: str = "dataset_format") -> Format:
    """The adapter named `name`, or a one-line RecipeError naming the recipe `key`."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise RecipeError(f"recipe key '{key}' expects one of {', '.join(repr(n) for n in _REGISTRY)}, "
                      f"got {name!r}{did_you_mean(name, _REGISTRY)}")


def form_of(name: str) -> Form:
    return get_format(name).form


def normalise(dataset, name: str, source: str):
    """A loaded dataset (column mapping applied) -> the columns of its format's form."""
    return get_format(name).normalise(dataset, source)


def canonical_row(row: dict[str, Any], name: str, columns: dict[str, str] | None, where: str) -> dict[str, Any]:
    """One streamed row -> its form's columns: the same mapping and adapter as `normalise`."""
    return get_format(name).to_form(map_row_columns(row, columns, where), where)


def prompt_format(names: list[str]) -> str:
    """The format a mixture's model is prompted in (`generate`, `chat`, samples, the card): the
    sources' one format, else chat when any source is a conversation (its template is the model's),
    else the first prompted format (text only continues what it is given)."""
    if len(set(names)) == 1:
        return names[0]
    chat = [n for n in names if form_of(n) is Form.CHAT]
    if chat:
        return chat[0]
    return next(n for n in names if form_of(n) is not Form.TEXT)


__all__ = ["DEFAULT_FORMAT", "Form", "Format", "canonical_row", "describe_mapping", "form_of", "format_names",
           "get_format", "map_columns", "normalise", "prompt_format", "register"]
