"""The chunked linear + cross-entropy kernel, in pure torch: no Trainer, no datasets, no model.

`[tokens, vocab]` logits never exist at once: the head's projection, its softmax and its gradients
are computed one chunk of tokens at a time, in the forward pass. `head_loss.py` wires it into a
causal LM (which positions, which weight, where the head's gradient goes).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T + bias, targets)) x `scale`, chunk by chunk.

    Gradients are computed in the forward pass (softmax - one_hot is known there), so backward
    only scales them: memory is one chunk of logits, compute is the same three matmuls as usual.
    Logits are upcast to fp32 like the transformers loss. Returns (loss, correct_count); the count
    (next-token accuracy) is only computed without gradients, i.e. in evaluation.

    `scale` (a 0-d tensor, or None for 1) is the training loss's normalisation (1 / trainable
    tokens of the step): folded into the softmax's row factor, it costs nothing. With `into_grad`
    (a tied head, see `sparse_tied_embedding`) the head's gradient goes to the weight's `.grad`:
    - `eager`: in this forward, added chunk by chunk into `.grad` when a previous micro-batch made
      one, so the head needs no gradient buffer of its own (nor the fresh memory for one, nor a
      pass to add it). Only where the caller knows backward brings exactly 1 (a plain
      `loss.backward()` of the normalised loss, `scale` given, fp32 weights); backward checks it;
    - otherwise in backward, scaled by what backward brings.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_size: int, into_grad: bool = False,
                scale: torch.Tensor | None = None, eager: bool = False):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        # The scale (~1 / tokens) goes into the gradients here only where their matmuls keep fp32's
        # exponent range: in fp16 small probabilities x 1e-5 would flush to zero, so there the
        # gradients are scaled in backward, after the matmuls, as without a scale.
        device = hidden.device.type
        fp16 = torch.float16 in (hidden.dtype, weight.dtype) or (
            torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16)
        fold = scale if not fp16 else None
        eager = eager and into_grad and ctx.needs_input_grad[1] and fold is not None and weight.dtype == torch.float32
        # The head gradient accumulates in fp32 (bf16 sums over thousands of tokens lose the small
        # contributions). The first chunk's product creates it, so there is no weight-sized zero
        # fill; a frozen head (LoRA) needs neither the buffer nor the matmul that fills it.
        grad_weight: torch.Tensor | None = weight.grad if eager else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        # fp32 outside autocast: every chunk's logits go into one buffer. A fresh chunk-sized tensor
        # is fresh memory from the system each time (glibc maps blocks this large anew), and faulting
        # its pages in made the logits matmul ~20% slower on the CPU.
        reuse = hidden.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(device)
        # Chunks of equal size, at most `chunk_size`: a short last chunk would still cost a whole pass
        # over the head's gradient for a few tokens (280 tokens as 256 + 24 took 9% longer than one chunk).
        chunks = max(1, math.ceil(hidden.shape[0] / chunk_size))
        chunk_size = max(1, math.ceil(hidden.shape[0] / chunks))
        buffer = hidden.new_empty((min(chunk_size, hidden.shape[0]), weight.shape[0])) if reuse else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = linear_into(buffer, h, weight, bias)
            target_logits = logits.gather(1, t[:, None]).squeeze(1)
            if not needs_grad:  # accuracy is an eval metric; training skips the extra pass
                correct += (logits.argmax(dim=-1) == t).sum()
            # log-sum-exp and softmax in place, in the one chunk-sized buffer (torch.logsumexp
            # would allocate a second one): probs = exp(logits - max) / sum.
            maxes = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(maxes).exp_()
            sums = probs.sum(dim=-1, keepdim=True)
            loss += (maxes.squeeze(1) + sums.squeeze(1).log() - target_logits).sum()
            if needs_grad:  # d(loss)/d(logits) = (softmax - one_hot) x the folded scale
                if fold is None:
                    probs.div_(sums)
                    probs[torch.arange(len(t), device=t.device), t] -= 1.0
                else:
                    probs.mul_(fold / sums)
                    probs[torch.arange(len(t), device=t.device), t] -= fold
                grad_hidden[start:start + chunk_size] = (probs.to(weight.dtype) @ weight).to(h.dtype)
                if ctx.needs_input_grad[1]:
                    grad_weight = accumulate_matmul(grad_weight, probs.T, h)
                    if eager and weight.grad is None:
                        weight.grad = grad_weight
                if grad_bias is not None:
                    grad_bias += probs.sum(0)
            # Without the shared buffer, free this chunk's logits before the next chunk allocates its
            # own: one chunk-sized buffer alive at a time.
            del logits, probs
        if grad_weight is None and ctx.needs_input_grad[1]:  # no trainable token; DDP still waits for a gradient
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            if eager:
                weight.grad = grad_weight
        ctx.weight_dtype = weight.dtype
        ctx.eager = eager
        ctx.unfolded = scale if fold is None else None  # a scale the gradients still need
        ctx.into = weight if into_grad and grad_weight is not None and not eager else None
        # Kept on ctx, not with save_for_backward: backward hands each buffer on as the only reference.
        # A saved tensor is still referenced when autograd receives the gradient, so autograd would
        # copy it (a second weight-sized tensor), e.g. to add a tied embedding's gradient to it.
        ctx.gradients = (grad_hidden, None if eager else grad_weight, grad_bias)
        ctx.mark_non_differentiable(correct)
        return (loss if scale is None else loss * scale), correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.gradients
        del ctx.gradients
        scale = grad_loss.float() if ctx.unfolded is None else grad_loss.float() * ctx.unfolded
        # On the CPU a check is free: a gradient of exactly 1 (the normalised loss's own) needs no pass.
        unit = scale.device.type == "cpu" and float(scale) == 1.0
        if ctx.eager and not unit:  # the head's part is already in `.grad`: only 1 keeps it right
            if scale.device.type == "cpu":
                raise RuntimeError(f"the chunked loss added the head's gradient to .grad in its forward, but "
                                   f"backward brought {float(scale)}, not 1: the loss was rescaled after it")
            # private (checked on torch 2.13.0): the only check that stays on the device (no sync per step)
            torch._assert_async(scale == 1.0, "the chunked loss's eager head gradient needs a backward of 1")
        # In place: the buffers are ours and used once, so no second weight-sized copy.
        if grad_weight is not None:
            grad_weight = (grad_weight if unit else grad_weight.mul_(scale)).to(ctx.weight_dtype)
        if ctx.into is not None:  # tied: straight into `.grad`; the embedding's gradient follows (see above)
            param, ctx.into = ctx.into, None
            if param.grad is None:
                param.grad = grad_weight
            else:
                param.grad.add_(grad_weight)
            grad_weight = None
        if not unit:
            grad_hidden = grad_hidden.mul_(scale.to(grad_hidden.dtype)) if grad_hidden is not None else None
            grad_bias = grad_bias.mul_(scale) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def linear_into(buffer: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits of `h`: written into the first rows of `buffer` when there is one, else a new
    tensor (under autocast the product is bf16/fp16, upcast like the transformers loss)."""
    if buffer is None:
        return nn.functional.linear(h, weight, bias).float()  # no copy when already fp32
    out = buffer[:h.shape[0]]
    return torch.mm(h, weight.T, out=out) if bias is None else torch.addmm(bias, h, weight.T, out=out)


def accumulate_matmul(out: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out + a @ b in fp32, in place (`out` None: a new fp32 tensor). In fp32 `addmm_` writes into
    `out` with no weight-sized temporary. Under bf16 autocast the product runs in bf16 like the
    model's other matmuls (bf16 has fp32's range). Under fp16 it runs in fp32: it sums a whole chunk
    of tokens and carries no loss scale, so an outlier hidden value could overflow fp16 where the
    loss scaler cannot help (a review reproduced it with one hidden value of 300)."""
    device = a.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
        product = a.to(torch.bfloat16) @ b.to(torch.bfloat16)
        return product.float() if out is None else out.add_(product)
    with torch.autocast(device, enabled=False):
        if out is None:
            return a.float() @ b.float()
        return out.addmm_(a.to(out.dtype), b.to(out.dtype))
