"""Which rows go into which micro-batch.

The gradient of an optimizer step is the sum over its rows divided by the step's trainable tokens
(`trainer.compute_loss`), so how the step's rows are split into micro-batches (and devices) changes
the arithmetic's rounding, never the step. `StepBalancedSampler` keeps the random order at the
level of optimizer steps, exactly as a random sampler draws them, and inside each step sorts the
rows by length into micro-batches of `batch_size` rows: less padding and less attention work for
the same training (GSM8K rows, batch 4 x accumulation 4: 91% of the padded positions are real
tokens, against 76% in random micro-batches).

It is a `BatchRebalanceSampler` (transformers 5.17+) because that class is what the Trainer's
loader passes as a batch sampler, and it follows its layout (the step's rows from a seeded
permutation, sorted by length, cut into `world x accumulation` contiguous groups, the costliest
groups dealt to the first micro-batch of every rank). Its iteration is written here, overriding
only `__iter__` and `__len__`, because three of its rules do not suit us and changing them meant
overriding its private methods:
- micro-batches keep the recipe's `batch_size` rows (transformers moves rows between them to
  balance an estimated cost, which on GSM8K rows made one micro-batch 1,176 padded tokens where
  batch 4 x 256 never exceeds 1,024): a micro-batch is never larger than a random one can be, so
  a batch size chosen to fit memory still fits;
- the seed is the recipe's (transformers' always uses 42);
- on one process, a last step with fewer rows than micro-batches gets one row per micro-batch
  instead of repeating rows to fill them (a repeated row is trained twice; on several processes
  every rank needs a micro-batch, so rows repeat there, as torch's `DistributedSampler` does).
`dataloader_drop_last` (which would drop a whole short step here) and batches dispatched or split
by the main process keep the Trainer's random sampler (`trainer.SFTTrainer._get_train_sampler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers.trainer_pt_utils import BatchRebalanceSampler

# Attention's quadratic share in a micro-batch's cost, which orders the step's groups (as transformers does).
QUADRATIC_COST = 0.001


class StepBalancedSampler(BatchRebalanceSampler):
    """Micro-batches of one process; each `grad_accum` of them is one optimizer step's share."""

    def __init__(self, lengths: Sequence[int], batch_size: int, grad_accum: int, seed: int,
                 world_size: int = 1, rank: int = 0) -> None:
        super().__init__(lengths=list(lengths), effective_batch_size=batch_size * grad_accum * world_size,
                         dp_size=world_size, grad_accum=grad_accum, seed=seed, rank=rank, drop_last=False)
        # The parent keeps lengths, grad_accum, rank, seed and the remainder of the last step.
        self.world, self.step_rows = world_size, self.effective_batch_size
        self.groups = grad_accum * world_size  # micro-batches per optimizer step, all ranks
        self.full_steps = self.num_full_batches

    def order(self) -> list[int]:
        """This epoch's random order of all rows: the steps are its consecutive slices."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.lengths), generator=generator).tolist()

    def _short_tail(self) -> bool:
        """One process, and a last step too small to put a row in every micro-batch."""
        return self.world == 1 and 0 < self.remainder < self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        end = self.full_steps * self.step_rows
        for start in range(0, end, self.step_rows):
            yield from self._step(order[start:start + self.step_rows])
        tail = order[end:]
        if not tail:
            return
        if self._short_tail():
            yield from ([i] for i in tail)
            return
        if len(tail) < self.groups:  # every rank needs a micro-batch: repeat the epoch's first rows
            pad = self.groups - len(tail)
            tail = tail + (order * math.ceil(pad / len(order)))[:pad]
        yield from self._step(tail)

    def _step(self, rows: list[int]) -> Iterator[list[int]]:
        """This rank's micro-batches of one step: the rows longest first, cut into equal-count
        contiguous groups (they pad least), the costliest groups first, dealt round by round."""
        ranked = sorted(rows, key=lambda i: self.lengths[i], reverse=True)  # stable: ties keep the order
        base, extra = divmod(len(ranked), self.groups)  # the first `extra` groups get one row more
        bounds = [g * base + min(g, extra) for g in range(self.groups + 1)]
        groups = [ranked[a:b] for a, b in zip(bounds, bounds[1:])]
        by_cost = sorted(groups, key=self._cost, reverse=True)
        for slot in range(self.grad_accum):
            yield by_cost[slot * self.world + self.rank]

    def _cost(self, group: list[int]) -> float:
        longest = self.lengths[group[0]] if group else 0
        return len(group) * longest * (1 + QUADRATIC_COST * longest)

    def __len__(self) -> int:
        if self._short_tail():
            return self.full_steps * self.grad_accum + self.remainder
        return (self.full_steps + (self.remainder > 0)) * self.grad_accum


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Set the epoch of the `StepBalancedSampler` under any number of `.batch_sampler` wrappers."""
    sampler = getattr(loader, "batch_sampler", None)
    for _ in range(8):
        if sampler is None or isinstance(sampler, StepBalancedSampler):
            break
        sampler = getattr(sampler, "batch_sampler", None)
    if isinstance(sampler, StepBalancedSampler):
        sampler.set_epoch(epoch)
