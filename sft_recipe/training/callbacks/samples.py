"""`samples`: greedy answers to fixed prompts at every evaluation, printed and logged to wandb."""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from ...recipe.config import SFTConfig
from ...data.chat_template import chat_prompt, last_turn_prompts, stop_token_ids
from ...formats import DEFAULT_FORMAT, Form, get_format
from ...model.generate import generate_answers
from .reporting import wandb_run

log = logging.getLogger("sft_recipe")
SAMPLE_PROMPTS_FROM_EVAL = 3


class SamplesCallback(TrainerCallback):
    def __init__(self, prompts: list[str], max_new_tokens: int, generate_kwargs: dict[str, Any] | None = None,
                 dataset_format: str = DEFAULT_FORMAT) -> None:
        self.prompts = prompts
        self.shown = get_format(dataset_format).shown  # how the console shows a prompt: the format says
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs or {}  # chat: stop tokens, no second BOS
        self.rows: list[list[Any]] = []  # every eval's samples, so the wandb table shows the progression

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.prompts or model is None or not state.is_world_process_zero:
            return
        answers = generate_answers(model, processing_class, self.prompts, max_new_tokens=self.max_new_tokens,
                                   **self.generate_kwargs)
        print(f"samples at step {state.global_step}:", flush=True)
        for prompt, answer in zip(self.prompts, answers):
            print(f"  {self.shown(prompt)!r} -> {answer!r}", flush=True)
        self.rows += [[state.global_step, prompt, answer] for prompt, answer in zip(self.prompts, answers)]
        run = wandb_run(args)
        if run is not None:
            import wandb

            table = wandb.Table(columns=["step", "prompt", "generation"], data=self.rows)
            run.log({"eval/samples": table, "train/global_step": state.global_step})


def sample_prompts(config: SFTConfig, tokenizer, data: Any) -> tuple[list[str], dict[str, Any]]:
    """Formatted prompts (and generation settings) for the samples callback: the recipe's
    `sample_prompts` in the training template, else the first held-out prompts."""
    eval_raw = data.eval_raw if data is not None else None
    first = eval_raw.select(range(min(SAMPLE_PROMPTS_FROM_EVAL, len(eval_raw)))) if eval_raw is not None else None
    if config.form is Form.CHAT:
        kwargs = config.chat_template_kwargs
        chat = {"stop_token_ids": stop_token_ids(tokenizer, kwargs), "add_special_tokens": False}  # template has BOS
        if config.sample_prompts:
            return [chat_prompt(tokenizer, [{"role": "user", "content": text}], None, kwargs)
                    for text in config.sample_prompts], chat
        if first is not None and "messages" in first.column_names:
            return list(last_turn_prompts(first, tokenizer, kwargs)[0]["prompt"]), chat
    elif config.sample_prompts:
        return [get_format(config.dataset_format).prompt(text) for text in config.sample_prompts], {}
    elif first is not None and "prompt" in first.column_names:
        return list(first["prompt"]), {}
    log.warning("callbacks: 'samples' has no prompts (set sample_prompts for dataset_format %s)", config.dataset_format)
    return [], {}
