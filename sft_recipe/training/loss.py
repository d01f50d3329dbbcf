"""Which loss a run computes, and why: one decision per trainer, and the evaluation's running sums.

Three paths (the kernel is `model/chunked_loss.py`, its wiring into a model `model/head_loss.py`):
- `chunked`: the trainable-token loss: the decoder's hidden states at trainable positions only,
  projected chunk by chunk (`trainable_token_loss`);
- `inside_head`: the same loss computed inside the head's forward, where FSDP2 or ZeRO-3 has
  gathered the head's weight (`head_trainable_token_loss`);
- `own`: the model's own loss, when `loss_chunk_size` is 0, when the model's head is not a plain
  linear layer, or when `verify` finds that the fast loss differs from the model's own logits on a
  real batch (soft-capping, logit scaling, a multiplier or norm after the head: whatever the
  architecture does, the check sees it);
- `logits`: the shifted cross-entropy of the model's full logits, where `verify` finds that the
  model's own loss is something else (a decoder that does not shift its labels).
`LossPath.reason` says why the path was chosen; the trainer logs it once.

Whatever the path, evaluation scores the same thing: the cross-entropy of the model's next-token
prediction at every trainable position, summed into `EvalCounts` (explicit state that the
trainer's prediction step adds to and its evaluation loop reads), so `eval_loss` is the mean over
every held-out trainable token and `eval_token_accuracy` is always there. A mixture-of-experts
router's load-balancing loss (`output_router_logits` in the model's config) is added to the
training loss as the model's own loss adds it, and logged as `aux_loss`; it is not part of
`eval_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.mask import IGNORE_INDEX
from ..model.chunked_loss import ChunkedLinearCrossEntropy
from ..model.head_loss import decoder_and_head, head_trainable_token_loss, trainable_token_loss

CHUNKED, INSIDE_HEAD, OWN, LOGITS = "chunked", "inside_head", "own", "logits"
# The fast loss and the model's own logits agree to float rounding where the head is a plain
# linear layer (about 1e-7 in fp32); any transformation of the logits shows far above this.
VERIFY_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
HALF_TOLERANCE = 5e-3


@dataclass
class EvalCounts:
    """Sums over one evaluation's trainable tokens on this process (gathered by the trainer)."""

    loss_sum: float = 0.0
    correct: int = 0
    targets: int = 0

    def add(self, loss_sum: torch.Tensor | float, correct: torch.Tensor | int, targets: int) -> None:
        self.loss_sum += float(loss_sum)
        self.correct += int(correct)
        self.targets += int(targets)

    def as_tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.loss_sum, self.correct, self.targets], dtype=torch.float64, device=device)


def logits_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(cross-entropy sum, correct count, count) of next-token predictions at trainable positions,
    from full logits, in fp32 (as the transformers loss upcasts)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = logits[:, :-1][keep].float()
    wanted = targets[keep]
    loss_sum = F.cross_entropy(selected, wanted, reduction="sum")
    correct = (selected.argmax(-1) == wanted).sum()
    return loss_sum, correct, int(keep.sum())


def router_aux_loss(model: nn.Module, aux_loss: Any) -> torch.Tensor | None:
    """coef x the router's load-balancing loss, when the model's config asks for it. The coefficient's
    name varies (`router_aux_loss_coef`, JetMoE's `aux_loss_coef`); `LossPath.verify` compares the
    sum with the model's own loss, so a name not known here falls back to the model's own loss."""
    config = getattr(model, "config", None)
    if aux_loss is None or not getattr(config, "output_router_logits", False):
        return None
    coef = next((getattr(config, n) for n in ("router_aux_loss_coef", "aux_loss_coef") if hasattr(config, n)), 0.0)
    return coef * aux_loss


class LossPath:
    def __init__(self, model: nn.Module, chunk_size: int, sharded: bool) -> None:
        self.chunk_size = chunk_size
        self.parts = decoder_and_head(model) if chunk_size else None
        if not chunk_size:
            self.kind, self.reason = OWN, "loss_chunk_size is 0: the model's own loss"
        elif self.parts is None:
            self.kind, self.reason = OWN, (f"{type(model).__name__} has no plain linear head whose output is the "
                                           f"logits (soft-capping, logit scaling or a custom head): the model's own "
                                           f"loss")
        elif sharded:
            self.kind, self.reason = INSIDE_HEAD, "sharded parameters: the trainable-token loss inside the head"
        else:
            self.kind, self.reason = CHUNKED, f"the trainable-token loss, {chunk_size} tokens per head chunk"

    @property
    def own(self) -> bool:
        return self.kind == OWN

    def sums(self, model: nn.Module, inputs: dict[str, torch.Tensor], extras: dict[str, Any] | None = None,
             scale: torch.Tensor | None = None, eager: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One micro-batch's sums on this path, as `head_loss.trainable_token_loss` returns them."""
        parts: Any = self.parts  # set for these two kinds
        if self.kind == CHUNKED:
            return trainable_token_loss(model, parts, inputs, self.chunk_size, extras, scale, eager)
        if self.kind == INSIDE_HEAD:
            loss, correct, count = head_trainable_token_loss(model, parts[1], inputs, self.chunk_size, extras)
        else:
            output = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            if extras is not None:
                extras["aux_loss"] = getattr(output, "aux_loss", None)
            loss, correct, count = logits_sums(output.logits, inputs["labels"])
        return (loss if scale is None else loss * scale), correct, count

    def switch(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason
        if kind != CHUNKED and kind != INSIDE_HEAD:
            self.parts = None

    @torch.no_grad()
    def verify(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> float | None:
        """One forward pass on real rows: the fast loss must equal the cross-entropy of the model's
        own logits, and the model's own loss must be that cross-entropy (plus its router loss).
        Where the first fails, the model's own loss is used; where the second fails, the
        cross-entropy of its logits (TrOCR does not shift its labels). Returns the largest relative
        difference, or None when there was nothing to check."""
        labels = inputs["labels"]
        if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            return None
        captured: dict[str, torch.Tensor] = {}

        def grab(_module, _args, output):
            hidden = output if isinstance(output, torch.Tensor) else output[0] if isinstance(output, tuple) \
                else getattr(output, "last_hidden_state", None)
            if isinstance(hidden, torch.Tensor):
                captured["hidden"] = hidden

        handle = self.parts[0].register_forward_hook(grab) if self.parts is not None else None
        was_training = model.training
        model.eval()
        try:
            try:
                output = model(**inputs, use_cache=False)  # with labels: the model's own loss, router loss included
            except Exception:  # the model's own loss cannot run here (GIT wants images): judge by the logits
                captured.clear()
                output = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        finally:
            if handle is not None:
                handle.remove()
            model.train(was_training)
        own, _, count = logits_sums(output.logits, labels)
        name = type(model).__name__
        differences = [0.0]
        if self.kind == CHUNKED:
            hidden = captured.get("hidden")
            head = self.parts[1]  # type: ignore[index]
            if hidden is None or hidden.shape[:2] != labels.shape or hidden.shape[-1] != head.in_features:
                self.switch(OWN, f"{name}'s hidden states before the head cannot be captured: the model's own loss")
            else:
                keep = labels[:, 1:] != IGNORE_INDEX
                bias = head.bias.detach() if head.bias is not None else None
                fast, _ = ChunkedLinearCrossEntropy.apply(hidden[:, :-1][keep].detach(), head.weight.detach(), bias,
                                                          labels[:, 1:][keep], self.chunk_size)
                differences.append(relative(float(fast), float(own)))
                if not differences[-1] <= tolerance(output.logits):
                    self.switch(OWN, f"the trainable-token loss differs from {name}'s own logits by "
                                     f"{differences[-1]:.1e} (relative) on {count} evaluation tokens (the head does "
                                     f"more than a linear projection): the model's own loss")
        loss = getattr(output, "loss", None)
        if loss is not None:
            aux = router_aux_loss(model, getattr(output, "aux_loss", None))
            differences.append(relative(float(own) / count + (float(aux) if aux is not None else 0.0), float(loss)))
            if not differences[-1] <= tolerance(output.logits):
                if getattr(output, "aux_loss", None) is not None:  # a router coefficient we cannot read
                    self.switch(OWN, f"{name}'s own loss adds a router loss whose coefficient sft-recipe cannot "
                                     f"read: the model's own loss")
                elif self.kind == OWN:
                    self.switch(LOGITS, f"{name}'s own loss is not the shifted cross-entropy of its logits "
                                        f"({differences[-1]:.1e} apart): the cross-entropy of its logits")
        return max(differences)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def tolerance(logits: torch.Tensor) -> float:
    return VERIFY_TOLERANCE.get(logits.dtype, HALF_TOLERANCE)
