"""Every name a recipe gives is checked before data preparation: one line naming the key, exit 2.
The dataset here does not exist, so a check that ran after data loading would report that instead."""

from __future__ import annotations

import pytest
from conftest import base_recipe, write_recipe

from sft_recipe.cli import main
from sft_recipe.commands import preflight


@pytest.fixture
def run(tmp_path, bpe_tokenizer_dir, capsys):
    def go(**overrides) -> str:
        recipe = base_recipe(tmp_path, tmp_path / "no-such-data.jsonl", bpe_tokenizer_dir, **overrides)
        assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        return err

    return go


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(report_to=["no_such_logger"]), "recipe key 'report_to': unknown logger 'no_such_logger'"),
    (dict(report_to=["tensorbord"]), "(did you mean 'tensorboard'?)"),
    (dict(callbacks=["no_such_pkg.Callback"]), "recipe key 'callbacks': cannot import 'no_such_pkg.Callback'"),
    (dict(push_to_hub=True, hub_model_id="me/ok-name"), "recipe key 'push_to_hub': no hub token"),
    (dict(push_to_hub=True, hub_model_id="not a repo id!"), "recipe key 'hub_model_id'"),
    (dict(attn_implementation="fast_magic"), "recipe key 'attn_implementation': unknown 'fast_magic'"),
    (dict(attn_implementation="flash_attention_2"), "flash_attention_2 needs a CUDA GPU"),
    (dict(precision="fp16"), "recipe key 'precision': fp16 needs a GPU"),
])
def test_a_name_that_cannot_resolve_fails_before_the_data(run, monkeypatch, overrides, message):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(preflight, "get_token", lambda: None)
    monkeypatch.setattr(preflight.torch.cuda, "is_available", lambda: False)
    assert message in run(**overrides)


def test_a_logger_whose_package_is_missing(run, monkeypatch):
    monkeypatch.setattr(preflight, "installed", lambda module: module != "mlflow")
    assert "recipe key 'report_to': mlflow needs the 'mlflow' package" in run(report_to=["mlflow"])


def test_lora_without_peft_and_qlora_without_cuda(run, monkeypatch):
    monkeypatch.setattr(preflight, "installed", lambda module: module != "peft")
    assert "recipe key 'lora' needs the 'peft' package" in run(from_scratch=False, model_name="some/model", lora={})


def test_an_output_dir_without_room_for_a_checkpoint(run, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 4096)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _p: type("U", (), {"free": 1000})())
    assert "recipe key 'output_dir'" in run(from_scratch=False, model_name=str(model))


def test_a_tokenizer_without_a_chat_template_fails_before_the_data(run):
    assert "the tokenizer has no chat template; set chat_template: chatml" in run(dataset_format="messages")
