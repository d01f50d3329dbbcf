"""`SFTTrainer`: a thin `transformers.Trainer` whose loss only looks at trainable tokens.

A causal LM's own loss projects *every* position onto the vocabulary, including the prompt and
the padding, then throws most of it away. With a 50k vocabulary and half of each row masked,
that projection is most of the step. `compute_loss` here:

1. runs the decoder through the (possibly DDP-wrapped) model with `logits_to_keep=1`, so the
   model's own head computes one position, and captures the final hidden states with a forward
   hook on the decoder;
2. gathers the hidden states whose *next* token is trainable (the shift the model would do);
3. projects them in chunks with a fused linear + cross-entropy that computes the gradients of
   each chunk immediately, so `[tokens, vocab]` logits never exist at once.

The sum is divided by `num_items_in_batch`, the trainable-token count of the whole optimizer
step across accumulation steps and devices (the Trainer gathers it), so batch 8 x accumulation 1
and batch 2 x accumulation 4 give the same loss and gradients. Models whose head is not a plain
`nn.Linear`, or that post-process logits (soft-capping, scaling), use the model's own loss.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .mask import IGNORE_INDEX


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T + bias, targets)), chunk by chunk.

    Gradients are computed in the forward pass (softmax - one_hot is known there), so backward
    only scales them: memory is one chunk of logits, compute is the same three matmuls as usual.
    Logits are upcast to fp32 like the transformers loss. Returns (loss_sum, correct_count).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_size: int):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = nn.functional.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == t).sum()
            if needs_grad:
                grad_logits = torch.exp(logits - lse[:, None])  # softmax, in place of the logits
                grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
                grad_hidden[start:start + chunk_size] = (grad_logits.to(weight.dtype) @ weight).to(h.dtype)
                grad_weight += grad_logits.T @ h.float()
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.float()
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
            (grad_weight * scale).to(ctx.weight_dtype) if grad_weight is not None else None,
            (grad_bias * scale) if grad_bias is not None else None,
            None,
            None,
        )


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder stack and LM head of a plain causal LM, or None if the fast loss can't apply."""
    inner = model
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    config = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = getattr(inner, "base_model", None)
    if config is None or type(head) is not nn.Linear or decoder is None or decoder is inner:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) \
            or getattr(config, "logits_scaling", None):
        return None
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return None
    return decoder, head


class SFTTrainer(Trainer):
    """Trainer with the trainable-token loss; `loss_chunk_size=0` keeps the model's own loss."""

    def __init__(self, *args: Any, loss_chunk_size: int = 1024, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        self._parts = decoder_and_head(self.model) if loss_chunk_size else None
        if self._parts is not None:
            # We normalise by `num_items_in_batch` ourselves, so ask the Trainer to count it.
            self.model_accepts_loss_kwargs = True
        self.eval_correct = 0
        self.eval_targets = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._parts is None or (return_outputs and not self.args.prediction_loss_only):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss_sum, correct, count = self.trainable_token_loss(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else count
        loss = loss_sum / torch.clamp(torch.as_tensor(denominator, device=loss_sum.device), min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # DDP averages gradients over processes; the token count is already global.
            loss = loss * self.accelerator.num_processes
        if not model.training:
            self.eval_correct += int(correct)
            self.eval_targets += int(count)
        return (loss, {"loss": loss}) if return_outputs else loss

    def trainable_token_loss(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor, int]:
        decoder, head = self._parts  # type: ignore[misc]
        labels = inputs["labels"]
        captured: dict[str, torch.Tensor] = {}

        def grab(_module, _args, output):
            captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

        handle = decoder.register_forward_hook(grab)
        try:
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            model(**model_inputs, logits_to_keep=1, use_cache=False)
        finally:
            handle.remove()
        hidden = captured["hidden"]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]
        loss_sum, correct = ChunkedLinearCrossEntropy.apply(
            selected, head.weight, head.bias, targets[keep], self.loss_chunk_size
        )
        return loss_sum, correct, int(keep.sum())

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """Adds perplexity and next-token accuracy on trainable tokens to the eval metrics
        (before they are logged, so every logger and callback sees them)."""
        self.eval_correct = self.eval_targets = 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        prefix = metric_key_prefix
        loss = output.metrics.get(f"{prefix}_loss")
        if loss is not None:
            output.metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
        counts = torch.tensor([self.eval_correct, self.eval_targets], device=self.args.device)
        correct, targets = self.accelerator.gather(counts[None]).sum(0).tolist()
        if targets:
            output.metrics[f"{prefix}_token_accuracy"] = correct / targets
        return output
