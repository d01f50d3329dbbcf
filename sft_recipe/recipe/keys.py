"""Where each recipe key goes: TrainingArguments fields the recipe maps itself, keys consumed before
training, the built-in callbacks, and which keys hold secrets. `SFTConfig` validates against these;
`training_args.py` checks its mapping covers `MAPPED_TRAINING_ARGS` exactly."""

from __future__ import annotations

# Built-in callbacks (sft_recipe/callbacks/), and the ones a recipe gets when it names none.
BUILTIN_CALLBACKS = ("nan_guard", "throughput", "loss_curve", "samples", "early_stopping")
DEFAULT_CALLBACKS = ("nan_guard", "throughput", "loss_curve")


def is_secret_key(key: str) -> bool:
    """`hub_token`, `token`, ...: the same rule `TrainingArguments.to_dict` uses to mask values."""
    return key == "token" or key.endswith("_token")


# TrainingArguments fields that `to_training_arguments` sets from recipe keys.
MAPPED_TRAINING_ARGS = frozenset({
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "learning_rate", "num_train_epochs", "max_steps", "warmup_steps", "weight_decay", "lr_scheduler_type",
    "max_grad_norm", "seed", "data_seed", "logging_steps", "eval_strategy", "eval_steps", "eval_on_start",
    "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "report_to", "train_sampling_strategy", "bf16", "fp16", "torch_compile",
    "remove_unused_columns", "use_cache", "average_tokens_across_devices", "include_num_input_tokens_seen",
    "tf32", "optim", "dataloader_pin_memory", "disable_tqdm", "use_cpu", "logging_nan_inf_filter",
    "activation_checkpointing", "activation_checkpointing_kwargs", "ignore_data_skip",
})

# Recipe keys consumed before training (data, model, generation), never by TrainingArguments.
NOT_TRAINING_ARGS = frozenset({
    "model_name", "tokenizer_name", "from_scratch", "model_config", "trust_remote_code", "attn_implementation",
    "dataset", "dataset_format", "dataset_config", "dataset_split", "eval_fraction", "max_examples",
    "max_eval_samples", "columns", "datasets", "streaming", "streaming_eval_examples",
    "max_length", "chat_template", "chat_template_kwargs", "train_on", "num_proc", "packing", "pad_to_multiple_of",
    "loss_chunk_size", "generation_eval_samples", "max_new_tokens", "training_args", "callbacks", "eval_train_sample",
    "early_stopping_patience", "sample_prompts", "overwrite_output_dir", "push_to_hub", "hub_model_id", "lora",
    "release_host_memory",
})
