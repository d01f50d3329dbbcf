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
from .messages import normalise_messages
from .prompts import alpaca_prompt

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "messages": ("messages",),
}


OPTIONAL_STRING_COLUMNS = {"alpaca": ("input",)}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool"}


def normalise(dataset, dataset_format: str, source: str):
    """Check columns and field types, then map every format onto its canonical columns."""
    columns = set(dataset.column_names)
    if dataset_format == "messages" and "conversations" in columns:  # rows of either kind, even mixed
        dataset = dataset.map(sharegpt_to_messages, remove_columns=["conversations"])
        columns = set(dataset.column_names)
    if dataset_format == "prompt_completion" and columns >= {"prompt", "completion"} and \
            _is_message_list(dataset[0]["prompt"]):
        dataset_format = "messages"  # conversational prompt/completion: handled by the chat rules
        dataset = dataset.map(prompt_completion_to_messages, remove_columns=sorted(columns), with_indices=True,
                              fn_kwargs={"source": source})
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
    A row that has `messages` (a file mixing both kinds) keeps them.
    """
    if row.get("messages") is not None:
        return {"messages": row["messages"]}
    turns = row.get("conversations")
    if not isinstance(turns, list):
        return {"messages": turns}
    return {"messages": [
        {"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")) if isinstance(t, dict) else None,
         "content": t.get("value") if isinstance(t, dict) else t}
        for t in turns
    ]}


def prompt_completion_to_messages(row: dict[str, Any], index: int = 0, source: str = "data") -> dict[str, Any]:
    """Conversational prompt/completion (both message lists) -> one `messages` list.

    A plain-string completion becomes one assistant turn. Assistant turns inside the prompt are
    trained under `train_on: all_assistant`; use `last_assistant` to train the completion only.
    """
    completion = row["completion"]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    elif completion is not None and not isinstance(completion, list):
        raise DataError(f"{source}: row {index + 1}: key 'completion' must be a string or a list of messages, "
                        f"got {type(completion).__name__}")
    if not isinstance(row["prompt"], list):
        kind = "null" if row["prompt"] is None else type(row["prompt"]).__name__
        raise DataError(f"{source}: row {index + 1}: key 'prompt' must be a list of messages, got {kind}")
    return {"messages": list(row["prompt"]) + list(completion or [])}


def validate_conversations(dataset, source: str):
    """Every row must be a valid conversation (`messages.normalise_messages`: roles, content,
    tool calls, the row's `tools`) whose first turn is not an assistant's (a template cannot render
    the prompt before it). Returns `messages` (and `tools`) plus `source_row`, the 1-based row the
    tokenizer names in its errors after the train/eval split has reordered rows."""
    columns = ["messages"] + (["tools"] if "tools" in dataset.column_names else [])
    row = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):  # never the whole dataset in Python
        tools_column = batch["tools"] if "tools" in batch else [None] * len(batch["messages"])
        for messages, tools in zip(batch["messages"], tools_column):
            row += 1
            try:
                messages, _ = normalise_messages(messages, tools)
            except DataError as exc:
                raise DataError(f"{source}: row {row}: {exc}") from None
            if messages and messages[0]["role"] == "assistant":
                raise DataError(f"{source}: row {row}: key 'messages[0].role': a conversation cannot start with an "
                                "assistant turn; put a user (or system) turn first")
    rows = dataset.select_columns(columns)
    return rows.add_column("source_row", list(range(1, len(rows) + 1)))


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
