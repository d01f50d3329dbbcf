"""`datasets:` mixtures: counts by weight, draws without replacement, per-source splits and stats."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import alpaca_rows, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.data.mixture import draw_counts, draw_indices
from sft_recipe.data.prepare import describe_stats, prepare_data
from sft_recipe.errors import RecipeError
from sft_recipe.recipe.files import build_config

CHAT = [{"role": "user", "content": "count: cat cat"}, {"role": "assistant", "content": "two"}]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.floats(0.01, 100)), min_size=1, max_size=6))
def test_counts_add_up_and_follow_the_weights_within_one_row(sources):
    available, weights = [a for a, _ in sources], [w for _, w in sources]
    counts = draw_counts(available, weights)
    total = sum(available)
    assert sum(counts) == total
    for n, w in zip(counts, weights):
        assert abs(n - w / sum(weights) * total) < 1.0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.integers(0, 1000), st.integers(0, 2**32 - 1))
def test_draws_repeat_whole_then_never_repeat_a_row(available, wanted, seed):
    picked = draw_indices(available, wanted, seed, 0)
    assert len(picked) == wanted
    counts = np.bincount(picked, minlength=available)
    whole = wanted // available
    assert set(counts.tolist()) <= {whole, whole + 1}  # every row as often as every other, +-1
    assert (draw_indices(available, wanted, seed, 0) == picked).all()


def mixture_recipe(tmp_path, tokenizer_dir, **overrides) -> dict:
    qa = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in alpaca_rows(60, seed=1)]
    sources = [
        {"path": str(write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(40))), "format": "alpaca", "weight": 2},
        {"path": str(write_jsonl(tmp_path / "qa.jsonl", qa)), "format": "alpaca", "weight": 1, "name": "qa",
         "columns": {"instruction": "question", "input": "context", "output": "answer"}},
        {"path": str(write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}] * 20)), "format": "messages",
         "weight": 1},
    ]
    recipe = dict(datasets=sources, model_name="unused", tokenizer_name=str(tokenizer_dir), chat_template="chatml",
                  max_length=1024, seed=3, eval_fraction=0.2)
    recipe.update(overrides)
    return recipe


def test_mixture_of_formats_has_weighted_counts_and_every_source_held_out(tmp_path, bpe_chatml, bpe_tokenizer_dir):
    config = build_config(mixture_recipe(tmp_path, bpe_tokenizer_dir), "test")
    data = prepare_data(config, bpe_chatml)
    sources = data.stats["sources"]
    assert list(sources) == ["alpaca", "qa", "chat"]
    assert [s["available"] for s in sources.values()] == [32, 48, 16]
    # 96 training rows, weights 2:1:1 -> 48, 24, 24: alpaca and chat repeated, qa drawn without replacement
    assert [s["drawn"] for s in sources.values()] == [48, 24, 24] and len(data.train) == 96
    assert {name: len(rows) for name, rows in data.eval_parts.items()} == {"alpaca": 8, "qa": 12, "chat": 4}
    assert len(data.eval) == 24 and data.train.column_names == ["input_ids", "labels", "length"]
    line = describe_stats(data.stats)
    assert "sources: alpaca 32 rows -> 48 drawn (weight 2: 50.0%), eval 8; qa 48 rows -> 24 drawn" in line
    again = prepare_data(config, bpe_chatml)
    assert again.train["input_ids"] == data.train["input_ids"]  # deterministic for a seed


def test_mixture_recipe_errors():
    with pytest.raises(RecipeError, match="not both"):
        build_config(dict(model_name="m", dataset="d.jsonl", datasets=[{"path": "a.jsonl"}]), "test")
    with pytest.raises(RecipeError, match=r"datasets\[0\]\.weight' must be a positive number"):
        build_config(dict(model_name="m", datasets=[{"path": "a.jsonl", "weight": 0}]), "test")
    with pytest.raises(RecipeError, match=r"unknown key 'wieght' \(did you mean 'weight'\?\)"):
        build_config(dict(model_name="m", datasets=[{"path": "a.jsonl", "wieght": 1}]), "test")
    config = build_config(dict(model_name="m", datasets=[{"path": "x/train.jsonl"}, {"path": "y/train.jsonl"}]), "t")
    assert [s.name for s in config.datasets] == ["train", "train_2"]


@pytest.mark.parametrize("formats,prompted", [
    (["messages", "messages"], "messages"),
    (["alpaca", "messages"], "messages"),      # a conversation source: the model is prompted through its template
    (["text", "prompt_completion"], "prompt_completion"),
    (["text", "text"], "text"),
    (["text", "alpaca", "prompt_completion"], "alpaca"),
])
def test_a_mixture_is_prompted_in_the_format_its_sources_say(formats, prompted):
    """`generate`, `chat`, the samples and the card read the top-level `dataset_format`: for a mixture it
    follows the sources (it used to stay `alpaca`, so a chat-only mixture was prompted in Alpaca)."""
    sources = [{"path": f"{i}.jsonl", "format": f} for i, f in enumerate(formats)]
    assert build_config(dict(model_name="m", datasets=sources, dataset_format="alpaca"), "t").dataset_format == prompted
