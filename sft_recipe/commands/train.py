"""The training run, top to bottom: recipe -> data -> tokens -> model -> Trainer -> best/.

Tokens per optimizer step = batch_size x gradient_accumulation_steps x processes x (row length),
and the loss is the mean over the *trainable* tokens of that whole step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .build import build_trainer
from .preflight import preflight
from ..training.callbacks.reporting import finish_reporting
from ..rundir.checkpoints import disk_errors, prepare_output_dir
from ..recipe.config import SFTConfig
from ..data.chat_template import setup_chat_template
from ..data.prepare import describe_stats, prepare_data
from ..publish.hub import push_best
from ..rundir.lock import output_dir_lock
from ..model.load import check_model, load_tokenizer
from ..rundir.paths import writable_dir
from ..rundir.resume import check_resume, mark_finished
from ..rundir.best import save_best
from ..rundir.stream_state import restore_stream
from ..publish.summary import format_summary
from ..training.memory_budget import PeakAgainstPlan, fit_memory, out_of_memory
from ..training.arguments import to_training_arguments
from ..training.signals import peers_watched
from ..training.host_memory import release_unused_memory

log = logging.getLogger("sft_recipe")
GenerationCheck = Callable[..., dict[str, float]]  # `commands.evaluation.generation_check`


def train(config: SFTConfig, generation_check: GenerationCheck | None = None,
          bench: Callable[[Path, SFTConfig], dict] | None = None) -> dict[str, Any]:
    """Run the recipe; returns the final metrics. Writes `output_dir/best` and prints the summary
    on the main process. `generation_check` scores generated answers when the recipe asks for
    `generation_eval_samples`; the command line passes it only then, so that other runs never
    import `evaluate` (and scipy: 25 MiB of resident memory for the whole run)."""
    if config.generation_eval_samples and generation_check is None:
        raise ValueError("generation_eval_samples needs train(config, commands.evaluation.generation_check)")
    started = time.perf_counter()
    preflight(config)  # every name the recipe gives, before any data is prepared
    config, plan = choose_memory_settings(config)  # memory_budget / batch_size: auto, before the arguments
    # 1. setup: arguments first (they check `training_args` and initialise the distributed state),
    # then the output_dir, owned by this run until it ends (lock.py)
    args = to_training_arguments(config)
    writable_dir(config.output_dir, "output_dir")
    with output_dir_lock(config.output_dir, main_process=args.process_index == 0), peers_watched(config.output_dir):
        return run(config, args, started, generation_check, bench, plan)


def choose_memory_settings(config: SFTConfig):
    """The recipe with the memory plan's choice in it (`training/memory_budget.py`), when it asks for one."""
    if config.memory_budget is None and config.batch_size != "auto":
        return config, None
    tokenizer = load_tokenizer(config.resolved_tokenizer_name, config.trust_remote_code)
    setup_chat_template(tokenizer, config)  # its added tokens grow the vocabulary the plan measures
    resuming = not config.overwrite_output_dir and any(Path(config.output_dir).glob("checkpoint-*"))
    return fit_memory(config, tokenizer, resuming)


def run(config: SFTConfig, args, started: float, generation_check: GenerationCheck | None,
        bench: Callable[[Path, SFTConfig], dict] | None = None, plan=None) -> dict[str, Any]:
    """`train` once the output_dir is ours: resume rules, checks, data, training, best/."""
    resume_from = prepare_output_dir(config, args)
    finished = check_resume(config, resume_from)
    if finished is not None:
        return finished

    # 2. checks that cost nothing, then data: tokenized once, on the main process first
    with args.main_process_first(desc="preprocessing"):
        tokenizer = load_tokenizer(config.resolved_tokenizer_name, config.trust_remote_code)
        new_token_ids = setup_chat_template(tokenizer, config)  # before the model gets its embeddings
        check_model(config, tokenizer)  # the model's positions and vocabulary, before tokenizing
        data = prepare_data(config, tokenizer)
    log.info("data: %s", describe_stats(data.stats))

    # 3. model and trainer
    trainer, stop = build_trainer(config, args, tokenizer, data, new_token_ids)
    if plan is not None:
        trainer.add_callback(PeakAgainstPlan(plan))

    # 4. train (resuming if a complete checkpoint exists), then evaluate the best model
    before = generation_check(config, trainer, tokenizer, data, "untrained") if generation_check else None
    if config.streaming and resume_from is not None:
        restore_stream(data.train, resume_from, args)  # continue the stream where the checkpoint left it
    release_unused_memory()
    with disk_errors(config), stop.handling_signals(), out_of_memory(config):
        result = trainer.train(resume_from_checkpoint=resume_from)
    stop.raise_if_stopped(config.output_dir)
    metrics = best_model_metrics(trainer) if config.evaluates else {}  # no evaluation: best/ is the last step
    if generation_check:
        generated = generation_check(config, trainer, tokenizer, data, "trained", before)
        trainer.log(generated)  # to wandb / tensorboard as eval/exact_match, eval/rouge_l
        metrics.update(generated)

    # 5. save: metrics, state, best/ (model, tokenizer, recipe, card)
    with disk_errors(config):
        trainer.save_metrics("train", {**result.metrics, **{f"data_{k}": v for k, v in data.stats.items()}})
        trainer.save_metrics("eval", metrics)
        trainer.save_state()
        best = save_best(trainer, config, metrics)
        if trainer.is_world_process_zero():
            mark_finished(config, trainer.state.global_step)
    if config.bench_tasks and bench is None:
        raise ValueError("bench_tasks needs train(config, check, commands.bench.bench_best)")
    if bench is not None and trainer.is_world_process_zero():  # before the push: the card carries the scores
        metrics["bench"] = bench(best, config)
        trainer.save_metrics("eval", metrics)
    if config.push_to_hub and trainer.is_world_process_zero():
        push_best(best, config)
    finish_reporting(config)
    if trainer.is_world_process_zero():
        print(format_summary(config, trainer.state, metrics, result.metrics.get("train_runtime", 0.0),
                             time.perf_counter() - started, int(trainer.trainable_tokens_seen), before), flush=True)
    return metrics


def best_model_metrics(trainer) -> dict[str, Any]:
    """The eval metrics of the best model (loaded by the Trainer at the end), computed once: when
    the best checkpoint is the last step, its evaluation during training is that evaluation."""
    state = trainer.state
    if state.best_global_step is not None and state.best_global_step == state.global_step:
        for entry in reversed(state.log_history):
            if "eval_loss" in entry and entry.get("step") == state.global_step:
                return {k: v for k, v in entry.items() if k != "step"}
    return trainer.evaluate()
