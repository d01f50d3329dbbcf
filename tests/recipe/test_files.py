"""Recipe loading: precedence, type checks, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_recipe

from sft_recipe.errors import RecipeError
from sft_recipe.rundir.layout import read_saved_recipe, save_recipe
from sft_recipe.recipe.files import (
    load_recipe,
    parse_overrides,
)

MINIMAL = {"model_name": "m", "dataset": "d.jsonl"}


def recipe_file(tmp_path: Path, **values) -> Path:
    return write_recipe(tmp_path / "r.yaml", {**MINIMAL, **values})


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    config = load_recipe(recipe_file(tmp_path, learning_rate=1e-4, batch_size=4),
                         ["--learning_rate", "3e-4", "--max_steps=7"])
    assert config.learning_rate == 3e-4  # CLI beats YAML
    assert config.batch_size == 4  # YAML beats default
    assert config.max_steps == 7 and config.warmup_steps == 0  # default


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model_name: m\ndataset: d.jsonl\nlearning_rate: 1e-3\n")
    assert load_recipe(path).learning_rate == 1e-3


@pytest.mark.parametrize(("override", "message"), [
    (["--learning_rat", "1"], "unknown recipe key 'learning_rat' (did you mean 'learning_rate'?)"),
    (["--bach_size", "1"], "did you mean 'batch_size'?"),
    (["--zzz", "1"], "unknown recipe key 'zzz'"),
    (["--batch_size", "four"], "recipe key 'batch_size' expects int or one of 'auto', got 'four'"),
    (["--batch_size", "2.5"], "expects int"),
    (["--packing", "maybe"], "recipe key 'packing' expects bool"),
    (["--dataset_format", "csv"], "expects one of 'alpaca', 'prompt_completion', 'text', 'messages'"),
    (["--batch_size", "0"], "'batch_size' must be > 0"),
    (["--max_length", "-5"], "'max_length' must be > 0"),
    (["--learning_rate", "-1"], "'learning_rate' must be a positive number"),
    (["--eval_fraction", "1.5"], "'eval_fraction' must be in [0, 1)"),
    (["--save_steps", "150"], "must be a multiple of 'eval_steps'"),
    (["--model_config", "3"], "expects a mapping or null"),
    (["--batch_size"], "--batch_size needs a value"),
    (["stray"], "expected --key value, got 'stray'"),
])
def test_bad_values_name_the_key(tmp_path, override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe_file(tmp_path), override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_yaml_key_names_the_file(tmp_path):
    with pytest.raises(RecipeError, match=r"r\.yaml: line \d+: unknown recipe key 'num_epoch' \(did you mean 'num_epochs'\?\)"):
        load_recipe(recipe_file(tmp_path, num_epoch=3))


def test_required_keys(tmp_path):
    with pytest.raises(RecipeError, match="'dataset' is required"):
        load_recipe(write_recipe(tmp_path / "r.yaml", {"model_name": "m"}))
    with pytest.raises(RecipeError, match="'model_name' is required unless from_scratch"):
        load_recipe(write_recipe(tmp_path / "r.yaml", {"dataset": "d.jsonl"}))
    with pytest.raises(RecipeError, match="needs 'model_config' with a 'model_type'"):
        load_recipe(recipe_file(tmp_path, from_scratch=True))


def test_broken_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name: m\n  dataset: [oops\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: line \d+: invalid YAML"):
        load_recipe(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(listing)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_list_and_optional_coercion():
    assert parse_overrides(["--report_to", "wandb", "--max_examples", "null"]) == \
        {"report_to": "wandb", "max_examples": None}


def test_report_to_single_string_becomes_list(tmp_path):
    assert load_recipe(recipe_file(tmp_path), ["--report_to", "tensorboard"]).report_to == ["tensorboard"]


def test_training_args_cannot_shadow_mapped_keys(tmp_path):
    with pytest.raises(RecipeError, match="set the recipe keys instead"):
        load_recipe(recipe_file(tmp_path, training_args={"learning_rate": 1.0}))


def test_saved_recipe_round_trips(tmp_path):
    config = load_recipe(recipe_file(tmp_path, training_args={"adam_beta2": 0.95}))
    save_recipe(config, tmp_path)
    assert read_saved_recipe(tmp_path)["training_args"] == {"adam_beta2": 0.95}
    reloaded = load_recipe(tmp_path / "sft_recipe.yaml")
    assert reloaded == config


def test_credentials_in_training_args_are_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"credentials would be saved with every checkpoint"):
        load_recipe(recipe_file(tmp_path, training_args={"hub_token": "hf_secret"}))
