"""Prepared rows are kept: the same recipe again skips tokenization (any change to the files, the
tokenizer or the data settings prepares again), and `preprocess --output` can be trained on."""

from __future__ import annotations

import logging

import pytest
from conftest import alpaca_rows, base_recipe, write_jsonl, write_recipe

from sft_recipe.cli import main
from sft_recipe.data import prepare
from sft_recipe.data.prepare import prepare_data
from sft_recipe.model.load import load_tokenizer
from sft_recipe.recipe.config import SFTConfig


@pytest.fixture
def tokenizing(monkeypatch):
    calls = []
    real = prepare.encode_rows

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "encode_rows", counted)
    return calls


def test_the_same_recipe_again_reuses_the_rows_and_says_so(tmp_path, bpe_tokenizer_dir, tokenizing, caplog):
    data = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(40))
    config = SFTConfig(dataset=str(data), model_name="unused", max_length=256, callbacks=[])
    first = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    assert len(tokenizing) == 2
    with caplog.at_level(logging.INFO, logger="sft_recipe"):
        second = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    assert len(tokenizing) == 2  # nothing tokenized the second time
    assert "reusing the rows prepared for the same files, tokenizer, template and settings" in caplog.text
    assert second.train["input_ids"] == first.train["input_ids"] and second.eval["labels"] == first.eval["labels"]
    assert second.stats == first.stats and second.eval_raw.to_list() == first.eval_raw.to_list()


def test_rows_without_evaluation_are_reused_too(tmp_path, bpe_tokenizer_dir, tokenizing):
    """eval_fraction: 0 leaves an empty evaluation split, which `load_from_disk` cannot read back."""
    data = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(20))
    config = SFTConfig(dataset=str(data), model_name="unused", max_length=256, callbacks=[], eval_fraction=0)
    first = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    calls = len(tokenizing)
    second = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    assert len(tokenizing) == calls and len(second.eval) == len(first.eval) == 0  # nothing tokenized again
    assert second.eval.column_names == first.eval.column_names and second.train["labels"] == first.train["labels"]


@pytest.mark.parametrize("change", ["file contents", "max_length", "tokenizer", "seed"])
def test_any_change_prepares_again(tmp_path, bpe_tokenizer_dir, tokenizing, change):
    rows = alpaca_rows(40)
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = SFTConfig(dataset=str(data), model_name="unused", max_length=256, callbacks=[])
    prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    if change == "file contents":  # same size, same name, one letter different
        rows[3]["output"] = rows[3]["output"][:-1] + ("x" if rows[3]["output"][-1] != "x" else "y")
        write_jsonl(data, rows)
    elif change == "max_length":
        config = SFTConfig(dataset=str(data), model_name="unused", max_length=200, callbacks=[])
    elif change == "tokenizer":
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    else:
        config = SFTConfig(dataset=str(data), model_name="unused", max_length=256, callbacks=[], seed=7)
    prepare_data(config, tokenizer)
    assert len(tokenizing) == 4


def test_preprocess_output_is_a_dataset(tmp_path, bpe_tokenizer_dir, capsys):
    data = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(40))
    recipe = base_recipe(tmp_path, data, bpe_tokenizer_dir, max_steps=2, eval_steps=2, save_steps=2, callbacks=[])
    assert main(["preprocess", str(write_recipe(tmp_path / "p.yaml", recipe)), "--output", str(tmp_path / "pre")]) == 0
    trained = dict(recipe, dataset=str(tmp_path / "pre"), output_dir=str(tmp_path / "out2"))
    assert main(["train", str(write_recipe(tmp_path / "t.yaml", trained))]) == 0
    assert (tmp_path / "out2" / "best" / "model.safetensors").is_file()
    other = tmp_path / "other-tokenizer"
    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    tokenizer.save_pretrained(other)
    wrong = dict(trained, tokenizer_name=str(other), output_dir=str(tmp_path / "out3"))
    capsys.readouterr()
    assert main(["train", str(write_recipe(tmp_path / "w.yaml", wrong))]) == 2
    assert "were prepared with another tokenizer" in capsys.readouterr().err


def largest_train_file(directory):
    return max((f for f in (directory / "train").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def cut_to_half(path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def test_a_damaged_cache_entry_is_prepared_again_with_one_line(tmp_path, bpe_tokenizer_dir, tokenizing, caplog,
                                                                monkeypatch):
    """The largest cached train file cut to half (a full disk, a crashed copy): the next run says so in
    one line and prepares again, and its rows equal a fresh preparation's."""
    monkeypatch.setenv("SFT_RECIPE_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(300))
    config = SFTConfig(dataset=str(data), model_name="unused", max_length=256, callbacks=[])
    fresh = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    (entry,) = [p for p in (tmp_path / "cache" / "prepared").iterdir() if not p.name.startswith(".")]
    cut_to_half(largest_train_file(entry))
    with caplog.at_level(logging.WARNING, logger="sft_recipe"):
        again = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))
    assert len(tokenizing) == 4  # prepared again, not read from the damaged entry
    (line,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert str(entry) in line and "preparing them again" in line and "\n" not in line
    for split in ("train", "eval"):
        assert getattr(again, split).to_dict() == getattr(fresh, split).to_dict()
    third = prepare_data(config, load_tokenizer(str(bpe_tokenizer_dir)))  # the entry was written whole again
    assert len(tokenizing) == 4 and third.train.to_dict() == fresh.train.to_dict()


def test_a_damaged_preprocess_output_is_one_line_not_prepared_again(tmp_path, bpe_tokenizer_dir, capsys):
    """`preprocess --output` is the user's data, not a cache: one line naming it and the file, exit 2."""
    data = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(300))
    recipe = base_recipe(tmp_path, data, bpe_tokenizer_dir, max_steps=2, eval_steps=2, save_steps=2, callbacks=[])
    assert main(["preprocess", str(write_recipe(tmp_path / "p.yaml", recipe)), "--output", str(tmp_path / "pre")]) == 0
    damaged = largest_train_file(tmp_path / "pre")
    cut_to_half(damaged)
    capsys.readouterr()
    trained = dict(recipe, dataset=str(tmp_path / "pre"), output_dir=str(tmp_path / "out"))
    assert main(["train", str(write_recipe(tmp_path / "t.yaml", trained))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err and damaged.name in err and "Traceback" not in err
