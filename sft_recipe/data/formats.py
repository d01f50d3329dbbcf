"""Every dataset format onto its canonical columns, with validation.

After this step a dataset has exactly one schema per format, whatever the source looked like:
- alpaca / prompt_completion -> `prompt`, `completion` (strings; the Alpaca template applied);
- messages (also ShareGPT `conversations`, and prompt/completion given as message lists) ->
  `messages` (a list of {role, content});
- text -> `text`.
Problems are raised as one-line `DataError`s naming the source, the row (1-based) and the key.
To add a format: its required columns in `REQUIRED_COLUMNS`, its mapping in `normalise`.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import DataError
from .prompts import alpaca_prompt

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "messages": ("messages",),
}


OPTIONAL_STRING_COLUMNS = {"alpaca": ("input",)}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def normalise(dataset, dataset_format: str, source: str):
    """Check columns and field types, then map every format onto its canonical columns."""
    columns = set(dataset.column_names)
    if dataset_format == "messages" and "messages" not in columns and "conversations" in columns:
        dataset = dataset.map(sharegpt_to_messages, remove_columns=["conversations"])
        columns = set(dataset.column_names)
    if dataset_format == "prompt_completion" and columns >= {"prompt", "completion"} and \
            _is_message_list(dataset[0]["prompt"]):
        dataset_format = "messages"  # conversational prompt/completion: handled by the chat rules
        dataset = dataset.map(prompt_completion_to_messages, remove_columns=sorted(columns))
        columns = set(dataset.column_names)
    missing = [c for c in REQUIRED_COLUMNS[dataset_format] if c not in columns]
    if missing:
        raise DataError(
            f"{source}: missing column '{missing[0]}' for dataset_format '{dataset_format}' "
            f"(columns present: {', '.join(sorted(columns)) or 'none'})"
        )
    if dataset_format == "messages":
        return validate_conversations(dataset, source)
    if dataset_format == "text":
        check_strings(dataset, ("text",), source, allow_null=())
        return dataset.select_columns(["text"])
    # A `map` (not a new in-memory Dataset) keeps the rows backed by the datasets cache, so the
    # tokenization after it is cached too: under `main_process_first` the other ranks reuse it.
    if dataset_format == "alpaca":
        optional = [c for c in OPTIONAL_STRING_COLUMNS["alpaca"] if c in columns]
        check_strings(dataset, ("instruction", "output", *optional), source, allow_null=("input",))
        return dataset.map(alpaca_to_prompt_completion, batched=True, remove_columns=dataset.column_names,
                           desc="Formatting")
    check_strings(dataset, ("prompt", "completion"), source, allow_null=())
    return dataset.select_columns(["prompt", "completion"])


def alpaca_to_prompt_completion(batch: dict[str, list]) -> dict[str, list]:
    inputs = batch.get("input") or [""] * len(batch["instruction"])
    return {"prompt": [alpaca_prompt(ins, inp) for ins, inp in zip(batch["instruction"], inputs)],
            "completion": batch["output"]}


def check_strings(dataset, keys: tuple[str, ...], source: str, allow_null: tuple[str, ...]) -> None:
    """Every value of `keys` must be a string (or null, for `allow_null` keys)."""
    for key in keys:
        for i, value in enumerate(dataset[key]):
            if isinstance(value, str) or (value is None and key in allow_null):
                continue
            kind = "null" if value is None else type(value).__name__
            raise DataError(f"{source}: row {i + 1}: key '{key}' must be a string, got {kind}")


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def drop_empty_completions(dataset, source: str):
    """Empty or whitespace-only responses teach nothing but EOS: drop them, count them, and
    fail if nothing is left."""
    keep = [i for i, c in enumerate(dataset["completion"]) if c.strip()]
    dropped = len(dataset) - len(keep)
    if not keep:
        raise DataError(f"{source}: every response is empty; nothing to train on")
    if dropped:
        log.warning("dropped %d rows with an empty response", dropped)
        dataset = dataset.select(keep)
    return dataset, dropped


def sharegpt_to_messages(row: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT `conversations: [{from, value}]` -> `messages: [{role, content}]` (for datasets.map).

    Unknown `from` values pass through unchanged so that validation reports them with the row.
    """
    turns = row.get("conversations")
    if not isinstance(turns, list):
        return {"messages": turns}
    return {"messages": [
        {"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")) if isinstance(t, dict) else None,
         "content": t.get("value") if isinstance(t, dict) else t}
        for t in turns
    ]}


def prompt_completion_to_messages(row: dict[str, Any]) -> dict[str, Any]:
    """Conversational prompt/completion (both message lists) -> one `messages` list.

    A plain-string completion becomes one assistant turn. Assistant turns inside the prompt are
    trained under `train_on: all_assistant`; use `last_assistant` to train the completion only.
    """
    completion = row["completion"]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return {"messages": list(row["prompt"]) + list(completion or [])}


def validate_conversations(dataset, source: str):
    """Every row must be a list of {role, content} with a known role and string content; the first
    turn may not be an assistant's (a template cannot render the prompt before it)."""
    rows = (m for batch in dataset.select_columns(["messages"]).iter(batch_size=1000) for m in batch["messages"])
    for i, messages in enumerate(rows):  # streamed in batches: a large dataset never sits in Python at once
        where = f"{source}: row {i + 1}"
        if not isinstance(messages, list):
            kind = "null" if messages is None else type(messages).__name__
            raise DataError(f"{where}: key 'messages' must be a list of {{role, content}}, got {kind}")
        for j, message in enumerate(messages):
            if not isinstance(message, dict):
                raise DataError(f"{where}: key 'messages[{j}]' must be an object with role and content, "
                                f"got {type(message).__name__}")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise DataError(f"{where}: key 'messages[{j}].role' must be one of {', '.join(ROLES)}, "
                                f"got {role!r}")
            if not isinstance(content, str):
                kind = "null" if content is None else type(content).__name__
                raise DataError(f"{where}: key 'messages[{j}].content' must be a string, got {kind}")
        if messages and messages[0]["role"] == "assistant":
            raise DataError(f"{where}: key 'messages[0].role': a conversation cannot start with an "
                            "assistant turn; put a user (or system) turn first")
    return dataset.select_columns(["messages"])


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


def describe_mapping(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{target}: {own}" for target, own in columns.items()) + "}"
