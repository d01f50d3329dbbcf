"""The block a run ends with: what the best model is, what it cost, where it is, what to run next.

The paths are the run's real ones (as the recipe spelled `output_dir`), so every command under
"next:" can be pasted as it is.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ..rundir.layout import BEST_DIRNAME, LOSS_CURVE_FILENAME, RESULTS_FILENAME, TRAIN_LOG_FILENAME
from ..recipe.config import SFTConfig
from ..formats import Form
from ..data.builtin import EXAMPLE_PROMPT, is_builtin

RULE = "-" * 72


def format_summary(config: SFTConfig, state, metrics: dict[str, Any], train_seconds: float, run_seconds: float,
                   trainable_tokens: int, untrained: dict[str, float] | None = None) -> str:
    """The summary block; `state` is the Trainer's `TrainerState` after training."""
    out = Path(config.output_dir)
    best = out / BEST_DIRNAME
    lines = [RULE, f"done in {duration(run_seconds)}"]
    best_step = state.best_global_step if state.best_global_step is not None else state.global_step
    quality = [f"{label} {metrics[k]:{spec}}" for k, label, spec in (
        ("eval_loss", "eval loss", ".4f"), ("eval_perplexity", "perplexity", ".2f"),
        ("eval_token_accuracy", "token accuracy", ".1%")) if k in metrics]
    if config.evaluates:
        lines.append(f"best model   step {best_step} of {state.global_step}: {', '.join(quality)}")
    else:
        off = "streaming_eval_examples: 0" if config.streaming else "eval_fraction: 0"
        lines.append(f"final model  step {state.global_step} (no evaluation: {off}, no eval_dataset; best/ is the "
                     "last step)")
    if "eval_exact_match" in metrics:
        match = f"exact match  {metrics['eval_exact_match']:.1%} on {config.generation_eval_samples} held-out prompts"
        if untrained:
            match += f" (untrained model: {untrained['eval_exact_match']:.1%})"
        lines.append(match)
    for task, scores in sorted((metrics.get("bench") or {}).items()):
        lines.append(f"bench        {task}: " + ", ".join(f"{name} {value:.4g}" for name, value in scores.items()))
    tokens = f"{state.num_input_tokens_seen:,} tokens ({trainable_tokens:,} trainable)" \
        if state.num_input_tokens_seen else f"{trainable_tokens:,} trainable tokens"
    lines.append(f"trained      {state.global_step} steps in {duration(train_seconds)}, {tokens}")
    lines.append(f"saved        {best}/ (weights, tokenizer, recipe, model card)")
    if (out / LOSS_CURVE_FILENAME).is_file():
        lines.append(f"loss curve   {out / LOSS_CURVE_FILENAME}")
    lines.append(f"metrics      {out / TRAIN_LOG_FILENAME} (every log), {out / RESULTS_FILENAME} (final)")
    if config.push_to_hub:
        lines.append(f"pushed to    https://huggingface.co/{config.hub_model_id}")
    lines.append("next:")
    lines += [f"  {command}" for command in next_commands(config, best)]
    lines.append(RULE)
    return "\n".join(lines)


def next_commands(config: SFTConfig, best: Path) -> list[str]:
    """Commands to try the model, evaluate it again, and share it, with `best` filled in."""
    path = shlex.quote(str(best))
    fallback = "Hello! Who are you?" if config.form is Form.CHAT else "Give three tips for staying healthy."
    instruction, text = EXAMPLE_PROMPT if is_builtin(config.dataset) else (fallback, "")
    example = f"sft-recipe generate {path} {shlex.quote(instruction)}" + \
        (f" --input {shlex.quote(text)}" if text else "")
    if config.form is Form.TEXT:
        commands = [f"sft-recipe generate {path} {shlex.quote('Once upon a time')} --raw --temperature 0.8"]
    else:
        commands = ([f"sft-recipe chat {path}"] if config.form is Form.CHAT else []) + [example]
    commands.append(f"sft-recipe eval {path}")
    if config.lora is not None:
        commands.append(f"sft-recipe merge {path} --output {shlex.quote(str(best.parent / 'merged'))}")
    if not config.push_to_hub:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config.output_dir).resolve().name).strip("-.") or "model"
        commands.append(f"hf upload YOUR-NAME/{name} {path}   # share it on the hub")
    return commands


def duration(seconds: float) -> str:
    """`42s`, `2m41s`, `1h05m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
