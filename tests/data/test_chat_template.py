"""Chat templates: installing one, special tokens, end-of-turn markers, BOS, bad values."""

from __future__ import annotations

import pytest
from chat_helpers import (
    A1,
    A2,
    ASSISTANT,
    CHATML,
    END,
    GOLDEN,
    Q1,
    Q2,
    START,
    USER,
    X,
    chat_tokenizer,
    config,
    tokenize,
)
from conftest import make_toy_tokenizer

from sft_recipe.data.chat_template import (
    chat_prompt,
    end_of_turn_ids,
    setup_chat_template,
    stop_token_ids,
)
from sft_recipe.errors import RecipeError

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


def test_template_that_rewrites_history_trains_each_turn_as_the_whole_rendering_shows_it(tmp_path):
    """Like templates that strip reasoning from earlier turns: earlier answers render differently once
    later turns follow. The row is the one rendering of the whole conversation, and each answer is
    trained as it appears there (the first as the rewritten "no")."""
    path = tmp_path / "rewrites.jinja"
    path.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}no{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", encoding="utf-8")
    rows, _ = tokenize([[Q1, A1, Q2, A2]], chat_template=str(path))
    NO = 18
    assert rows[0]["input_ids"] == [START, USER, 5, 6, END, START, ASSISTANT, NO, END,
                                    START, USER, 10, 11, END, START, ASSISTANT, NO, END]
    assert rows[0]["labels"] == [X, X, X, X, X, X, X, NO, END, X, X, X, X, X, X, X, NO, END]


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


# --- a tokenizer that glues the header's newline onto answers ------------------------------

def glueing_tokenizer(keep_newlines_apart: bool):
    """A BPE whose pieces are words, digits and runs of everything else, so `\\n<` (the header's
    newline and a tool call's first character) is one piece and, trained on it, one token; with
    `keep_newlines_apart` newlines are pieces of their own, as in most real tokenizers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sft_recipe.data.chat_template import read_template

    pattern = r"\p{L}+|\p{N}|\n+" if keep_newlines_apart else r"\p{L}+|\p{N}"
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = ["</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["<|im_start|>assistant\n<tool_call>\n{\"a\": 1}</tool_call><|im_end|>\n"] * 50,
                                trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", additional_special_tokens=specials[1:])
    tokenizer.chat_template = read_template("chatml-tools")
    return tokenizer


def test_a_header_glued_to_answers_is_found_and_said_once(caplog, monkeypatch):
    """The generation prompt ends with `\\n`, the whole rendering has `\\n<` as one token: the model
    would be trained on a token it never sees at inference (a real case: the tool-calling benchmark's
    first tokenizer answered every request with small talk). Real tokenizers keep newlines apart."""
    from sft_recipe.data.chat_template import header_merges, template_notes
    from sft_recipe.data.chat_rows import ChatEncoder

    glued = glueing_tokenizer(keep_newlines_apart=False)
    merges = {start: (tail, inside) for start, tail, inside in header_merges(glued)}
    assert merges["<tool_call>"] == (["Ċ"], ["Ċ<", "tool"])  # the prompt's `\n`, glued in the rows
    assert merges["<"] == (["Ċ"], ["Ċ<", "Ġ"])
    assert "A" not in merges  # letters are pieces of their own
    assert header_merges(glueing_tokenizer(keep_newlines_apart=True)) == []
    assert header_merges(chat_tokenizer()) == [] and template_notes(chat_tokenizer()) == []
    recipe = config(chat_template="chatml-tools")
    monkeypatch.setattr("sft_recipe.data.chat_rows._NOTED", set())  # said once per process: start afresh
    with caplog.at_level("WARNING"):
        ChatEncoder(glued, recipe)
        ChatEncoder(glued, recipe)  # a second source of a mixture: not said again
    said = [r.getMessage() for r in caplog.records if "the generation prompt ends with tokens" in r.getMessage()]
    assert len(said) == 1, said
    assert "tokens ['Ċ'] but a conversation spells that text as ['Ċ<', 'tool'] before an answer starting " \
           "'<tool_call>'" in said[0]
