"""`columns:` maps a dataset's own column names onto its format's, for `dataset:` and each source."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.prepare import load_raw
from sft_recipe.formats.alpaca import ALPACA_NO_INPUT
from sft_recipe.errors import DataError, RecipeError
from sft_recipe.recipe.files import build_config


def load(path, fmt="alpaca", **kw):
    return load_raw(SFTConfig(model_name="m", dataset=str(path), dataset_format=fmt, **kw))


def test_alpaca_with_own_column_names(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Add 1 2.", "answer": "3", "extra": 1}])
    ds, _ = load(path, columns={"instruction": "question", "output": "answer"})
    assert ds.column_names == ["prompt", "completion"]
    assert ds[0]["prompt"] == ALPACA_NO_INPUT.format(instruction="Add 1 2.") and ds[0]["completion"] == "3"


def test_messages_under_another_name(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conversation": chat}])
    ds, _ = load(path, "messages", columns={"messages": "conversation"})
    assert ds[0]["messages"] == chat


def test_mapping_replaces_a_clashing_column(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "old", "body": "new"}])
    ds, _ = load(path, "text", columns={"text": "body"})
    assert ds["text"] == ["new"]


def test_missing_mapped_column_lists_mapping_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load(path, columns={"instruction": "query", "output": "answer"})
    message = str(err.value)
    assert "column 'query'" in message and "{instruction: query, output: answer}" in message
    assert "columns present: answer, question" in message


def test_required_column_left_unmapped_lists_the_mapping(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load(path, columns={"instruction": "question"})
    message = str(err.value)
    assert "missing column 'output'" in message and "columns present: answer, instruction" in message
    assert "columns mapping: {instruction: question}" in message


@pytest.mark.parametrize("columns", [["a"], {"output": 3}, "output=answer"])
def test_bad_mapping_is_a_recipe_error(columns):
    with pytest.raises(RecipeError, match="recipe key 'columns' (must map|expects a mapping)"):
        build_config({"model_name": "m", "dataset": "d.jsonl", "columns": columns}, "test")
