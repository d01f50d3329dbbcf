"""Every YAML under recipes/ (searched recursively) loads and validates against today's code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sft_recipe.recipe.files import load_recipe
from sft_recipe.training.arguments import to_training_arguments

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL_YAML = sorted(RECIPES.rglob("*.yaml")) + sorted(RECIPES.rglob("*.yml"))
ACCELERATE = [p for p in ALL_YAML if "accelerate" in p.parts]
TRAINING = [p for p in ALL_YAML if p not in ACCELERATE]


def test_recipes_exist():
    names = {p.name for p in TRAINING}
    assert {"demo.yaml", "gpt2-alpaca.yaml"} <= names


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_validates(path):
    config = load_recipe(path)
    to_training_arguments(config)  # the mapping accepts it too (pass-through keys included)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "a recipe opens with a comment giving the command that runs it"


@pytest.mark.parametrize("path", ACCELERATE + [RECIPES.parent / "accelerate_config.yaml"],
                         ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    config = yaml.safe_load(path.read_text())
    assert "distributed_type" in config and "num_processes" in config
