"""A memory plan before the first step: what a training step and an evaluation step will hold, and the
settings that fit a budget.

Measured, not guessed, and nothing per model:
- **Weights, gradients, AdamW's two moments:** parameter counts times their sizes, from the model's
  own layers (a 1-layer and a 2-layer copy of its config; the difference is one decoder layer).
- **Activations and the loss head:** those copies run one training step on probe rows
  (`memory_probes.py`); the fitted curves are extrapolated to the recipe's rows, micro-batch and
  layers.
- **Evaluation:** the same probes forward-only, at the evaluation batch, beside the weights and
  optimizer state that stay in memory (not probed when the run has no evaluation); the KV cache of
  `generation_eval_samples` is modelled from the config (layers x 2 x kv heads x head size x tokens).
- **The process:** its resident memory before the model exists (imports, tokenizer), measured.
- **The runtime:** the resident memory a first probe step adds beyond its tensors (autograd's and
  the kernels' own buffers), measured once.
Modelled, not measured: the allocator's slack above live tensors (a fixed share, from the
benchmark), and, under FSDP/ZeRO-3 (`shards`), that weights, gradients and moments divide by the
processes (checked against FSDP2 on two gloo processes in the tests).
Choosing is probing: each setting that changes the curves costs probe steps up to a quarter of
`max_length`, so a budget first screens each candidate on short rows (64 to 512 tokens). Short
probes miss what appears only at length, so they under-predict long rows: a candidate they already
put over budget is not probed further. At worst that passes over a setting that would have fit
for a leaner one; it never admits one that does not fit (the leanest is always probed in full).
`benchmarks/memory_plan.py` checks prediction against measurement across architectures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..errors import UserError
from ..recipe.lora import LoraSettings
from .memory_probes import Probes, Settings, at, probe_model

MIB = 2**20
ALLOCATOR_SLACK = 0.10  # resident memory above the live tensors' bytes (glibc arenas, fragmentation)
# QLoRA's NF4 storage per parameter: 4-bit codes, an 8-bit absmax per block of 64 (double
# quantization) and an fp32 scale per 256 of those (bitsandbytes' defaults, as `lora.py` sets them)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass
class Plan:
    """Predicted bytes per component (training and evaluation peaks) for one `Settings`."""

    settings: Settings
    parts: dict[str, int] = field(default_factory=dict)
    train_peak: int = 0
    eval_peak: int = 0
    rows: str = ""

    def lines(self) -> list[str]:
        order = ["process (imports, tokenizer)", "weights", "gradients", "optimizer state (AdamW)",
                 "activations, per layer", "activations, all layers", "loss head and embedding", "evaluation pass",
                 "generation KV cache", "allocator slack and runtime"]
        return [f"  {name:<32} {self.parts[name] / MIB:>10,.0f} MiB" for name in order if name in self.parts]


class Weights(NamedTuple):
    """Parameter bytes of the whole model: all of them, the trainable ones, and one decoder layer's."""

    total: int
    trainable: int
    layer: int


def stored_bytes(model, quantized: bool) -> tuple[int, int]:
    """(all, trainable) parameter bytes as training stores them: QLoRA keeps the frozen linear
    weights (all but the head) in 4-bit NF4, modelled as `NF4_BYTES` a parameter."""
    head = model.get_output_embeddings()
    four_bit = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head}
    total = trainable = 0.0
    for p in model.parameters():
        size = p.numel() * (NF4_BYTES if quantized and id(p) in four_bit and not p.requires_grad else p.element_size())
        total += size
        trainable += size if p.requires_grad else 0
    return int(total), int(trainable)


def parameter_bytes(model_config, recipe) -> Weights:
    """The model's parameter bytes, from its 1- and 2-layer copies (the difference is one layer;
    layers are alike)."""
    quantized = recipe.lora is not None and LoraSettings.from_mapping(recipe.lora).load_in_4bit
    counts = {layers: stored_bytes(probe_model(model_config, layers, recipe, Settings(1, 1, 1)), quantized)
              for layers in (1, 2)}
    n = model_config.num_hidden_layers
    (all_one, trainable_one), (all_two, trainable_two) = counts[1], counts[2]
    return Weights(int(all_one + (n - 1) * (all_two - all_one)),
                   int(trainable_one + (n - 1) * (trainable_two - trainable_one)), int(all_two - all_one))


def kv_cache_bytes(model_config, rows: int, tokens: int) -> int:
    """The KV cache of greedy generation over `rows` prompts of `tokens` tokens (modelled)."""
    heads = getattr(model_config, "num_key_value_heads", None) or getattr(model_config, "num_attention_heads", 1)
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    return 2 * model_config.num_hidden_layers * heads * head_dim * rows * tokens * 4


def predict(probes: Probes, settings: Settings, process_bytes: int, eval_batch: int,
            weights: Weights, screen: bool = False) -> Plan:
    """The plan for `settings` at the recipe's worst case: `max_length` rows, full micro-batches
    (`screen`: from the short screening probes, a lower estimate at long rows)."""
    model_config, recipe = probes.model_config, probes.recipe
    layers, shards = model_config.num_hidden_layers, probes.shards
    weight_bytes, trainable = weights.total // shards, weights.trainable // shards
    # Sharded (FSDP, ZeRO-3): each process keeps its share of the weights and moments, and gathers
    # whole layers as it reaches them (the one running and the one prefetched). The measured step
    # keeps its gradients whole: conservative, as they are reduce-scattered layer by layer.
    gathered = 2 * weights.layer if shards > 1 else 0
    train = probes(settings, True, settings.batch_size, screen)
    (rows, length), (eval_rows, eval_length) = probes.shape(settings.batch_size), probes.shape(eval_batch)
    per_layer, rest = at(train["layer"], length, rows), at(train["rest"], length, rows)
    activations, optimizer = layers * per_layer, 2 * trainable
    eval_pass = 0.0
    if recipe.evaluates and not screen:  # a run without evaluation rows never runs the pass
        evaluation = probes(settings, False, eval_batch)
        eval_pass = at(evaluation["rest"], eval_length, eval_rows) + layers * at(evaluation["layer"], eval_length,
                                                                                  eval_rows)
    kv = kv_cache_bytes(model_config, min(16, recipe.generation_eval_samples),
                        recipe.max_length + recipe.max_new_tokens) if recipe.generation_eval_samples else 0
    tensors_train = weight_bytes + gathered + optimizer + activations + rest
    tensors_eval = weight_bytes + gathered + optimizer + max(eval_pass, kv)
    slack = ALLOCATOR_SLACK * max(tensors_train, tensors_eval) + (probes.runtime or 0)
    parts = {"process (imports, tokenizer)": process_bytes, "weights": weight_bytes + gathered,
             "gradients": weights.trainable,
             "optimizer state (AdamW)": optimizer, "activations, per layer": per_layer,
             "activations, all layers": activations, "loss head and embedding": rest, "evaluation pass": eval_pass,
             "generation KV cache": kv, "allocator slack and runtime": slack}
    return Plan(settings, {k: int(v) for k, v in parts.items()}, int(process_bytes + tensors_train + slack),
                int(process_bytes + tensors_eval + slack),
                describe_rows(probes, settings.batch_size, eval_batch))


def describe_rows(probes: Probes, batch: int, eval_batch: int) -> str:
    """Which rows the plan is for, in the line `plan` and the run print."""
    if probes.rows is None:
        return (f"{batch} rows of max_length {probes.recipe.max_length} per micro-batch ({probes.layout(batch)}; the "
                f"worst case the recipe allows: every token trainable), evaluation batch {eval_batch}")
    rows = probes.rows
    return (f"{batch} rows of up to {rows.longest} tokens per micro-batch ({probes.layout(batch)}), at most "
            f"{rows.trainable_share:.1%} of a row trainable: the longest micro-batch of {rows.source}, "
            f"evaluation batch {eval_batch}")


def candidates(effective_batch: int, default_chunk: int) -> list[Settings]:
    """Settings from fastest to leanest: the largest micro-batch that divides the effective batch
    first, then checkpointing, tiles, a smaller loss chunk; the effective batch never changes."""
    batches = [b for b in range(effective_batch, 0, -1) if effective_batch % b == 0]
    chunks = sorted({default_chunk, min(default_chunk, 64)}, reverse=True)
    return [Settings(batch, effective_batch // batch, chunk, tiles, checkpointing)
            for checkpointing, tiles in ((False, 0), (True, 0), (True, 256))
            for chunk in chunks for batch in batches]


def choose(probes: Probes, budget: int, effective_batch: int, default_chunk: int, process_bytes: int,
           eval_batch: int) -> Plan:
    """The fastest settings whose predicted peaks fit `budget`, or one line naming the smallest budget."""
    weights = parameter_bytes(probes.model_config, probes.recipe)
    plans, options = [], candidates(effective_batch, default_chunk)
    for settings in options:
        batch = settings.batch_size  # screening pays where its probes are the shorter ones
        shorter = max(probes.lengths(settings, batch, True)) < max(probes.lengths(settings, batch))
        if settings != options[-1] and shorter:
            screened = predict(probes, settings, process_bytes, eval_batch, weights, screen=True)
            if screened.train_peak > budget:
                continue  # over budget on short probes already: more so at length
        plan = predict(probes, settings, process_bytes, eval_batch, weights)
        if max(plan.train_peak, plan.eval_peak) <= budget:
            return plan
        plans.append(plan)
    leanest = min(plans, key=lambda p: max(p.train_peak, p.eval_peak))
    need = math.ceil(max(leanest.train_peak, leanest.eval_peak) / MIB)
    raise UserError(f"memory_budget {budget / MIB:,.0f} MiB: nothing fits; the leanest settings "
                    f"({leanest.settings.describe()}) need {need:,} MiB (sft-recipe plan shows the parts)")
