"""The chunked loss wired into a causal LM (`sft_recipe.model.head_loss`): gradients equal the
model's own over accumulation, tied heads add theirs into `.grad` without a second weight-sized
tensor, and the sparse embedding backward applies only where it is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.model.head_loss import decoder_and_head, sparse_tied_embedding, trainable_token_loss

VOCAB = 400


def tiny_causal_lm(tied: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("eager", [False, True], ids=["scaled-in-backward", "eager"])
@pytest.mark.parametrize("tied", [True, False])
def test_trainable_token_loss_gradients_equal_the_models_own_over_accumulation(tied, eager):
    """Three accumulated micro-batches (one with no trainable token): every `.grad`, the tied
    embedding's included, equals the model's own loss's, and stays dense (the tied embedding's
    backward is sparse for the duration of the forward only). `eager`: the normalisation is given
    to the loss, and a tied head's gradient is added to `.grad` in the forward."""
    model = tiny_causal_lm(tied)
    reference = copy.deepcopy(model)
    parts = decoder_and_head(model)
    ids = torch.randint(0, VOCAB, (3, 2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :, :4] = IGNORE_INDEX
    labels[1] = IGNORE_INDEX  # a micro-batch with nothing to train: zero head gradient, still dense
    for micro in range(3):
        batch = {"input_ids": ids[micro], "labels": labels[micro]}
        if eager:
            loss, _, _ = trainable_token_loss(model, parts, batch, 5, scale=torch.tensor(1 / 20), eager=True)
            loss.backward()
        else:
            loss_sum, _, _ = trainable_token_loss(model, parts, batch, 5)
            (loss_sum / 20).backward()
        own = reference(input_ids=ids[micro], labels=labels[micro]).logits.float()
        sums = torch.nn.functional.cross_entropy(own[:, :-1].reshape(-1, VOCAB), labels[micro][:, 1:].reshape(-1),
                                                 reduction="sum", ignore_index=IGNORE_INDEX)
        (sums / 20).backward()
    embedding = model.get_input_embeddings()
    assert (embedding.weight is model.lm_head.weight) is tied
    assert not embedding.sparse and embedding.weight.grad.layout == torch.strided
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_tied_head_backward_allocates_no_second_weight_sized_gradient():
    """The tied head's backward: no weight-sized tensor besides `.grad` itself (the dense embedding
    gradient and autograd's sum of the two were 2 x vocabulary x hidden at a 150k vocabulary)."""
    from torch.profiler import ProfilerActivity, profile

    model = tiny_causal_lm(tied=True)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    loss_sum, _, _ = trainable_token_loss(model, decoder_and_head(model), {"input_ids": ids, "labels": ids}, 8)
    weight_bytes = model.lm_head.weight.numel() * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss_sum.backward()
    allocated = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage >= weight_bytes]
    assert allocated == [], allocated
    assert model.lm_head.weight.grad is not None


def test_eager_head_gradient_needs_no_buffer_and_refuses_a_rescaled_backward():
    """Eager: a second micro-batch adds its head gradient into `.grad` with no weight-sized tensor
    of its own (forward or backward); a backward that brings anything but 1 is an error, not a
    silently wrong gradient."""
    from torch.profiler import ProfilerActivity, profile

    model = tiny_causal_lm(tied=True)
    parts = decoder_and_head(model)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    batch, scale = {"input_ids": ids, "labels": ids}, torch.tensor(0.25)
    trainable_token_loss(model, parts, batch, 8, scale=scale, eager=True)[0].backward()
    weight_bytes = model.lm_head.weight.numel() * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainable_token_loss(model, parts, batch, 8, scale=scale, eager=True)[0].backward()
    assert [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage >= weight_bytes] == []
    loss, _, _ = trainable_token_loss(model, parts, batch, 8, scale=scale, eager=True)
    with pytest.raises(RuntimeError, match="brought 2.0, not 1"):
        (loss * 2).backward()


def test_sparse_tied_embedding_only_where_it_is_exact():
    """Tied, trainable, with gradients, not compiled (a compiled graph would trace the sparse backward),
    through wrappers such as DDP's `.module`; untied embeddings never (their `.grad` would be sparse)."""
    tied, untied = tiny_causal_lm(tied=True), tiny_causal_lm(tied=False)

    def active(model, head):
        with sparse_tied_embedding(model, head) as on:
            return on and model.get_input_embeddings().sparse if hasattr(model, "get_input_embeddings") else on

    wrapper = torch.nn.Module()
    wrapper.module = tied
    assert active(tied, tied.lm_head) and active(wrapper, tied.lm_head)
    assert not tied.get_input_embeddings().sparse  # restored
    assert not active(untied, untied.lm_head)
    assert not active(torch.compile(tied), tied.lm_head)
    with torch.no_grad():
        assert not active(tied, tied.lm_head)
    tied.lm_head.weight.requires_grad_(False)
    assert not active(tied, tied.lm_head)
