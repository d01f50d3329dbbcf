"""Feed-forward blocks. Fused activations: the same function as the model's own, by probe, not by
name. mlp_tile_tokens: tiled blocks give the model's own loss and gradients, keep only their
inputs for backward, and nothing that mixes positions or routes tokens is ever tiled."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from sft_recipe.model.feed_forward import feed_forward, fuse_activations, fused_equivalent, position_wise, tile_mlps

# By kind: grouped-query attention with a gated MLP, GPT-2's Conv1D MLP, fused gate_up (Phi-3),
# parallel attention and MLP (Falcon), a mixture of experts with a shared expert (Qwen2-MoE).
ARCHITECTURES = {
    "qwen2": dict(),
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "phi3": dict(pad_token_id=0),
    "falcon": dict(new_decoder_architecture=False, parallel_attn=True),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, decoder_sparse_step=1),
}


def model_pair(model_type: str, tile: int):
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                  **ARCHITECTURES[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tiled = copy.deepcopy(model)
    return model.train(), tiled.train(), tile_mlps(tiled, tile)


def loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiled_model_has_the_models_loss_and_gradients(model_type, checkpointing):
    model, tiled, count = model_pair(model_type, tile=16)
    assert count >= 2, "every decoder layer has a feed-forward block to tile"
    if checkpointing:
        for m in (model, tiled):
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 300, (3, 37), generator=torch.Generator().manual_seed(1))
    loss, grads = loss_and_grads(model, ids)
    tiled_loss, tiled_grads = loss_and_grads(tiled, ids)
    assert torch.allclose(tiled_loss, loss, rtol=1e-6)
    assert grads.keys() == tiled_grads.keys()
    for name in grads:
        assert torch.allclose(tiled_grads[name], grads[name], rtol=1e-4, atol=1e-7), name


def test_routers_experts_and_attention_are_never_tiled():
    _, tiled, _ = model_pair("qwen2_moe", tile=16)
    tiled_kinds = {type(m).__name__ for m in tiled.modules() if hasattr(m, "sft_tile_tokens")}
    assert tiled_kinds == {"Qwen2MoeMLP"}  # the shared expert: routing still sees the whole batch
    assert all(not hasattr(m, "sft_tile_tokens") for n, m in tiled.named_modules() if "attn" in n or "gate" in n
               and not n.endswith("shared_expert_gate"))


class Mix(nn.Module):
    """Two linear layers, but token t's output reads token t-1: looks like an MLP, is not one."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return self.down(torch.relu(self.up(x.roll(1, dims=1))))


class MLP(nn.Module):
    def __init__(self, width=8, inner=16):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def test_a_block_that_mixes_positions_is_refused_by_the_probe(caplog):
    holder = nn.Sequential(Mix())
    assert feed_forward(holder[0]) and not position_wise(holder[0])
    with caplog.at_level(logging.WARNING, logger="sft_recipe"):
        assert tile_mlps(holder, 4) == 0
    assert "no position-wise feed-forward block" in caplog.text


def test_only_the_tiles_inputs_are_kept_for_backward():
    """Golden: 12 tokens, width 8, inner 16, tiles of 4. Untiled, backward keeps the input (12 x 8)
    and two inner-width tensors (the GELU's input and output, 2 x 12 x 16): 480 floats besides the
    weights. Tiled, at most the three tiles' inputs (3 x 4 x 8): the checkpoint keeps the rest out."""
    mlp = MLP()
    weights = {p.untyped_storage().data_ptr() for p in mlp.parameters()}
    x = torch.randn(1, 12, 8, requires_grad=True)

    def saved_floats(module):
        sizes = []

        def pack(t):
            sizes.append(0 if t.untyped_storage().data_ptr() in weights else t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        return sum(sizes)

    assert saved_floats(mlp) == 12 * 8 + 2 * 12 * 16
    tile_mlps(nn.Sequential(mlp), 4)
    assert saved_floats(mlp) <= 3 * 4 * 8


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 16))
def test_property_any_batch_and_tile_gives_the_same_output_and_gradients(batch, length, tile):
    torch.manual_seed(batch * 100 + length)
    mlp = MLP()
    reference = copy.deepcopy(mlp)
    tile_mlps(nn.Sequential(mlp), tile)
    x = torch.randn(batch, length, 8)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = mlp(a), reference(b)
    assert torch.allclose(out, ref, atol=1e-6)
    upstream = torch.randn(out.shape)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    for p, q in zip(mlp.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-5 * float(q.grad.abs().max()))


def test_evaluation_and_no_grad_run_untiled(monkeypatch):
    mlp = MLP()
    tile_mlps(nn.Sequential(mlp), 2)
    calls = []
    monkeypatch.setattr("sft_recipe.model.feed_forward.checkpoint", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        mlp(torch.randn(1, 9, 8))
    mlp.eval()
    mlp(torch.randn(1, 9, 8))
    assert calls == []


def test_a_deep_copy_tiles_its_own_weights():
    mlp = MLP()
    tile_mlps(nn.Sequential(mlp), 2)
    twin = copy.deepcopy(mlp)
    assert twin.forward.__self__ is twin


# GPT-2's gelu_new and gelu_fast are tanh GELUs in several operations; gelu_python is the erf GELU
# written out; quick_gelu (x * sigmoid(1.702 x)) is another function; gelu is torch's kernel already.
@pytest.mark.parametrize("activation, fused", [("gelu_new", "tanh"), ("gelu_fast", "tanh"), ("gelu_python", "none"),
                                               ("quick_gelu", None), ("gelu", None), ("relu", None)])
def test_multi_operation_gelus_become_torchs_kernel_and_nothing_else_does(activation, fused):
    config = AutoConfig.for_model("gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=300, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, activation_function=activation)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    reference = copy.deepcopy(model)
    assert fuse_activations(model) == (2 if fused else 0)
    acts = {type(block.act) for block in (layer.mlp for layer in model.transformer.h)}
    assert acts == ({nn.GELU} if fused else {type(reference.transformer.h[0].mlp.act)})
    if fused:
        assert model.transformer.h[0].mlp.act.approximate == fused
    ids = torch.randint(0, 300, (2, 33), generator=torch.Generator().manual_seed(1))
    loss, grads = loss_and_grads(reference, ids)
    fused_loss, fused_grads = loss_and_grads(model, ids)
    assert torch.allclose(fused_loss, loss, rtol=1e-6)
    for name in grads:
        assert torch.allclose(fused_grads[name], grads[name], rtol=1e-5, atol=1e-6 * float(grads[name].abs().max()))
    assert model.config.activation_function == activation  # what is saved is the model's own


def test_a_gated_silu_mlp_is_left_alone():
    _, tiled, _ = model_pair("qwen2", tile=16)
    assert fuse_activations(tiled) == 0


def test_only_elementwise_parameter_free_modules_are_candidates():
    assert fused_equivalent(nn.Dropout(0.5)) is None and fused_equivalent(nn.Identity()) is None
    assert fused_equivalent(nn.Linear(3, 3)) is None  # has parameters
    assert fused_equivalent(nn.GELU()) is None  # already the kernel


def test_lora_adapted_mlps_are_tiled_with_the_same_loss_and_gradients():
    """LoRA wraps each linear layer (`base_layer` plus adapters): still a feed-forward block."""
    peft = pytest.importorskip("peft")
    config = AutoConfig.for_model("qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    torch.manual_seed(0)
    model = peft.get_peft_model(AutoModelForCausalLM.from_config(config), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)).train()
    tiled = copy.deepcopy(model)
    assert tile_mlps(tiled, 16) == 2
    ids = torch.randint(0, 300, (3, 37), generator=torch.Generator().manual_seed(1))
    loss, grads = loss_and_grads(model, ids)
    tiled_loss, tiled_grads = loss_and_grads(tiled, ids)
    assert torch.allclose(tiled_loss, loss, rtol=1e-6) and grads.keys() == tiled_grads.keys()
    assert all("lora_" in name for name in grads)  # only the adapters train
    for name in grads:
        assert torch.allclose(tiled_grads[name], grads[name], rtol=1e-4, atol=1e-7), name
