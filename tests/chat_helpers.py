"""Shared helpers for the chat tests: the toy chat tokenizer and conversation builders.

The toy tokenizer (conftest) plus the words user=23, assistant=24, system=25; the ChatML template
adds <|im_start|>=26 and <|im_end|>=27. ChatML renders a turn as `<|im_start|>ROLE\\nTEXT<|im_end|>\\n`
and the toy tokenizer drops whitespace, so `user: the cat` is [26, 23, 5, 6, 27] by hand.
"""

from __future__ import annotations

from conftest import make_toy_tokenizer

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.chat_template import TEMPLATE_DIR, setup_chat_template
from sft_recipe.formats.messages import validate_conversations
from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.data.encode import encode_rows

X = IGNORE_INDEX
START, END, USER, ASSISTANT, SYSTEM = 26, 27, 23, 24, 25
CHATML = (TEMPLATE_DIR / "chatml.jinja").read_text(encoding="utf-8")


def config(**overrides) -> SFTConfig:
    values = dict(dataset="chats.jsonl", dataset_format="messages", model_name="toy", chat_template="chatml",
                  max_length=64)
    values.update(overrides)
    return SFTConfig(**values)


def chat_tokenizer(cfg: SFTConfig | None = None, **kwargs):
    tokenizer = make_toy_tokenizer(**kwargs)
    tokenizer.add_tokens(["user", "assistant", "system"])
    setup_chat_template(tokenizer, cfg or config())
    return tokenizer


def tokenize(conversations: list[list[dict]], tokenizer=None, **overrides):
    import datasets

    cfg = config(**overrides)
    tokenizer = tokenizer or chat_tokenizer(cfg)
    dataset = validate_conversations(datasets.Dataset.from_dict({"messages": conversations}), "chats.jsonl")
    return encode_rows(dataset, tokenizer, cfg)


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


SYS = turn("system", "big")
Q1, A1 = turn("user", "the cat"), turn("assistant", "yes")
Q2, A2 = turn("user", "a dog"), turn("assistant", "no")
Q3, A3 = turn("user", "the mat"), turn("assistant", "one two")

GOLDEN = {
    "1 turn": (
        [Q1, A1],
        [START, USER, 5, 6, END, START, ASSISTANT, 17, END],
        [X, X, X, X, X, X, X, 17, END],
    ),
    "1 turn + system": (
        [SYS, Q1, A1],
        [START, SYSTEM, 14, END, START, USER, 5, 6, END, START, ASSISTANT, 17, END],
        [X, X, X, X, X, X, X, X, X, X, X, 17, END],
    ),
    "2 turns": (
        [Q1, A1, Q2, A2],
        [START, USER, 5, 6, END, START, ASSISTANT, 17, END, START, USER, 10, 11, END, START, ASSISTANT, 18, END],
        [X, X, X, X, X, X, X, 17, END, X, X, X, X, X, X, X, 18, END],
    ),
    "2 turns + system": (
        [SYS, Q1, A1, Q2, A2],
        [START, SYSTEM, 14, END, START, USER, 5, 6, END, START, ASSISTANT, 17, END,
         START, USER, 10, 11, END, START, ASSISTANT, 18, END],
        [X, X, X, X, X, X, X, X, X, X, X, 17, END, X, X, X, X, X, X, X, 18, END],
    ),
    "3 turns": (
        [Q1, A1, Q2, A2, Q3, A3],
        [START, USER, 5, 6, END, START, ASSISTANT, 17, END, START, USER, 10, 11, END, START, ASSISTANT, 18, END,
         START, USER, 5, 9, END, START, ASSISTANT, 19, 20, END],
        [X, X, X, X, X, X, X, 17, END, X, X, X, X, X, X, X, 18, END, X, X, X, X, X, X, X, 19, 20, END],
    ),
    "3 turns + system": (
        [SYS, Q1, A1, Q2, A2, Q3, A3],
        [START, SYSTEM, 14, END, START, USER, 5, 6, END, START, ASSISTANT, 17, END,
         START, USER, 10, 11, END, START, ASSISTANT, 18, END, START, USER, 5, 9, END, START, ASSISTANT, 19, 20, END],
        [X, X, X, X, X, X, X, X, X, X, X, 17, END, X, X, X, X, X, X, X, 18, END,
         X, X, X, X, X, X, X, 19, 20, END],
    ),
}


def trainable_spans(row) -> list[list[int]]:
    spans: list[list[int]] = []
    for i, (token, label) in enumerate(zip(row["input_ids"], row["labels"])):
        if label == X:
            continue
        assert label == token
        if i == 0 or row["labels"][i - 1] == X:
            spans.append([])
        spans[-1].append(token)
    return spans


def encode_conversation(tokenizer, messages, *, tools=None, train_on: str = "all_assistant",
                        chat_template_kwargs=None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation, as the encoder makes them before fitting to max_length."""
    from sft_recipe.data.chat_turns import locate_turns, tokenize_turns

    whole, turns = locate_turns(tokenizer, messages, tools=tools, train_on=train_on,
                                chat_template_kwargs=chat_template_kwargs)
    return tokenize_turns(tokenizer, whole, turns, messages)
