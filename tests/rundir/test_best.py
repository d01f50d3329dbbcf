"""`best/`: always whole weights, also when FSDP checkpoints are sharded, and never a directory
without weights (which `from_pretrained` would not load as the trained model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import base_recipe, write_recipe
from safetensors.torch import load_file

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.errors import UserError
from sft_recipe.cli import main
from sft_recipe.rundir.best import check_weights_written, full_state_dict, save_best


class Plugin:
    """accelerate's FSDP plugin, as far as the save is concerned."""

    def __init__(self, state_dict_type: str) -> None:
        self.state_dict_type, self.calls = state_dict_type, []

    def set_state_dict_type(self, state_dict_type) -> None:
        self.calls.append(state_dict_type)
        self.state_dict_type = state_dict_type


class FakeTrainer:
    """Writes weights only when the FSDP plugin asks for a full state dict, like `Trainer.save_model`
    (which under SHARDED_STATE_DICT saves nothing)."""

    def __init__(self, plugin: Plugin | None, tokenizer) -> None:
        self.is_fsdp_enabled = plugin is not None
        self.is_deepspeed_enabled = False
        self.state = SimpleNamespace(best_model_checkpoint=None)  # no checkpoint: best/ written from memory
        self.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), unwrap_model=lambda m: m,
                                           wait_for_everyone=lambda: None)
        self.model = SimpleNamespace(generation_config=SimpleNamespace(), config=SimpleNamespace())
        self.processing_class = tokenizer
        self.seen_types: list = []

    def save_model(self, path: str) -> None:
        from pathlib import Path

        plugin = self.accelerator.state.fsdp_plugin
        self.seen_types.append(plugin.state_dict_type if plugin else None)
        Path(path).mkdir(parents=True, exist_ok=True)
        if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            (Path(path) / "model.safetensors").write_bytes(b"weights")

    def is_world_process_zero(self) -> bool:
        return True


def test_sharded_fsdp_checkpoints_still_give_a_whole_best_model(tmp_path, toy_tokenizer, monkeypatch):
    monkeypatch.setattr("sft_recipe.rundir.best.write_model_card", lambda *a, **k: None)
    plugin = Plugin("SHARDED_STATE_DICT")
    trainer = FakeTrainer(plugin, toy_tokenizer)
    config = SFTConfig(dataset="d.jsonl", model_name="m", output_dir=str(tmp_path))
    best = save_best(trainer, config, {"eval_loss": 1.0})
    assert trainer.seen_types == ["FULL_STATE_DICT"] and (best / "model.safetensors").is_file()
    assert plugin.state_dict_type == "SHARDED_STATE_DICT"  # checkpoints after this stay sharded


def test_full_state_dict_is_left_alone_without_fsdp_or_when_already_full(toy_tokenizer):
    for plugin in (None, Plugin("StateDictType.FULL_STATE_DICT")):
        trainer = FakeTrainer(plugin, toy_tokenizer)
        with full_state_dict(trainer):
            pass
        assert plugin is None or plugin.calls == []


def test_the_sharded_type_comes_back_even_when_the_save_fails(toy_tokenizer):
    plugin = Plugin("SHARDED_STATE_DICT")
    with pytest.raises(OSError), full_state_dict(FakeTrainer(plugin, toy_tokenizer)):
        raise OSError("disk full")
    assert plugin.state_dict_type == "SHARDED_STATE_DICT"


@pytest.mark.parametrize("name", ["model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"])
def test_any_kind_of_weights_counts(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    check_weights_written(tmp_path)


def test_a_best_dir_without_weights_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="the model's weights were not written") as info:
        check_weights_written(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("steps", [6, 5], ids=["best-can-be-last", "last-step-unsaved"])
def test_best_weights_are_the_best_checkpoints_files(tmp_path, alpaca_file, bpe_tokenizer_dir, steps):
    """best/'s weights are hard links to the best checkpoint's (no second serialisation, no second
    copy on disk); the rest of best/ is what a save from memory writes, and it loads as that model."""
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, max_steps=steps,
                                                           eval_steps=2, save_steps=2))
    assert main(["train", str(recipe)]) == 0
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    checkpoint = Path(state["best_model_checkpoint"])
    best = out / "best"
    assert os.path.samefile(best / "model.safetensors", checkpoint / "model.safetensors")
    names = {p.name for p in best.iterdir()}
    assert {"config.json", "generation_config.json", "training_args.bin", "tokenizer.json", "sft_recipe.yaml",
            "README.md"} <= names and not any(n.startswith(".") or n.endswith(".tmp") for n in names)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(best)
    assert model.config.use_cache and model.generation_config.eos_token_id is not None
    for name, tensor in load_file(checkpoint / "model.safetensors").items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


def test_best_is_written_from_memory_when_the_checkpoint_weights_are_gone(tmp_path, alpaca_file, bpe_tokenizer_dir,
                                                                       monkeypatch):
    from sft_recipe.rundir import best as best_module

    monkeypatch.setattr(best_module, "checkpoint_weights", lambda trainer, model: None)
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, max_steps=2,
                                                           eval_steps=2, save_steps=2))
    assert main(["train", str(recipe)]) == 0
    best = tmp_path / "out" / "best"
    assert os.stat(best / "model.safetensors").st_nlink == 1
    assert not os.path.samefile(best / "model.safetensors", tmp_path / "out" / "checkpoint-2" / "model.safetensors")
