"""benchmarks/mfu.py: its FLOP arithmetic, checked on CPU against a real (tiny) Llama."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_model_config

spec = importlib.util.spec_from_file_location("mfu", Path(__file__).parents[2] / "benchmarks" / "mfu.py")
mfu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mfu)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_decoder_matmul_params_are_the_models_linear_weights(kv_heads):
    config = tiny_model_config("llama", num_attention_heads=2, num_key_value_heads=kv_heads)
    model = tiny_model("llama", num_attention_heads=2, num_key_value_heads=kv_heads)
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert mfu.decoder_matmul_params(config) == linear


def test_step_flops_by_hand():
    # 1 layer, width 4, 2 heads, MLP 8, vocab 10: matmul params 4*4*4 (q,k,v,o) + 3*4*8 = 160.
    config = dict(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=10)
    flops = mfu.step_flops(config, row_lengths=[3, 2], trainable_tokens=2)
    decoder = 6 * 160 * 5
    attention = 3 * 1 * 4 * 4 * (3 * 3 + 2 * 2)  # per row, not over the pack of 5
    assert flops["ours"] == decoder + attention + 6 * 10 * 4 * 2
    assert flops["standard"] == decoder + attention + 6 * 10 * 4 * 5


def test_the_05b_config_is_about_half_a_billion_parameters():
    from transformers import AutoConfig

    kwargs = {k: v for k, v in mfu.LLAMA_05B.items() if k != "model_type"}
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **kwargs))
    assert 0.4e9 < model.num_parameters() < 0.6e9
    assert mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
