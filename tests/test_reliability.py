"""Issue 13 through the real CLI, in-process: every careless or unlucky input gets one
`sft-recipe: error:` line naming the file, row or key (exit 2, no traceback), never silent garbage."""

from __future__ import annotations

import json
import os

import pytest
from conftest import base_recipe, tiny_model, write_jsonl, write_recipe

from sft_recipe.cli import main

GOOD = {"instruction": "Say yes.", "input": "", "output": "yes"}


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sft-recipe: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def cli(tmp_path, alpaca_file, bpe_tokenizer_dir, capsys):
    """`cli(command, *argv, recipe_overrides...)` -> (exit code, stdout, the error line or '')."""

    def run(command: str = "preprocess", *extra: str, **overrides) -> tuple[int, str, str]:
        dataset = overrides.pop("dataset", alpaca_file)
        recipe = write_recipe(tmp_path / "recipe.yaml", base_recipe(tmp_path, dataset, bpe_tokenizer_dir,
                                                                     **overrides))
        argv = [command, str(recipe), *(["--output", str(tmp_path / "pre")] if command == "preprocess" else []),
                *extra]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, error_line(err) if code == 2 else err

    return run


# --- data files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("latin1.jsonl", '{"instruction": "café", "output": "x"}\n'.encode("latin-1"), "line 1: not UTF-8"),
    ("latin1.txt", "one\ncafé au lait\n".encode("latin-1"), "line 2: not UTF-8"),
    ("latin1.csv", "instruction,output\ncafé,x\n".encode("latin-1"), "line 2: not UTF-8"),
    ("binary.jsonl", bytes(range(256)) * 4, "not UTF-8"),
    ("empty.jsonl", b"", "the file is empty"),
    ("empty.txt", b"", "the file is empty"),
    ("empty.csv", b"", "the file is empty"),
    ("blank.json", b"\n  \n", "the file is empty"),
])
def test_unreadable_data_files_are_named(tmp_path, cli, name, content, expected):
    data = tmp_path / name
    data.write_bytes(content)
    fmt = "text" if name.endswith(".txt") else "alpaca"
    code, _, line = cli(dataset=str(data), dataset_format=fmt)
    assert code == 2 and f"{data}:" in line and expected in line


def test_directory_of_mixed_formats_is_refused_not_half_loaded(tmp_path, cli):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD] * 8)
    (folder / "b.csv").write_text("instruction,input,output\nhi,,yes\n", encoding="utf-8")
    code, _, line = cli(dataset=str(folder))
    assert code == 2 and "mixed file types" in line and str(folder) in line


def test_directory_of_one_format_loads_every_file(tmp_path, cli):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD] * 10)
    write_jsonl(folder / "b.jsonl", [{**GOOD, "output": "no"}] * 10)
    code, out, err = cli(dataset=str(folder))
    assert code == 0, err
    assert "wrote 18 train and 2 eval rows" in out


def test_sharegpt_row_mixed_with_messages_rows(tmp_path, cli):
    chat = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat"}]
    rows = [{"messages": chat}] * 6 + [{"conversations": [{"from": "human", "value": "a dog"},
                                                         {"from": "gpt", "value": "ran"}]}] * 4
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    code, out, err = cli(dataset=str(data), dataset_format="messages", chat_template="chatml")
    assert code == 0, err
    assert "wrote 9 train and 1 eval rows" in out


@pytest.mark.parametrize("completion, kind", [(5, "int"), ({"a": 1}, "dict")])
def test_conversational_prompt_with_non_string_completion(tmp_path, cli, completion, kind):
    prompt = [{"role": "user", "content": "the cat"}]
    rows = [{"prompt": prompt, "completion": "sat"}] * 5 + [{"prompt": prompt, "completion": completion}]
    data = write_jsonl(tmp_path / "conv.jsonl", rows)
    code, _, line = cli(dataset=str(data), dataset_format="prompt_completion", chat_template="chatml")
    assert code == 2 and "row 6" in line and "'completion'" in line and kind in line


def test_jinja_syntax_error_has_a_line_number(tmp_path, cli):
    template = tmp_path / "bad.jinja"
    template.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}", encoding="utf-8")
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 4)
    code, _, line = cli(dataset=str(data), dataset_format="messages", chat_template=str(template))
    assert code == 2 and f"{template}: line 2:" in line


# --- recipes and the command line ------------------------------------------------------------

def test_duplicate_recipe_key_is_refused_with_its_line(tmp_path, alpaca_file, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset: {alpaca_file}\nmodel_name: m\nlearning_rate: 1e-3\nlearning_rate: 1e-2\n")
    assert main(["preprocess", str(recipe), "--output", str(tmp_path / "pre")]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{recipe}: line 4" in line and "duplicate key 'learning_rate'" in line and "line 3" in line


@pytest.mark.parametrize("content", ["dataset: café\n".encode("latin-1"), bytes(range(256))])
def test_non_utf8_recipe(tmp_path, content, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    assert main(["preprocess", str(recipe), "--output", str(tmp_path / "pre")]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(recipe) in line and "not UTF-8" in line


def test_command_line_mistakes_are_blamed_on_the_command_line(cli, tmp_path):
    code, _, line = cli("preprocess", "--learning_rate", "abc")
    assert code == 2 and line.startswith("sft-recipe: error: command line: ") and "'learning_rate'" in line
    code, _, line = cli("preprocess", "--save_steps", "5")  # eval_steps 3 comes from the file
    assert code == 2 and "command line" in line and "recipe.yaml" not in line


def test_yaml_mistakes_name_the_file_and_line(cli, tmp_path):
    code, _, line = cli(batch_size="eight")
    assert code == 2 and f"{tmp_path / 'recipe.yaml'}: line " in line and "'batch_size'" in line


def test_empty_output_dir_on_the_command_line(cli):
    code, _, line = cli("train", "--output_dir=")
    assert code == 2 and "command line" in line and "'output_dir' is empty" in line


def test_bad_training_args_value_fails_before_tokenization(cli, monkeypatch):
    import sft_recipe.commands.train as train_module

    monkeypatch.setattr(train_module, "prepare_data", lambda *a: pytest.fail("tokenized before checking"))
    code, _, line = cli("train", training_args={"adam_beta1": "high"})
    assert code == 2 and "'training_args.adam_beta1' expects float" in line
    code, _, line = cli("train", training_args={"adam_beta": 0.9})
    assert code == 2 and "unknown TrainingArguments field 'adam_beta'" in line


def test_max_length_above_the_model_positions_fails_before_tokenization(cli, monkeypatch):
    import sft_recipe.commands.train as train_module

    monkeypatch.setattr(train_module, "prepare_data", lambda *a: pytest.fail("tokenized before checking"))
    code, _, line = cli("train", max_length=1000)  # the tiny model has 256 positions
    assert code == 2 and "'max_length' (1000) is above the 256 positions" in line


@pytest.mark.parametrize("output", ["a-file", "missing-parent/../a-file/sub"])
def test_preprocess_output_that_is_a_file(tmp_path, cli, output):
    (tmp_path / "a-file").write_text("x")
    code, _, line = cli("preprocess", "--output", str(tmp_path / output))
    assert code == 2 and "--output" in line


# --- models and tokenizers -------------------------------------------------------------------

def test_model_dir_without_tokenizer_files_is_refused(tmp_path, cli):
    model_dir = tmp_path / "model"
    tiny_model(model_type="gpt2").save_pretrained(model_dir)  # weights and config, no tokenizer
    code, _, line = cli("train", from_scratch=False, model_config=None, model_name=str(model_dir),
                        tokenizer_name=None)
    assert code == 2 and str(model_dir) in line and "only 1 token" in line
    assert not (tmp_path / "out" / "best").exists()


@pytest.mark.parametrize("path", ["/no/such/model", "./no-such-model", "relative/deep/no-such-model"])
def test_missing_local_model_says_not_found(tmp_path, cli, path):
    code, _, line = cli("train", from_scratch=False, model_config=None, model_name=path)
    assert code == 2 and "not found" in line and "Repo id" not in line and path in line


def test_missing_lora_base_says_not_found(tmp_path, bpe_tokenizer, capsys):
    adapter = tmp_path / "adapter"
    bpe_tokenizer.save_pretrained(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/no/such/base"}))
    assert main(["generate", str(adapter), "hi"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "/no/such/base" in line and "not found" in line and "Repo id" not in line


# --- generate, chat, eval on a saved model ---------------------------------------------------

@pytest.fixture
def model_dir(tmp_path, bpe_tokenizer):
    path = tmp_path / "model"
    tiny_model(model_type="gpt2", vocab_size=len(bpe_tokenizer)).save_pretrained(path)  # 256 positions
    bpe_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("argv, expected", [
    (["--max_new_tokens", "-3"], "--max_new_tokens must be > 0"),
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--raw"], "--raw needs some text"),
])
def test_generate_option_mistakes(model_dir, capsys, argv, expected):
    text = "" if "--raw" in argv else "hi"
    assert main(["generate", str(model_dir), text, *argv]) == 2
    assert expected in error_line(capsys.readouterr().err)


def test_generate_prompt_longer_than_the_context(model_dir, capsys):
    assert main(["generate", str(model_dir), "the cat sat " * 300, "--raw"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "tokens long" in line and "context is 256 tokens" in line


def test_generate_stops_at_the_context(model_dir, capsys):
    assert main(["generate", str(model_dir), "the cat sat " * 30, "--raw", "--max_new_tokens", "100000"]) == 0


def test_chat_negative_max_new_tokens(model_dir, capsys):
    assert main(["chat", str(model_dir), "--max_new_tokens", "-1"]) == 2
    assert "--max_new_tokens must be > 0" in error_line(capsys.readouterr().err)


def test_eval_output_that_is_a_directory(model_dir, tmp_path, capsys):
    assert main(["eval", str(model_dir), "--output", str(tmp_path)]) == 2
    assert f"{tmp_path}: --output is a directory" in error_line(capsys.readouterr().err)


# --- several processes -----------------------------------------------------------------------

def test_other_ranks_log_only_errors(monkeypatch):
    import logging

    from sft_recipe.console import configure_logging

    monkeypatch.setenv("RANK", "1")
    try:
        configure_logging()
        assert logging.getLogger("sft_recipe").getEffectiveLevel() == logging.ERROR
    finally:
        monkeypatch.setenv("RANK", "0")
        logging.getLogger("sft_recipe").setLevel(logging.NOTSET)
        configure_logging()
    assert os.environ["RANK"] == "0"
