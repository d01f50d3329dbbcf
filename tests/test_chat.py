"""Conversations: golden assistant-only masks, templates, drops, truncation, and the chat CLI.

The toy tokenizer (conftest) plus the words user=23, assistant=24, system=25; the ChatML template
adds <|im_start|>=26 and <|im_end|>=27. ChatML renders a turn as `<|im_start|>ROLE\\nTEXT<|im_end|>\\n`
and the toy tokenizer drops whitespace, so `user: the cat` is [26, 23, 5, 6, 27] by hand.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import base_recipe, make_toy_tokenizer, tiny_model_config, write_jsonl, write_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_recipe.chat import (
    TEMPLATE_DIR,
    chat_loop,
    chat_prompt,
    end_of_turn_ids,
    prompt_completion_to_messages,
    setup_chat_template,
    sharegpt_to_messages,
    stop_token_ids,
    tokenize_messages,
    validate_conversations,
)
from sft_recipe.config import SFTConfig
from sft_recipe.errors import DataError, RecipeError
from sft_recipe.mask import IGNORE_INDEX

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
    return tokenize_messages(dataset, tokenizer, cfg)


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


# --- templates ----------------------------------------------------------------------------

def test_chatml_adds_missing_special_tokens_once():
    tokenizer = chat_tokenizer()
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [START, END]
    assert len(tokenizer) == 28
    setup_chat_template(tokenizer, config())
    assert len(tokenizer) == 28
    assert end_of_turn_ids(tokenizer) == [END]
    assert stop_token_ids(tokenizer) == [END, 1]


def test_tokenizer_own_template_is_used_when_the_recipe_sets_none():
    tokenizer = chat_tokenizer()  # now carries ChatML itself
    rows, _ = tokenize([[Q1, A1]], tokenizer=tokenizer, chat_template=None)
    assert rows[0]["labels"] == GOLDEN["1 turn"][2]


def test_template_with_generation_blocks_matches_transformers_assistant_mask(tmp_path):
    """The prefix method agrees with `return_assistant_tokens_mask` where that one works."""
    template = CHATML.replace("message['content'] + '<|im_end|>' + '\\n' -}}",
                              "'' -}}{%- if message['role'] == 'assistant' -%}{%- generation -%}"
                              "{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
                              "{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}{{- '\\n' -}}")
    assert template != CHATML
    path = tmp_path / "chatml-generation.jinja"
    path.write_text(template, encoding="utf-8")
    cfg = config(chat_template=str(path))
    tokenizer = chat_tokenizer(cfg)
    messages = GOLDEN["3 turns + system"][0]
    rows, _ = tokenize([messages], tokenizer=tokenizer, chat_template=str(path))
    hf = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    assert rows[0]["input_ids"] == hf["input_ids"] == GOLDEN["3 turns + system"][1]
    assert [lab != X for lab in rows[0]["labels"]] == [bool(m) for m in hf["assistant_masks"]]


def test_template_ending_turns_with_eos(tmp_path):
    """A Zephyr-style template: `</s>` closes each turn and is trained."""
    path = tmp_path / "zephyr.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }} {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant {% endif %}", encoding="utf-8")
    rows, _ = tokenize([[Q1, A1, Q2, A2]], chat_template=str(path))
    assert rows[0]["input_ids"] == [USER, 5, 6, 1, ASSISTANT, 17, 1, USER, 10, 11, 1, ASSISTANT, 18, 1]
    assert rows[0]["labels"] == [X, X, X, X, X, 17, 1, X, X, X, X, X, 18, 1]


def test_template_that_rewrites_history_fails_the_prefix_check(tmp_path):
    """Like templates that strip reasoning from earlier turns: earlier answers render differently."""
    path = tmp_path / "rewrites.jinja"
    path.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}no{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", encoding="utf-8")
    with pytest.raises(DataError, match=r"rewrites\.jinja: rendering is not prefix-stable at message 4"):
        tokenize([[Q1, A1, Q2, A2]], chat_template=str(path))
    rows, _ = tokenize([[Q1, A1]], chat_template=str(path))  # one turn has no history to rewrite
    assert rows[0]["labels"] == GOLDEN["1 turn"][2]


def test_template_without_an_end_of_turn_token_is_rejected(tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant: {% endif %}", encoding="utf-8")
    with pytest.raises(RecipeError, match="plain.jinja: assistant turns end without a special token"):
        tokenize([[Q1, A1]], chat_template=str(path))


def test_bos_in_the_template_is_not_doubled():
    """The template writes BOS; a tokenizer that adds BOS itself must not add a second one,
    neither in training rows nor in the generation prompt."""
    cfg = config()
    tokenizer = chat_tokenizer(cfg, add_bos=True)
    tokenizer.chat_template = "{{ bos_token }}" + CHATML
    assert tokenizer("the", add_special_tokens=True)["input_ids"] == [2, 5]  # it does add BOS by itself
    rows, _ = tokenize([[Q1, A1]], tokenizer=tokenizer, chat_template=None)
    assert rows[0]["input_ids"] == [2] + GOLDEN["1 turn"][1]
    assert rows[0]["labels"] == [X] + GOLDEN["1 turn"][2]
    prompt = chat_prompt(tokenizer, [Q1])
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == [2, START, USER, 5, 6, END, START, ASSISTANT]


def test_turn_by_turn_tokenization_is_checked_against_the_whole_conversation(caplog):
    """A Metaspace (SentencePiece-style) tokenizer prepends '▁' to every call, so a turn tokenized
    on its own starts with an extra '▁': that is warned about, while ChatML on the toy agrees."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from sft_recipe.chat import check_turn_tokenization

    assert check_turn_tokenization(chat_tokenizer(), "chatml")
    words = ["<pad>", "</s>", "<s>", "▁", "▁[INST]", "▁[/INST]", "▁Hi", "▁there", "▁Good."]
    spm = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm, eos_token="</s>", bos_token="<s>", pad_token="<pad>")
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                               "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
    with caplog.at_level("WARNING", logger="sft_recipe.chat"):
        assert not check_turn_tokenization(tokenizer, "llama2.jinja")
    assert "llama2.jinja: tokenizing turn by turn gives other ids" in caplog.text


def test_no_template_at_all_is_a_recipe_error():
    with pytest.raises(RecipeError, match="toy: the tokenizer has no chat template; set chat_template: chatml"):
        tokenize([[Q1, A1]], tokenizer=make_toy_tokenizer(), chat_template=None)


@pytest.mark.parametrize("value, message", [
    ("chatlm", "chat_template: unknown built-in template 'chatlm' \\(built-ins: chatml"),
    ("missing.jinja", "chat_template: missing.jinja: template file not found"),
])
def test_bad_chat_template_value(value, message):
    with pytest.raises(RecipeError, match=message):
        setup_chat_template(make_toy_tokenizer(), config(chat_template=value))


# --- property: trainable tokens are exactly the assistant turns -------------------------------

TEXT = st.text(alphabet="abcxyz .,!?\n\u00e9", min_size=0, max_size=12)


@st.composite
def conversations(draw):
    messages = [turn("system", draw(TEXT))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [turn("user", draw(TEXT)), turn("assistant", draw(TEXT))]
    return messages


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


@pytest.fixture(scope="module")
def bpe_chatml(bpe_tokenizer_dir):
    from sft_recipe.model import load_tokenizer

    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    setup_chat_template(tokenizer, config())
    return tokenizer


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


# --- data formats and validation ------------------------------------------------------------

def test_sharegpt_rows_become_messages(tmp_path):
    from sft_recipe.data import load_raw

    row = {"conversations": [{"from": "system", "value": "big"}, {"from": "human", "value": "the cat"},
                             {"from": "gpt", "value": "yes"}]}
    assert sharegpt_to_messages(row) == {"messages": [SYS, Q1, A1]}
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [row, {"conversations": [{"from": "human", "value": "a dog"},
                                                                             {"from": "gpt", "value": "no"}]}])
    dataset, _ = load_raw(config(dataset=str(path)))
    assert dataset.column_names == ["messages"]
    assert dataset["messages"] == [[SYS, Q1, A1], [Q2, A2]]


def test_sharegpt_unknown_speaker_is_reported_with_its_row(tmp_path):
    from sft_recipe.data import load_raw

    path = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
    ])
    with pytest.raises(DataError, match=r"sharegpt.jsonl: row 2: key 'messages\[1\].role' must be one of "
                                        r"system, user, assistant, got 'bot'"):
        load_raw(config(dataset=str(path)))


def test_prompt_and_completion_as_message_lists(tmp_path):
    from sft_recipe.data import load_raw

    assert prompt_completion_to_messages({"prompt": [SYS, Q1], "completion": [A1]}) == {"messages": [SYS, Q1, A1]}
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [Q1, A1, Q2], "completion": [A2]}] * 2)
    dataset, _ = load_raw(config(dataset=str(path), dataset_format="prompt_completion"))
    assert dataset["messages"] == [[Q1, A1, Q2, A2]] * 2
    rows, _ = tokenize(dataset["messages"], train_on="last_assistant")
    assert rows[0]["labels"] == [X] * 16 + [18, END]


@pytest.mark.parametrize("rows, message", [
    ([[Q1, A1], "hello"], None),  # arrow cannot mix these; checked below one row at a time
    ([[Q1, A1], [Q1, turn("robot", "x")]],
     r"chats.jsonl: row 2: key 'messages\[1\].role' must be one of system, user, assistant, got 'robot'"),
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


# --- the CLI: preprocess, train, generate, chat -----------------------------------------------

def chat_rows(n: int) -> list[dict]:
    """Multi-turn conversations with system turns; answers are checkable (count the words)."""
    words = ["one", "two", "three", "four", "five"]
    rows = []
    for i in range(n):
        messages = [turn("system", "You count words.")] if i % 2 == 0 else []
        for k in range(1 + i % 3):
            count = 1 + (i + k) % 5
            messages += [turn("user", "count: " + " ".join(["cat"] * count)), turn("assistant", words[count - 1])]
        rows.append({"messages": messages})
    return rows


def chatml_render(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def test_preprocess_with_a_chatml_jinja_file_trains_exactly_the_assistant_turns(tmp_path, bpe_tokenizer_dir):
    """The issue's done-criterion, through the real CLI entry point."""
    import datasets

    from sft_recipe.cli import main
    from sft_recipe.model import load_tokenizer

    assert load_tokenizer(str(bpe_tokenizer_dir)).chat_template is None
    template = shutil.copy(TEMPLATE_DIR / "chatml.jinja", tmp_path / "my-chatml.jinja")
    rows = chat_rows(24)
    recipe = base_recipe(tmp_path, write_jsonl(tmp_path / "chats.jsonl", rows), bpe_tokenizer_dir,
                         dataset_format="messages", chat_template=str(template), eval_fraction=0.25)
    out = tmp_path / "pre"
    assert main(["preprocess", str(write_recipe(tmp_path / "r.yaml", recipe)), "--output", str(out)]) == 0

    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    setup_chat_template(tokenizer, SFTConfig(**{**recipe, "chat_template": str(template)}))
    by_text = {chatml_render(r["messages"]): r["messages"] for r in rows}
    train = datasets.load_from_disk(str(out / "train"))
    assert len(train) == 18
    for row in train:
        messages = by_text[tokenizer.decode(row["input_ids"])]  # the row is exactly one rendered conversation
        expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert [tokenizer.decode(span) for span in trainable_spans(row)] == expected


@pytest.mark.slow
def test_train_then_generate_and_chat_from_best(tmp_path, bpe_tokenizer_dir, capsys, monkeypatch):
    from sft_recipe.cli import main
    from sft_recipe.model import load_for_inference

    model_config = tiny_model_config()
    model_config.pop("vocab_size")
    recipe = base_recipe(tmp_path, write_jsonl(tmp_path / "chats.jsonl", chat_rows(40)), bpe_tokenizer_dir,
                         dataset_format="messages", chat_template="chatml", model_config=model_config,
                         eval_fraction=0.2, generation_eval_samples=3, max_new_tokens=3)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    best = Path(recipe["output_dir"]) / "best"
    assert "exact match on 3 held-out prompts (trained)" in capsys.readouterr().out  # last turns answered

    model, tokenizer = load_for_inference(best)
    assert tokenizer.chat_template == CHATML  # saved with the checkpoint
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # 400 + the two ChatML tokens
    assert json.loads((best / "config.json").read_text())["vocab_size"] == len(tokenizer)

    assert main(["generate", str(best), "count: cat cat", "--max_new_tokens", "4"]) == 0
    assert "<|im" not in capsys.readouterr().out  # stopped at (or skipped) the end-of-turn marker

    monkeypatch.setattr("sys.stdin", io.StringIO("count: cat\ncount: cat cat\n/reset\ncount: cat\n/exit\nnever\n"))
    assert main(["chat", str(best), "--max_new_tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 3 and "(history cleared)" in out


class EndOfTurnModel:
    """A stub for `generate`: records the prompt ids it gets and always answers `end`."""

    training = False

    def __init__(self, end: int):
        import torch

        self.end, self.prompts = end, []
        self.weight = torch.zeros(1)

    def parameters(self):
        yield self.weight

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def generate(self, input_ids, attention_mask, eos_token_id, **_):
        import torch

        assert self.end in eos_token_id
        self.prompts.append(input_ids[0][attention_mask[0].bool()].tolist())
        return torch.cat([input_ids, torch.tensor([[self.end]])], dim=1)


def test_generation_prompt_has_a_single_bos():
    from sft_recipe.generate import generate_answers

    tokenizer = chat_tokenizer(add_bos=True)
    tokenizer.chat_template = "{{ bos_token }}" + CHATML
    model = EndOfTurnModel(END)
    generate_answers(model, tokenizer, [chat_prompt(tokenizer, [Q1])], stop_token_ids=stop_token_ids(tokenizer),
                     add_special_tokens=False)
    assert model.prompts == [[2, START, USER, 5, 6, END, START, ASSISTANT]]


def test_chat_loop_keeps_history_and_resets(bpe_chatml):
    """Every reply of the stub is empty; each prompt holds exactly the history since the last /reset."""
    model = EndOfTurnModel(bpe_chatml.convert_tokens_to_ids("<|im_end|>"))
    stdout = io.StringIO()
    history = chat_loop(model, bpe_chatml, io.StringIO("hi\nthere\n/reset\nagain\n"), stdout, system="be brief")
    assert history == [turn("system", "be brief"), turn("user", "again"), turn("assistant", "")]
    decoded = [bpe_chatml.decode(p) for p in model.prompts]
    assert decoded[1] == chatml_render([turn("system", "be brief"), turn("user", "hi"), turn("assistant", ""),
                                        turn("user", "there")]) + "<|im_start|>assistant\n"
    assert decoded[2] == chatml_render([turn("system", "be brief"), turn("user", "again")]) + "<|im_start|>assistant\n"
    assert stdout.getvalue().count("assistant> ") == 3


def test_last_turn_prompts_render_the_history_before_the_final_answer():
    import datasets

    from sft_recipe.chat import last_turn_prompts

    tokenizer = chat_tokenizer()
    rows = datasets.Dataset.from_dict({"messages": [[SYS, Q1, A1, Q2, A2], [Q1, A1, Q2], [Q1, A1]]})
    table, kwargs = last_turn_prompts(rows, tokenizer)
    assert table["completion"] == ["no", "yes"]
    assert tokenizer(table["prompt"][0], add_special_tokens=False)["input_ids"] == GOLDEN["2 turns + system"][1][:20]
    assert kwargs == {"stop_token_ids": [END, 1], "add_special_tokens": False}


def test_scratch_model_smaller_than_the_chat_vocabulary_is_rejected():
    from sft_recipe.errors import UserError
    from sft_recipe.model import load_model

    tokenizer = chat_tokenizer()
    cfg = SFTConfig(dataset="chats.jsonl", from_scratch=True, tokenizer_name="toy",
                    model_config=tiny_model_config(vocab_size=26))
    with pytest.raises(UserError, match="vocab_size 26 is smaller than the tokenizer's 28 tokens"):
        load_model(cfg, tokenizer)


def test_chat_recipe_validates():
    from sft_recipe.recipe import load_recipe

    path = Path(__file__).parents[1] / "recipes" / "qwen2.5-0.5b-chat.yaml"
    assert path.read_text(encoding="utf-8").startswith("# accelerate launch ")
    cfg = load_recipe(path)
    assert (cfg.dataset_format, cfg.chat_template) == ("messages", "chatml")
