"""`prompt_completion`: `prompt` and `completion` strings, no template; or both as message lists
(TRL's conversational prompt/completion), which become one conversation of the `messages` form."""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .base import Form, Format, check_strings, kind
from .conversation import with_joined_parts
from .messages import MESSAGES


def is_message_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


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
        raise DataError(f"{source}: row {index + 1}: key 'prompt' must be a list of messages, "
                        f"got {kind(row['prompt'])}")
    return {"messages": list(row["prompt"]) + list(completion or [])}


class PromptCompletion(Format):
    name = "prompt_completion"
    form = Form.COMPLETION
    required = ("prompt", "completion")
    string_columns = ("prompt", "completion")
    help = "prompt and completion strings, no template (or both as message lists: a conversation)"

    def uniform(self, row: dict[str, Any]) -> dict[str, Any]:
        """Conversational prompt/completion rows may carry content parts too (`messages.uniform`)."""
        return with_joined_parts(row, "prompt", "completion")

    def to_form(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        self.check_columns(row, where)
        if isinstance(row.get("prompt"), list):
            messages = prompt_completion_to_messages(row, 0, where)["messages"]
            return MESSAGES.to_form({"messages": messages, "tools": row.get("tools")}, where)
        self.check_row_strings(row, where)
        return {"prompt": row["prompt"], "completion": row["completion"]}

    def normalise(self, dataset, source: str):
        columns = set(dataset.column_names)
        if columns >= {"prompt", "completion"} and is_message_list(dataset[0]["prompt"]):
            # Conversational: handled by the chat rules; a row's `tools` stays with it.
            dropped = sorted(columns - {"tools"})
            dataset = dataset.map(prompt_completion_to_messages, remove_columns=dropped, with_indices=True,
                                  fn_kwargs={"source": source})
            return MESSAGES.normalise(dataset, source)
        self.check_columns(dataset.column_names, source)
        check_strings(dataset, self.string_columns, source, allow_null=())
        return dataset.select_columns(["prompt", "completion"])


PROMPT_COMPLETION = PromptCompletion()
