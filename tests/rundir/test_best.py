"""`best/`: always whole weights, also when FSDP checkpoints are sharded, and never a directory
without weights (which `from_pretrained` would not load as the trained model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.errors import UserError
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
