"""The model card written into every best/."""

from __future__ import annotations

import yaml

from sft_recipe.rundir.card import is_hub_id, model_card, write_model_card
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.formats.alpaca import alpaca_prompt

METRICS = {"eval_loss": 1.23456, "eval_perplexity": 3.437, "eval_token_accuracy": 0.5, "eval_runtime": 9.9,
           "eval_exact_match": 0.25, "epoch": 3.0}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_for_a_hub_fine_tune_names_base_model_data_metrics_and_template(tmp_path):
    config = SFTConfig(model_name="gpt2", dataset="yahma/alpaca-cleaned", hub_model_id="me/gpt2-alpaca",
                       push_to_hub=True)
    card = model_card(config, METRICS, str(tmp_path / "best"), loss_curve="loss_curve.png")
    meta = front_matter(card)
    assert meta["base_model"] == "gpt2" and meta["datasets"] == ["yahma/alpaca-cleaned"]
    assert meta["library_name"] == "transformers"
    assert "# gpt2-alpaca" in card
    assert "| loss | 1.235 |" in card and "| exact_match | 0.25 |" in card
    assert "runtime" not in card.split("## Results")[1].split("##")[0]  # bookkeeping is left out
    assert "![Train and eval loss](loss_curve.png)" in card
    assert repr(alpaca_prompt("Give three tips for staying healthy.")) in card  # the exact training template
    assert "AutoModelForCausalLM.from_pretrained('me/gpt2-alpaca')" in card


def test_card_for_local_paths_and_adapters(tmp_path):
    local_model = tmp_path / "base"
    local_model.mkdir()
    config = SFTConfig(model_name=str(local_model), dataset=str(tmp_path / "chat.jsonl"),
                       dataset_format="messages", lora={"r": 8}, output_dir=str(tmp_path / "run"))
    card = model_card(config, {}, str(tmp_path / "run" / "best"), is_adapter=True)
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta  # local paths mean nothing on the hub
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "LoRA adapters (r=8)" in card and "AutoPeftModelForCausalLM" in card
    assert "apply_chat_template" in card and "sft-recipe chat" in card
    assert "## Results" not in card  # no metrics, no empty table


def test_write_model_card_copies_the_loss_curve(tmp_path):
    out = tmp_path / "run"
    best = out / "best"
    best.mkdir(parents=True)
    (out / "loss_curve.png").write_bytes(b"\x89PNG")
    (best / "adapter_config.json").write_text("{}")
    config = SFTConfig(model_name="Qwen/Qwen2.5-0.5B", dataset="a.jsonl", output_dir=str(out), lora={})
    path = write_model_card(best, config, METRICS)
    assert path == best / "README.md"
    assert (best / "loss_curve.png").read_bytes() == b"\x89PNG"
    assert "library_name: peft" in path.read_text()


def test_is_hub_id(tmp_path):
    assert is_hub_id("gpt2") and is_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("builtin:tasks") and not is_hub_id("./data.jsonl")
    assert not is_hub_id("a/b/c")
