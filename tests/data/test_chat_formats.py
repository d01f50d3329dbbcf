"""Conversation data formats (ShareGPT, message-list prompt/completion) and their validation."""

from __future__ import annotations

import pytest
from chat_helpers import A1, A2, END, Q1, Q2, SYS, X, config, tokenize, turn
from conftest import write_jsonl

from sft_recipe.formats.messages import sharegpt_to_messages, validate_conversations
from sft_recipe.formats.prompt_completion import prompt_completion_to_messages
from sft_recipe.errors import DataError

# --- data formats and validation ------------------------------------------------------------

def test_sharegpt_rows_become_messages(tmp_path):
    from sft_recipe.data.prepare import load_raw

    row = {"conversations": [{"from": "system", "value": "big"}, {"from": "human", "value": "the cat"},
                             {"from": "gpt", "value": "yes"}]}
    assert sharegpt_to_messages(row) == {"messages": [SYS, Q1, A1]}
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [row, {"conversations": [{"from": "human", "value": "a dog"},
                                                                             {"from": "gpt", "value": "no"}]}])
    dataset, _ = load_raw(config(dataset=str(path)))
    assert dataset.column_names == ["messages", "source_row"]
    assert dataset["messages"] == [[SYS, Q1, A1], [Q2, A2]]


def test_sharegpt_unknown_speaker_is_reported_with_its_row(tmp_path):
    from sft_recipe.data.prepare import load_raw

    path = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
    ])
    with pytest.raises(DataError, match=r"sharegpt.jsonl: row 2: key 'messages\[1\].role' must be one of "
                                        r"system, user, assistant, tool, got 'bot'"):
        load_raw(config(dataset=str(path)))


def test_prompt_and_completion_as_message_lists(tmp_path):
    from sft_recipe.data.prepare import load_raw

    assert prompt_completion_to_messages({"prompt": [SYS, Q1], "completion": [A1]}) == {"messages": [SYS, Q1, A1]}
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [Q1, A1, Q2], "completion": [A2]}] * 2)
    dataset, _ = load_raw(config(dataset=str(path), dataset_format="prompt_completion"))
    assert dataset["messages"] == [[Q1, A1, Q2, A2]] * 2
    rows, _ = tokenize(dataset["messages"], train_on="last_assistant")
    assert rows[0]["labels"] == [X] * 16 + [18, END]


@pytest.mark.parametrize("rows, message", [
    ([[Q1, A1], "hello"], None),  # arrow cannot mix these; checked below one row at a time
    ([[Q1, A1], [Q1, turn("robot", "x")]],
     r"chats.jsonl: row 2: key 'messages\[1\].role' must be one of system, user, assistant, tool, got 'robot'"),
    ([[A1, Q1, A1]], r"chats.jsonl: row 1: key 'messages\[0\].role': a conversation cannot start with an assistant"),
])
def test_validation_names_source_row_and_key(rows, message):
    import datasets

    if message is None:
        dataset = datasets.Dataset.from_dict({"messages": ["hello"]})
        message = r"chats.jsonl: row 1: key 'messages' must be a list of \{role, content\}, got str"
    else:
        dataset = datasets.Dataset.from_dict({"messages": rows})
    with pytest.raises(DataError, match=message):
        validate_conversations(dataset, "chats.jsonl")


def test_non_string_content_is_reported():
    import datasets

    dataset = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": 5}]]})
    with pytest.raises(DataError, match=r"row 1: key 'messages\[0\].content' must be a string, got int"):
        validate_conversations(dataset, "chats.jsonl")
