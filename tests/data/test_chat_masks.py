"""Conversations: golden assistant-only masks, drops, truncation, and a property test over
generated conversations (helpers and the toy ids: tests/chat_helpers.py)."""

from __future__ import annotations

import pytest
from chat_helpers import (
    A1,
    A2,
    ASSISTANT,
    END,
    GOLDEN,
    Q1,
    Q2,
    START,
    SYS,
    USER,
    X,
    tokenize,
    trainable_spans,
    turn,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_recipe.data.chat_template import chat_prompt


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_masks_train_every_assistant_turn_with_its_end_marker(name):
    messages, input_ids, labels = GOLDEN[name]
    rows, stats = tokenize([messages])
    assert rows[0]["input_ids"] == input_ids
    assert rows[0]["labels"] == labels
    assert (rows[0]["length"], rows[0]["trainable"], rows[0]["truncated"]) == (len(input_ids),
                                                                                len(labels) - labels.count(X), False)
    assert (stats.rows, stats.kept, stats.trainable_tokens) == (1, 1, rows[0]["trainable"])


def test_last_assistant_trains_only_the_final_turn():
    rows, _ = tokenize([[SYS, Q1, A1, Q2, A2]], train_on="last_assistant")
    assert rows[0]["labels"] == [X] * 20 + [18, END]


def test_empty_assistant_turn_is_context_not_trained():
    rows, stats = tokenize([[Q1, turn("assistant", "  "), Q2, A2]])
    assert rows[0]["input_ids"] == [START, USER, 5, 6, END, START, ASSISTANT, END,
                                    START, USER, 10, 11, END, START, ASSISTANT, 18, END]
    assert rows[0]["labels"] == [X] * 15 + [18, END]
    assert stats.dropped_empty == 0


def test_conversations_without_a_trainable_answer_are_dropped_and_counted():
    rows, stats = tokenize([[Q1, A1], [Q1, A1, Q2], [Q1], [SYS, Q1, turn("assistant", "")]])
    assert len(rows) == 1 and rows[0]["labels"] == [X] * 7 + [17, END]
    assert (stats.rows, stats.kept, stats.dropped_other, stats.dropped_empty) == (4, 1, 2, 1)


# --- truncation ---------------------------------------------------------------------------

TWO_TURNS = GOLDEN["2 turns"]  # assistant turns end at tokens 9 and 18; the second starts at 16


@pytest.mark.parametrize("max_length, train_on, kept_length", [
    (18, "all_assistant", 18),  # fits
    (17, "all_assistant", 9),  # cut after the last whole turn, never inside the second one
    (12, "all_assistant", 9),
    (8, "all_assistant", 8),  # no whole turn fits: half of the first is the only trainable text left
    (7, "all_assistant", None),  # not even one answer token fits: dropped
    (17, "last_assistant", 17),  # the only trained turn, cut in half
    (16, "last_assistant", None),  # its header ends the row: dropped
])
def test_truncation_keeps_whole_turns(max_length, train_on, kept_length):
    messages, input_ids, labels = TWO_TURNS
    rows, stats = tokenize([messages], max_length=max_length, train_on=train_on)
    if kept_length is None:
        assert len(rows) == 0 and stats.dropped_too_long == 1
        return
    expected_labels = labels if train_on == "all_assistant" else [X] * 16 + [18, END]
    assert rows[0]["input_ids"] == input_ids[:kept_length]
    assert rows[0]["labels"] == expected_labels[:kept_length]
    assert stats.truncated == (kept_length < len(input_ids))


# --- property: trainable tokens are exactly the assistant turns -------------------------------

TEXT = st.text(alphabet="abcxyz .,!?\n\u00e9", min_size=0, max_size=12)


@st.composite
def conversations(draw):
    messages = [turn("system", draw(TEXT))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [turn("user", draw(TEXT)), turn("assistant", draw(TEXT))]
    return messages


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(conversations(), min_size=1, max_size=4), train_on=st.sampled_from(["all_assistant",
                                                                                        "last_assistant"]))
def test_trainable_tokens_decode_to_exactly_the_assistant_turns(bpe_chatml, batch, train_on):
    rows, stats = tokenize(batch, tokenizer=bpe_chatml, max_length=10_000, train_on=train_on)
    expected = []
    for messages in batch:
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        answers = answers if train_on == "all_assistant" else answers[-1:]
        if any(a.strip() for a in answers):
            expected.append(([a + "<|im_end|>" for a in answers if a.strip()], messages))
    assert (stats.kept, stats.dropped_empty) == (len(expected), len(batch) - len(expected))
    for row, (answers, messages) in zip(rows, expected):
        assert [bpe_chatml.decode(span) for span in trainable_spans(row)] == answers
        rendered = chat_prompt(bpe_chatml, messages)[:-len("<|im_start|>assistant\n")]
        assert bpe_chatml.decode(row["input_ids"]) == rendered
