"""The memory plan: predictions from short probes hold at 4x their length; budgets choose settings
that keep the effective batch; `plan` prints its parts and two lines scripts can read."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import alpaca_rows, base_recipe, write_jsonl, write_recipe
from transformers import AutoConfig

from sft_recipe.cli import main
from sft_recipe.errors import UserError
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.training.live_bytes import LiveBytes
from sft_recipe.training.memory_budget import parse_size
from sft_recipe.training.memory_plan import PROBE_CHUNKS, Probes, Settings, at, candidates, fit, measure, probe_model

ARCHITECTURES = {  # two kinds: GQA with a gated MLP and RoPE, and learned positions with a fused GELU MLP
    "llama": dict(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_head=4, n_positions=4096),
}


def test_live_bytes_counts_what_is_alive_and_the_peak():
    with LiveBytes() as live:
        a = torch.empty(1024, 256)  # 1 MiB
        b = torch.empty(1024, 256)
        del b
        c = a.view(256, 1024)  # a view: no new storage
    assert live.peak == 2 * 2**20 and live.now == 2**20 and c.shape == (256, 1024)


def test_golden_fit_is_flat_then_rising_and_never_negative():  # noqa: D103
    """Short rows: the end of backward (all gradients) holds the peak, flat; then activations rise."""
    lengths = [64, 128, 256, 384, 512]
    floor, c, a, b = fit(lengths, [5_000_000, 5_000_000, 7_000_000, 9_000_000, 11_000_000])  # flat, then linear
    assert (floor, round(a), round(b, 9)) == (5_000_000, 15_625, 0.0)
    assert at((floor, c, a, b), 1536) == pytest.approx(7_000_000 + 15_625 * 1280)
    assert at((floor, c, a, b), 64, batch=1) == 5_000_000
    assert fit(lengths, [10**6 + 3 * n * n for n in lengths])[3] == pytest.approx(3)  # attention's square
    assert fit(lengths, [500, 480, 470, 465, 462]) == (500.0, 0.0, 0.0, 0.0)  # falling noise: flat, at its top


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_prediction_holds_at_four_times_the_longest_probe(model_type):
    """Tensor bytes of a whole 6-layer step at 2 x 2048 tokens (4x the longest probe) against the
    fit from 1- and 2-layer probes; activations and the loss head are most of the peak there."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=3000, num_hidden_layers=6, max_position_embeddings=4096,
                                  **ARCHITECTURES[model_type])
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=2048, callbacks=[])
    settings = Settings(batch_size=2, accumulation=1, loss_chunk_size=64)
    assert 2048 >= 4 * 64 * max(PROBE_CHUNKS)
    curves = Probes(config, recipe)(settings, True)
    predicted = 6 * at(curves["layer"], 2048, 2) + at(curves["rest"], 2048, 2)
    whole = probe_model(config, 6, recipe, settings)
    measured = measure(whole, 2048, 2, 64, True)
    weights = sum(p.numel() * p.element_size() for p in whole.parameters())
    assert measured > 2 * weights  # the activations, not the fixed cost, carry the match
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)


def test_candidates_keep_the_effective_batch_fastest_first():
    options = candidates(12, 256)
    assert all(s.batch_size * s.accumulation == 12 for s in options)
    assert options[0] == Settings(12, 1, 256) and options[-1].gradient_checkpointing and options[-1].mlp_tile_tokens


@pytest.mark.parametrize("text,expected", [("6GiB", 6 * 2**30), ("6000 MB", 6 * 10**9), ("512mib", 2**29),
                                           ("1048576", 2**20)])
def test_sizes(text, expected):
    assert parse_size(text, "k") == expected


def test_a_bad_size_is_one_line():
    with pytest.raises(UserError, match="memory_budget: expected a size such as 6GiB"):
        parse_size("lots", "memory_budget")


def test_plan_prints_the_parts_and_two_lines_for_scripts(tmp_path, bpe_tokenizer_dir, capsys):
    recipe = base_recipe(tmp_path, write_jsonl(tmp_path / "d.jsonl", alpaca_rows(20)), bpe_tokenizer_dir)
    assert main(["plan", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("predicted peak, training: ") and lines[-2].endswith(" MiB")
    assert lines[-1].startswith("predicted peak, evaluation: ")
    assert any("optimizer state (AdamW)" in line for line in lines) and any("per layer" in line for line in lines)
    assert main(["plan", str(tmp_path / "r.yaml"), "--memory", "1MiB"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing fits" in err and "MiB" in err


def test_a_budget_run_chooses_settings_keeps_the_effective_batch_and_resumes_with_them(tmp_path, bpe_tokenizer_dir,
                                                                                      capfd):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(64))
    recipe = base_recipe(tmp_path, data, bpe_tokenizer_dir, batch_size="auto", effective_batch_size=8,
                         memory_budget="4GiB", max_steps=3, eval_steps=3, save_steps=3)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["train", str(path)]) == 0
    chosen = json.loads((tmp_path / "out" / "memory_plan.json").read_text())["settings"]
    assert chosen["batch_size"] * chosen["accumulation"] == 8
    out = "".join(capfd.readouterr())
    assert "memory plan: batch_size" in out and "predicted peak" in out and "peak after the first step" in out
    longer = dict(recipe, max_steps=6, eval_steps=3, save_steps=3, memory_budget="5GiB")
    assert main(["train", str(write_recipe(tmp_path / "r2.yaml", longer))]) == 0
    assert "resuming with" in "".join(capfd.readouterr())  # the same choice, not a new plan


def test_an_out_of_memory_error_names_plan(tmp_path, bpe_tokenizer_dir, capsys, monkeypatch):
    from sft_recipe.training.trainer import SFTTrainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "training_step", out_of_memory)
    recipe = base_recipe(tmp_path, write_jsonl(tmp_path / "d.jsonl", alpaca_rows(20)), bpe_tokenizer_dir)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "out of memory during training" in err and "sft-recipe plan" in err
