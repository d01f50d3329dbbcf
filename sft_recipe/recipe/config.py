"""`SFTConfig`: the small, typed set of knobs a recipe may set.

The config is deliberately *not* a `TrainingArguments` subclass: recipes see a few dozen
documented fields, `to_training_arguments` maps the trainer-related ones explicitly, and the
rare knobs go through the `training_args` pass-through mapping. Each key is declared once here
(`keys.key`); `python -m sft_recipe.recipe.config` prints docs/recipe-keys.md's table of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import RecipeError, did_you_mean
from ..formats import DEFAULT_FORMAT, Form, form_of, format_names, get_format, prompt_format
from .keys import (BATCHING, BUILTIN_CALLBACKS, DATA, DEFAULT_CALLBACKS, ESCAPE, EVALUATION, EXTENDS, FREE, MODEL,
                   OPTIMISATION, fraction, is_secret_key, key, key_table, mapped_training_args, non_negative, positive,
                   positive_number, positive_or_auto, run_checks)
from .lora import LoraSettings
from .sources import DataSource, check_columns, check_evaluation, check_sources, eval_sets

TrainOn = Literal["all_assistant", "last_assistant"]


@dataclass
class SFTConfig:
    """Every key a recipe may set, each declared once (`keys.key`: default, help, section, where it
    goes, resume rule, check). Pure data: nothing here imports torch or transformers."""

    # --- model and tokenizer -------------------------------------------------------------
    model_name: str | None = key(None, "Hub id or local directory of a causal LM.", MODEL, "model")
    tokenizer_name: str | None = key(None, "Hub id or local directory; defaults to model_name.", MODEL, "model")
    from_scratch: bool = key(False, "Build the model from `model_config` with random weights.", MODEL, "model")
    model_config: dict[str, Any] | None = key(
        None, "With from_scratch: kwargs for AutoConfig.for_model, including model_type.", MODEL, "model")
    trust_remote_code: bool = key(False, "Allow custom model code from the hub.", MODEL, "model")
    attn_implementation: str | None = key(
        None, "eager | sdpa | flash_attention_2; default: the best available.", MODEL, "model")

    # --- data ----------------------------------------------------------------------------
    dataset: str | None = key(None, "Hub id, or a local .json/.jsonl/.csv/.parquet/.txt file or directory.",
                              DATA, "data")
    dataset_format: str = key(DEFAULT_FORMAT, " | ".join(format_names()) + " (docs/data-formats.md).", DATA, "data")
    columns: dict[str, str] | None = key(
        None, "Format column: dataset column, e.g. {instruction: question, output: answer}.", DATA, "data")
    datasets: list[DataSource] | None = key(
        None, "A mixture instead of `dataset`: [{path, format, weight, columns, name, split, config, max_examples}]; "
              "see docs/mixtures-and-streaming.md.", DATA, "data")
    dataset_config: str | None = key(None, "Hub dataset configuration name.", DATA, "data")
    dataset_split: str = key("train", "Split to train on.", DATA, "data")
    eval_fraction: float | None = key(
        None, "Share of rows (of tokens, for text) held out for evaluation; default 0.1 without an eval_dataset; "
              "0: no evaluation.", DATA, "data", check=fraction)
    eval_dataset: Any = key(
        None, "Evaluation rows of their own: a path or hub id, a mapping {path, format, columns, split, config, "
              "max_examples}, or named sets {name: ...} (eval_<name>_loss); docs/evaluation.md.", DATA, "data")
    eval_split: str | None = key(None, "The dataset's own evaluation split (hub, or a directory of train/test "
                                       "files), e.g. test_sft or validation.", DATA, "data")
    max_examples: int | None = key(None, "Use only the first N rows.", DATA, "data", check=positive)
    max_eval_samples: int | None = key(
        None, "Evaluate on a fixed, seeded sample of at most N held-out rows (blocks, for text): cheaper "
              "evaluations, e.g. the tutorial's eval_iters x batch_size.", DATA, "data", check=positive)
    max_length: int = key(512, "Longest tokenized row; block size for text.", DATA, "data", check=positive)
    chat_template: str | None = key(None, "A .jinja file or a built-in name (chatml) for messages data.", DATA, "data")
    chat_template_kwargs: dict[str, Any] = key(
        help="Extra variables for the chat template, e.g. {enable_thinking: false} (Qwen3) or "
             "{date_string: 26 Jul 2024} (Llama 3 stamps today's date otherwise).", section=DATA, goes="data",
        factory=dict)
    data_fidelity: Literal["error", "warn"] = key(
        "error", "What a chat template drops or alters of a row (a system prompt, reasoning, tool-call arguments): "
                 "error stops before training with one line; warn says it once and trains what the template "
                 "writes.", DATA, "data", FREE)
    train_dropped_reasoning: bool = key(
        False, "Train the reasoning of assistant turns the template drops, each such turn as a row of its own "
               "written as at inference (docs/chat-data.md).", DATA, "data")
    train_on: TrainOn = key("all_assistant", "Which assistant turns carry loss: all_assistant | last_assistant.",
                            DATA, "data")
    streaming: bool = key(False, "Stream the data, tokenized on the fly (needs max_steps).", DATA, "data",
                          to=("ignore_data_skip",))
    streaming_eval_examples: int = key(
        256, "With streaming: held-out rows (blocks, for text) from the stream's start; 0: no evaluation.", DATA,
        "data", check=non_negative)
    cache_prepared_data: bool = key(
        True, "Keep the prepared rows and reuse them when the same recipe runs again on the same files, tokenizer "
              "and template (docs/speed-and-memory.md).", DATA, "data", FREE)
    num_proc: int | None = key(None, "Processes for tokenization; default: all cores for large datasets.",
                               DATA, "data", FREE, check=positive)

    # --- batching ------------------------------------------------------------------------
    batch_size: int | Literal["auto"] = key(
        8, "Rows per device per micro-batch; auto: the largest that fits memory_budget (needs "
           "effective_batch_size).", BATCHING, "trainer", to=("per_device_train_batch_size",), check=positive_or_auto)
    effective_batch_size: int | None = key(
        None, "With batch_size: auto, rows per optimizer step per process (batch_size x accumulation, kept "
              "exactly).", BATCHING, "run", check=positive)
    memory_budget: str | None = key(
        None, "A size (6GiB) or auto (free memory less 10%): the run chooses micro-batch, accumulation, loss "
              "chunk, tiles and checkpointing to fit (sft-recipe plan shows the prediction).", BATCHING, "run", FREE)
    eval_batch_size: int | None = key(None, "Defaults to batch_size.", BATCHING, "trainer", FREE,
                                      to=("per_device_eval_batch_size",), check=positive)
    gradient_accumulation_steps: int = key(1, "Micro-batches per optimizer step.", BATCHING, "trainer",
                                           to=("gradient_accumulation_steps",), check=positive)
    packing: bool | Literal["batch_concat", "bfd"] = key(
        False, "Padding-free batches, position_ids restarting per row: batch_concat (or true) joins each "
               "micro-batch's rows; bfd packs rows into bins of max_length by best-fit decreasing.", BATCHING, "data")
    group_by_length: bool = key(
        False, "Batch rows of similar length together (padded path): less padding, but batches of one length are "
               "often one kind of row, which can slow learning a lot.", BATCHING, "trainer",
        to=("train_sampling_strategy",))
    pad_to_multiple_of: int | None = key(None, "Pad batch length to a multiple of N.", BATCHING, "data", check=positive)

    # --- optimisation --------------------------------------------------------------------
    learning_rate: float = key(2e-5, "Peak learning rate.", OPTIMISATION, "trainer", to=("learning_rate",),
                               check=positive_number)
    num_epochs: float = key(3.0, "Epochs over the training split.", OPTIMISATION, "trainer", EXTENDS,
                            to=("num_train_epochs",), check=positive)
    max_steps: int | None = key(None, "Stop after N optimizer steps (beats num_epochs).", OPTIMISATION, "trainer",
                                EXTENDS, to=("max_steps",), check=positive)
    warmup_steps: int = key(0, "Linear warm-up steps.", OPTIMISATION, "trainer", to=("warmup_steps",),
                            check=non_negative)
    weight_decay: float = key(0.01, "AdamW weight decay.", OPTIMISATION, "trainer", to=("weight_decay",),
                              check=non_negative)
    lr_scheduler_type: str = key("linear", "Any transformers scheduler name.", OPTIMISATION, "trainer",
                                 to=("lr_scheduler_type",))
    max_grad_norm: float = key(1.0, "Gradient clipping norm.", OPTIMISATION, "trainer", to=("max_grad_norm",),
                               check=non_negative)
    seed: int = key(42, "Seed for init, shuffling and the split.", OPTIMISATION, "trainer", to=("seed", "data_seed"))
    loss_chunk_size: int | None = key(
        None, "Tokens per LM-head chunk in the trainable-only loss; 0 uses the model's own loss. Default: as many as "
              "fit 256 MiB of fp32 logits on the CPU (1 GiB on a GPU), at least 128, at most 256 on the CPU.",
        OPTIMISATION, "model", FREE, check=non_negative)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = key(
        "auto", "auto: bf16 on GPUs that support it, else fp32.", OPTIMISATION, "trainer", to=("bf16", "fp16"))
    torch_compile: bool = key(False, "Compile the model with torch.compile.", OPTIMISATION, "trainer",
                              to=("torch_compile",))
    gradient_checkpointing: bool | None = key(
        None, "Recompute each layer's activations in backward instead of keeping them: far less activation memory "
              "for one more decoder forward. Default: on a GPU, off on the CPU.", OPTIMISATION, "trainer", FREE,
        to=("activation_checkpointing", "activation_checkpointing_kwargs"))
    ddp_timeout: int = key(
        600, "Seconds a process waits for the others in a collective before the run ends (several processes or "
             "machines); a lost machine ends the run within it (at once on the CPU's gloo). Raise it if the main "
             "process tokenizes longer than this while the others wait.", OPTIMISATION, "trainer", FREE,
        to=("ddp_timeout",), check=positive)
    mlp_tile_tokens: int = key(
        0, "Run each decoder MLP over tiles of N tokens, recomputing a tile in backward: the MLP's activations of one "
           "tile instead of the whole batch, for one more MLP forward (most useful with gradient_checkpointing and "
           "long rows). 0: off.", OPTIMISATION, "model", FREE, check=non_negative)
    release_host_memory: bool = key(
        False, "Linux: hand every freed tensor from 128 KiB up back to the system at once (the default does it from "
               "1 MiB up, with huge pages): lower peak RSS on the CPU, slower for small models (benchmarks/README.md).",
        OPTIMISATION, "run", FREE)

    # --- evaluation, logging, saving -----------------------------------------------------
    logging_steps: int = key(10, "Log every N optimizer steps.", EVALUATION, "trainer", FREE, to=("logging_steps",),
                             check=positive)
    eval_steps: int = key(100, "Evaluate every N optimizer steps.", EVALUATION, "trainer", FREE, to=("eval_steps",),
                          check=positive)
    eval_on_start: bool = key(False, "Also evaluate before the first step.", EVALUATION, "trainer", FREE,
                              to=("eval_on_start",))
    eval_train_sample: bool | None = key(
        None, "At each eval, also report the loss on a fixed, seeded sample of training rows (as many as eval rows, "
              "at most 1024) as train_sample_loss; default: on for text.", EVALUATION, "run", FREE)
    save_steps: int = key(100, "Checkpoint every N steps (a multiple of eval_steps).", EVALUATION, "trainer", FREE,
                          to=("save_steps",), check=positive)
    save_total_limit: int | None = key(2, "Keep at most N checkpoints (best is kept).", EVALUATION, "trainer", FREE,
                                       to=("save_total_limit",), check=positive)
    output_dir: str = key("outputs/run", "Where checkpoints and best/ go.", EVALUATION, "trainer", FREE,
                          to=("output_dir",))
    report_to: list[str] = key(help="Loggers, e.g. [wandb, tensorboard].", section=EVALUATION, goes="trainer",
                               resume=FREE, to=("report_to",), factory=list)
    generation_eval_samples: int = key(
        0, "After training, generate answers for N held-out rows and score exact match.", EVALUATION, "run", FREE,
        check=non_negative)
    max_new_tokens: int = key(128, "Generation length for generation_eval_samples.", EVALUATION, "run", FREE)
    callbacks: list[str] = key(
        help="Callbacks: built-in names (" + ", ".join(BUILTIN_CALLBACKS) + ") or dotted import paths of "
             "TrainerCallback classes; replaces the default list [" + ", ".join(DEFAULT_CALLBACKS) + "].",
        section=EVALUATION, goes="run", resume=FREE, factory=lambda: list(DEFAULT_CALLBACKS))
    early_stopping_patience: int | None = key(
        None, "Stop after N evaluations without eval-loss improvement.", EVALUATION, "run", EXTENDS, check=positive)
    sample_prompts: list[str] = key(help="Fixed prompts whose generations are logged at each eval.",
                                    section=EVALUATION, goes="run", resume=FREE, factory=list)
    bench_tasks: list[str] = key(help="After training, lm-evaluation-harness tasks scored on best/ (pip install -e "
                                      "'.[bench]'; docs/evaluation.md).", section=EVALUATION, goes="run",
                                 resume=FREE, factory=list)
    bench_include_path: str | None = key(None, "A folder of local harness task YAMLs for bench_tasks.", EVALUATION,
                                         "run", FREE)
    bench_limit: float | None = key(None, "At most this many examples per bench task (< 1: a share).", EVALUATION,
                                    "run", FREE, check=positive)
    overwrite_output_dir: bool = key(False, "Start fresh instead of resuming from the last checkpoint.",
                                     EVALUATION, "run", FREE)
    push_to_hub: bool = key(False, "Push best/ to the hub at the end.", EVALUATION, "run", FREE)
    hub_model_id: str | None = key(None, "Hub repo id for push_to_hub.", EVALUATION, "run", FREE)
    lora: LoraSettings | None = key(
        None, "LoRA adapters via peft: {r, alpha, dropout, target_modules, load_in_4bit}.", EVALUATION, "lora")

    # --- escape hatch --------------------------------------------------------------------
    training_args: dict[str, Any] = key(help="Rare TrainingArguments fields, passed through unchanged.",
                                        section=ESCAPE, goes="pass-through", factory=dict)

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
        check_evaluation(self)
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
        run_checks(self)  # each key's own check, as declared
        if self.evaluates and self.save_steps % self.eval_steps:
            raise RecipeError(f"recipe key 'save_steps' ({self.save_steps}) must be a multiple of 'eval_steps' "
                              f"({self.eval_steps}) so that the best checkpoint can be kept")
        for name in self.callbacks:
            if name not in BUILTIN_CALLBACKS and "." not in name:
                raise RecipeError(f"recipe key 'callbacks': unknown callback '{name}'"
                                  f"{did_you_mean(name, BUILTIN_CALLBACKS)}; built-in: "
                                  f"{', '.join(BUILTIN_CALLBACKS)}, or a dotted path like my_pkg.MyCallback")
        if self.push_to_hub and not self.hub_model_id:
            raise RecipeError("push_to_hub: true needs 'hub_model_id' (e.g. your-name/model-name)")
        if self.lora is not None:
            if self.from_scratch:
                raise RecipeError("recipe key 'lora' needs a pretrained model_name; from_scratch trains all weights")
            self.lora = LoraSettings.from_mapping(self.lora)  # `lora: {}` means LoRA with the defaults
        overlap = sorted(set(self.training_args) & MAPPED_TRAINING_ARGS)
        if overlap:
            raise RecipeError(f"'training_args' sets {overlap}, which the recipe maps itself; set the recipe keys "
                              "instead")
        secrets = sorted(k for k in self.training_args if is_secret_key(k))
        if secrets:
            # Trainer pickles its arguments into every checkpoint (training_args.bin).
            raise RecipeError(f"'training_args' sets {secrets}: credentials would be saved with every checkpoint; "
                              f"use the HF_TOKEN environment variable or `hf auth login` instead")

    @property
    def eval_sets(self) -> list[DataSource]:
        """The evaluation sets of their own (`eval_dataset`, or `eval_split` of the dataset), parsed."""
        value = {"split": self.eval_split} if self.eval_split is not None else self.eval_dataset
        return eval_sets(value, self.dataset, self.dataset_format, self.columns, self.dataset_config)

    @property
    def eval_share(self) -> float:
        """The share of each training source held out: none when evaluation rows come from elsewhere."""
        if self.eval_fraction is not None:
            return self.eval_fraction
        return 0.0 if self.eval_dataset is not None or self.eval_split is not None else 0.1

    @property
    def evaluates(self) -> bool:
        """Whether the run has any evaluation rows (else: no evaluation, best/ is the last step)."""
        if self.eval_dataset is not None or self.eval_split is not None or any(s.eval for s in self.datasets or []):
            return True
        return self.streaming_eval_examples > 0 if self.streaming else self.eval_share > 0

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


# Every TrainingArguments field the recipe sets itself (a `training_args` entry may not set one).
MAPPED_TRAINING_ARGS = mapped_training_args(SFTConfig)

if __name__ == "__main__":
    print(key_table(SFTConfig), end="")
