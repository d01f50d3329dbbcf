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
    Logits are upcast to fp32 like the transformers loss. Returns (loss_sum, correct_count);
    the count (next-token accuracy) is only computed without gradients, i.e. in evaluation.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_size: int):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        # The head gradient accumulates in fp32 (bf16 sums over thousands of tokens lose the small
        # contributions). The first chunk's product creates it, so there is no weight-sized zero
        # fill; a frozen head (LoRA) needs neither the buffer nor the matmul that fills it.
        grad_weight: torch.Tensor | None = None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = nn.functional.linear(h, weight, bias).float()  # no copy when already fp32
            target_logits = logits.gather(1, t[:, None]).squeeze(1)
            if not needs_grad:  # accuracy is an eval metric; training skips the extra pass
                correct += (logits.argmax(dim=-1) == t).sum()
            # log-sum-exp and softmax in place, in the one chunk-sized buffer (torch.logsumexp
            # would allocate a second one): probs = exp(logits - max) / sum.
            maxes = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(maxes).exp_()
            sums = probs.sum(dim=-1, keepdim=True)
            loss += (maxes.squeeze(1) + sums.squeeze(1).log() - target_logits).sum()
            if needs_grad:
                probs.div_(sums)
                probs[torch.arange(len(t), device=t.device), t] -= 1.0  # d(loss)/d(logits)
                grad_hidden[start:start + chunk_size] = (probs.to(weight.dtype) @ weight).to(h.dtype)
                if ctx.needs_input_grad[1]:
                    grad_weight = accumulate_matmul(grad_weight, probs.T, h)
                if grad_bias is not None:
                    grad_bias += probs.sum(0)
            # Free this chunk's logits before the next chunk allocates its own: one chunk-sized
            # buffer alive at a time, and the allocator can hand the same block straight back.
            del logits, probs
        if grad_weight is None and ctx.needs_input_grad[1]:  # no trainable token; DDP still waits for a gradient
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.float()
        # In place: the buffers are ours and used once, so no second weight-sized copy.
        return (
            grad_hidden.mul_(scale.to(grad_hidden.dtype)) if grad_hidden is not None else None,
            grad_weight.mul_(scale).to(ctx.weight_dtype) if grad_weight is not None else None,
            grad_bias.mul_(scale) if grad_bias is not None else None,
            None,
            None,
        )


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

    def __init__(self, *args: Any, loss_chunk_size: int = 1024, train_sample: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        # Count trainable tokens as `labels[:, 1:]`, as both losses here shift: the Trainer decides from
        # the model's `loss_type`, which GPT-2 leaves unset, and would then count one token too many
        # per row of raw text (a loss 1/max_length too low).
        self._loss_shifts_labels = True
        self.train_sample = train_sample  # fixed training rows scored at every eval (train_sample_loss)
        self._loss_only = False  # set per evaluation: no logits wanted, so the chunked loss applies
        self._parts = decoder_and_head(self.model) if loss_chunk_size else None
        if self._parts is not None:
            # We normalise by `num_items_in_batch` ourselves, so ask the Trainer to count it.
            self.model_accepts_loss_kwargs = True
        self.eval_loss_sum = 0.0
        self.eval_correct = 0
        self.eval_targets = 0
        self.trainable_tokens_seen: torch.Tensor | int = 0  # all processes, this session; see `log`

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer counts each optimizer step's trainable tokens (over all processes) to normalise
        the loss; keep a running sum for the throughput logs (a tensor: no device sync per step)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items_in_batch is not None:
            self.trainable_tokens_seen += torch.as_tensor(num_items_in_batch).reshape(-1)[0].detach()
        return batch_samples, num_items_in_batch

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry `trainable_tokens_seen`, next to the Trainer's `num_input_tokens_seen`."""
        if "loss" in logs:
            logs["trainable_tokens_seen"] = int(self.trainable_tokens_seen)
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._parts is None or (return_outputs and not self._loss_only):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss_sum, correct, count = self.trainable_token_loss(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else count
        loss = loss_sum / torch.clamp(torch.as_tensor(denominator, device=loss_sum.device), min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # DDP averages gradients over processes; the token count is already global.
            loss = loss * self.accelerator.num_processes
        if not model.training:
            self.eval_loss_sum += float(loss_sum)
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
        weight, bias = head.weight, head.bias
        if not torch.is_grad_enabled():
            # Evaluation: `needs_input_grad` follows requires_grad, not the grad mode, so detach
            # to skip the gradient buffers (and have the accuracy counted).
            selected, weight = selected.detach(), weight.detach()
            bias = bias.detach() if bias is not None else None
        loss_sum, correct = ChunkedLinearCrossEntropy.apply(selected, weight, bias, targets[keep],
                                                            self.loss_chunk_size)
        return loss_sum, correct, int(keep.sum())

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """Adds perplexity and next-token accuracy on trainable tokens to the eval metrics
        (before they are logged, so every logger and callback sees them), and the same metrics for
        `train_sample` as `train_sample_*`: `eval_loss` stays the validation loss that picks the
        best checkpoint."""
        output = self.scored_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval" and self.train_sample is not None:
            sample = self.scored_loop(self.get_eval_dataloader(self.train_sample), "Train sample", True,
                                      ignore_keys, "train_sample")
            output.metrics.update({k: v for k, v in sample.metrics.items() if "preparation_time" not in k})
            self.callback_handler.eval_dataloader = dataloader
        return output

    def scored_loop(self, dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix: str):
        """One `Trainer.evaluation_loop` plus perplexity and token accuracy. Without compute_metrics
        the Trainer wants the loss only, so `compute_loss` can skip the full logits."""
        self.eval_loss_sum, self.eval_correct, self.eval_targets = 0.0, 0, 0
        loss_only = self.args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        self._loss_only = loss_only
        try:
            output = super().evaluation_loop(dataloader, description, loss_only, ignore_keys, metric_key_prefix)
        finally:
            self._loss_only = False
        prefix = metric_key_prefix
        counts = torch.tensor([self.eval_loss_sum, self.eval_correct, self.eval_targets],
                              dtype=torch.float64, device=self.args.device)
        loss_sum, correct, targets = self.accelerator.gather(counts[None]).sum(0).tolist()
        if targets:
            # The mean over every trainable token of the split, on all processes together. The
            # Trainer's own figure averages per-batch means, which depends on how rows fall into
            # batches and onto processes.
            output.metrics[f"{prefix}_loss"] = loss_sum / targets
            output.metrics[f"{prefix}_token_accuracy"] = correct / targets
        loss = output.metrics.get(f"{prefix}_loss")
        if loss is not None:
            output.metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
        return output
