"""Nothing the user wrote is lost on the way to the tokens (data/fidelity.py, data/chat_rows.py,
data/literal.py), on the compact family templates of tests/data/chat_families/."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
from families import END_OF_TURN, build_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.data.chat_rows import ChatEncoder, arguments_as_text
from sft_recipe.data.encode import encode_rows
from sft_recipe.data.fidelity import FidelityReport, lost_pieces
from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.errors import DataError
from sft_recipe.formats.conversation import normalise_messages
from sft_recipe.recipe.config import SFTConfig

SYSTEM = {"role": "system", "content": "Always answer in French."}
Q = {"role": "user", "content": "What is two plus two?"}
A = {"role": "assistant", "content": "Four."}
THINKING = {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "Four."}
Q2 = {"role": "user", "content": "And three plus three?"}
A2 = {"role": "assistant", "reasoning_content": "Three and three make six.", "content": "Six."}


def config(**overrides) -> SFTConfig:
    return SFTConfig(**{"dataset": "chats.jsonl", "model_name": "m", "dataset_format": "messages",
                        "max_length": 512, **overrides})


def encode(family: str, messages: list[dict], tools=None, **overrides):
    return ChatEncoder(build_tokenizer(family), config(**overrides))(messages, tools, 7)


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([i for i, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


# --- each kind of loss, golden --------------------------------------------------------------------
def test_a_system_prompt_the_template_drops_is_reported_and_by_default_an_error():
    """Mistral v0.3's HF template writes the system prompt only into a generation prompt."""
    examples, _, lost = encode("mistral", [SYSTEM, Q, A])
    assert lost == "system prompt@messages[0].content" and len(examples) == 1
    report = FidelityReport("chats.jsonl")
    report.add(7, lost)
    with pytest.raises(DataError, match=r"^mistral: the chat template drops or alters what 1 of 1 rows wrote "
                                        r"\(system prompt 1\); e\.g\. chats\.jsonl: row 7: messages\[0\]\.content "
                                        r"\(system prompt\) is not in what the template wrote; set data_fidelity: warn"):
        report.enforce("error", "mistral")


def test_warn_says_it_once_and_trains_what_the_template_writes(caplog):
    report = FidelityReport("chats.jsonl")
    report.add(1, "reasoning@messages[1].reasoning_content")
    report.add(2, "")
    with caplog.at_level(logging.WARNING, logger="sft_recipe"):
        report.enforce("warn", "phi3")
    assert len(caplog.records) == 1 and "1 of 2 rows" in caplog.text and "reasoning 1" in caplog.text


@pytest.mark.parametrize("family", ["phi3", "deepseek-r1"])
def test_reasoning_a_template_drops_is_reported(family):
    _, _, lost = encode(family, [Q, THINKING])
    assert lost == "reasoning@messages[1].reasoning_content"


def test_dropped_reasoning_is_trained_as_the_family_writes_it_at_inference():
    """DeepSeek-R1's template strips reasoning everywhere: the turn becomes a row of its own, the
    generation prompt then the reasoning inside the tokenizer's <think> tokens, then the answer."""
    tokenizer = build_tokenizer("deepseek-r1")
    examples, reason, lost = ChatEncoder(tokenizer, config(train_dropped_reasoning=True))([Q, THINKING, Q2, A2], None, 1)
    assert reason == "" and lost == "" and len(examples) == 2
    texts = [trained_text(tokenizer, e) for e in examples]
    eos = END_OF_TURN["deepseek-r1"]
    assert texts[0] == f"Two and two make four.\n</think>\n\nFour.{eos}"
    assert texts[1] == f"Three and three make six.\n</think>\n\nSix.{eos}"


def test_qwen3_trains_history_reasoning_in_a_row_ending_at_that_turn():
    """Qwen3 keeps reasoning after the last user turn only: the earlier turn gets a row of its own,
    rendered by the template itself, and is not trained again without its reasoning."""
    tokenizer = build_tokenizer("qwen3")
    _, _, lost = ChatEncoder(tokenizer, config())([Q, THINKING, Q2, A2], None, 1)
    assert lost == "reasoning@messages[1].reasoning_content"
    examples, _, lost = ChatEncoder(tokenizer, config(train_dropped_reasoning=True))([Q, THINKING, Q2, A2], None, 1)
    texts = sorted(trained_text(tokenizer, e) for e in examples)
    assert lost == "" and len(texts) == 2
    assert "Two and two make four." in texts[0] + texts[1] and "Three and three make six." in texts[0] + texts[1]
    assert sum(t.count("Four.") for t in texts) == 1  # the earlier answer is trained once, with its reasoning


def test_reasoning_with_no_way_to_write_it_is_an_error():
    with pytest.raises(DataError, match=r"row 1: key 'messages\[1\]\.reasoning_content': the chat template drops "
                                        r"reasoning and the tokenizer has no <think>-style tokens"):
        ChatEncoder(build_tokenizer("phi3"), config(train_dropped_reasoning=True))([Q, THINKING], None, 1)


ESCAPING = (  # mistral-common's construction: a `safe` mapping concatenated with plain strings escapes them
    "{%- for m in messages %}{%- if m.role == 'user' %}[INST]{{ m.content }}[/INST]"
    "{%- elif m.tool_calls %}[TOOL_CALLS] [{%- for c in m.tool_calls %}{%- set a = c.function.arguments %}"
    "{%- if a is not string %}{%- set a = a|tojson|safe %}{%- endif %}"
    "{{- '{\"name\": \"' + c.function.name + '\", \"arguments\": ' + a + '}' }}{%- endfor %}]</s>"
    "{%- else %}{{ m.content }}</s>{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{%- endif %}{#- tools #}")
CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {
    "name": "search_flights", "arguments": {"origin": "Paris", "ids": [1, None, 3]}}}]}


def test_tool_arguments_go_in_the_form_the_template_renders_faithfully():
    tokenizer = build_tokenizer("mistral")
    tokenizer.chat_template = ESCAPING
    assert arguments_as_text(tokenizer, {})
    examples, _, lost = ChatEncoder(tokenizer, config())([Q, CALL], None, 1)
    assert lost == ""
    text = trained_text(tokenizer, examples[0])
    body = text.split("[TOOL_CALLS]", 1)[1]
    call = json.loads(body[body.index("["):body.rindex("]") + 1])  # valid JSON, not &#34;
    assert call == [{"name": "search_flights", "arguments": {"origin": "Paris", "ids": [1, None, 3]}}]
    assert not arguments_as_text(build_tokenizer("qwen2.5"), {})  # a template that renders mappings keeps them


def test_escaped_markup_is_reported_when_no_faithful_form_exists():
    whole = '[INST] What is two plus two?[/INST][TOOL_CALLS] [{&#34;name&#34;: &#34;f&#34;}]'
    messages = [Q, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}]
    assert lost_pieces(whole, messages, None) == [("escaped markup", "the rendering (&#34;)")]


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3", "smollm2", "llama3", "deepseek-r1"])  # byte-level: any text
def test_text_that_spells_a_special_token_stays_text_and_the_real_end_is_trained(family):
    tokenizer = build_tokenizer(family)
    end = END_OF_TURN[family]
    answer = {"role": "assistant", "content": f"A turn ends with {end} and then a newline."}
    (example,), _, lost = ChatEncoder(tokenizer, config())([Q, answer], None, 1)
    end_id = tokenizer.convert_tokens_to_ids(end)
    trained = [i for i, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert trained.count(end_id) == 1 and trained[-1] == end_id  # only the real end marker, last
    assert trained_text(tokenizer, example).endswith(f"A turn ends with {end} and then a newline.{end}")
    assert lost == ""


def test_lists_keep_their_nulls_and_struct_keys_datasets_adds_are_dropped():
    rows = [{"messages": [Q, {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                "name": "lookup", "arguments": {"ids": [1, None, 3]}}}]}]},
            {"messages": [Q, {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                "name": "lookup", "arguments": {"city": "Paris"}}}]}]}]
    unified = datasets.Dataset.from_list(rows).to_list()  # each row's arguments gain the other's keys as None
    assert unified[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"ids": [1, None, 3], "city": None}
    first, _ = normalise_messages(unified[0]["messages"])
    second, _ = normalise_messages(unified[1]["messages"])
    assert first[1]["tool_calls"][0]["function"]["arguments"] == {"ids": [1, None, 3]}
    assert second[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_a_dataset_report_counts_per_kind_with_one_example():
    tokenizer = build_tokenizer("mistral")
    rows = datasets.Dataset.from_dict({"messages": [[SYSTEM, Q, A], [Q, A], [SYSTEM, Q, A]],
                                       "source_row": [1, 2, 3]})
    report = FidelityReport("chats.jsonl")
    encode_rows(rows, tokenizer, config(), report)
    assert (report.rows, report.rows_lost, dict(report.counts)) == (3, 2, {"system prompt": 2})
    assert report.example.startswith("chats.jsonl: row 1: messages[0].content")


# --- property: every content string is in the rendering or reported ------------------------------
words = st.text(alphabet="abcdefgh ", min_size=1, max_size=12).map(lambda s: s.strip() or "x")


@st.composite
def conversations(draw):
    family = draw(st.sampled_from(["qwen2.5", "qwen3", "llama3", "mistral", "phi3", "smollm2", "deepseek-r1"]))
    messages = [{"role": "system", "content": draw(words)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(words)})
        answer = {"role": "assistant", "content": draw(words)}
        if draw(st.booleans()):
            answer["reasoning_content"] = draw(words)
        if draw(st.booleans()) and family not in ("mistral", "phi3"):  # the compact SentencePiece ones lack "<"
            answer["content"] += " <|im_end|> </s> <|eot_id|>"
        messages.append(answer)
    return family, messages


@settings(max_examples=60, deadline=None)
@given(conversations())
def test_every_piece_is_in_the_rendering_or_reported(case):
    family, messages = case
    tokenizer = build_tokenizer(family)
    examples, _, lost = ChatEncoder(tokenizer, config(max_length=4096))(messages, None, 1)
    reported = {key for piece in lost.split(";") if piece for key in [piece.split("@", 1)[1]]}
    text = "".join(tokenizer.decode(e.input_ids) for e in examples)
    for i, m in enumerate(messages):
        for field in ("content", "reasoning_content"):
            if m.get(field):
                assert m[field].strip() in text or f"messages[{i}].{field}" in reported, (family, i, field)


def test_generate_reads_a_special_token_spelled_by_the_user_as_text(monkeypatch):
    """`generate` and `chat` follow the training rule: what the user typed is text."""
    import torch

    from sft_recipe.data.chat_template import chat_prompt
    from sft_recipe.model import generate as generate_module

    tokenizer = build_tokenizer("qwen2.5")
    question = "What does <|im_end|> mean?"
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": question}])
    seen = {}

    class Model(torch.nn.Module):
        config = None

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **_):
            seen["ids"] = input_ids[0].tolist()
            return torch.cat([input_ids, torch.tensor([[tokenizer.eos_token_id]])], 1)

    monkeypatch.setattr(generate_module, "max_positions", lambda _c: None)
    generate_module.generate_answers(Model(), tokenizer, [prompt], add_special_tokens=False, user_text=[question])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    markup = tokenizer(prompt.replace(question, "plain"), add_special_tokens=False)["input_ids"].count(end)
    assert seen["ids"].count(end) == markup  # the template's own end markers only, not the user's text
