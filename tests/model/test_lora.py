"""LoRA through peft: recipe validation, the fast loss on a peft model, a run, merge and generate."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import base_recipe, tiny_model, write_recipe

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.errors import RecipeError
from sft_recipe.model.lora import quantization_config, wrap_lora
from sft_recipe.recipe.lora import LoraSettings

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("lora, message", [
    ({"rank": 8}, "unknown key 'rank'"),
    ({"r": 0}, "'lora.r' must be a positive integer"),
    ({"alpha": -1}, "'lora.alpha' must be a positive number"),
    ({"dropout": 1.0}, r"'lora.dropout' must be in \[0, 1\)"),
    ({"target_modules": []}, "'lora.target_modules' must be"),
    ({"load_in_4bit": "yes"}, "'lora.load_in_4bit' must be true or false"),
])
def test_bad_lora_keys_are_one_line_recipe_errors(lora, message):
    with pytest.raises(RecipeError, match=message):
        SFTConfig(dataset="a.jsonl", model_name="m", lora=lora)


def test_lora_defaults_and_from_scratch_rejected():
    assert LoraSettings.from_mapping({}).to_dict() == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear",
                              "load_in_4bit": False}
    with pytest.raises(RecipeError, match="needs a pretrained model_name"):
        SFTConfig(dataset="a.jsonl", from_scratch=True, tokenizer_name="t", model_config={"model_type": "llama"},
                  lora={})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_qlora_on_cpu_fails_clearly():
    assert quantization_config({"r": 8}) is None
    with pytest.raises(RecipeError, match="load_in_4bit' \\(QLoRA\\) needs a CUDA GPU"):
        quantization_config({"load_in_4bit": True})


def test_fast_loss_on_a_lora_model_matches_the_models_own_loss(toy_tokenizer, tmp_path):
    """The trainable-token loss unwraps peft (decoder_and_head) and gives the model's own loss and
    the same adapter gradients; the frozen base gets none."""
    from sft_recipe.model.head_loss import decoder_and_head
    from sft_recipe.training.trainer import SFTTrainer
    from sft_recipe.training.arguments import to_training_arguments

    model = wrap_lora(tiny_model(vocab_size=len(toy_tokenizer)), {"r": 4, "dropout": 0.0})
    with torch.no_grad():  # lora_B starts at zero; make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert decoder_and_head(model) is not None
    inputs = {"input_ids": torch.tensor([[3, 5, 6, 4, 14, 1, 0], [3, 8, 9, 4, 15, 16, 1]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1] * 7]),
              "labels": torch.tensor([[-100, -100, -100, -100, 14, 1, -100], [-100, -100, -100, -100, 15, 16, 1]])}
    args = to_training_arguments(SFTConfig(dataset="x", model_name="x", output_dir=str(tmp_path)), report_to="none",
                                eval_strategy="no", load_best_model_at_end=False)
    grads = []
    for chunk in (2, 0):
        trainer = SFTTrainer(model=model, args=args, processing_class=toy_tokenizer, loss_chunk_size=chunk)
        assert (trainer.loss_path.parts is not None) == bool(chunk)
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(inputs))
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (fast_loss, fast_grads), (own_loss, own_grads) = grads
    assert fast_loss == pytest.approx(own_loss, rel=1e-5)
    assert fast_grads.keys() == own_grads.keys() and all("lora_" in n for n in fast_grads)
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], own_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_lora_run_trains_only_adapters_and_merge_reproduces_logits(tmp_path, alpaca_file, bpe_tokenizer_dir,
                                                                    capsys):
    """A tiny pretrained base + LoRA: best/ holds only the adapter, the base weights are untouched,
    `sft-recipe merge` gives a plain model with the adapter model's logits, `generate` answers from
    the adapter directory, and `report_to: [tensorboard]` logs the throughput scalars."""
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    from sft_recipe.cli import main

    base_dir = tmp_path / "base"
    base = tiny_model(vocab_size=400, seed=1)
    base.save_pretrained(base_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    recipe = base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, from_scratch=False, model_config=None,
                         model_name=str(base_dir), lora={"r": 4, "alpha": 8, "dropout": 0.0,
                                                         "target_modules": ["q_proj", "v_proj"]},
                         report_to=["tensorboard"], max_steps=4, eval_steps=2, save_steps=2)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    best = tmp_path / "out" / "best"
    assert (best / "adapter_config.json").is_file() and not (best / "model.safetensors").exists()
    adapter = load_file(best / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    assert "library_name: peft" in (best / "README.md").read_text()

    adapted = AutoPeftModelForCausalLM.from_pretrained(str(best)).eval()
    for name, value in adapted.get_base_model().state_dict().items():
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            torch.testing.assert_close(value, before[original], rtol=0, atol=0)

    merged_dir = tmp_path / "merged"
    assert main(["merge", str(best), "--output", str(merged_dir)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)
    assert (merged_dir / "sft_recipe.yaml").is_file() and (merged_dir / "tokenizer.json").is_file()
    merged_card = (merged_dir / "README.md").read_text()
    assert "library_name: transformers" in merged_card and f"from_pretrained({str(merged_dir)!r})" in merged_card
    assert "| loss |" in merged_card  # the run's final metrics

    # `sft-recipe eval` on the adapter reproduces the end-of-training evaluation
    assert main(["eval", str(best)]) == 0
    final = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    again = json.loads((best / "eval_results.json").read_text())
    assert again["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-4)

    capsys.readouterr()
    assert main(["generate", str(best), "What is 2 plus 3?", "--max_new_tokens", "4"]) == 0
    assert main(["generate", str(merged_dir), "What is 2 plus 3?", "--max_new_tokens", "4"]) == 0
    adapter_answer, merged_answer = capsys.readouterr().out.splitlines()[-2:]
    assert adapter_answer == merged_answer

    (run_dir,) = {p.parent for p in (tmp_path / "out" / "runs").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(run_dir))  # all event files of the run (the final eval writes a second)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/tokens_per_second", "train/trainable_tokens_per_second", "eval/loss",
            "eval/perplexity"} <= set(tags)
