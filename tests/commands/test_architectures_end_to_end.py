"""Every kind of architecture in tests/zoo.py trains two steps, saves a best/ that reloads to the
same eval loss, and answers from it; packing where it would leak is one line and exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import alpaca_rows, base_recipe, write_jsonl, write_recipe
from zoo import ZOO

from sft_recipe.cli import main


def recipe_for(tmp_path, bpe_tokenizer_dir, kind: str, **overrides) -> dict:
    model_type, kwargs, _ = ZOO[kind]
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(24))
    return base_recipe(tmp_path, data, bpe_tokenizer_dir, model_config={"model_type": model_type, **kwargs},
                       max_steps=2, eval_steps=2, save_steps=2, batch_size=4, max_length=160, callbacks=[],
                       **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(ZOO))
def test_two_steps_then_generate_and_eval_from_best(kind, tmp_path, bpe_tokenizer_dir, capsys):
    recipe = recipe_for(tmp_path, bpe_tokenizer_dir, kind)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    best = tmp_path / "out" / "best"
    trained = json.loads((tmp_path / "out" / "eval_results.json").read_text())["eval_loss"]
    assert main(["generate", str(best), "Add 2 and 3.", "--max_new_tokens", "3"]) == 0  # hybrid caches included
    assert main(["eval", str(best), "--output", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["eval_loss"] == pytest.approx(trained, rel=1e-4) and "eval_token_accuracy" in again


@pytest.mark.parametrize("kind", [k for k in sorted(ZOO) if not ZOO[k][2]][:2])
def test_packing_a_leaky_architecture_is_one_line_and_exit_2(kind, tmp_path, bpe_tokenizer_dir, capsys):
    recipe = recipe_for(tmp_path, bpe_tokenizer_dir, kind, packing=True)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"packing: {ZOO[kind][0]} lets packed rows see each other" in err
