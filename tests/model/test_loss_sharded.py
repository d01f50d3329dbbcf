"""FSDP2 (torch's `fully_shard`) on a 2-process gloo group on the CPU: the chunked trainable-token
loss computed inside the head's forward (`loss.head_trainable_token_loss`) gives the same loss and
the same full gradients as a one-process reference (plain model, whole batch, full logits,
`cross_entropy(sum) / trainable tokens`). accelerate drops FSDP on a machine without GPUs, so the
sharding is applied here directly, in the layouts FSDP2 and accelerate 1.15 build.

Also pins what the post-forward path (`loss.trainable_token_loss`: decoder hook + `logits_to_keep=1`,
then the projection on `head.weight` after the forward returned) does under FSDP2, with the head (a)
in the root unit and (b) sharded as its own unit, and how FSDP2 scales gradients.

Workers are forked (the parent has already imported torch/transformers: a spawned worker would
spend ~8 s importing transformers on this 2-core machine). Results come back as torch.save files.
Run `python test_fsdp2_equivalence.py` to print the findings table.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from sft_recipe.model.head_loss import head_trainable_token_loss, trainable_token_loss


def chunked_trainable_token_loss(model: nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int):
    """The sharding-safe loss on the (possibly DDP-wrapped) llama's head."""
    inner = model.module if hasattr(model, "module") else model
    return head_trainable_token_loss(model, inner.lm_head, inputs, chunk_size)

WORLD = 2
TOL = 1e-5
CHUNK = 5  # several chunks per rank


def tiny_llama() -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=300, tie_word_embeddings=False,
                         max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    # Random init of 0.02 std gives near-uniform logits; widen so the loss has real structure.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def fixed_batch() -> dict[str, torch.Tensor]:
    """4 rows x 12 tokens; prompts masked with -100; row 3 right-padded. Rank 0 gets rows 0-1, rank 1
    rows 2-3, with different trainable-token counts (so per-rank means would be wrong)."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 300, (4, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    prompt_lengths = [3, 8, 2, 5]
    for row, n in enumerate(prompt_lengths):
        labels[row, :n] = -100
    attention_mask[3, 9:] = 0
    labels[3, 9:] = -100
    input_ids[3, 9:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def trainable(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


def reference() -> tuple[float, dict[str, torch.Tensor]]:
    model = tiny_llama()
    batch = fixed_batch()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       batch["labels"][:, 1:].reshape(-1), ignore_index=-100,
                                       reduction="sum") / trainable(batch["labels"])
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def describe(weight) -> str:
    return f"{type(weight).__name__}{tuple(getattr(weight, '_local_tensor', weight).shape)}"


def original_loss_sum(model: nn.Module, inputs: dict[str, torch.Tensor], info: dict) -> torch.Tensor:
    """`loss.trainable_token_loss`: the projection on `head.weight` after the model's forward returned."""
    try:
        loss_sum, _, _ = trainable_token_loss(model, (model.model, model.lm_head), inputs, CHUNK)
    finally:
        info["head_weight_after_forward"] = describe(model.lm_head.weight)  # after the forward returned
    return loss_sum


# --------------------------------------------------------------------------------------------------
# worker side


def shard(model: nn.Module, layout: str, mesh, precision: str = "fp32") -> list:
    """Layouts: `root_head` (layers are units, head in the root unit, root left to FSDP2's default of
    not resharding after forward), `root_head_reshard` (same, root explicitly
    `reshard_after_forward=True`), `own_head` (head its own unit, resharded after forward), and
    `own_head_lean` (own_head with `set_unshard_in_backward(False)` on the head unit),
    `accelerate` (what accelerate 1.15's `fsdp2_prepare_model` builds: layers and embeddings with
    `reshard_after_forward=True`, a grouped tail unit `[norm, lm_head]` with
    `reshard_after_forward=False`, then the root with the default)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": mesh}
    if precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = []
    for layer in model.model.layers:
        units.append(fully_shard(layer, reshard_after_forward=True, **kw))
    if layout in ("own_head", "own_head_lean"):
        units.append(fully_shard(model.lm_head, **kw))
        if layout == "own_head_lean":
            # The chunked loss computed d/dweight in forward: its backward never reads the weight,
            # so skip the head unit's pre-backward all-gather.
            units[-1].set_unshard_in_backward(False)
    if layout == "accelerate":
        units.append(fully_shard(model.model.embed_tokens, reshard_after_forward=True, **kw))
        units.append(fully_shard([model.model.norm, model.lm_head], reshard_after_forward=False, **kw))
    root_kw = {"reshard_after_forward": True} if layout == "root_head_reshard" else {}
    units.append(fully_shard(model, **root_kw, **kw))
    # a grouped fully_shard returns a list-like of modules sharing one state; keep FSDPModules only
    flat = []
    for unit in units:
        flat.extend(unit if isinstance(unit, (list, tuple)) else [unit])
    return flat


def run_case(rank: int, mesh, layout: str, method: str, reduction: str) -> dict:
    """One fresh model, one forward/backward on this rank's half of the batch. Returns the global
    loss, the full gradients (every rank must take part in `full_tensor`) and what head.weight was
    after the forward."""
    model = tiny_llama()
    info: dict = {}
    units = []
    if layout == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    elif layout == "single":
        wrapped = model
    else:
        units = shard(model, layout, mesh, "bf16" if reduction == "avg_bf16" else "fp32")
        wrapped = model
        if reduction == "sum_premul":  # divide factor 1 without forcing SUM: PREMUL_SUM(1.0)
            for unit in units:
                unit.set_gradient_divide_factor(1.0)
        if reduction == "sum":
            # Turn FSDP2's averaging into a plain sum on every unit (the setter is per unit, not recursive).
            for unit in units:
                unit.set_force_sum_reduction_for_comms(True)
                unit.set_gradient_divide_factor(1.0)
    try:
        return _run(rank, wrapped, model, layout, method, reduction, info)
    except Exception as error:
        error.info = {k: v for k, v in info.items() if k != "grads"}
        raise


def _run(rank, wrapped, model, layout, method, reduction, info) -> dict:
    batch = fixed_batch()
    total = trainable(batch["labels"])
    if layout == "single":
        local = batch
        world = 1
    else:
        local = {k: v[2 * rank:2 * rank + 2] for k, v in batch.items()}
        world = WORLD
    scale = world if reduction in ("avg", "avg_bf16", "accum") else 1
    if reduction == "accum":
        # Gradient accumulation: one row per micro-step, no reduce-scatter until the last one
        # (FSDP2 keeps the unsharded gradient between them); normalised by the step's global count.
        loss_sum = torch.zeros(())
        for micro in range(2):
            model.set_requires_gradient_sync(micro == 1)
            part, _, _ = chunked_trainable_token_loss(wrapped, {k: v[micro:micro + 1] for k, v in local.items()},
                                                      chunk_size=CHUNK)
            (part / total * scale).backward()
            loss_sum = loss_sum + part.detach()
    else:
        if method == "inside_head":
            loss_sum, _, count = chunked_trainable_token_loss(wrapped, local, chunk_size=CHUNK)
        else:
            loss_sum = original_loss_sum(model, local, info)
        (loss_sum / total * scale).backward()
    info.setdefault("head_weight_after_forward", describe(model.lm_head.weight))
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is not None and hasattr(g, "full_tensor"):
            g = g.full_tensor()
        grads[name.replace("module.", "")] = None if g is None else g.detach().clone()
    global_loss = loss_sum.detach().clone()
    if world > 1:
        dist.all_reduce(global_loss)
    info["loss"] = float(global_loss) / total
    info["grads"] = grads
    return info


CASES = [
    # (layout, method, reduction)
    ("single", "inside_head", "avg"),
    ("ddp", "inside_head", "avg"),
    ("root_head", "inside_head", "avg"),
    ("own_head", "inside_head", "avg"),
    ("root_head", "inside_head", "sum"),
    ("own_head", "inside_head", "sum"),
    ("root_head_reshard", "inside_head", "avg"),
    ("accelerate", "inside_head", "avg"),
    ("own_head_lean", "inside_head", "avg"),
    ("own_head", "inside_head", "accum"),
    ("root_head", "original", "avg"),
    ("own_head", "original", "avg"),
    ("root_head_reshard", "original", "avg"),
    ("accelerate", "original", "avg"),
    ("own_head", "inside_head", "avg_bf16"),  # MixedPrecisionPolicy(bf16 params, fp32 reduce): loose check
    ("root_head", "inside_head", "sum_premul"),  # informational: does gloo take PREMUL_SUM?
    ("root_head", "inside_head", "avg_unscaled"),  # forgot the x world size: gradients halved
]


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,))
    results = {}
    try:
        for layout, method, reduction in CASES:
            key = f"{layout}/{method}/{reduction}"
            start = time.perf_counter()
            try:
                results[key] = run_case(rank, mesh, layout, method, reduction)
            except Exception as error:  # noqa: BLE001 - reported, not hidden
                results[key] = {**getattr(error, "info", {}), "error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                                "traceback": traceback.format_exc()}
            results[key]["seconds"] = time.perf_counter() - start
            if os.environ.get("FSDP_TEST_VERBOSE"):
                print(f"rank {rank} {key} done", file=sys.stderr, flush=True)
            dist.barrier()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all() -> tuple[tuple[float, dict], dict[str, dict]]:
    import transformers  # noqa: F401  - imported once here, inherited by the forked workers
    from transformers import LlamaForCausalLM  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as out_dir:
        port = free_port()
        procs = [ctx.Process(target=worker, args=(rank, port, out_dir)) for rank in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        for p in procs:
            if p.is_alive():
                p.kill()
                raise RuntimeError("worker hung")
            assert p.exitcode == 0, f"worker exit code {p.exitcode}"
        results = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    ref = reference()  # after the fork: the parent ran no tensor ops before forking
    return ref, results[0] | {f"rank1:{k}": v for k, v in results[1].items()}


def compare(ref: tuple[float, dict], result: dict) -> tuple[float, float]:
    """(|loss diff|, max |grad diff|) against the reference; inf when a gradient is missing."""
    ref_loss, ref_grads = ref
    worst = 0.0
    for name, g in ref_grads.items():
        got = result["grads"].get(name)
        if got is None:
            return abs(result["loss"] - ref_loss), float("inf")
        worst = max(worst, float((got - g).abs().max()))
    return abs(result["loss"] - ref_loss), worst


@pytest.fixture(scope="module")
def outcome():
    return run_all()


EQUIVALENT = [
    "single/inside_head/avg",
    "ddp/inside_head/avg",
    "root_head/inside_head/avg",
    "own_head/inside_head/avg",
    "root_head/inside_head/sum",
    "own_head/inside_head/sum",
    "root_head_reshard/inside_head/avg",
    "accelerate/inside_head/avg",
    "own_head_lean/inside_head/avg",
    "own_head/inside_head/accum",
]


@pytest.mark.slow
@pytest.mark.parametrize("key", EQUIVALENT)
def test_loss_inside_head_matches_reference(outcome, key):
    ref, results = outcome
    for rank_key in (key, f"rank1:{key}"):
        result = results[rank_key]
        assert "error" not in result, result.get("traceback")
        loss_diff, grad_diff = compare(ref, result)
        assert loss_diff < TOL, (rank_key, result["loss"], ref[0])
        assert grad_diff < TOL, (rank_key, grad_diff)


@pytest.mark.slow
def test_original_approach_under_fsdp2(outcome):
    """The post-forward projection (`loss.trainable_token_loss`) works only where the head's unit is NOT resharded
    after forward: head in the root unit with FSDP2's default for the root (reshard_after_forward
    None -> False for the root), or accelerate 1.15's grouped tail unit [norm, lm_head] with
    reshard_after_forward=False. Head as its own (resharded) unit, or a root explicitly resharded
    after forward: head.weight is a DTensor shard and F.linear raises."""
    ref, results = outcome
    for key in ("own_head/original/avg", "root_head_reshard/original/avg"):
        result = results[key]
        assert "error" in result and "mixed torch.Tensor and DTensor" in result["error"], result
        assert result["head_weight_after_forward"] == "DTensor(150, 32)", result
    for key in ("root_head/original/avg", "accelerate/original/avg"):
        result = results[key]
        assert "error" not in result, result.get("traceback")
        assert result["head_weight_after_forward"] == "Parameter(300, 32)"
        loss_diff, grad_diff = compare(ref, result)
        assert loss_diff < TOL and grad_diff < TOL, (key, loss_diff, grad_diff)


@pytest.mark.slow
def test_bf16_mixed_precision_runs_close(outcome):
    """MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): same path, bf16-level agreement."""
    ref, results = outcome
    result = results["own_head/inside_head/avg_bf16"]
    assert "error" not in result, result.get("traceback")
    loss_diff, grad_diff = compare(ref, result)
    assert loss_diff < 5e-3 and grad_diff < 5e-2, (loss_diff, grad_diff)


@pytest.mark.slow
def test_fsdp2_averages_gradients(outcome):
    """Without the x world-size factor every FSDP2 gradient is exactly 1/world of the reference."""
    ref, results = outcome
    halved = results["root_head/inside_head/avg_unscaled"]
    assert "error" not in halved, halved.get("traceback")
    for name, g in ref[1].items():
        torch.testing.assert_close(halved["grads"][name] * WORLD, g, atol=TOL, rtol=0)


def test_single_process_train_and_eval():
    """No process group: gradients as the reference; under no_grad the accuracy is counted and the
    head's forward is restored afterwards."""
    ref_loss, ref_grads = reference()
    model = tiny_llama()
    batch = fixed_batch()
    total = trainable(batch["labels"])
    loss_sum, _, count = chunked_trainable_token_loss(model, batch, chunk_size=CHUNK)
    assert count == total and "forward" not in model.lm_head.__dict__
    (loss_sum / count).backward()
    assert abs(loss_sum.item() / count - ref_loss) < TOL
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], atol=TOL, rtol=0)
    with torch.no_grad():
        loss_sum_eval, correct, _ = chunked_trainable_token_loss(model, batch, chunk_size=CHUNK)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"][:, 1:] != -100
    expected = int((logits[:, :-1].argmax(-1) == batch["labels"][:, 1:])[keep].sum())
    assert int(correct) == expected and abs(loss_sum_eval.item() - loss_sum.item()) < 1e-4


def main() -> None:
    start = time.perf_counter()
    ref, results = run_all()
    print(f"total {time.perf_counter() - start:.1f}s; reference loss {ref[0]:.6f}")
    for key in [f"{l}/{m}/{r}" for l, m, r in CASES]:
        result = results[key]
        if "error" in result:
            print(f"{key:32s} ERROR {result['error']}  ({result['seconds']:.2f}s)")
            continue
        loss_diff, grad_diff = compare(ref, result)
        print(f"{key:32s} loss diff {loss_diff:.2e} max grad diff {grad_diff:.2e} "
              f"head.weight after fwd {result['head_weight_after_forward']} ({result['seconds']:.2f}s)")


if __name__ == "__main__":
    main()
