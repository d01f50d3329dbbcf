"""Live tensor bytes, counted op by op: what a step really holds, on any device, CPU included.

PyTorch keeps allocator statistics for accelerators only; on the CPU every tensor is a `malloc`,
and resident memory also counts the allocator's slack. A dispatch mode sees every aten op autograd
runs, backward included, and each new storage it returns; a finalizer per storage says when it is
freed. `memory_plan.py` measures its probes with it, and the benchmark checks the plan with it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
# private (checked on torch 2.13.0): dispatch modes have no public base class, and the public
# `torch.overrides.TorchFunctionMode` sees Python calls, not the aten ops autograd runs in backward
from torch.utils._python_dispatch import TorchDispatchMode


def flat(value: Any) -> list[Any]:
    """An aten op's outputs: a tensor, or tuples and lists of them."""
    return [leaf for item in value for leaf in flat(item)] if isinstance(value, (tuple, list)) else [value]


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created while active and still alive: now, and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in flat(out):
            # A sparse gradient (a tied embedding's rows) has no storage of its own to count: its
            # values are a few rows, not a weight-sized buffer.
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta" and tensor.layout == torch.strided:
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)
