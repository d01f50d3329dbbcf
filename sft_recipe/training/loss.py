"""Which loss a run computes, and why: one decision per trainer, and the evaluation's running sums.

Three paths (the kernels are in `model/chunked_loss.py`):
- `chunked`: the trainable-token loss: the decoder's hidden states at trainable positions only,
  projected chunk by chunk (`trainable_token_loss`);
- `inside_head`: the same loss computed inside the head's forward, where FSDP2 or ZeRO-3 has
  gathered the head's weight (`head_trainable_token_loss`);
- `own`: the model's own loss, when `loss_chunk_size` is 0 or the model's head is not a plain
  linear layer whose output is the logits.
`LossPath.reason` says why the path was chosen; the trainer logs it once.

Evaluation sums (`EvalCounts`) are explicit state that the trainer's prediction step adds to and
its evaluation loop reads, so `eval_loss` is the mean over every held-out trainable token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.chunked_loss import decoder_and_head, head_trainable_token_loss, trainable_token_loss

CHUNKED, INSIDE_HEAD, OWN = "chunked", "inside_head", "own"


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


class LossPath:
    """The loss a model is trained and evaluated with; see the module docstring."""

    def __init__(self, model: nn.Module, chunk_size: int, sharded: bool) -> None:
        self.chunk_size = chunk_size
        self.parts = decoder_and_head(model) if chunk_size else None
        if not chunk_size:
            self.kind, self.reason = OWN, "loss_chunk_size is 0: the model's own loss"
        elif self.parts is None:
            self.kind = OWN
            self.reason = (f"{type(model).__name__} has no plain linear head whose output is the logits "
                           f"(soft-capping, logit scaling or a custom head): the model's own loss")
        elif sharded:
            self.kind, self.reason = INSIDE_HEAD, "sharded parameters: the trainable-token loss inside the head"
        else:
            self.kind, self.reason = CHUNKED, f"the trainable-token loss, {chunk_size} tokens per head chunk"

    @property
    def own(self) -> bool:
        return self.kind == OWN

    def sums(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss sum, correct next-token count, trainable-token count) of one micro-batch."""
        if self.kind == INSIDE_HEAD:
            return head_trainable_token_loss(model, self.parts[1], inputs, self.chunk_size)  # type: ignore[index]
        return trainable_token_loss(model, self.parts, inputs, self.chunk_size)  # type: ignore[arg-type]
