"""The training run, top to bottom: recipe -> data -> tokens -> model -> Trainer -> best/.

Tokens per optimizer step = batch_size x gradient_accumulation_steps x processes x (row length),
and the loss is the mean over the *trainable* tokens of that whole step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .config import SFTConfig, to_training_arguments
from .errors import DataError

log = logging.getLogger("sft_recipe")


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels (and length)
    eval: Any
    eval_raw: Any | None  # held-out rows before tokenization, for generation checks
    stats: dict[str, Any]


def prepare_data(config: SFTConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenize: exactly the rows training will see."""
    from .data import load_raw, split_rows
    from .tokenize import TokenStats, row_stats, tokenize_prompt_completion, tokenize_text

    source = config.dataset or ""
    raw, dropped_empty = load_raw(config)
    if config.dataset_format == "text":
        add_eos = not source.lower().endswith(".txt")  # a .txt is one running text, not documents
        train, eval_, split_stats = tokenize_text(raw, tokenizer, config.max_length, config.eval_fraction,
                                                  add_eos=add_eos, num_proc=config.num_proc)
        return PreparedData(train, eval_, None, {k: v.to_dict() for k, v in split_stats.items()})
    train_raw, eval_raw = split_rows(raw, config.eval_fraction, config.seed, source)
    if "messages" in train_raw.column_names:  # also prompt/completion given as message lists
        from .chat import tokenize_messages

        tokenized = {name: tokenize_messages(part, tokenizer, config)
                     for name, part in (("train", train_raw), ("eval", eval_raw))}
        stats = {name: s for name, (_, s) in tokenized.items()}
        train, eval_ = tokenized["train"][0], tokenized["eval"][0]
    else:
        train = tokenize_prompt_completion(train_raw, tokenizer, config.max_length, config.num_proc)
        eval_ = tokenize_prompt_completion(eval_raw, tokenizer, config.max_length, config.num_proc)
        stats = {"train": row_stats(len(train_raw), train), "eval": row_stats(len(eval_raw), eval_)}
    stats["train"] = stats["train"].add(TokenStats(rows=dropped_empty, dropped_empty=dropped_empty))
    for name, part in (("train", train), ("eval", eval_)):
        if len(part) == 0:
            raise DataError(
                f"{source}: the {name} split is empty after filtering ({stats[name].summary()}); "
                f"raise max_length (now {config.max_length}) or check the data"
            )
    return PreparedData(train, eval_, eval_raw, {k: v.to_dict() for k, v in stats.items()})


def describe_stats(stats: dict[str, Any]) -> str:
    from .tokenize import TokenStats

    fields = set(TokenStats.__dataclass_fields__)
    return "; ".join(
        f"{name}: {TokenStats(**{k: v for k, v in s.items() if k in fields}).summary()}" for name, s in stats.items()
    )


def train(config: SFTConfig) -> dict[str, Any]:
    """Run the recipe; returns the final metrics. Writes `output_dir/best` on the main process."""
    from .callbacks import finish_reporting
    from .chat import setup_chat_template
    from .model import load_tokenizer
    from .save import disk_errors, prepare_output_dir, save_best

    # 1. setup: arguments first, because they initialise the (possibly distributed) state
    args = to_training_arguments(config)
    resume_from = prepare_output_dir(config, args)

    # 2. data: tokenized once, on the main process first; the other processes read its cache
    with args.main_process_first(desc="preprocessing"):
        tokenizer = load_tokenizer(config.resolved_tokenizer_name, config.trust_remote_code)
        setup_chat_template(tokenizer, config)  # may add tokens: before the model gets its embeddings
        data = prepare_data(config, tokenizer)
    log.info("data: %s", describe_stats(data.stats))

    # 3. model and trainer
    trainer, stop = build_trainer(config, args, tokenizer, data)

    # 4. train (resuming if a complete checkpoint exists), then evaluate the best model
    before = generation_check(config, trainer, tokenizer, data, "untrained") if config.generation_eval_samples \
        else None
    with disk_errors(config), stop.handling_signals():
        result = trainer.train(resume_from_checkpoint=resume_from)
    stop.raise_if_stopped(config.output_dir)
    metrics = trainer.evaluate()
    if config.generation_eval_samples:
        generated = generation_check(config, trainer, tokenizer, data, "trained", before)
        trainer.log(generated)  # to wandb / tensorboard as eval/exact_match, eval/rouge_l
        metrics.update(generated)

    # 5. save: metrics, state, best/ (model, tokenizer, recipe, card)
    with disk_errors(config):
        trainer.save_metrics("train", {**result.metrics, **{f"data_{k}": v for k, v in data.stats.items()}})
        trainer.save_metrics("eval", metrics)
        trainer.save_state()
        best = save_best(trainer, config, metrics)
    if config.push_to_hub and trainer.is_world_process_zero():
        from .hub import push_best

        push_best(best, config)
    finish_reporting(config)
    return metrics


def build_trainer(config: SFTConfig, args, tokenizer, data: PreparedData):
    """The model (seeded first: from-scratch weights must not depend on what ran before), its
    collator, the evaluation rows and the callbacks, as one `SFTTrainer`; and the signal handler."""
    from transformers import set_seed

    from .callbacks import build_callbacks, loggers_last
    from .collate import make_collator
    from .model import load_model
    from .pretrain_eval import TrainValidTable, fixed_sample, sample_train_rows
    from .save import CheckpointCompleteCallback
    from .signals import StopOnSignal
    from .trainer import SFTTrainer

    set_seed(config.seed)
    model = load_model(config, tokenizer)
    if config.lora is not None:  # `lora: {}` means LoRA with the defaults
        from .lora import wrap_lora

        model = wrap_lora(model, config.lora)
    checkpointing_supported(model, args)
    collator = make_collator(config.packing, tokenizer.pad_token_id, config.pad_to_multiple_of,
                             flash_attention=model.config._attn_implementation == "flash_attention_2")
    # Evaluation rows, and for the train/valid table as many fixed training rows scored the same way
    eval_rows = fixed_sample(data.eval, config.max_eval_samples, config.seed) if config.max_eval_samples \
        else data.eval
    train_sample = sample_train_rows(data.train, len(eval_rows), config.seed) \
        if config.resolved_eval_train_sample else None
    table = [TrainValidTable()] if train_sample is not None else []
    stop = StopOnSignal()  # SIGTERM / Ctrl-C: save at the next step end, then exit non-zero
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=eval_rows, data_collator=collator,
        processing_class=tokenizer,
        callbacks=[*build_callbacks(config, tokenizer, data), *table, CheckpointCompleteCallback(), stop],
        loss_chunk_size=config.resolved_loss_chunk_size, train_sample=train_sample,
    )
    loggers_last(trainer)  # throughput and nan_guard add to the logs before wandb/tensorboard report them
    return trainer, stop


def checkpointing_supported(model, args) -> bool:
    """Gradient checkpointing is on by default on a GPU; a model that cannot do it trains without
    it (the Trainer would raise), with one log line saying so."""
    if args.activation_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        log.info("%s does not support gradient checkpointing; training without it", type(model).__name__)
        args.activation_checkpointing = args.gradient_checkpointing = False
    return bool(args.activation_checkpointing)


def generation_check(config: SFTConfig, trainer, tokenizer, data: PreparedData, label: str,
                     before: dict[str, float] | None = None) -> dict[str, float]:
    """Greedy answers for held-out prompts, scored by exact match and ROUGE-L (`sft_recipe.metrics`,
    loaded with `evaluate`); printed as a small table."""
    from .generate import generate_answers, normalise_answer
    from .metrics import score_generations

    if data.eval_raw is None:
        return {}
    rows = data.eval_raw.select(range(min(config.generation_eval_samples, len(data.eval_raw))))
    chat_kwargs: dict[str, Any] = {}
    if "messages" in rows.column_names:  # answer each conversation's last user turn
        from .chat import last_turn_prompts

        rows, chat_kwargs = last_turn_prompts(rows, tokenizer)
    if "prompt" not in rows.column_names or len(rows) == 0:
        return {}
    answers = generate_answers(trainer.model, tokenizer, rows["prompt"], max_new_tokens=config.max_new_tokens,
                               **chat_kwargs)
    scores = score_generations(answers, rows["completion"])
    if trainer.is_world_process_zero():
        if label == "trained":
            for prompt, answer, ref in list(zip(rows["prompt"], answers, rows["completion"]))[:8]:
                mark = "ok " if normalise_answer(answer) == normalise_answer(ref) else "BAD"
                print(f"  [{mark}] {short_prompt(prompt)!r} -> {answer!r}")
        msg = (f"exact match on {len(rows)} held-out prompts ({label}): {scores['eval_exact_match']:.1%}, "
               f"ROUGE-L {scores['eval_rouge_l']:.3f}")
        if before:
            msg += f"  (untrained model: {before['eval_exact_match']:.1%}, {before['eval_rouge_l']:.3f})"
        print(msg, flush=True)
    return scores


def short_prompt(prompt: str) -> str:
    """The instruction of an Alpaca prompt (the template's boilerplate hides it), else the prompt."""
    if "### Instruction:\n" not in prompt:
        return prompt.strip()
    instruction = prompt.split("### Instruction:\n", 1)[1].split("\n\n### ", 1)[0]
    if "### Input:\n" in prompt:
        instruction += " | input: " + prompt.split("### Input:\n", 1)[1].split("\n\n### ", 1)[0]
    return instruction

