"""The trainable-token loss, in pure torch: no Trainer, no datasets.

A causal LM's own loss projects *every* position onto the vocabulary, including the prompt and
the padding, then throws most of it away. With a 50k vocabulary and half of each row masked,
that projection is most of the step. `trainable_token_loss`:

1. runs the decoder through the (possibly DDP-wrapped) model with `logits_to_keep=1`, so the
   model's own head computes one position, and captures the final hidden states with a forward
   hook on the decoder;
2. gathers the hidden states whose *next* token is trainable (the shift the model would do);
3. projects them in chunks with the fused linear + cross-entropy of `chunked_loss.py`, which
   computes the gradients of each chunk immediately, so `[tokens, vocab]` logits never exist at once;
4. where the head shares its weight with the input embeddings (tied), adds the head's gradient
   into `.grad` and has the embedding's backward add sparse rows to it (`sparse_tied_embedding`):
   no second vocabulary x hidden gradient exists (0.54 GB at Qwen2.5's head).

It returns the sum over trainable tokens times the `scale` the caller gives (`trainer.SFTTrainer`:
1 / the trainable-token count of the whole optimizer step).

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
from .chunked_loss import ChunkedLinearCrossEntropy


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder stack and LM head of a plain causal LM, or None if the fast loss can't apply."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    config = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    # The module whose output the head reads: `get_decoder` where the model names it (OPT runs its
    # decoder, not its base model), else the base model. `training.loss.LossPath.verify` checks it.
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is head or not isinstance(decoder, nn.Module):  # ModernBERT: `decoder` is its head
        decoder = getattr(inner, "base_model", None)
    scaled = any(getattr(config, n, None) for n in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if config is None or type(head) is not nn.Linear or decoder is None or decoder is inner or scaled:
        return None
    return (decoder, head) if "logits_to_keep" in inspect.signature(inner.forward).parameters else None


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
        selected, weight, bias = (t.detach() if t is not None else None for t in (selected, weight, bias))
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
        # private (checked on torch 2.13.0): torch.compile's wrapper has no public "is compiled" test
        compiled |= hasattr(inner, "_orig_mod") or getattr(inner, "_compiled_call_impl", None) is not None \
            or type(inner).__name__ == "DeepSpeedEngine"
        # private (checked on torch 2.13.0): the compiled wrapper's module; same reason as above
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
            selected, weight, bias = (t.detach() if t is not None else None for t in (selected, weight, bias))
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


def head_trainable_token_loss(model: nn.Module, head: nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int,
                              extras: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
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
