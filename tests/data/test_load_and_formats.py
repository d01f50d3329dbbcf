"""Loading and validation: every supported source, and one-line errors naming file, row and key."""

from __future__ import annotations

import json

import pytest
from conftest import alpaca_rows, write_jsonl

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.prepare import load_raw, split_rows
from sft_recipe.formats.alpaca import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
from sft_recipe.errors import DataError


def load(path, fmt="alpaca", **kw):
    return load_raw(SFTConfig(model_name="m", dataset=str(path), dataset_format=fmt, **kw))


def test_alpaca_uses_both_official_templates(tmp_path):
    rows = [{"instruction": "Add.", "input": "1 2", "output": "3"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
            {"instruction": "Say yo.", "input": None, "output": "yo"},
            {"instruction": "Say ok.", "input": "   ", "output": "ok"}]
    ds, dropped = load(write_jsonl(tmp_path / "a.jsonl", rows))
    assert dropped == 0 and ds.column_names == ["prompt", "completion"]
    assert ds[0]["prompt"] == ALPACA_WITH_INPUT.format(instruction="Add.", input="1 2")
    assert "### Input:\n1 2\n\n### Response:\n" in ds[0]["prompt"]
    assert ds[1]["prompt"] == ALPACA_NO_INPUT.format(instruction="Say hi.")
    assert ds[2]["prompt"] == ALPACA_NO_INPUT.format(instruction="Say yo.")
    assert "### Input" not in ds[3]["prompt"]
    assert ds["completion"] == ["3", "hi", "yo", "ok"]


def test_alpaca_without_input_column(tmp_path):
    ds, _ = load(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}]))
    assert ds[0]["prompt"] == ALPACA_NO_INPUT.format(instruction="x")


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_local_file_types(tmp_path, suffix):
    import datasets

    rows = alpaca_rows(10)
    path = tmp_path / f"data{suffix}"
    frame = datasets.Dataset.from_list(rows)
    {".json": lambda: path.write_text(json.dumps(rows)), ".jsonl": lambda: frame.to_json(str(path)),
     ".csv": lambda: frame.to_csv(str(path)), ".parquet": lambda: frame.to_parquet(str(path))}[suffix]()
    ds, _ = load(path)
    assert len(ds) == 10 and ds["completion"] == [r["output"] for r in rows]


def test_directory_and_max_examples(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", alpaca_rows(20))
    ds, _ = load(tmp_path, max_examples=5)
    assert len(ds) == 5


def test_text_file(tmp_path):
    (tmp_path / "c.txt").write_text("line one\nline two\n")
    ds, _ = load(tmp_path / "c.txt", "text")
    assert "".join(ds["text"]) == "line one\nline two\n"  # line breaks kept


def test_prompt_completion(tmp_path):
    ds, _ = load(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2=", "completion": "4", "extra": 1}]),
                 "prompt_completion")
    assert ds[0] == {"prompt": "2+2=", "completion": "4"}


def test_empty_responses_dropped_and_counted(tmp_path):
    rows = [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "  \n"},
            {"instruction": "c", "output": ""}]
    ds, dropped = load(write_jsonl(tmp_path / "a.jsonl", rows))
    assert len(ds) == 1 and dropped == 2


def test_all_responses_empty_is_an_error(tmp_path):
    with pytest.raises(DataError, match="every response is empty"):
        load(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": " "}]))


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: malformed JSON"):
        load(path)


def test_missing_column_lists_present_ones(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"missing column 'instruction' for dataset_format 'alpaca' "
                                        r"\(columns present: answer, question\)"):
        load(path)


def test_non_string_field_names_row_and_key(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 5}]
    with pytest.raises(DataError, match=r"a\.jsonl: (row|line) 2: key 'output' must be a string"):
        load(write_jsonl(tmp_path / "a.jsonl", rows))


def test_null_output_names_row_and_key(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}]
    with pytest.raises(DataError, match=r"row 2: key 'output' must be a string, got null"):
        load(write_jsonl(tmp_path / "a.jsonl", rows))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match=r"nope\.jsonl: dataset file not found"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type '.xml'"):
        load(tmp_path / "x.xml")


def test_split_is_seeded_and_disjoint(tmp_path):
    ds, _ = load(write_jsonl(tmp_path / "a.jsonl", alpaca_rows(50)))
    train_a, eval_a = split_rows(ds, 0.1, seed=3, source="a")
    train_b, eval_b = split_rows(ds, 0.1, seed=3, source="a")
    assert eval_a["prompt"] == eval_b["prompt"] and len(eval_a) == 5 and len(train_a) == 45
    assert not set(zip(train_a["prompt"], train_a["completion"])) & set(zip(eval_a["prompt"], eval_a["completion"]))


def test_builtin_chat_tasks_are_the_alpaca_rows_as_one_turn_conversations(tmp_path, monkeypatch):
    from sft_recipe.data.builtin import make_rows

    monkeypatch.setenv("SFT_RECIPE_CACHE", str(tmp_path))
    alpaca, _ = load("builtin:tasks")
    chat, _ = load("builtin:tasks-chat", fmt="messages")
    rows = make_rows()
    assert len(alpaca) == len(chat) == len(rows)
    with_input = next(i for i, r in enumerate(rows) if r["input"])
    row, messages = rows[with_input], chat[with_input]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == f"{row['instruction']}\n{row['input']}"  # the input on its own line
    assert messages[1]["content"] == row["output"] == alpaca[with_input]["completion"]
    without = next(i for i, r in enumerate(rows) if not r["input"])
    assert chat[without]["messages"][0]["content"] == rows[without]["instruction"]


def test_unknown_builtin_dataset_lists_the_available_ones():
    from sft_recipe.data.builtin import materialise_dataset
    from sft_recipe.errors import UserError

    with pytest.raises(UserError, match="builtin:nope: unknown built-in dataset "
                                        r"\(available: builtin:tasks, builtin:tasks-chat\)"):
        materialise_dataset("builtin:nope")
