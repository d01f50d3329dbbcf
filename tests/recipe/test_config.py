"""The explicit SFTConfig -> TrainingArguments mapping: every recipe key is accounted for."""

from __future__ import annotations

import dataclasses

import pytest

from sft_recipe.recipe.config import MAPPED_TRAINING_ARGS, SFTConfig
from sft_recipe.errors import RecipeError
from sft_recipe.training.arguments import to_training_arguments

# For each recipe key that drives TrainingArguments: another valid value, and what it must set.
MAPPED = {
    "output_dir": ("elsewhere", {"output_dir": "elsewhere"}),
    "batch_size": (3, {"per_device_train_batch_size": 3, "per_device_eval_batch_size": 3}),
    "eval_batch_size": (5, {"per_device_eval_batch_size": 5}),
    "gradient_accumulation_steps": (4, {"gradient_accumulation_steps": 4}),
    "learning_rate": (1e-3, {"learning_rate": 1e-3}),
    "num_epochs": (2.0, {"num_train_epochs": 2.0}),
    "max_steps": (9, {"max_steps": 9}),
    "warmup_steps": (7, {"warmup_steps": 7}),
    "weight_decay": (0.2, {"weight_decay": 0.2}),
    "lr_scheduler_type": ("cosine", {"lr_scheduler_type": "cosine"}),
    "max_grad_norm": (0.5, {"max_grad_norm": 0.5}),
    "seed": (7, {"seed": 7, "data_seed": 7}),
    "logging_steps": (3, {"logging_steps": 3}),
    "eval_steps": (50, {"eval_steps": 50}),
    "eval_on_start": (True, {"eval_on_start": True}),
    "save_steps": (200, {"save_steps": 200}),
    "save_total_limit": (5, {"save_total_limit": 5}),
    "report_to": (["tensorboard"], {"report_to": ["tensorboard"]}),
    "group_by_length": (True, {"train_sampling_strategy": "group_by_length"}),
    "precision": ("bf16", {"bf16": True}),
    "torch_compile": (True, {"torch_compile": True}),
    "gradient_checkpointing": (False, {"activation_checkpointing": False, "activation_checkpointing_kwargs": None}),
    "ddp_timeout": (120, {"ddp_timeout": 120}),
}

BASE = {"model_name": "m", "dataset": "d.jsonl", "output_dir": "out"}
# Keys that do not set a TrainingArguments field of their own name (data, model, run, LoRA, pass-through).
NOT_TRAINING_ARGS = frozenset(f.name for f in dataclasses.fields(SFTConfig) if f.metadata["goes"] != "trainer")


def test_every_field_is_mapped_or_consumed_elsewhere():
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    assert fields == set(MAPPED) | NOT_TRAINING_ARGS, "classify new recipe keys in config.py and here"
    assert not set(MAPPED) & NOT_TRAINING_ARGS


@pytest.mark.parametrize("key", sorted(MAPPED))
def test_field_reaches_training_arguments(key):
    value, expected = MAPPED[key]
    args = to_training_arguments(SFTConfig(**{**BASE, key: value}))
    for name, want in expected.items():
        assert getattr(args, name) == want, (key, name)


def test_fixed_policy():
    args = to_training_arguments(SFTConfig(**BASE))
    assert args.eval_strategy == "steps" and args.save_strategy == "steps"
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False
    assert args.lr_scheduler_type == "linear" and args.weight_decay == 0.01
    assert args.use_cache is False  # a KV cache lets packed rows see each other
    assert args.average_tokens_across_devices is True
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]
    assert not args.bf16 and not args.fp16  # CPU stays fp32
    assert args.train_sampling_strategy == "batch_rebalance"  # ours: training/sampling.py


@pytest.mark.parametrize("keys", [dict(packing=True), dict(packing="bfd"), dict(streaming=True, max_steps=5),
                                  dict(dataset_format="text")])
def test_rows_without_padding_or_an_index_are_read_in_random_order(keys):
    for grouped in (False, True):
        config = SFTConfig(**{**BASE, **keys, "group_by_length": grouped})
        assert to_training_arguments(config).train_sampling_strategy == "random"


def test_pass_through_and_its_errors():
    args = to_training_arguments(SFTConfig(**BASE, training_args={"adam_beta2": 0.95}))
    assert args.adam_beta2 == 0.95
    with pytest.raises(RecipeError, match="training_args"):
        to_training_arguments(SFTConfig(**BASE, training_args={"not_a_field": 1}))


def test_mapped_names_are_real_training_arguments():
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert MAPPED_TRAINING_ARGS <= names
