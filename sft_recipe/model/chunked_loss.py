"""The trainable-token loss, in pure torch: no Trainer, no datasets.

A causal LM's own loss projects *every* position onto the vocabulary, including the prompt and
the padding, then throws most of it away. With a 50k vocabulary and half of each row masked,
that projection is most of the step. `trainable_token_loss`:

1. runs the decoder through the (possibly DDP-wrapped) model with `logits_to_keep=1`, so the
   model's own head computes one position, and captures the final hidden states with a forward
   hook on the decoder;
2. gathers the hidden states whose *next* token is trainable (the shift the model would do);
3. projects them in chunks with a fused linear + cross-entropy that computes the gradients of
   each chunk immediately, so `[tokens, vocab]` logits never exist at once;
4. where the head shares its weight with the input embeddings (tied), writes the head's gradient
   into `.grad` and has the embedding's backward add sparse rows to it (`sparse_tied_embedding`):
   no second vocabulary x hidden gradient exists (0.54 GB at Qwen2.5's head).

It returns the *sum* over trainable tokens; the caller (`trainer.SFTTrainer`) divides by the
trainable-token count of the whole optimizer step.

Under sharded training (FSDP2, ZeRO-3) the head's weight only exists whole *during the head's own
forward*: after it, FSDP2 holds a DTensor shard (`F.linear` of a tensor with it raises "mixed
torch.Tensor and DTensor") and ZeRO-3 an empty placeholder. `head_trainable_token_loss` therefore
computes the same chunked loss inside the head's forward (`loss_inside_head`) and returns it as the
head's output, so backward also passes the wrapper's output hooks that re-gather parameters. The
post-forward path stays for unsharded models: it is what single-process and DDP runs have always
used. Models whose head is not a plain `nn.Linear`, or that post-process logits (soft-capping,
scaling), are refused by `decoder_and_head` and use the model's own loss.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
from torch import nn

from ..data.mask import IGNORE_INDEX


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
        eager = eager and into_grad and ctx.needs_input_grad[1] and scale is not None \
            and weight.dtype == torch.float32
        # The head gradient accumulates in fp32 (bf16 sums over thousands of tokens lose the small
        # contributions). The first chunk's product creates it, so there is no weight-sized zero
        # fill; a frozen head (LoRA) needs neither the buffer nor the matmul that fills it.
        grad_weight: torch.Tensor | None = weight.grad if eager else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        # fp32 outside autocast: every chunk's logits go into one buffer. A fresh chunk-sized tensor
        # is fresh memory from the system each time (glibc maps blocks this large anew), and faulting
        # its pages in made the logits matmul ~20% slower on the CPU.
        reuse = hidden.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type)
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
            if needs_grad:  # d(loss)/d(logits) = (softmax - one_hot) x scale
                probs.div_(sums) if scale is None else probs.mul_(scale / sums)
                probs[torch.arange(len(t), device=t.device), t] -= 1.0 if scale is None else scale
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
        scale = grad_loss.float()
        # On the CPU a check is free: a gradient of exactly 1 (the normalised loss's own) needs no pass.
        unit = scale.device.type == "cpu" and float(scale) == 1.0
        if ctx.eager and not unit:  # the head's part is already in `.grad`: only 1 keeps it right
            if scale.device.type == "cpu":
                raise RuntimeError(f"the chunked loss added the head's gradient to .grad in its forward, but "
                                   f"backward brought {float(scale)}, not 1: the loss was rescaled after it")
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
    """out + a @ b in fp32, in place (`out` None: a new fp32 tensor). In fp32 (CPU) `addmm_` writes
    into `out` with no weight-sized temporary; under GPU autocast the product runs in bf16/fp16
    like the model's other matmuls (an in-place `addmm_` is not autocast and would fall back to fp32)."""
    device = a.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != torch.float32:
        dtype = torch.get_autocast_dtype(device)
        product = a.to(dtype) @ b.to(dtype)
        return product.float() if out is None else out.add_(product)
    if out is None:
        return a.float() @ b.float()
    return out.addmm_(a, b.to(out.dtype))


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder stack and LM head of a plain causal LM, or None if the fast loss can't apply."""
    inner = model
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    config = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    # The module whose output the head reads: `get_decoder` where the model names it (OPT runs its
    # decoder, not its base model), else the base model. `training.loss.LossPath.verify` checks it.
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is head or not isinstance(decoder, nn.Module):  # ModernBERT: `decoder` is its head
        decoder = getattr(inner, "base_model", None)
    if config is None or type(head) is not nn.Linear or decoder is None or decoder is inner:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) \
            or getattr(config, "logits_scaling", None):
        return None
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return None
    return decoder, head


def trainable_token_loss(model: nn.Module, parts: tuple[nn.Module, nn.Linear], inputs: dict[str, torch.Tensor],
                         chunk_size: int, extras: dict[str, Any] | None = None, scale: torch.Tensor | None = None,
                         eager: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss sum x `scale`, correct next-token count, trainable-token count) of one micro-batch; see
    the module docstring. `parts` is `decoder_and_head(model)`. `extras` receives the model output's
    `aux_loss` (a mixture-of-experts router's load-balancing loss), when it has one. `eager`: the
    caller's backward brings exactly 1 to the loss (see `ChunkedLinearCrossEntropy`)."""
    decoder, head = parts
    labels = inputs["labels"]
    captured: dict[str, torch.Tensor] = {}

    def grab(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(grab)
    try:
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with sparse_tied_embedding(model, head) as into_grad:
            output = model(**model_inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if extras is not None:
        extras["aux_loss"] = getattr(output, "aux_loss", None)
    hidden = captured["hidden"]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]
    weight, bias = head.weight, head.bias
    if not torch.is_grad_enabled():
        # Evaluation: `needs_input_grad` follows requires_grad, not the grad mode, so detach
        # to skip the gradient buffers (and have the accuracy counted).
        selected, weight = selected.detach(), weight.detach()
        bias = bias.detach() if bias is not None else None
    loss, correct = ChunkedLinearCrossEntropy.apply(selected, weight, bias, targets[keep], chunk_size, into_grad,
                                                    scale, eager)
    return loss, correct, int(keep.sum())


@contextlib.contextmanager
def sparse_tied_embedding(model: nn.Module, head: nn.Linear) -> Iterator[bool]:
    """While active, a tied input embedding's backward yields a sparse gradient (rows of the tokens
    seen) instead of a dense vocabulary x hidden one; yields whether it is active.

    When it is, the chunked loss writes the head's dense gradient straight into the weight's `.grad`
    in its backward (`into_grad`), which runs before the embedding's (the embedding is the first
    layer), and autograd then adds the sparse rows into that `.grad` in place. `.grad`, DDP's hook
    (it fires once, when the embedding's part arrives) and the optimizer see the same dense gradient
    as before, without the two extra weight-sized tensors of the usual path: the dense embedding
    gradient, and autograd's out-of-place sum of the two (0.54 GB each at Qwen2.5's head). Untied
    embeddings keep the dense backward (a sparse `.grad` would reach the optimizer); so do frozen
    ones, compiled models, DeepSpeed engines, deterministic GPU runs and evaluation. A caller of
    `torch.autograd.grad` would not see the head's part (it goes to `.grad`): only the trainer's
    training loss takes this path."""
    inner, compiled = model, False
    for _ in range(4):  # DDP's `.module`, torch.compile's `._orig_mod`, peft's base model, in any order
        # A DeepSpeed engine keeps gradients in its own buffers, from its own hooks: left as it is.
        compiled |= hasattr(inner, "_orig_mod") or getattr(inner, "_compiled_call_impl", None) is not None \
            or type(inner).__name__ == "DeepSpeedEngine"
        inner = getattr(inner, "_orig_mod", None) or getattr(inner, "module", None) or \
            (inner.get_base_model() if hasattr(inner, "get_base_model") else inner)
    get = getattr(inner, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if (compiled or not isinstance(embedding, nn.Embedding) or embedding.weight is not head.weight
            or embedding.sparse or not head.weight.requires_grad or not torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or (torch.are_deterministic_algorithms_enabled() and head.weight.device.type != "cpu")):
        yield False
        return
    embedding.sparse = True
    try:
        yield True
    finally:
        embedding.sparse = False


@contextlib.contextmanager
def loss_inside_head(head: nn.Module, labels: torch.Tensor, chunk_size: int) -> Iterator[dict[str, Any]]:
    """While active, `head(hidden)` (hidden `[batch, seq, dim]`) returns the chunked shifted
    cross-entropy SUM over trainable positions, shaped `[1, 1, 1]`, computed with the weight as the
    head sees it inside its forward (gathered by FSDP2 / ZeRO-3). Yields a dict that receives
    `correct` (counted without grad) and `count` (local trainable tokens).

    Returned as the head's output (not stashed aside) because the sharding wrappers re-gather a unit's
    parameters for backward from hooks on its forward outputs: a loss that bypassed them left a unit
    resharded after forward without its parameters in backward (a segfault, measured on gloo).
    The instance attribute shadows the class's `forward`; `nn.Module.__call__`, and with it the
    wrappers' pre/post-forward hooks, still runs around it."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected_targets = targets[keep]
    result: dict[str, Any] = {"count": int(keep.sum())}
    previous = head.__dict__.get("forward")

    def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if "called" in result:
            raise RuntimeError("the head was called twice inside loss_inside_head")
        result["called"] = True
        if hidden.shape[1] != labels.shape[1]:
            raise RuntimeError(f"the head got {hidden.shape[1]} positions, the labels have {labels.shape[1]}: "
                               "call the model with logits_to_keep=0")
        weight, bias = head.weight, getattr(head, "bias", None)
        selected = hidden[:, :-1][keep]
        if not torch.is_grad_enabled():  # evaluation: no gradient buffers, accuracy counted
            selected, weight = selected.detach(), weight.detach()
            bias = bias.detach() if bias is not None else None
        loss_sum, correct = ChunkedLinearCrossEntropy.apply(selected, weight, bias, selected_targets, chunk_size)
        result["correct"] = correct
        return loss_sum.reshape(1, 1, 1).clone()  # a fresh tensor: FSDP2 hooks no views

    head.forward = forward
    try:
        yield result
    finally:
        if previous is not None:
            head.forward = previous
        else:
            del head.forward


def head_trainable_token_loss(model: nn.Module, head: nn.Module, inputs: dict[str, torch.Tensor],
                              chunk_size: int, extras: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`trainable_token_loss` computed inside `head`'s forward: correct under FSDP2 and ZeRO-3, where
    the head's weight is sharded outside it. Same return value; `model` may be wrapped."""
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with loss_inside_head(head, labels, chunk_size) as result:
        output = model(**model_inputs, logits_to_keep=0, use_cache=False)
    if "called" not in result:
        raise RuntimeError("the model never called its output embeddings")
    packed = output.logits if hasattr(output, "logits") else output[0]
    if packed.numel() != 1:
        raise RuntimeError(f"the model post-processed its head output into shape {tuple(packed.shape)}")
    if extras is not None:
        extras["aux_loss"] = getattr(output, "aux_loss", None)
    return packed.sum(), result["correct"], result["count"]  # the sum of one element: exact, not a view
