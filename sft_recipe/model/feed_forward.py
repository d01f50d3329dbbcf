"""Feed-forward blocks: fused activations (always) and `mlp_tile_tokens` (tiles recomputed in backward).

Fused activations. Several architectures (GPT-2, GPT-J, GPT-Neo, CodeGen, ...) compute their tanh
GELU as transformers writes it, seven elementwise operations of which autograd keeps three
intermediate tensors of the block's inner width. torch has the same function as one kernel that
keeps only its input: on GPT-2's MLP, 2.5x faster and 12 MiB less per layer and 1,024 tokens. A
parameter-free activation inside a feed-forward block is replaced by torch's tanh or erf GELU when
it gives that function's values on a probe (to fp32 rounding), whatever its class is called; the
saved model is unchanged (its config still names its own activation).

Tiles (`mlp_tile_tokens`): each decoder MLP runs over tiles of N tokens and recomputes a tile in backward.

A feed-forward block is position-wise: token t's output depends on token t's input alone, so
running it tile by tile gives the same outputs and gradients. Its intermediate activations are
the widest tensors of a decoder layer (intermediate size, often 4-5x the hidden size, times
several tensors: gate, up, activation, product), and with gradient checkpointing one layer's worth
of them is what the backward holds at its peak. Tiled, each tile is wrapped in a non-reentrant
`torch.utils.checkpoint`: only the tile's input is kept, and its activations exist for one tile at
a time, in forward and in backward. The price is one more MLP forward per layer.

Which blocks are tiled is found on the model, not from a list of names:
- structurally: a module whose children are linear layers (or adapters wrapping one, as LoRA
  does), norms and parameter-free leaves (activations, dropout), with at least two linear layers;
  a mixture of experts (routers, expert lists) never qualifies, so routing and its auxiliary loss
  see the whole batch as before;
- numerically: once per class, tiles of a random input must give the untiled output, which an
  attention block (or anything that mixes positions) does not.
Blocks called with anything but one tensor, evaluation and `torch.no_grad` run untiled.
"""

from __future__ import annotations

import logging
import types
from collections import Counter

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.pytorch_utils import Conv1D

log = logging.getLogger("sft_recipe")

PROBE_TOLERANCE = 1e-5  # relative; tiles and the whole differ only by matmul blocking
# torch's fused GELUs; transformers' multi-operation forms compute the same functions.
FUSED_GELUS = {"tanh": nn.GELU(approximate="tanh"), "none": nn.GELU()}  # "none": the exact, erf GELU


def linear_like(module: nn.Module) -> bool:
    base = getattr(module, "base_layer", None)  # peft's adapters wrap the layer they adapt
    return isinstance(module, (nn.Linear, Conv1D)) or (isinstance(base, nn.Module) and linear_like(base))


def allowed_child(child: nn.Module) -> bool:
    """A linear layer, a norm without children, or a parameter-free leaf (activation, dropout)."""
    leaf = next(child.children(), None) is None
    return linear_like(child) or (leaf and ("Norm" in type(child).__name__ or next(child.parameters(), None) is None))


def feed_forward(module: nn.Module) -> bool:
    children = list(module.children())
    return sum(map(linear_like, children)) >= 2 and all(map(allowed_child, children))


def tiled_forward(self: nn.Module, hidden: torch.Tensor, *args, **kwargs):
    """The class's own forward over tiles of `self.sft_tile_tokens` tokens, each checkpointed."""
    whole = type(self).forward
    tokens = self.sft_tile_tokens
    if args or kwargs or not torch.is_grad_enabled() or not self.training or hidden.shape[:-1].numel() <= tokens:
        return whole(self, hidden, *args, **kwargs)
    tiles = hidden.reshape(-1, hidden.shape[-1]).split(tokens)
    outputs = [checkpoint(whole, self, tile.unsqueeze(0), use_reentrant=False).squeeze(0) for tile in tiles]
    return torch.cat(outputs).reshape(*hidden.shape[:-1], -1)


@torch.no_grad()
def position_wise(module: nn.Module, tokens: int = 8) -> bool:
    """Tiles of a random input give the untiled output (evaluation mode, then restored); the input
    width is tried from each linear layer's, as the first declared need not be the first applied."""
    training = module.training
    module.eval()
    try:
        return any(tiles_match(module, width, tokens) for width in input_widths(module))
    finally:
        module.train(training)


def tiles_match(module: nn.Module, width: int, tokens: int) -> bool:
    param = next(module.parameters())
    dtype = param.dtype if param.is_floating_point() else torch.float32
    x = torch.randn(1, 2 * tokens + 3, width, generator=torch.Generator().manual_seed(0)).to(param.device, dtype)
    try:
        whole = type(module).forward(module, x)
        if not isinstance(whole, torch.Tensor) or whole.shape[:-1] != x.shape[:-1]:
            return False
        parts = torch.cat([type(module).forward(module, t) for t in x.split(tokens, dim=1)], dim=1)
    except Exception:  # noqa: BLE001 - a block that needs more than one tensor is not one to tile
        return False
    return bool(torch.allclose(parts, whole, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE * float(whole.abs().max())))


def input_widths(module: nn.Module) -> list[int]:
    widths = []
    for child in filter(linear_like, module.children()):
        layer = getattr(child, "base_layer", child)
        width = layer.in_features if isinstance(layer, nn.Linear) else layer.weight.shape[0]  # Conv1D: (in, out)
        widths += [width] if width not in widths else []
    return widths


def tile_mlps(model: nn.Module, tile_tokens: int) -> int:
    """Tile every feed-forward block of `model` (outermost ones only); returns how many."""
    verdict: dict[type, bool] = {}
    tiled: Counter[str] = Counter()
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside) or not feed_forward(module):
            continue
        kind = type(module)
        if kind not in verdict:
            verdict[kind] = position_wise(module)  # attention blocks look alike but mix positions
        if verdict[kind]:
            module.sft_tile_tokens = tile_tokens
            module.forward = types.MethodType(tiled_forward, module)
            inside.append(name + ".")
            tiled[kind.__name__] += 1
    if tiled:
        blocks = ", ".join(f"{count} {kind}" for kind, count in tiled.items())
        log.info("mlp_tile_tokens: %s run in tiles of %d tokens", blocks, tile_tokens)
    else:
        log.warning("mlp_tile_tokens: %s has no position-wise feed-forward block to tile; it runs as it is",
                    type(model).__name__)
    return tiled.total()


@torch.no_grad()
def fused_equivalent(module: nn.Module) -> nn.Module | None:
    """torch's fused GELU that `module` computes (to fp32 rounding) on a probe over [-8, 8], if any."""
    if isinstance(module, nn.GELU) or next(module.parameters(), None) is not None:
        return None
    x = torch.linspace(-8, 8, 4097)
    try:
        y = module(x)
    except Exception:  # noqa: BLE001 - not an elementwise activation
        return None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return None  # not elementwise
    for approximate, fused in FUSED_GELUS.items():
        reference = fused(x)
        if torch.equal(y, reference):
            return None  # already this kernel (GELUActivation wraps it)
        if torch.allclose(y, reference, rtol=1e-6, atol=1e-6):
            return nn.GELU(approximate=approximate)
    return None


def fuse_activations(model: nn.Module) -> int:
    """Replace each feed-forward block's multi-operation GELU by torch's kernel; returns how many."""
    replaced: Counter[str] = Counter()
    for block in [m for m in model.modules() if feed_forward(m)]:
        for name, child in list(block.named_children()):
            fused = None if linear_like(child) else fused_equivalent(child)
            if fused is not None:
                setattr(block, name, fused)
                replaced[type(child).__name__] += 1
    if replaced:
        log.info("activations: %s replaced by torch's fused GELU (the same function, one kernel)",
                 ", ".join(f"{count} {kind}" for kind, count in replaced.items()))
    return replaced.total()
