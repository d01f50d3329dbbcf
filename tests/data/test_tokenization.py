"""Tokenization of prompt/completion rows: a second run of the same recipe reuses the map cache."""

from __future__ import annotations

import functools

import datasets
import pytest
from conftest import alpaca_rows, write_jsonl

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.prepare import prepare_data
from sft_recipe.model.load import load_tokenizer

MAX_SHORT = 120  # the rows are 82..146 tokens long with this tokenizer: some get cut


@pytest.fixture
def tokenizing_calls(monkeypatch) -> list[str]:
    """Names of the functions `datasets.map` actually runs (a cache hit runs none)."""
    calls: list[str] = []
    original = datasets.Dataset._map_single

    @functools.wraps(original)  # datasets reads its signature for the fingerprint
    def counting(*args, **kwargs):
        function = kwargs["function"]
        calls.append(getattr(function, "__qualname__", None) or repr(function))
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "_map_single", staticmethod(counting))
    return calls


def test_second_prepare_data_reads_the_tokenization_cache(tmp_path, bpe_tokenizer_dir, tokenizing_calls):
    dataset = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(40))
    config = SFTConfig(dataset=str(dataset), model_name="unused", max_length=512, callbacks=[],
                       cache_prepared_data=False)  # this test is about the datasets map cache underneath

    def prepare():
        # a fresh tokenizer object each time, as in a second run of the recipe
        return prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))

    first = prepare()
    tokenized = [c for c in tokenizing_calls if "encode_rows" in c]
    assert len(tokenized) == 2  # train and eval
    tokenizing_calls.clear()
    second = prepare()
    assert not [c for c in tokenizing_calls if "encode_rows" in c]
    assert first.train.cache_files and second.train.cache_files == first.train.cache_files
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.eval["labels"] == first.eval["labels"]

    # A different max_length is a different tokenization: no stale cache.
    tokenizing_calls.clear()
    shorter = prepare_data(SFTConfig(dataset=str(dataset), model_name="unused", max_length=MAX_SHORT, callbacks=[]),
                           load_tokenizer(str(bpe_tokenizer_dir)))
    assert [c for c in tokenizing_calls if "encode_rows" in c]
    assert max(shorter.train["length"]) <= MAX_SHORT < max(first.train["length"])
