"""Evaluation data as users have it: an eval file, a split of their own, named sets, a mixture entry's
own `eval:`, and runs with no evaluation at all; in memory and streamed."""

from __future__ import annotations

import json

import pytest
from conftest import alpaca_rows, base_recipe, write_jsonl, write_recipe

from sft_recipe.cli import main
from sft_recipe.data.prepare import prepare_data
from sft_recipe.errors import RecipeError
from sft_recipe.model.load import load_tokenizer
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.training.arguments import to_training_arguments


def instructions(rows) -> list[str]:
    return sorted(r["instruction"] for r in rows)


@pytest.fixture
def files(tmp_path):
    train = alpaca_rows(40, seed=1)
    test = alpaca_rows(12, seed=2)
    split_dir = tmp_path / "hub_style"
    split_dir.mkdir()
    write_jsonl(split_dir / "train.jsonl", train)
    write_jsonl(split_dir / "test.jsonl", test)
    return {"train": write_jsonl(tmp_path / "train.jsonl", train), "test": write_jsonl(tmp_path / "valid.jsonl", test),
            "dir": split_dir, "n_train": len(train), "n_test": len(test)}


def prepared(tokenizer_dir, **values):
    config = SFTConfig(model_name="unused", max_length=256, callbacks=[], cache_prepared_data=False, **values)
    return prepare_data(config, load_tokenizer(str(tokenizer_dir)))


def test_an_eval_file_is_the_evaluation_set_and_every_training_row_trains(files, bpe_tokenizer_dir):
    data = prepared(bpe_tokenizer_dir, dataset=str(files["train"]), eval_dataset=str(files["test"]))
    assert (len(data.train), len(data.eval)) == (files["n_train"], files["n_test"])
    assert data.stats["eval"]["rows"] == files["n_test"] and data.stats["train"]["rows"] == files["n_train"]
    assert data.eval_raw is not None and len(data.eval_raw) == files["n_test"]  # for generation checks


def test_a_directory_with_named_splits_and_eval_split(files, bpe_tokenizer_dir):
    data = prepared(bpe_tokenizer_dir, dataset=str(files["dir"]), eval_split="test")
    assert (len(data.train), len(data.eval)) == (files["n_train"], files["n_test"])
    plain = prepared(bpe_tokenizer_dir, dataset=str(files["dir"]))  # train split only, 10% held out
    assert len(plain.train) + len(plain.eval) == files["n_train"]


def test_named_eval_sets_are_reported_one_by_one(files, bpe_tokenizer_dir):
    data = prepared(bpe_tokenizer_dir, dataset=str(files["train"]),
                    eval_dataset={"valid": str(files["test"]), "held": {"path": str(files["dir"]), "split": "test"}})
    assert set(data.eval_parts) == {"valid", "held"} and len(data.eval) == 2 * files["n_test"]
    assert set(data.stats["eval_sets"]) == {"valid", "held"}


def test_a_mixture_entry_with_its_own_eval_and_one_without(files, bpe_tokenizer_dir):
    data = prepared(bpe_tokenizer_dir, datasets=[
        {"path": str(files["dir"]), "name": "own", "eval": {"split": "test"}},
        {"path": str(files["train"]), "name": "held_out"}])
    sources = data.stats["sources"]
    assert sources["own"]["available"] == files["n_train"] and sources["own"]["eval_rows"] == files["n_test"]
    assert sources["held_out"]["eval_rows"] == 4 and sources["held_out"]["available"] == files["n_train"] - 4
    assert set(data.eval_parts) == {"own", "held_out"}


def test_eval_fraction_zero_holds_nothing_out(files, bpe_tokenizer_dir):
    data = prepared(bpe_tokenizer_dir, dataset=str(files["train"]), eval_fraction=0)
    assert len(data.train) == files["n_train"] and len(data.eval) == 0
    config = SFTConfig(dataset=str(files["train"]), model_name="unused", eval_fraction=0, eval_steps=3, save_steps=5)
    args = to_training_arguments(config, report_to="none")
    assert (args.eval_strategy, args.load_best_model_at_end) == ("no", False)


@pytest.mark.parametrize("values,message", [
    (dict(eval_fraction=0.2, eval_dataset="x.jsonl"), "set 'eval_fraction'"),
    (dict(eval_fraction=0.2, eval_split="test"), "set 'eval_fraction'"),
    (dict(eval_fraction=0, generation_eval_samples=4), "'generation_eval_samples' needs evaluation rows"),
    (dict(eval_fraction=0, early_stopping_patience=2), "'early_stopping_patience' needs evaluation rows"),
    (dict(streaming=True, max_steps=3, streaming_eval_examples=0, callbacks=["early_stopping"]),
     "needs evaluation rows, and this recipe has none (streaming_eval_examples: 0"),
    (dict(eval_dataset={"a": 3}), "'eval_dataset.a' must be a path or a mapping"),
    (dict(eval_dataset={"path": "x.jsonl", "weight": 2}), "is an evaluation set: it takes no 'weight'"),
], ids=["fraction-and-dataset", "fraction-and-split", "generation", "early-stopping", "stream-callback",
        "bad-set", "weighted-set"])
def test_conflicting_or_impossible_evaluation_is_one_line(values, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SFTConfig(dataset="train.jsonl", model_name="unused", **values)


@pytest.mark.parametrize("eval_dataset,message", [
    ("missing.jsonl", "missing.jsonl: dataset file not found"),
    ({"path": "DIR", "split": "validation"}, "validation"),
], ids=["missing-file", "missing-split"])
def test_a_missing_eval_file_or_split_is_one_line(tmp_path, files, bpe_tokenizer_dir, capsys, eval_dataset, message):
    if isinstance(eval_dataset, dict):
        eval_dataset = {**eval_dataset, "path": str(files["dir"])}
    else:
        eval_dataset = str(tmp_path / eval_dataset)
    recipe = base_recipe(tmp_path, files["train"], bpe_tokenizer_dir, eval_dataset=eval_dataset, max_steps=2,
                         eval_steps=2, save_steps=2)
    recipe.pop("eval_fraction", None)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_runs_with_an_eval_file_and_with_no_evaluation_end_to_end(tmp_path, files, bpe_tokenizer_dir, capsys):
    """Named sets report eval_<name>_loss; eval_fraction: 0 trains without evaluation, says so, and
    best/ is the last step; `sft-recipe eval` then refuses in one line."""
    recipe = base_recipe(tmp_path, files["train"], bpe_tokenizer_dir, max_steps=4, eval_steps=2, save_steps=2,
                         eval_dataset={"valid": str(files["test"]), "held": {"path": str(files["dir"]),
                                                                            "split": "test"}})
    recipe.pop("eval_fraction", None)
    assert main(["train", str(write_recipe(tmp_path / "a.yaml", recipe))]) == 0
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_loss", "eval_valid_loss", "eval_held_loss"} <= set(results)

    none = dict(recipe, eval_fraction=0, output_dir=str(tmp_path / "none"))
    none.pop("eval_dataset")
    capsys.readouterr()
    assert main(["train", str(write_recipe(tmp_path / "b.yaml", none))]) == 0
    out = capsys.readouterr().out
    assert "final model  step 4 (no evaluation: eval_fraction: 0" in out
    assert (tmp_path / "none" / "best" / "model.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "none" / "train_log.jsonl").read_text().splitlines()]
    assert not any("eval_loss" in entry for entry in log)
    assert main(["eval", str(tmp_path / "none" / "best")]) == 2
    assert "has no evaluation rows" in capsys.readouterr().err


def test_streams_with_an_eval_file_and_with_no_evaluation(tmp_path, files, bpe_tokenizer_dir, capsys):
    recipe = base_recipe(tmp_path, files["train"], bpe_tokenizer_dir, max_steps=3, eval_steps=3, save_steps=3,
                         streaming=True, eval_dataset=str(files["test"]))
    recipe.pop("eval_fraction", None)
    data = prepare_data(SFTConfig(**{k: v for k, v in recipe.items() if k != "output_dir"}, output_dir="x"),
                        load_tokenizer(str(bpe_tokenizer_dir)))
    assert data.stats["eval"]["rows"] == files["n_test"] and len(data.eval) == data.stats["eval"]["kept"] > 0
    assert data.stats["streaming"]["held_out_source_rows"] == 0  # the stream holds nothing out
    assert main(["train", str(write_recipe(tmp_path / "s.yaml", recipe))]) == 0
    off = dict(recipe, streaming_eval_examples=0, output_dir=str(tmp_path / "off"))
    off.pop("eval_dataset")
    assert main(["train", str(write_recipe(tmp_path / "o.yaml", off))]) == 0
    assert "no evaluation: streaming_eval_examples: 0" in capsys.readouterr().out
