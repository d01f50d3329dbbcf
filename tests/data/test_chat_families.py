"""Masks for every model family's chat template, on tiny in-process tokenizers (tests/data/families.py)
carrying each family's special tokens and a compact template written from its public format:
Qwen2.5 (tools), Qwen3 (reasoning), Llama 3.x (tools), Mistral v0.3, Gemma, Phi-3, SmolLM2, DeepSeek-R1."""

from __future__ import annotations

import json

import pytest
from families import END_OF_TURN, FAMILIES, A, U, build_tokenizer, shared_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_recipe.data.chat_template import (
    chat_prompt,
    end_of_turn_markers,
    stop_token_ids,
    template_notes,
)
from chat_helpers import encode_conversation

from sft_recipe.data.chat_turns import locate_turns
from sft_recipe.data.mask import IGNORE_INDEX, fit_turns
from sft_recipe.formats.conversation import normalise_messages
from sft_recipe.errors import UserError

X = IGNORE_INDEX
tok = shared_tokenizer


def runs(labels):
    out, n = [], 0
    while n < len(labels):
        if labels[n] != X:
            s = n
            while n < len(labels) and labels[n] != X:
                n += 1
            out.append((s, n))
        else:
            n += 1
    return out


def prompt_ids(t, messages):
    return t(chat_prompt(t, messages), add_special_tokens=False)["input_ids"]


def fit(ids, labels, max_length):
    example, reason = fit_turns(ids, labels, max_length)
    if example is None:
        return None, reason
    return (example.input_ids, example.labels), "truncated" if example.truncated else ""


def trained(family, messages, **kw):
    """Decoded trained segments, one per trained run."""
    t = tok(family)
    ids, labels = encode_conversation(t, messages, **kw)
    return [t.decode(ids[s:e]) for s, e in runs(labels)]


SYS = {"role": "system", "content": "Be brief."}
TWO = [U("Capital of France?"), A("Paris"), U("Is it big?"), A("No, not very.")]

GOLDEN_TWO = {
    "qwen2.5": ["Paris<|im_end|>", "No, not very.<|im_end|>"],
    "qwen3": ["Paris<|im_end|>", "<think>\n\n</think>\n\nNo, not very.<|im_end|>"],
    "llama3": ["Paris<|eot_id|>", "No, not very.<|eot_id|>"],
    "mistral": ["Paris</s>", "No, not very.</s>"],  # " Paris" -> "▁Paris"; decode drops the first ▁
    "gemma": ["Paris<end_of_turn>", "No, not very.<end_of_turn>"],
    "phi3": ["Paris<|end|>", "No, not very.<|end|>"],
    "smollm2": ["Paris<|im_end|>", "No, not very.<|im_end|>"],
    "deepseek-r1": ["Paris<｜end▁of▁sentence｜>", "No, not very.<｜end▁of▁sentence｜>"],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("system", [False, True])
def test_golden_two_turns(family, system):
    messages = ([SYS] if system else []) + TWO
    assert trained(family, messages) == GOLDEN_TWO[family]
    assert trained(family, messages, train_on="last_assistant") == GOLDEN_TWO[family][-1:]


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_are_the_whole_rendering_and_nothing_else_trained(family):
    t = tok(family)
    messages = [SYS] + TWO
    ids, labels = encode_conversation(t, messages)
    whole = t.apply_chat_template(messages, tokenize=False)
    assert ids == t(whole, add_special_tokens=False)["input_ids"]
    text = t.decode([i for i, l in zip(ids, labels) if l != X])
    for word in ("Capital", "big", "Be brief", "system", "user", "assistant"):
        assert word not in text


def test_system_prompt_placement():
    # Gemma folds the system prompt into the first user turn; Mistral v0.3 drops it unless the
    # conversation ends on a user turn (then it sits in that last user turn).
    assert "<start_of_turn>user\nBe brief.\n\nCapital" in tok("gemma").apply_chat_template([SYS] + TWO, tokenize=False)
    mistral = tok("mistral")
    assert "Be brief" not in mistral.apply_chat_template([SYS] + TWO, tokenize=False)
    assert "Be brief" not in mistral.decode(encode_conversation(mistral, [SYS] + TWO)[0])
    assert "[INST] Be brief.\n\nIs it big?[/INST]" in mistral.decode(prompt_ids(mistral, [SYS] + TWO[:3]))


def test_answer_quoted_by_user_is_not_trained_when_history_is_rewritten():
    # Mistral + system: not prefix-stable, located by sentinels; the user's "Paris" stays untrained
    t = tok("mistral")
    messages = [SYS, U("Say Paris"), A("Paris"), U("Paris again"), A("Paris")]
    ids, labels = encode_conversation(t, messages)
    assert trained("mistral", messages) == ["Paris</s>", "Paris</s>"]
    whole, turns = locate_turns(t, messages)
    assert [whole[x.start:x.end] for x in turns] == [" Paris</s>", " Paris</s>"]
    assert whole.index("Say Paris") < turns[0].start


def test_multi_turn_three_answers_and_empty_answer():
    messages = [U("one"), A("yes"), U("two"), A(""), U("three"), A("no")]
    for family in ("qwen2.5", "llama3", "phi3", "smollm2", "gemma"):
        end = END_OF_TURN[family]
        assert trained(family, messages) == [f"yes{end}", f"no{end}"], family
    assert trained("qwen2.5", [U("one"), A("  \n")]) == []
    t = tok("qwen2.5")
    assert fit(*encode_conversation(t, [U("one"), A("  ")]), 100) == (None, "empty")
    assert trained("qwen2.5", messages, train_on="last_assistant") == ["no<|im_end|>"]
    # the final answer empty: last_assistant trains nothing
    assert trained("qwen2.5", messages[:4], train_on="last_assistant") == []


def test_phi3_eos_after_last_marker_untrained_and_no_prefix_space_drift():
    t = tok("phi3")
    ids, labels = encode_conversation(t, TWO)
    assert t.convert_ids_to_tokens(ids[-1]) == "<|endoftext|>" and labels[-1] == X
    first = [t.convert_ids_to_tokens(ids[s]) for s, _ in runs(labels)]
    assert not any(p.startswith("▁") for p in first)  # "No", never "▁No"
    assert t.convert_ids_to_tokens(t("No", add_special_tokens=False)["input_ids"])[0].startswith("▁")
    assert stop_token_ids(t) == [t.convert_tokens_to_ids("<|end|>"), t.convert_tokens_to_ids("<|endoftext|>")]


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_markers(family):
    assert end_of_turn_markers(tok(family)) == [END_OF_TURN[family]]
    t = tok(family)
    stops = stop_token_ids(t)
    assert stops[0] == t.convert_tokens_to_ids(END_OF_TURN[family]) and t.eos_token_id in stops


def test_template_without_special_end_is_rejected():
    t = build_tokenizer("qwen2.5")
    t.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(UserError, match="without a special token"):
        end_of_turn_markers(t)
    with pytest.raises(UserError, match="without a special token"):
        encode_conversation(t, TWO)


@pytest.mark.parametrize("family,bos", [("llama3", "<|begin_of_text|>"), ("mistral", "<s>"), ("gemma", "<bos>")])
def test_bos_written_once(family, bos):
    t = tok(family)
    bos_id = t.convert_tokens_to_ids(bos)
    assert t("x")["input_ids"][0] == bos_id  # the tokenizer would add one
    ids, labels = encode_conversation(t, TWO)
    assert ids[0] == bos_id and ids.count(bos_id) == 1
    p = prompt_ids(t, TWO[:1])
    assert p[0] == bos_id and p.count(bos_id) == 1
    assert not [note for note in template_notes(t) if "BOS" in note]


def test_bos_not_written_by_template_is_not_added():
    t = build_tokenizer("mistral")
    t.chat_template = t.chat_template.replace("{{- bos_token }}", "")
    ids, _ = encode_conversation(t, TWO)
    assert t.bos_token_id not in ids
    assert "does not write it" in template_notes(t)[0]


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_CONV = [U("Weather in Paris?"), A("", tool_calls=[CALL]), {"role": "tool", "content": '{"temp": 21}'},
             A("It is 21 degrees.")]


def test_tool_calls_qwen25():
    assert trained("qwen2.5", TOOL_CONV, tools=[WEATHER]) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 degrees.<|im_end|>"]
    # content None (OpenAI style) and content with a call
    conv = [TOOL_CONV[0], {"role": "assistant", "content": None, "tool_calls": [CALL]}] + TOOL_CONV[2:]
    assert trained("qwen2.5", conv, tools=[WEATHER])[0].startswith("<tool_call>")
    conv = [TOOL_CONV[0], A("Let me check.", tool_calls=[CALL])] + TOOL_CONV[2:]
    assert trained("qwen2.5", conv, tools=[WEATHER])[0].startswith("Let me check.\n<tool_call>")


def test_tool_calls_llama3():
    assert trained("llama3", [SYS] + TOOL_CONV, tools=json.dumps([WEATHER])) == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 21 degrees.<|eot_id|>"]
    t = tok("llama3")
    ids, labels = encode_conversation(t, TOOL_CONV, tools=[WEATHER])
    trained_text = t.decode([i for i, l in zip(ids, labels) if l != X])
    assert "temp" not in trained_text and "description" not in trained_text


def test_reasoning_qwen3():
    messages = [U("Capital?"), A("Paris", reasoning_content="France."), U("Big?"), A("No.", reasoning_content="Small.")]
    assert trained("qwen3", messages) == ["Paris<|im_end|>", "<think>\nSmall.\n</think>\n\nNo.<|im_end|>"]
    # reasoning written inline in the content is left to the template
    inline = [U("Capital?"), A("<think>\nFrance.\n</think>\n\nParis")]
    assert trained("qwen3", inline) == ["<think>\nFrance.\n</think>\n\nParis<|im_end|>"]
    # a tool-free multi-step: both answers after the last query keep reasoning
    steps = [U("Q"), A("a", reasoning="r1"), A("b", thinking="r2")]
    assert trained("qwen3", steps) == ["<think>\nr1\n</think>\n\na<|im_end|>", "<think>\nr2\n</think>\n\nb<|im_end|>"]


def test_reasoning_deepseek_is_dropped_by_its_template():
    # generation prompt "<｜Assistant｜><think>\n" is not in history -> sentinel path; reasoning never rendered
    messages = [SYS, U("Capital?"), A("<think>France.</think>Paris"), U("Big?"), A("<think>Small.</think>No.")]
    assert trained("deepseek-r1", messages) == ["Paris<｜end▁of▁sentence｜>", "No.<｜end▁of▁sentence｜>"]


def test_leading_whitespace_merged_with_header_is_not_trained():
    # "<|im_start|>assistant\n" + "\n\nParis": the header's "\n" merges with the answer's first "\n"
    t = tok("qwen2.5")
    messages = [U("Q"), A("\n\nParis")]
    whole, turns = locate_turns(t, messages)
    ids, labels = encode_conversation(t, messages)
    enc = t(whole, add_special_tokens=False, return_offsets_mapping=True)
    merged = next(n for n, (a, b) in enumerate(enc["offset_mapping"]) if a < turns[0].start < b)
    assert t.convert_ids_to_tokens(ids[merged]) == "ĊĊ" and labels[merged] == X
    assert trained("qwen2.5", messages) == ["\nParis<|im_end|>"]
    # Phi-3: <|assistant|> swallows the whitespace after it (rstrip), answer's leading space included
    assert trained("phi3", [U("Q"), A(" Paris")]) == ["Paris<|end|>"]
    # a token that carries answer text is trained even if it starts in the header
    assert trained("mistral", [U("Q"), A("Paris")]) == ["Paris</s>"]


def test_generation_blocks_are_used_and_extended_to_the_marker():
    t = build_tokenizer("smollm2")
    t.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}"
        "{{ m.content }}{% endgeneration %}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    ids, labels = encode_conversation(t, TWO)
    assert [t.decode(ids[s:e]) for s, e in runs(labels)] == ["Paris<|im_end|>", "No, not very.<|im_end|>"]


def test_tool_support_detection():
    with pytest.raises(UserError, match="does not support tools"):
        encode_conversation(tok("phi3"), TWO, tools=[WEATHER])
    with pytest.raises(UserError, match="does not support tools"):
        encode_conversation(tok("smollm2"), TOOL_CONV)
    with pytest.raises(UserError, match="never references `tools`"):
        encode_conversation(tok("deepseek-r1"), TWO, tools=[WEATHER])


def test_template_errors_become_value_errors():
    with pytest.raises(UserError, match="roles must alternate"):
        encode_conversation(tok("mistral"), [U("a"), U("b"), A("c")])
    with pytest.raises(UserError, match="only single tool calls"):
        encode_conversation(tok("llama3"), [U("a"), A("", tool_calls=[CALL, CALL])])


def test_normalise_messages_drops_nones_and_parses_json():
    # as HF datasets delivers rows: struct fields unified across rows, absent ones None
    row = [{"role": "user", "content": "q", "tool_calls": None, "reasoning_content": None},
           {"role": "assistant", "content": None, "reasoning_content": None, "tool_calls": [
               {"type": "function", "id": None, "function": {"name": "f", "arguments": {"city": "P", "unit": None}}},
               {"type": "function", "function": {"name": "g", "arguments": '{"unit": null}'}}]}]
    tools = [{"type": "function", "function": {"name": "f", "description": None, "parameters": {"type": "object"}}}]
    messages, clean_tools = normalise_messages(row, tools)
    assert messages[0] == {"role": "user", "content": "q"}
    assert "content" not in messages[1]
    calls = messages[1]["tool_calls"]
    assert calls[0] == {"type": "function", "function": {"name": "f", "arguments": {"city": "P"}}}
    assert calls[1]["function"]["arguments"] == {"unit": None}  # explicit null kept from a JSON string
    assert clean_tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert normalise_messages([U("q")], json.dumps(tools))[1][0]["function"]["description"] is None
    # llama3 tests `'tool_calls' in message`: a None/empty tool_calls must not reach it
    assert trained("llama3", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "tool_calls": []}]) \
        == ["a<|eot_id|>"]


@pytest.mark.parametrize("messages,error", [
    ("hi", "key 'messages' must be a list"),
    ([{"role": "bot", "content": "x"}], r"key 'messages\[0\].role' must be one of"),
    ([U("q"), {"role": "assistant"}], r"key 'messages\[1\].content' must be a string, got null"),
    ([U(3)], r"key 'messages\[0\].content' must be a string, got int"),
    ([U("q"), A("", tool_calls=[{"function": {"name": 3}}])], r"key 'messages\[1\].tool_calls\[0\].function.name' must be a string"),
    ([U("q"), A("", tool_calls=[{"function": {"name": "f", "arguments": "{bad"}}])],
     r"key 'messages\[1\].tool_calls\[0\].function.arguments' is not valid JSON"),
    ([U("q"), A("", tool_calls=[{"function": {"name": "f", "arguments": "[1]"}}])],
     r"key 'messages\[1\].tool_calls\[0\].function.arguments' must be an object"),
    ([{"role": "user", "content": "q", "tool_calls": [CALL]}], r"key 'messages\[0\].tool_calls' is only allowed"),
])
def test_normalise_errors(messages, error):
    with pytest.raises(UserError, match=error):
        normalise_messages(messages)


def test_bad_train_on():
    with pytest.raises(UserError, match="train_on"):
        encode_conversation(tok("qwen2.5"), TWO, train_on="everything")


# --- truncation -----------------------------------------------------------------------------------

def test_fit_policy():
    ids = list(range(12))
    labels = [X, X, 2, 3, X, X, 6, 7, 8, X, X, X]  # turns [2,4) and [6,9)
    assert fit(ids, labels, 12) == ((ids, labels), "")
    assert fit(ids, labels, 10) == ((ids[:9], labels[:9]), "truncated")  # after the 2nd turn
    assert fit(ids, labels, 8) == ((ids[:4], labels[:4]), "truncated")  # 2nd turn does not fit whole
    assert fit(ids, labels, 3) == ((ids[:3], labels[:3]), "truncated")  # first turn cut mid-way
    assert fit(ids, labels, 2) == (None, "too_long")  # first trained token at index 2
    assert fit(ids, [X] * 12, 100) == (None, "empty")


def test_fit_on_a_real_row():
    t = tok("llama3")
    ids, labels = encode_conversation(t, [SYS] + TWO)
    first_end = runs(labels)[0][1]
    row, reason = fit(ids, labels, len(ids) - 1)
    assert reason == "truncated" and len(row[0]) == first_end
    assert t.decode(row[0][-2:]) == "Paris<|eot_id|>"


# --- property test --------------------------------------------------------------------------------

USER_WORDS = ["cat", "mat", "dog", "Capital", "weather", "hello"]
ANSWER_WORDS = ["Paris", "yes", "no", "one", "two", "sunny", "21", "very."]


def _text(words):
    return st.lists(st.sampled_from(words), min_size=1, max_size=5).flatmap(
        lambda ws: st.sampled_from([" ", "\n", ", "]).map(lambda sep: sep.join(ws)))


@st.composite
def conversations(draw):
    family = draw(st.sampled_from(FAMILIES))
    messages = [{"role": "system", "content": draw(_text(USER_WORDS))}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append(U(draw(_text(USER_WORDS))))
        answer = draw(st.one_of(_text(ANSWER_WORDS), st.sampled_from(["", " ", "\n"]),
                                _text(ANSWER_WORDS).map(lambda s: " " + s + " ")))
        messages.append(A(answer))
    return family, messages, draw(st.sampled_from(["all_assistant", "last_assistant"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_property_trained_tokens_are_exactly_the_answers(case):
    family, messages, train_on = case
    t = tok(family)
    ids, labels = encode_conversation(t, messages, train_on=train_on)
    whole = t.apply_chat_template(messages, tokenize=False)
    assert ids == t(whole, add_special_tokens=False)["input_ids"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if train_on == "last_assistant":
        answers = answers[-1:]
    expected = [a for a in answers if a.strip()]
    marker = END_OF_TURN[family]
    got = [t.decode(ids[s:e]) for s, e in runs(labels)]
    assert len(got) == len(expected)
    for seg, answer in zip(got, expected):
        assert seg.endswith(marker)
        body = seg[:-len(marker)]
        if family == "qwen3" and body.lstrip("\n ").startswith("<think>"):
            body = body.split("</think>", 1)[1]
        assert body.strip() == answer.strip()
        assert not any(w in seg for w in USER_WORDS)  # no user/system text trained
    # every trained token lies inside a located turn span (extended only by the overlap rule)
    _, turns = locate_turns(t, messages, train_on=train_on)
    offsets = t(whole, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for (a, b), label in zip(offsets, labels):
        if label != X:
            assert any(a < x.end and b > x.start or (a == b and x.start <= a < x.end) for x in turns if x.trained)
            assert t.convert_ids_to_tokens(ids[offsets.index((a, b))]) not in ("<|assistant|>", "<|im_start|>")
