"""`SFTConfig`: the small, typed set of knobs a recipe may set.

The config is deliberately *not* a `TrainingArguments` subclass: recipes see a few dozen
documented fields, `to_training_arguments` maps the trainer-related ones explicitly, and the
rare knobs go through the `training_args` pass-through mapping.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..formats import DEFAULT_FORMAT, Form, form_of, format_names, get_format, prompt_format
from .sources import DataSource, check_columns, check_sources
from ..errors import RecipeError
from .lora import LoraSettings
from .keys import BUILTIN_CALLBACKS, DEFAULT_CALLBACKS, MAPPED_TRAINING_ARGS, is_secret_key

TrainOn = Literal["all_assistant", "last_assistant"]


@dataclass
class SFTConfig:
    """Every field a recipe may set. The help text is what `sft-recipe train --help` shows.

    Pure data: nothing here imports torch or transformers (see `hardware.py`).
    """

    # --- model and tokenizer -------------------------------------------------------------
    model_name: str | None = field(default=None, metadata={"help": "Hub id or local directory of a causal LM."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Hub id or local directory; defaults to model_name."}
    )
    from_scratch: bool = field(default=False, metadata={"help": "Build the model from `model_config` with random weights."})
    model_config: dict[str, Any] | None = field(
        default=None, metadata={"help": "With from_scratch: kwargs for AutoConfig.for_model, including model_type."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager | sdpa | flash_attention_2; default: the best available."}
    )

    # --- data ----------------------------------------------------------------------------
    dataset: str | None = field(
        default=None,
        metadata={"help": "Hub id, or a local .json/.jsonl/.csv/.parquet/.txt file or directory."},
    )
    dataset_format: str = field(
        default=DEFAULT_FORMAT, metadata={"help": " | ".join(format_names()) + " (see README 'Data formats')."}
    )
    columns: dict[str, str] | None = field(
        default=None, metadata={"help": "Format column: dataset column, e.g. {instruction: question, output: answer}."}
    )
    datasets: list[DataSource] | None = field(
        default=None, metadata={"help": "A mixture instead of `dataset`: [{path, format, weight, columns, name, split, "
                                        "config, max_examples}]; see README 'Mixtures'."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of rows (of tokens, for text) held out for evaluation."}
    )
    max_examples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on a fixed, seeded sample of at most N held-out rows (blocks, for text): "
                          "cheaper evaluations, e.g. the tutorial's eval_iters x batch_size."},
    )
    max_length: int = field(default=512, metadata={"help": "Longest tokenized row; block size for text."})
    chat_template: str | None = field(
        default=None, metadata={"help": "A .jinja file or a built-in name (chatml) for messages data."}
    )
    chat_template_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Extra variables for the chat template, e.g. {enable_thinking: false} (Qwen3) or "
                          "{date_string: 26 Jul 2024} (Llama 3 stamps today's date otherwise)."},
    )
    train_on: TrainOn = field(
        default="all_assistant", metadata={"help": "Which assistant turns carry loss: all_assistant | last_assistant."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data, tokenized on the fly (needs max_steps)."})
    streaming_eval_examples: int = field(
        default=256, metadata={"help": "With streaming: held-out rows (blocks, for text) from the stream's start."})
    num_proc: int | None = field(
        default=None, metadata={"help": "Processes for tokenization; default: all cores for large datasets."}
    )

    # --- batching ------------------------------------------------------------------------
    batch_size: int = field(default=8, metadata={"help": "Rows per device per micro-batch."})
    eval_batch_size: int | None = field(default=None, metadata={"help": "Defaults to batch_size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    packing: bool | Literal["batch_concat", "bfd"] = field(
        default=False,
        metadata={"help": "Padding-free batches, position_ids restarting per row: batch_concat (or true) joins "
                          "each micro-batch's rows; bfd packs rows into bins of max_length by best-fit decreasing."},
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Batch rows of similar length together (padded path): less padding, but batches of "
                          "one length are often one kind of row, which can slow learning a lot."},
    )
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad batch length to a multiple of N."})

    # --- optimisation --------------------------------------------------------------------
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    num_epochs: float = field(default=3.0, metadata={"help": "Epochs over the training split."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after N optimizer steps (beats num_epochs)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Any transformers scheduler name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    seed: int = field(default=42, metadata={"help": "Seed for init, shuffling and the split."})
    loss_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per LM-head chunk in the trainable-only loss; 0 uses the model's own loss. "
                          "Default: 1024 on a GPU, 128 on the CPU."},
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "auto: bf16 on GPUs that support it, else fp32."}
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute each layer's activations in backward instead of keeping them: far less "
                          "activation memory for one more decoder forward. Default: on a GPU, off on the CPU."},
    )
    release_host_memory: bool = field(
        default=False,
        metadata={"help": "Linux: hand freed tensor memory back to the system at once (lower peak RSS on the CPU, "
                          "slower: see benchmarks/README.md)."},
    )

    # --- evaluation, logging, saving -----------------------------------------------------
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_steps: int = field(default=100, metadata={"help": "Evaluate every N optimizer steps."})
    eval_on_start: bool = field(default=False, metadata={"help": "Also evaluate before the first step."})
    eval_train_sample: bool | None = field(
        default=None,
        metadata={"help": "At each eval, also report the loss on a fixed, seeded sample of training rows "
                          "(as many as eval rows, at most 1024) as train_sample_loss; default: on for text."},
    )
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps (a multiple of eval_steps)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints (best is kept)."})
    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints and best/ go."})
    report_to: list[str] = field(default_factory=list, metadata={"help": "Loggers, e.g. [wandb, tensorboard]."})
    generation_eval_samples: int = field(
        default=0,
        metadata={"help": "After training, generate answers for N held-out rows and score exact match."},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Generation length for generation_eval_samples."})

    callbacks: list[str] = field(
        default_factory=lambda: list(DEFAULT_CALLBACKS),
        metadata={"help": "Callbacks: built-in names (nan_guard, throughput, loss_curve, samples, early_stopping) "
                          "or dotted import paths of TrainerCallback classes; replaces the default list "
                          "[nan_guard, throughput, loss_curve]."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without eval-loss improvement."}
    )
    sample_prompts: list[str] = field(
        default_factory=list, metadata={"help": "Fixed prompts whose generations are logged at each eval."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start fresh instead of resuming from the last checkpoint."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push best/ to the hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id for push_to_hub."})
    lora: LoraSettings | None = field(
        default=None, metadata={"help": "LoRA adapters via peft: {r, alpha, dropout, target_modules, load_in_4bit}."}
    )

    # --- escape hatch --------------------------------------------------------------------
    training_args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Rare TrainingArguments fields, passed through unchanged."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject values that would fail later, deep inside a library, with a worse message."""
        for f in dataclasses.fields(self):  # `--output_dir=` or `model_name: ""`: never a usable name
            value = getattr(self, f.name)
            if isinstance(value, str) and not value.strip():
                raise RecipeError(f"recipe key '{f.name}' is empty")
        if self.dataset is None and self.datasets is None:
            raise RecipeError("recipe key 'dataset' is required (a hub id or a local file), or 'datasets' (a mixture)")
        if self.dataset is not None and self.datasets is not None:
            raise RecipeError("set 'dataset' or 'datasets' (a mixture), not both")
        get_format(self.dataset_format)
        self.columns = check_columns(self.columns, "columns")
        if self.datasets is not None:  # the top-level format then only says how the model is prompted
            self.datasets = check_sources(self.datasets)
            self.dataset_format = prompt_format([s.format for s in self.datasets])
        self.packing = "batch_concat" if self.packing is True else self.packing
        if self.streaming and (self.max_steps is None or self.packing == "bfd"):
            raise RecipeError("streaming: true needs 'max_steps' (a stream has no length to count epochs by)" if
                              self.max_steps is None else "streaming: true cannot pack with bfd (it needs the whole "
                              "training split up front); use packing: batch_concat")
        if self.model_name is None and not self.from_scratch:
            raise RecipeError("recipe key 'model_name' is required unless from_scratch is true")
        if self.from_scratch and not (self.model_config and "model_type" in self.model_config):
            raise RecipeError("from_scratch: true needs 'model_config' with a 'model_type' (e.g. gpt2, llama)")
        if self.from_scratch and self.tokenizer_name is None and self.model_name is None:
            raise RecipeError("from_scratch: true needs 'tokenizer_name'")
        for name in ("max_length", "batch_size", "gradient_accumulation_steps", "logging_steps", "eval_steps",
                     "save_steps", "streaming_eval_examples"):
            if getattr(self, name) <= 0:
                raise RecipeError(f"recipe key '{name}' must be > 0, got {getattr(self, name)}")
        for name in ("eval_batch_size", "max_examples", "max_eval_samples", "max_steps", "num_proc",
                     "pad_to_multiple_of", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RecipeError(f"recipe key '{name}' must be > 0, got {value}")
        for name in ("warmup_steps", "generation_eval_samples", "loss_chunk_size"):
            if (getattr(self, name) or 0) < 0:
                raise RecipeError(f"recipe key '{name}' must be >= 0, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise RecipeError(f"recipe key 'learning_rate' must be a positive number, got {self.learning_rate}")
        if not self.num_epochs > 0:
            raise RecipeError(f"recipe key 'num_epochs' must be > 0, got {self.num_epochs}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise RecipeError(f"recipe key 'eval_fraction' must be in (0, 1), got {self.eval_fraction}")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise RecipeError("recipe keys 'max_grad_norm' and 'weight_decay' must be >= 0")
        if self.save_steps % self.eval_steps:
            raise RecipeError(
                f"recipe key 'save_steps' ({self.save_steps}) must be a multiple of 'eval_steps' "
                f"({self.eval_steps}) so that the best checkpoint can be kept"
            )
        for name in self.callbacks:
            if name not in BUILTIN_CALLBACKS and "." not in name:
                close = difflib.get_close_matches(name, BUILTIN_CALLBACKS, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RecipeError(f"recipe key 'callbacks': unknown callback '{name}'{hint}; built-in: "
                                  f"{', '.join(BUILTIN_CALLBACKS)}, or a dotted path like my_pkg.MyCallback")
        if self.early_stopping_patience is not None and self.early_stopping_patience <= 0:
            raise RecipeError(f"recipe key 'early_stopping_patience' must be > 0, got {self.early_stopping_patience}")
        if self.push_to_hub and not self.hub_model_id:
            raise RecipeError("push_to_hub: true needs 'hub_model_id' (e.g. your-name/model-name)")
        if self.lora is not None:
            if self.from_scratch:
                raise RecipeError("recipe key 'lora' needs a pretrained model_name; from_scratch trains all weights")
            self.lora = LoraSettings.from_mapping(self.lora)  # `lora: {}` means LoRA with the defaults
        overlap = sorted(set(self.training_args) & MAPPED_TRAINING_ARGS)
        if overlap:
            raise RecipeError(f"'training_args' sets {overlap}, which the recipe maps itself; set the recipe keys instead")
        secrets = sorted(k for k in self.training_args if is_secret_key(k))
        if secrets:
            # Trainer pickles its arguments into every checkpoint (training_args.bin).
            raise RecipeError(
                f"'training_args' sets {secrets}: credentials would be saved with every checkpoint; "
                f"use the HF_TOKEN environment variable or `hf auth login` instead"
            )

    @property
    def resolved_eval_train_sample(self) -> bool:
        return self.form is Form.TEXT if self.eval_train_sample is None else self.eval_train_sample

    @property
    def form(self) -> Form:
        """The internal form the rows take (`formats.Form`): what every later step asks."""
        return form_of(self.dataset_format)

    @property
    def resolved_tokenizer_name(self) -> str:
        return self.tokenizer_name or self.model_name  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
