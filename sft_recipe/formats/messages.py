"""`messages`: conversations as `[{role, content}]` lists (tools, tool calls, reasoning), or
ShareGPT's `conversations: [{from, value}]`, even mixed in one file.

Validation is `conversation.normalise_messages`; a row may also carry `tools`. Rows keep their
1-based position as `source_row`, which the tokenizer names in its errors after the train/eval
split has reordered them.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .base import Form, Format
from .conversation import normalise_messages, with_joined_parts

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool"}


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


def check_sharegpt(dataset, source: str) -> None:
    """A row without `messages` must have `conversations` as a list (before the rows are converted:
    a string there would not share a column type with the lists)."""
    has_messages = "messages" in dataset.column_names
    columns = ["conversations"] + (["messages"] if has_messages else [])
    row = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        messages = batch["messages"] if has_messages else [None] * len(batch["conversations"])
        for turns, own in zip(batch["conversations"], messages):
            row += 1
            if own is None and turns is not None and not isinstance(turns, list):
                raise DataError(f"{source}: row {row}: key 'conversations' must be a list of {{from, value}}, got "
                                f"{type(turns).__name__}")


def validate_conversations(dataset, source: str):
    """Every row must be a valid conversation (`normalise_messages`: roles, content, tool calls, the
    row's `tools`) whose first turn is not an assistant's (a template cannot render the prompt
    before it). Returns `messages` (and `tools`) plus `source_row`."""
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


class Messages(Format):
    name = "messages"
    form = Form.CHAT
    required = ("messages",)
    help = "chat conversations: messages [{role, content}] (tools, tool calls, reasoning) or ShareGPT conversations"

    def to_form(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """Validated when tokenized (a stream cannot be checked up front)."""
        if row.get("conversations") is not None and row.get("messages") is None:
            row = {**row, **sharegpt_to_messages(row)}
        self.check_columns(row, where)
        return {"messages": row["messages"], "tools": row.get("tools")}

    def uniform(self, row: dict[str, Any]) -> dict[str, Any]:
        """Content given as a string in one message and as content parts in another: joined to a string."""
        return with_joined_parts(row, "messages")

    def normalise(self, dataset, source: str):
        if "conversations" in dataset.column_names:  # rows of either kind, even mixed
            check_sharegpt(dataset, source)
            dataset = dataset.map(sharegpt_to_messages, remove_columns=["conversations"])
        self.check_columns(dataset.column_names, source)
        return validate_conversations(dataset, source)

    def card_prompt(self, instruction: str) -> tuple[str, str]:
        return "the tokenizer's chat template (`tokenizer.apply_chat_template`, generation prompt on)", ""


MESSAGES = Messages()
