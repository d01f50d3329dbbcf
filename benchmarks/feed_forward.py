"""Fused activations and `mlp_tile_tokens` on every causal-LM architecture: same loss, same gradients.

    HF_HUB_OFFLINE=1 python benchmarks/feed_forward.py [--only gpt2,qwen2_moe] [--tile 4]

Why: both change how a model's feed-forward blocks run (`sft_recipe.model.feed_forward`), found on
the model by structure and probes, not from a list of names. Each architecture is built tiny as in
`architectures.py` (same configs), dropout off, in training mode; a copy gets `fuse_activations`
and `tile_mlps` (tiles of `--tile` tokens, so that every block runs in several), and both take one
forward and backward on the same random rows. Reported per type: what was fused and tiled, and the
relative differences of the loss and of the gradients (pass: < 1e-4; a gradient that is rounding
noise around zero is compared with a thousandth of the largest gradient instead).
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from architectures import (
    build_tiny,
    no_cache,
    random_rows,
    run_each,
    short,
    tiny_config,
    vocab_of,
)

from sft_recipe.model.feed_forward import fuse_activations, tile_mlps

TOLERANCE = 1e-4


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """Seeded: dropout written as a function (OPT, XGLM ...) and router jitter draw the same numbers."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = model(input_ids=ids, labels=ids, **no_cache(model)).loss
    loss.backward()
    return float(loss), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def check(model_type: str, tile: int) -> dict:
    r: dict = {"model_type": model_type}
    try:
        config = tiny_config(model_type)
        if getattr(config, "is_encoder_decoder", False):
            return {**r, "skip": "encoder-decoder"}
        model = build_tiny(config).train()
    except Exception as exc:
        return {**r, "skip": f"does not build: {short(exc)}"}
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    changed = copy.deepcopy(model)
    r["fused"], r["tiled"] = fuse_activations(changed), tile_mlps(changed, tile)
    rows = random_rows(vocab_of(model), lengths=(23, 23))
    ids = torch.tensor([row["input_ids"] for row in rows])
    try:
        loss, grads = loss_and_grads(model, ids)
        grads = {n: g.clone() for n, g in grads.items()}
        again = loss_and_grads(model, ids)[0]
    except Exception as exc:
        return {**r, "skip": f"does not train: {short(exc)}"}
    if again != loss:
        return {**r, "skip": f"not deterministic in training mode, seeded (loss {loss:.6g} then {again:.6g})"}
    try:
        changed_loss, changed_grads = loss_and_grads(changed, ids)
    except Exception as exc:
        return {**r, "fail": short(exc)}
    r["loss"] = abs(changed_loss - loss) / max(abs(loss), 1e-12)
    # Relative to each gradient, or to a thousandth of the largest where a gradient is rounding noise
    # around an exact zero (an attention key's bias: softmax ignores a constant added to a row).
    floor = 1e-3 * max(float(g.abs().max()) for g in grads.values())
    r["grad"] = max((float((changed_grads[n] - g).abs().max()) / max(float(g.abs().max()), floor)
                     for n, g in grads.items() if n in changed_grads), default=0.0)
    if grads.keys() != changed_grads.keys():
        r["fail"] = "different parameters got gradients"
    return r


def report(results: list[dict], tile: int) -> str:
    lines = [f"tiles of {tile} tokens; pass: loss and every gradient within {TOLERANCE:.0e} relative", "",
             "| model_type | fused | tiled | loss rel diff | grad rel diff | verdict |", "|---|---|---|---|---|---|"]
    counts = {"PASS": 0, "FAIL": 0, "skip": 0}
    for r in results:
        if "skip" in r:
            counts["skip"] += 1
            lines.append(f"| {r['model_type']} | | | | | skip: {r['skip']} |")
            continue
        ok = "fail" not in r and r["loss"] < TOLERANCE and r["grad"] < TOLERANCE
        counts["PASS" if ok else "FAIL"] += 1
        verdict = "PASS" if ok else f"FAIL {r.get('fail', '')}"
        lines.append(f"| {r['model_type']} | {r['fused']} | {r['tiled']} | {r.get('loss', float('nan')):.1e} | "
                     f"{r.get('grad', float('nan')):.1e} | {verdict} |")
    touched = sum(1 for r in results if r.get("fused") or r.get("tiled"))
    lines += ["", f"{counts['PASS']} pass, {counts['FAIL']} fail, {counts['skip']} skipped; "
                  f"{touched} architectures had a block fused or tiled"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types (default: every causal-LM type)")
    parser.add_argument("--tile", type=int, default=4, help="tokens per tile")
    ns = parser.parse_args()
    results = run_each(ns.only, lambda model_type: check(model_type, ns.tile))
    print(report(results, ns.tile), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
