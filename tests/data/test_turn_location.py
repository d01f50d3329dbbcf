"""Linear turn location (`sft_recipe.data.turn_location`): the anchored spans equal the per-turn
reference on every family's template, a conversation costs a fixed number of renderings whatever its
length, and an answer quoting the end-of-turn marker (which a template may trim) is trained whole."""

from __future__ import annotations

import pytest
from families import END_OF_TURN, FAMILIES, A, U, build_tokenizer, shared_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sft_recipe.data.chat_turns as chat_turns
from chat_helpers import encode_conversation

from sft_recipe.data.chat_turns import locate_turns
from sft_recipe.data.mask import IGNORE_INDEX, _in_span, span_labels
from sft_recipe.errors import DataError

tok = shared_tokenizer


WORDS = ["Paris", "yes", "no", "cat", "21", "very.", "<|im_end|>", "</s>", "<|eot_id|>", "[INST]", "[/INST]",
         "<|im_start|>assistant\n", "<end_of_turn>", "\n",
         # whole pieces of template text between two messages, quoted in a message
         "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n<|im_start|>user\n", "<|end|>\n<|user|>\n",
         "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<end_of_turn>\n<start_of_turn>model\n",
         "<｜Assistant｜>", "<｜end▁of▁sentence｜><｜User｜>"]


@st.composite
def conversations(draw):
    family = draw(st.sampled_from(FAMILIES))
    text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
    messages = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 6))):
        messages.append(U(draw(text)))
        answer = A(draw(st.one_of(text, st.sampled_from(["", " "]))))
        if family in ("qwen3", "deepseek-r1") and draw(st.booleans()):
            answer["reasoning_content"] = draw(text)
        messages.append(answer)
        if draw(st.integers(0, 4)) == 0:  # a second answer in a row, sometimes empty
            messages.append(A(draw(st.one_of(text, st.just("")))))
    return family, messages, draw(st.sampled_from(["all_assistant", "last_assistant"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_property_anchored_location_equals_the_per_turn_reference(case):
    """Any family, system prompt or not, empty answers, reasoning, answers and prompts quoting every
    family's markers and headers: the same spans as locating each turn by its own prefix."""
    family, messages, train_on = case
    t = tok(family)

    def outcome(**kw):
        try:
            return locate_turns(t, messages, train_on=train_on, **kw)
        except DataError as exc:  # e.g. Mistral's template refuses two answers in a row: the same refusal
            return str(exc)

    assert outcome() == outcome(by_anchor=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_renderings_per_conversation_do_not_grow_with_its_turns(family, monkeypatch):
    """The cost is linear: a fixed number of renderings (each linear in the conversation) per
    conversation, where the per-turn reference renders a prefix per turn."""
    t = tok(family)
    calls = []
    real = chat_turns.render
    monkeypatch.setattr(chat_turns, "render", lambda *a, **k: calls.append(1) or real(*a, **k))

    def renderings(turns, **kw):
        calls.clear()
        locate_turns(t, [{"role": "system", "content": "Be brief."}] + [m for n in range(turns) for m in
                                                                        (U(f"question {n}"), A(f"answer {n}"))], **kw)
        return len(calls)

    assert renderings(4) == renderings(32) <= 7
    assert renderings(32, by_anchor=False) > 32  # the reference: one prefix per turn


@pytest.mark.parametrize("family, messages, trained", [
    ("qwen2.5", [U("After <|im_end|>\n<|im_start|>assistant\n comes the reply."), A("Sure."), U("q"), A("yes")],
     ["Sure.<|im_end|>", "yes<|im_end|>"]),
    ("qwen2.5", [U("hi"), A("A turn: <|im_end|>\n<|im_start|>user\n then text."), U("q"), A("yes")],
     ["A turn: <|im_end|>\n<|im_start|>user\n then text.<|im_end|>", "yes<|im_end|>"]),
    ("qwen3", [U("hi"), A("a"), A(""), A("c"), U("q"), A("d")],
     ["a<|im_end|>", "c<|im_end|>", "<think>\n\n</think>\n\nd<|im_end|>"]),
    # reasoning alone, dropped by the template, whose words a later user message repeats
    ("qwen3", [U("hi"), A("a"), A("", reasoning_content="lovely"), U("q"), A("x"), U("lovely day"), A("y")],
     ["a<|im_end|>", "x<|im_end|>", "<think>\n\n</think>\n\ny<|im_end|>"]),
])
def test_golden_texts_quoting_the_template_and_empty_answers(family, messages, trained):
    """A user quoting the text between a user turn and an answer, an answer quoting the text between
    an answer and the next user turn, an empty answer between two answers: each turn is its own answer
    and its end marker, with no prompt text (these misplaced the anchored location before it refused
    renderings that align in more than one way and looked only right after the previous message)."""
    whole, turns = locate_turns(tok(family), messages)
    assert [whole[t.start:t.end] for t in turns if t.trained] == trained
    assert (whole, turns) == locate_turns(tok(family), messages, by_anchor=False)


@pytest.mark.parametrize("family", ["llama3", "mistral", "gemma"])
def test_golden_answer_quoting_the_marker_is_trained_whole_where_the_template_trims_it(family):
    """These templates trim each message: an answer that quotes the end-of-turn marker and ends in a
    newline is no longer a substring of the rendering. The turn still ends at the real marker after
    the whole answer (it used to end at the quoted one, leaving the rest of the answer untrained)."""
    t = tok(family)
    marker = END_OF_TURN[family]
    answer = f"Write {marker} to end.\n"
    messages = [U("How do I end a turn?"), A(answer), U("Thanks"), A("You are welcome.")]
    ids, labels = encode_conversation(t, messages)
    trained = t.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained.replace(" ", "") == f"Write{marker}toend.{marker}Youarewelcome.{marker}".replace(" ", "")


def test_golden_span_labels_by_bisection():
    """Tokens (character offsets) against disjoint spans, checked by hand: a token is trained when it
    overlaps a span, a zero-width token when it sits inside one, and a token starting before a span
    only when it carries more than the span's whitespace."""
    text = "ab\n cd ef gh"
    offsets = [(0, 2), (2, 4), (4, 6), (6, 6), (7, 9), (9, 12)]
    ids = [10, 11, 12, 13, 14, 15]
    # span 1: " cd" (3..6): token (2, 4) = "\n " starts in the header and carries only whitespace;
    # span 2: "ef" (7..9) and the zero-width token at 6 lies outside both spans
    assert span_labels(text, ids, offsets, [(3, 6), (7, 9)]) == [IGNORE_INDEX, IGNORE_INDEX, 12, IGNORE_INDEX, 14,
                                                                  IGNORE_INDEX]
    assert span_labels(text, ids, offsets, [(7, 9), (3, 6)]) == span_labels(text, ids, offsets, [(3, 6), (7, 9)])
    assert span_labels(text, ids, offsets, [(6, 12)]) == [IGNORE_INDEX] * 3 + [13, 14, 15]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 4)), max_size=12),
       st.lists(st.tuples(st.integers(0, 30), st.integers(0, 6)), max_size=5))
def test_property_span_labels_equal_checking_every_span(tokens, spans):
    """The bisection finds exactly the tokens that checking every span finds, overlapping spans included."""
    text = "a b\nc  d e\n\nf g h i j k l m n o p"
    offsets = sorted((a, min(a + w, len(text))) for a, w in tokens)
    spans = [(s, s + w) for s, w in spans]
    ids = list(range(len(offsets)))
    expected = [i if any(_in_span(text, a, b, s, e) for s, e in spans) else IGNORE_INDEX
                for i, (a, b) in zip(ids, offsets)]
    assert span_labels(text, ids, offsets, spans) == expected



# Qwen3's behaviour that matters here, with tools: the last answer after the last user turn gets an
# empty think block, so the rendering of the conversation up to a turn is not a prefix of the whole.
THINK_ON_LAST_WITH_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' + (tools | tojson) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(last_query=messages|length - 1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' + m.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.index0 > ns.last_query and loop.last %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- m.content }}{%- for c in m.tool_calls or [] %}{{- '<tool_call>\\n{\"name\": \"' + c.function.name + "
    "'\", \"arguments\": ' + (c.function.arguments | tojson) + '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.mark.parametrize("by_anchor", [True, False])
def test_golden_tool_call_after_an_answer_starts_at_its_header(by_anchor):
    """A tool call right after an answer, where the template writes the prefix's last answer differently
    (an empty think block): the call is trained from `<tool_call>`, not from inside it (the per-turn
    location started at the tool's name, leaving `<tool_call>\\n{"name": "` untrained)."""
    t = build_tokenizer("qwen2.5")
    t.chat_template = THINK_ON_LAST_WITH_TOOLS
    call = {"type": "function", "id": "abc123def", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [U("hi"), A("ok"), A("", tool_calls=[call]), {"role": "tool", "content": "sunny"}, A("It is sunny.")]
    whole, turns = locate_turns(t, messages, tools=tools, by_anchor=by_anchor)
    assert [whole[x.start:x.end] for x in turns if x.trained] == [
        "ok<|im_end|>", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "<think>\n\n</think>\n\nIt is sunny.<|im_end|>"]
