"""Chat end to end: preprocess, train, generate, and the `sft-recipe chat` loop."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

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
    SYS,
    USER,
    chat_tokenizer,
    config,
    trainable_spans,
    turn,
)
from conftest import base_recipe, tiny_model_config, write_jsonl, write_recipe

from sft_recipe.commands.chat import chat_loop
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.chat_template import (
    TEMPLATE_DIR,
    chat_prompt,
    setup_chat_template,
    stop_token_ids,
)
from sft_recipe.errors import UserError

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
    from sft_recipe.model.load import load_tokenizer

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
    from sft_recipe.model.load import load_for_inference

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

    prompts = []  # an Alpaca-style --input goes into the chat message, on a line of its own
    monkeypatch.setattr("sft_recipe.commands.chat.generate_answers", lambda _m, _t, ps, **_: prompts.extend(ps) or ["x"])
    assert main(["generate", str(best), "count:", "--input", "cat cat"]) == 0
    assert "<|im_start|>user\ncount:\ncat cat<|im_end|>" in prompts[0]


class EndOfTurnModel:
    """A stub for `generate`: records the prompt ids it gets and always answers `end`."""

    training = False
    config = None  # no context limit

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
    from sft_recipe.model.generate import generate_answers

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

    from sft_recipe.data.chat_template import last_turn_prompts

    tokenizer = chat_tokenizer()
    rows = datasets.Dataset.from_dict({"messages": [[SYS, Q1, A1, Q2, A2], [Q1, A1, Q2], [Q1, A1]]})
    table, kwargs = last_turn_prompts(rows, tokenizer)
    assert table["completion"] == ["no", "yes"]
    assert table["shown"] == [Q2["content"], Q1["content"]]  # the question the console shows beside the answer
    assert tokenizer(table["prompt"][0], add_special_tokens=False)["input_ids"] == GOLDEN["2 turns + system"][1][:20]
    assert kwargs == {"stop_token_ids": [END, 1], "add_special_tokens": False}


def test_scratch_model_smaller_than_the_chat_vocabulary_is_rejected():
    from sft_recipe.errors import UserError
    from sft_recipe.model.load import load_model

    tokenizer = chat_tokenizer()
    cfg = SFTConfig(dataset="chats.jsonl", from_scratch=True, tokenizer_name="toy",
                    model_config=tiny_model_config(vocab_size=26))
    with pytest.raises(UserError, match="vocab_size 26 is smaller than the tokenizer's 28 tokens"):
        load_model(cfg, tokenizer)


def test_chat_recipe_validates():
    from sft_recipe.recipe.files import load_recipe

    path = Path(__file__).parents[2] / "recipes" / "qwen2.5-0.5b-chat.yaml"
    assert path.read_text(encoding="utf-8").startswith("# accelerate launch ")
    cfg = load_recipe(path)
    assert (cfg.dataset_format, cfg.chat_template) == ("messages", "chatml")


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def test_chat_loop_renders_tools_with_the_template(bpe_tokenizer_dir):
    from sft_recipe.model.load import load_tokenizer

    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    setup_chat_template(tokenizer, config(chat_template="chatml-tools"))
    model = EndOfTurnModel(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    chat_loop(model, tokenizer, io.StringIO("weather in Paris?\n"), io.StringIO(), tools=[WEATHER_TOOL])
    prompt = tokenizer.decode(model.prompts[0])
    assert prompt.startswith("<|im_start|>system\n# Tools\n<tools>\n" + json.dumps(WEATHER_TOOL))
    assert prompt.endswith("<|im_start|>user\nweather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_tools_on_a_template_without_tool_support_is_one_error(bpe_chatml):
    with pytest.raises(UserError, match="does not support tools"):
        chat_prompt(bpe_chatml, [Q1], [WEATHER_TOOL])


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the tools file"),
    ("[{", "line 1: malformed JSON"),
    ('{"a": 1}', "key 'tools' must be a list of JSON schemas"),
    ('[1]', r"key 'tools\[0\]' must be an object"),
])
def test_tools_file_errors_name_the_file(tmp_path, content, message):
    from sft_recipe.commands.chat import read_tools

    path = tmp_path / "tools.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_tools(str(path))
    assert read_tools(None) is None


def test_a_line_ending_with_a_backslash_continues_the_message(bpe_chatml):
    """An instruction and its input on two lines, as the demo's tasks are written; EOF ends it too."""
    model = EndOfTurnModel(bpe_chatml.convert_tokens_to_ids("<|im_end|>"))
    stdout = io.StringIO()
    history = chat_loop(model, bpe_chatml, io.StringIO("Reverse the words.\\\nred cat\nhi\nlast\\"), stdout)
    assert [m["content"] for m in history if m["role"] == "user"] == ["Reverse the words.\nred cat", "hi", "last"]
    assert "a line ending with \\ continues on the next" in stdout.getvalue()
