"""One builder for the model, its collator and the `SFTTrainer`, shared by `train` and `eval`, so
both score rows with exactly the same batching and loss."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import set_seed

from ..training.callbacks import build_callbacks, loggers_last
from ..training.callbacks.progress import use_console
from ..rundir.checkpoints import CheckpointCompleteCallback
from ..recipe.config import SFTConfig
from ..data.collate import make_collator
from ..data.prepare import PreparedData, eval_rows_and_parts, sample_train_rows
from ..model.lora import wrap_lora
from ..model.architecture import check_packing
from ..model.load import load_model
from ..model.feed_forward import fuse_activations, tile_mlps
from ..training.signals import StopOnSignal
from ..rundir.stream_state import StreamStateCallback
from ..training.trainer import SFTTrainer
from ..training.arguments import loss_chunk_size

log = logging.getLogger("sft_recipe")


def collator_for(config: SFTConfig, model, tokenizer):
    """Padding or packing, as the recipe says; flash-attention gets the varlen kwargs for packing."""
    # private (checked on transformers 5.25.0): the config's resolved kernel has no public name
    flash = getattr(model.config, "_attn_implementation", None) == "flash_attention_2"
    return make_collator(config.packing, tokenizer.pad_token_id, config.pad_to_multiple_of, flash_attention=flash)


def checked_collator(config: SFTConfig, model, tokenizer):
    """`collator_for`, after making sure that packed rows cannot see each other on this model."""
    collate = collator_for(config, model, tokenizer)
    if config.packing:
        check_packing(model, collate, len(tokenizer))
    return collate


def build_eval_trainer(config: SFTConfig, args, model, tokenizer, eval_rows: Any,
                       eval_parts: dict[str, Any] | None = None) -> SFTTrainer:
    """A trainer that only evaluates `model` (already loaded) on `eval_rows` (and a mixture's `eval_parts`)."""
    trainer = SFTTrainer(model=model, args=args, eval_dataset=eval_rows,
                         data_collator=checked_collator(config, model, tokenizer), processing_class=tokenizer,
                         loss_chunk_size=loss_chunk_size(config, vocabulary(model)), eval_parts=eval_parts)
    trainer.verify_loss(eval_rows)
    use_console(trainer)
    return trainer


def build_trainer(config: SFTConfig, args, tokenizer, data: PreparedData,
                  new_token_ids: Sequence[int] = ()) -> tuple[SFTTrainer, StopOnSignal]:
    """The model (seeded first: from-scratch weights must not depend on what ran before), its
    collator, the evaluation rows and the callbacks, as one `SFTTrainer`; and the signal handler.
    `new_token_ids`: tokens the chat template added, initialised by `model.load_model`."""
    set_seed(config.seed)
    model = load_model(config, tokenizer, new_token_ids)
    if config.lora is not None:
        model = wrap_lora(model, config.lora)
    checkpointing_supported(model, args)
    fuse_activations(model)
    if config.mlp_tile_tokens:
        tile_mlps(model, config.mlp_tile_tokens)
    args.ddp_find_unused_parameters = has_experts(model)  # an expert may get no token in a step
    # Evaluation rows, and for the train/valid loss (train_sample_loss) as many fixed training rows
    eval_rows, eval_parts = eval_rows_and_parts(data, config.max_eval_samples, config.seed) if config.evaluates \
        else (None, None)  # no evaluation: no eval rows, no train sample, best/ is the last step
    train_sample = sample_train_rows(data.train, len(eval_rows), config.seed) \
        if eval_rows is not None and config.resolved_eval_train_sample and not config.streaming else None
    streamed = [StreamStateCallback(data.train)] if config.streaming else []  # before the completion marker
    stop = StopOnSignal()  # SIGTERM / Ctrl-C: save at the next step end, then exit non-zero
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=eval_rows,
        data_collator=checked_collator(config, model, tokenizer), processing_class=tokenizer,
        callbacks=[*build_callbacks(config, tokenizer, data), *streamed, CheckpointCompleteCallback(config), stop],
        loss_chunk_size=loss_chunk_size(config, vocabulary(model)), train_sample=train_sample, recipe=config,
        eval_parts=eval_parts)
    # the fast loss proves itself on this model before any step (on training rows when none are held out)
    trainer.verify_loss(eval_rows if eval_rows is not None else first_rows(data.train))
    use_console(trainer)  # one live bar or plain lines, one line per evaluation; no raw dicts
    loggers_last(trainer)  # throughput and nan_guard add to the logs before wandb/tensorboard report them
    return trainer, stop


def first_rows(train, n: int = 2):
    """A few training rows, for the loss check of a run without evaluation rows (a stream: its first)."""
    if isinstance(train, torch.utils.data.IterableDataset):  # a copy: the stream's own position must not move
        return [row for row, _ in zip(copy.deepcopy(train), range(n))] or None
    return train.select(range(min(n, len(train))))


def vocabulary(model) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)


def has_experts(model) -> bool:
    """A mixture of experts, by its config or its modules (experts, routers)."""
    config = getattr(model, "config", None)
    counts = [getattr(config, n, None) for n in ("num_experts", "num_local_experts", "n_routed_experts",
                                                 "moe_num_experts")]
    return any(isinstance(c, int) and c > 1 for c in counts) or \
        any("Expert" in type(m).__name__ or "Router" in type(m).__name__ for m in model.modules())


def checkpointing_supported(model, args) -> bool:
    """Gradient checkpointing is on by default on a GPU; a model that cannot do it trains without
    it (the Trainer would raise), with one log line saying so."""
    if args.activation_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        log.info("%s does not support gradient checkpointing; training without it", type(model).__name__)
        args.activation_checkpointing = args.gradient_checkpointing = False
    return bool(args.activation_checkpointing)
