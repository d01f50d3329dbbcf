"""`SFTConfig` -> `transformers.TrainingArguments`, field by field.

The recipe owns the fields in `recipe.config.MAPPED_TRAINING_ARGS` (each key's declared `to` fields;
a recipe that also sets one in `training_args` is refused); everything else in `training_args`
passes through unchanged. Building the arguments also initialises the (possibly distributed) state,
so it is the first step of a run.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch
from transformers import TrainingArguments

from ..recipe.config import MAPPED_TRAINING_ARGS, SFTConfig
from ..formats import Form
from ..errors import RecipeError, did_you_mean, one_line
from ..model.hardware import default_loss_chunk_size, resolve_precision
from ..recipe.files import coerce, describe


def loss_chunk_size(config: SFTConfig, vocab_size: int | None = None) -> int:
    """The recipe's `loss_chunk_size`, or the machine's default for the model's vocabulary
    (`hardware.default_loss_chunk_size`: a logits budget per chunk)."""
    return config.loss_chunk_size if config.loss_chunk_size is not None else default_loss_chunk_size(vocab_size)


def eval_batch_size(config: SFTConfig) -> int:
    """`eval_batch_size`, else the micro-batch (8 while `batch_size: auto` is not chosen yet)."""
    return config.eval_batch_size or (config.batch_size if config.batch_size != "auto" else 8)


def sampling_strategy(config: SFTConfig) -> str:
    """Padded rows of varying length: each optimizer step's rows, drawn at random, are split into
    micro-batches by length (`training/sampling.py`), or grouped by length across the dataset if
    asked. Packed bins carry no padding, text blocks all have one length, and a stream has no
    index to sample: those are read in random (or stream) order."""
    if config.packing or config.form is Form.TEXT or config.streaming:
        return "random"
    return "group_by_length" if config.group_by_length else "batch_rebalance"


def to_training_arguments(config: SFTConfig, **overrides: Any):
    """Map the recipe onto `TrainingArguments`, field by field; `overrides` win (used by tests)."""
    precision = resolve_precision(config.precision)
    on_gpu = torch.cuda.is_available()
    # On a GPU activations are what limit batch and length, and the recompute is matmuls it runs
    # fast; on the CPU the models are small and the recompute costs more than it saves
    # (measured in benchmarks/README.md).
    checkpointing = on_gpu if config.gradient_checkpointing is None else config.gradient_checkpointing

    mapped: dict[str, Any] = dict(
        output_dir=config.output_dir, report_to=list(config.report_to) or "none",
        # `batch_size: auto` is resolved by the memory plan before training; elsewhere (eval) it means 8.
        per_device_train_batch_size=config.batch_size if config.batch_size != "auto" else 8,
        per_device_eval_batch_size=eval_batch_size(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_epochs, max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, seed=config.seed, data_seed=config.seed,
        logging_steps=config.logging_steps, eval_strategy="steps" if config.evaluates else "no",
        eval_steps=config.eval_steps,
        eval_on_start=config.eval_on_start, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        # Without evaluation rows the last step is the model: nothing to select by.
        load_best_model_at_end=config.evaluates, metric_for_best_model="eval_loss" if config.evaluates else None,
        greater_is_better=False if config.evaluates else None,
        train_sampling_strategy=sampling_strategy(config),
        bf16=precision == "bf16", fp16=precision == "fp16", torch_compile=config.torch_compile,
        # transformers' new name for gradient checkpointing. Non-reentrant: works with frozen inputs
        # (LoRA) and replays dropout's random state on recompute.
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        # Our columns are exactly what the model and loss need ("length" is dropped by the collator).
        remove_unused_columns=False,
        # A KV cache during training lets packed rows attend to each other: never on.
        use_cache=False,
        # Normalize the loss by trainable tokens summed over all devices, not averaged per device.
        average_tokens_across_devices=True,
        include_num_input_tokens_seen="non_padding",
        # TF32 matmuls and pinned host memory only mean something on a GPU.
        tf32=True if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None,
        # One kernel per parameter group on CPU and GPU: no parameter-sized temporaries per step.
        optim="adamw_torch_fused",
        dataloader_pin_memory=on_gpu,
        # Say CPU explicitly when there is no accelerator, so that bf16 on CPU is accepted.
        use_cpu=not on_gpu and not torch.backends.mps.is_available(),
        # The Trainer's own bars and printers print raw dicts; callbacks/progress.py draws the one bar.
        disable_tqdm=True,
        # Log a NaN/Inf loss as it is (the Trainer would hide it) so the nan_guard callback can stop.
        logging_nan_inf_filter=False,
        # A stream resumes from the position saved in the checkpoint (`stream_state.py`), not by
        # reading and dropping the batches already trained on.
        ignore_data_skip=config.streaming,
        # The extra autograd-graph traversal finds parameters no step uses; only a mixture of experts
        # (an expert no token was routed to) has them: `commands.build` turns it on for those models.
        ddp_find_unused_parameters=False,
        ddp_timeout=config.ddp_timeout,
    )
    assert set(mapped) == MAPPED_TRAINING_ARGS, set(mapped) ^ MAPPED_TRAINING_ARGS
    mapped.update(check_pass_through(config.training_args))
    mapped.update(overrides)
    try:
        return TrainingArguments(**mapped)
    except (TypeError, ValueError, ImportError) as exc:  # e.g. a combination the Trainer refuses
        raise RecipeError(f"training arguments rejected: {one_line(exc)}") from None


def check_pass_through(values: dict[str, Any]) -> dict[str, Any]:
    """`training_args` keys must be `TrainingArguments` fields and their values of the field's type,
    so a typo or `adam_beta1: high` fails now, not at the first optimizer step after tokenization."""
    checked = {}
    for key, value in values.items():
        if key not in _TA_HINTS:
            raise RecipeError(f"recipe key 'training_args': unknown TrainingArguments field '{key}'"
                              f"{did_you_mean(key, _TA_HINTS)}")
        ok, result = coerce(value, _TA_HINTS[key])
        if not ok:
            raise RecipeError(f"recipe key 'training_args.{key}' expects {describe(_TA_HINTS[key])}, got "
                              f"{value!r} ({type(value).__name__})")
        checked[key] = result
    return checked


_TA_HINTS = {f.name: typing.get_type_hints(TrainingArguments).get(f.name, Any)
             for f in dataclasses.fields(TrainingArguments) if f.init}
