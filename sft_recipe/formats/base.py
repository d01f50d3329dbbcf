"""What every data format adapter is: a name, the internal form it produces, and one row mapping.

The rest of the package never asks which format a dataset was written in, only which *form* its
rows took:
- `Form.COMPLETION`: `prompt` and `completion` strings; the loss is on the completion;
- `Form.CHAT`: `messages` (and `tools`, `source_row`); the chat template renders them and the
  assistant turns carry the loss;
- `Form.TEXT`: `text`; every token is trained, in blocks of `max_length`.

An adapter's `to_form` maps one raw row (a stream reads rows one at a time); `normalise` maps a
whole in-memory dataset and by default runs `to_form` on every row, so a new format needs nothing
else. The built-in adapters override `normalise` with a batched version of the same rules.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ..errors import DataError


class Form(Enum):
    COMPLETION = "completion"
    CHAT = "chat"
    TEXT = "raw_text"


class Format:
    """A data format: subclass, set the class attributes, implement `to_form`, and `register` it."""

    name: str = ""
    form: Form = Form.COMPLETION
    required: tuple[str, ...] = ()  # columns a dataset must have
    string_columns: tuple[str, ...] = ()  # values that must be strings (named in JSON diagnoses)
    nullable: tuple[str, ...] = ()  # of those, the ones that may be null or absent
    help: str = ""  # one line for `--help` and the format list

    def to_form(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """One raw row (column mapping applied) -> this format's form, or a one-line DataError."""
        raise NotImplementedError

    def normalise(self, dataset, source: str):
        """A whole dataset -> its form's columns; rows are named 1-based in errors."""
        self.check_columns(dataset.column_names, source)

        def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
            return self.to_form(row, f"{source}: row {index + 1}")

        converted = dataset.map(convert, with_indices=True, remove_columns=dataset.column_names, desc="Formatting")
        if self.form is Form.CHAT and "source_row" not in converted.column_names:
            converted = converted.add_column("source_row", list(range(1, len(converted) + 1)))
        return converted

    def uniform(self, row: dict[str, Any]) -> dict[str, Any]:
        """A raw JSON row with values that vary in type only in ways this format allows, made
        uniform so that Arrow can type the column (`data.load` reads such files itself)."""
        return row

    def check_columns(self, columns: Any, where: str) -> None:
        missing = [c for c in self.required if c not in columns]
        if missing:
            raise DataError(f"{where}: missing column '{missing[0]}' for dataset_format '{self.name}' "
                            f"(columns present: {', '.join(sorted(columns)) or 'none'})")

    def check_row_strings(self, row: dict[str, Any], where: str) -> None:
        """`string_columns` of one row must be strings (or null, for `nullable` ones)."""
        for key in self.string_columns:
            value = row.get(key)
            if not isinstance(value, str) and not (key in self.nullable and value is None):
                raise DataError(f"{where}: key '{key}' must be a string, got {kind(value)}")

    def prompt(self, text: str, input: str = "") -> str:
        """The prompt for a user's text at generation time, as the model was trained (not for chat)."""
        return text

    def shown(self, prompt: str) -> str:
        """A training prompt as the console shows it next to its answer (the part a person wrote)."""
        return prompt.strip()

    def card_prompt(self, instruction: str) -> tuple[str, str]:
        """(how prompts are built, an example prompt) for the model card."""
        return "the prompt text exactly as in the training data, no template", instruction


def kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_strings(dataset, keys: tuple[str, ...], source: str, allow_null: tuple[str, ...]) -> None:
    """Every value of `keys` must be a string (or null, for `allow_null` keys). A string column
    without forbidden nulls is checked by its Arrow type alone; only a column that fails that is
    walked row by row, to name the first bad row."""
    arrow = dataset.with_format("arrow")
    for key in keys:
        column = arrow[key]
        if str(column.type) in ("string", "large_string") and (key in allow_null or column.null_count == 0):
            continue
        for i, value in enumerate(dataset[key]):
            if isinstance(value, str) or (value is None and key in allow_null):
                continue
            raise DataError(f"{source}: row {i + 1}: key '{key}' must be a string, got {kind(value)}")


def map_columns(dataset, columns: dict[str, str] | None, source: str):
    """Rename the dataset's own columns onto the format's names (`columns: {output: answer}` renames
    `answer` to `output`); a column the mapping names must exist. A clashing column of the format's
    name that the mapping replaces is dropped first."""
    if not columns:
        return dataset
    present = set(dataset.column_names)
    for target, own in columns.items():
        if own not in present:
            raise DataError(f"{source}: column '{own}' (mapped to '{target}' by columns: {describe_mapping(columns)}) "
                            f"is not in the dataset (columns present: {', '.join(sorted(present)) or 'none'})")
    renames = {own: target for target, own in columns.items() if own != target}
    clashes = [t for t in renames.values() if t in present and t not in renames]
    if clashes:
        dataset = dataset.remove_columns(clashes)
    return dataset.rename_columns(renames) if renames else dataset


def map_row_columns(row: dict[str, Any], columns: dict[str, str] | None, where: str) -> dict[str, Any]:
    """`map_columns` for one streamed row."""
    row = dict(row)
    for target, own in (columns or {}).items():
        if own not in row:
            raise DataError(f"{where}: column '{own}' (mapped to '{target}' by columns) is not in the dataset "
                            f"(columns present: {', '.join(sorted(row)) or 'none'})")
        row[target] = row[own]
    return row


def describe_mapping(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{target}: {own}" for target, own in columns.items()) + "}"
