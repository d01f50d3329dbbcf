"""What an architecture does with packed rows, found on the model in use, not from a list of names.

Packing puts several rows in one sequence with `position_ids` restarting at 0 per row. Attention
layers (eager, SDPA and flash-attention in transformers) read those restarts as row boundaries.
Layers that carry a state along the sequence do not: linear attention (gated delta nets,
lightning attention), state-space mixers (Mamba), short convolutions, recurrent blocks; nor do
models whose positions or masks come from elsewhere (learned positions from the attention mask,
attention sinks in an eager kernel, sparse-attention indexers). On those, each packed row starts
from the previous row's state.

`packing_leak` runs one short probe, row B alone and row B packed after row A, and compares row
B's logits; `stateful_layers` names the layer kinds that explain a difference. A recipe that packs
such a model is refused in one line (`check_packing`).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError

# Exact architectures give row B the same logits to ~1e-6 (fp32 rounding across sequence lengths);
# the leaks seen on tiny random models start at ~2e-4 (short convolutions) and reach ~1.
FP32_LEAK_TOLERANCE = 2e-5
# Layer kinds that carry a state along the sequence, by the words their classes are named with.
STATEFUL_KINDS = {
    "linear attention": re.compile(r"DeltaNet|DeltaAttention|LinearAttention|LightningAttention|Retention"),
    "state-space (Mamba) mixer": re.compile(r"Mamba|SSM(?![a-z])|[a-z0-9]Mixer$"),
    "recurrent block": re.compile(r"Rwkv|xLSTM|Recurrent|Rglru|LSTM"),
    "short convolution": re.compile(r"ShortConv"),
    "sparse-attention indexer": re.compile(r"Indexer|Compressor"),
    "position embedding from the attention mask": re.compile(r"LearnedPositionalEmbedding"),
}


def stateful_layers(model: nn.Module) -> list[str]:
    """The kinds of sequence-state layers in `model` (empty for a pure-attention model)."""
    found: list[str] = []
    for module in model.modules():
        name = type(module).__name__
        kinds = [k for k, pattern in STATEFUL_KINDS.items() if pattern.search(name)]
        if isinstance(module, nn.Conv1d):  # a causal convolution over positions (GPT-2's Conv1D is a linear)
            kinds.append("short convolution")
        if any(n == "sinks" for n, _ in module.named_parameters(recurse=False)):
            kinds.append("attention sinks")
        found += [k for k in kinds if k not in found]
    return found


@torch.no_grad()
def packing_leak(model: nn.Module, collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
                 vocab_size: int, seed: int = 0) -> float:
    """max |logits(B alone) - logits(B packed after A)| / max |logits(B alone)|, on random token rows."""
    generator = torch.Generator().manual_seed(seed)
    high = max(3, min(vocab_size, getattr(model.config, "vocab_size", vocab_size)))
    rows = [torch.randint(3, high, (n,), generator=generator).tolist() for n in (24, 9)]
    features = [{"input_ids": r, "labels": r} for r in rows]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            return model(**inputs, use_cache=False).logits.float()

        alone = logits(collate(features[1:]))[0]
        packed = logits(collate(features))[0, len(rows[0]):]
    finally:
        model.train(was_training)
    return float((alone - packed).abs().max() / alone.abs().max().clamp(min=1e-12))


def check_packing(model: nn.Module, collate: Callable, vocab_size: int) -> None:
    """Refuse packing, in one line, where packed rows would see each other."""
    kinds = stateful_layers(model)
    dtype = next(model.parameters()).dtype
    name = getattr(model.config, "model_type", type(model).__name__)
    if dtype == torch.float32 or dtype == torch.float64:
        leak = packing_leak(model, collate, vocab_size)
        if leak <= FP32_LEAK_TOLERANCE:
            return
        why = f"{', '.join(kinds)}: these do not stop at the row boundaries that position_ids mark" if kinds else \
            "its attention does not read the position_ids restarts as row boundaries"
        raise UserError(f"packing: {name} lets packed rows see each other ({why}: a packed row's logits differ from "
                        f"the same row alone by {leak:.1e}); set packing: false")
    if kinds:  # half precision hides small leaks in rounding: go by the layer kinds
        raise UserError(f"packing: {name} lets packed rows see each other ({', '.join(kinds)}: these do not stop at "
                        f"the row boundaries that position_ids mark); set packing: false")
