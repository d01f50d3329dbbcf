"""Formats are adapters: one module each, named by the registry, the same for memory and streams."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import pytest
from conftest import alpaca_rows, base_recipe, write_jsonl

from sft_recipe import formats
from sft_recipe.commands.train import train
from sft_recipe.data.prepare import prepare_data
from sft_recipe.errors import RecipeError
from sft_recipe.formats import Form, Format, canonical_row, get_format, normalise, register
from sft_recipe.model.load import load_tokenizer
from sft_recipe.recipe.files import build_config

PACKAGE = Path(__file__).resolve().parents[2] / "sft_recipe"


class PreferencePairs(Format):
    """A DPO-style file (`prompt`, `chosen`, `rejected`) used for SFT: train on the chosen answer."""

    name = "preference_sft"
    form = Form.COMPLETION
    required = ("prompt", "chosen")
    string_columns = ("prompt", "chosen")

    def to_form(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        self.check_columns(row, where)
        self.check_row_strings(row, where)
        return {"prompt": row["prompt"], "completion": row["chosen"]}


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test."""
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))


def pairs(n: int = 48) -> list[dict]:
    return [{"prompt": r["instruction"] + "\n", "chosen": r["output"], "rejected": "no"} for r in alpaca_rows(n)]


def test_a_format_defined_here_is_one_class_and_one_register_line_and_trains(tmp_path, bpe_tokenizer_dir, registry):
    register(PreferencePairs())
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    config = build_config(base_recipe(tmp_path, data, bpe_tokenizer_dir, dataset_format="preference_sft",
                                      max_steps=2, eval_steps=2, save_steps=2, callbacks=[]), "test")
    metrics = train(config)
    assert metrics["eval_loss"] > 0 and "eval_token_accuracy" in metrics
    assert (tmp_path / "out" / "best" / "model.safetensors").is_file()

    # The rows are exactly those of the same data written as prompt/completion.
    same = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs()])
    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    ours = prepare_data(config, tokenizer)
    theirs = prepare_data(build_config(base_recipe(tmp_path, same, bpe_tokenizer_dir, dataset_format="prompt_completion"),
                                       "test"), tokenizer)
    assert ours.train["input_ids"] == theirs.train["input_ids"] and ours.train["labels"] == theirs.train["labels"]


def test_a_registered_format_streams_through_the_same_adapter(tmp_path, bpe_tokenizer_dir, registry):
    register(PreferencePairs())
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    config = build_config(base_recipe(tmp_path, data, bpe_tokenizer_dir, dataset_format="preference_sft",
                                      streaming=True, streaming_eval_examples=8, max_steps=2, eval_steps=2,
                                      save_steps=2, callbacks=[]), "test")
    assert train(config)["eval_loss"] > 0


def test_an_unknown_format_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(RecipeError, match=r"recipe key 'dataset_format' expects one of 'alpaca', "
                                          r"'prompt_completion', 'text', 'messages', got 'alpaka' \(did you mean 'alpaca'\?\)"):
        get_format("alpaka")


ROWS = {
    "alpaca": [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
               {"instruction": "Reverse.", "input": "a b", "output": "b a"}],
    "prompt_completion": [{"prompt": "2+3=", "completion": "5"}, {"prompt": "1+1=", "completion": "2"}],
    "text": [{"text": "Once upon a time."}, {"text": "The end."}],
    "messages": [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                 {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}],
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_memory_and_stream_give_the_same_rows(name):
    """`normalise` (a dataset) and `canonical_row` (one streamed row) share the adapter and agree."""
    rows = ROWS[name]
    keys = sorted({k for r in rows for k in r})
    table = datasets.Dataset.from_list([{k: r.get(k) for k in keys} for r in rows])
    in_memory = normalise(table, name, "data.jsonl").to_list()
    streamed = [canonical_row(r, name, None, f"data.jsonl: row {i + 1}") for i, r in enumerate(rows)]
    for memory_row, stream_row in zip(in_memory, streamed):
        memory_row.pop("source_row", None)
        if stream_row.get("tools") is None:
            stream_row.pop("tools", None)
        assert json.loads(json.dumps(memory_row)) == json.loads(json.dumps(stream_row))


def test_every_built_in_format_declares_a_form_and_its_columns():
    for name in formats.format_names():
        adapter = get_format(name)
        assert isinstance(adapter.form, Form) and adapter.required and adapter.help, name


def python_sources_outside_formats() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "formats" not in p.relative_to(PACKAGE).parts]


def test_format_names_live_only_in_their_adapter_and_the_registry():
    """Downstream code asks the rows' Form. `text` and `messages` are also column names, so the check
    is on comparisons with the recipe's format; `alpaca` and `prompt_completion` are names only."""
    compare = re.compile(r"(dataset_format|\.format)\s*(==|!=|in\b)")
    for path in python_sources_outside_formats():
        source = path.read_text(encoding="utf-8")
        assert not compare.search(source), f"{path.name} compares a format name; ask config.form instead"
        for name in ("alpaca", "prompt_completion"):
            assert f'"{name}"' not in source and f"'{name}'" not in source, f"{path.name} spells format {name!r}"
