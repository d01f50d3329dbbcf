"""The summary block: the best model, the cost, the real paths, and commands that paste as they are."""

from __future__ import annotations

from types import SimpleNamespace

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.publish.summary import duration, format_summary


def summary(tmp_path, **recipe) -> str:
    config = SFTConfig(**{"dataset": "builtin:tasks", "model_name": "m", "output_dir": str(tmp_path / "demo"),
                          **recipe})
    state = SimpleNamespace(best_global_step=600, global_step=900, num_input_tokens_seen=1_690_000)
    metrics = {"eval_loss": 0.1314, "eval_perplexity": 1.14, "eval_token_accuracy": 0.959, "eval_exact_match": 0.92}
    return format_summary(config, state, metrics, 161.0, 178.4, 115_000, {"eval_exact_match": 0.0})


def test_summary_names_the_best_step_cost_paths_and_next_commands(tmp_path):
    text = summary(tmp_path, generation_eval_samples=100)
    best = tmp_path / "demo" / "best"
    assert "done in 2m58s" in text
    assert "best model   step 600 of 900: eval loss 0.1314, perplexity 1.14, token accuracy 95.9%" in text
    assert "exact match  92.0% on 100 held-out prompts (untrained model: 0.0%)" in text
    assert "trained      900 steps in 2m41s, 1,690,000 tokens (115,000 trainable)" in text
    assert f"saved        {best}/" in text
    assert f"sft-recipe generate {best} 'Reverse the order of the words.' --input 'apple river stone'" in text
    assert f"sft-recipe eval {best}" in text and f"hf upload YOUR-NAME/demo {best}" in text
    assert "loss curve" not in text  # none was written


def test_next_commands_follow_the_kind_of_model(tmp_path):
    best = tmp_path / "demo" / "best"
    chat = summary(tmp_path, dataset="builtin:tasks-chat", dataset_format="messages")
    assert f"sft-recipe chat {best}" in chat
    assert f"sft-recipe generate {best} 'Reverse the order of the words.' --input 'apple river stone'" in chat
    own_chat = summary(tmp_path, dataset="my.jsonl", dataset_format="messages")
    assert f"sft-recipe generate {best} 'Hello! Who are you?'" in own_chat
    text = summary(tmp_path, dataset_format="text")
    assert f"sft-recipe generate {best} 'Once upon a time' --raw" in text
    lora = summary(tmp_path, lora={}, push_to_hub=True, hub_model_id="me/demo")
    assert f"sft-recipe merge {best} --output {best.parent / 'merged'}" in lora
    assert "pushed to    https://huggingface.co/me/demo" in lora and "hf upload" not in lora


def test_duration():
    assert [duration(s) for s in (4.4, 161, 3725)] == ["4s", "2m41s", "1h02m"]
