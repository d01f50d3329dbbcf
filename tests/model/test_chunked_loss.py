"""The fused chunked linear + cross-entropy (`sft_recipe.model.chunked_loss`) on its own."""

from __future__ import annotations

import torch

from sft_recipe.model import chunked_loss
from sft_recipe.model.chunked_loss import ChunkedLinearCrossEntropy


def test_chunked_cross_entropy_counts_correct_tokens_only_without_grad():
    hidden = torch.randn(6, 4)
    weight = torch.randn(10, 4)
    targets = (hidden @ weight.T).argmax(-1)
    targets[0] = (targets[0] + 1) % 10  # one wrong
    loss, correct = ChunkedLinearCrossEntropy.apply(hidden, weight, None, targets, 4)
    assert int(correct) == 5
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_chunked_cross_entropy_gradients_with_bias():
    """gradcheck in float64: the hand-written gradients are the true ones, bias included."""
    torch.manual_seed(0)
    hidden = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (5,))

    def loss_only(h, w, b):
        # the fp32 accumulators cap precision, so compare against autograd at fp32 tolerance
        return ChunkedLinearCrossEntropy.apply(h, w, b, targets, 2)[0]

    ours = torch.autograd.grad(loss_only(hidden, weight, bias), (hidden, weight, bias))
    reference = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")
    expected = torch.autograd.grad(reference, (hidden, weight, bias))
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_without_trainable_tokens_still_gives_a_head_gradient():
    """A micro-batch whose rows are all masked: loss 0 and a zero head gradient, not None (DDP
    waits for a gradient from every parameter, and an untied head gets none from elsewhere)."""
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(16, 8, requires_grad=True)
    loss, _ = ChunkedLinearCrossEntropy.apply(hidden, weight, None, torch.zeros(0, dtype=torch.long), 4)
    loss.backward()
    assert loss.item() == 0.0
    assert weight.grad is not None and torch.count_nonzero(weight.grad) == 0


def test_a_scale_in_fp16_autocast_is_applied_after_the_matmuls():
    """The loss's normalisation (~1 / tokens) multiplied into the probabilities before fp16 matmuls
    would flush small ones to zero; under fp16 it is applied in backward: the gradients equal the
    unscaled loss times the scale, as closely as fp16 allows."""
    torch.manual_seed(0)
    h0, w0 = torch.randn(64, 32), torch.randn(4000, 32) * 0.02
    t, scale = torch.randint(0, 4000, (64,)), torch.tensor(1 / 131072)

    def grads(given: bool):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            loss, _ = ChunkedLinearCrossEntropy.apply(h, w, None, t, 16, False, scale if given else None)
        (loss if given else loss * scale).backward()
        return h.grad, w.grad

    for given, reference in zip(grads(True), grads(False)):
        torch.testing.assert_close(given, reference, rtol=1e-3, atol=0)


def test_chunks_are_equal_so_a_short_last_one_costs_no_pass_over_the_head_gradient(monkeypatch):
    """280 tokens at 256 per chunk: two chunks of 140, not 256 + 24; the loss is the same either way."""
    widths = []
    original = chunked_loss.linear_into

    def spy(buffer, h, weight, bias):
        widths.append(h.shape[0])
        return original(buffer, h, weight, bias)

    monkeypatch.setattr(chunked_loss, "linear_into", spy)
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(280, 8), torch.randn(50, 8), torch.randint(0, 50, (280,))
    loss, _ = chunked_loss.ChunkedLinearCrossEntropy.apply(hidden, weight, None, targets, 256)
    assert widths == [140, 140]
    reference = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    torch.testing.assert_close(loss, reference)


def test_an_outlier_hidden_value_does_not_overflow_the_head_gradient_in_fp16():
    """Under fp16 autocast the head's gradient sums a chunk's tokens without the loss scale: done in
    fp16, 256 tokens with a hidden value of 300 overflowed to inf at any loss scale (review); in fp32
    it equals the model's own cross-entropy gradient."""
    hidden = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    hidden[:, 0] = 300.0
    weight = torch.zeros(32, 16)
    weight[0, 0] = -0.005
    targets = torch.zeros(256, dtype=torch.long)

    def head_grad(chunked: bool) -> torch.Tensor:
        w = weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            if chunked:
                loss, _ = ChunkedLinearCrossEntropy.apply(hidden, w, None, targets, 256, False, torch.tensor(1 / 256))
            else:
                logits = torch.nn.functional.linear(hidden, w).float()
                loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / 256
        loss.backward()
        return w.grad

    grad = head_grad(True)
    assert grad.isfinite().all()
    torch.testing.assert_close(grad, head_grad(False), rtol=2e-2, atol=1e-3)
