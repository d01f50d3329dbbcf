"""`sft-recipe eval`: the end-of-training evaluation, run again on a saved model.

Same split (the recipe's data, `eval_fraction` and `seed` select the same held-out rows), same
metrics: eval loss, perplexity and next-token accuracy on trainable tokens (from
`SFTTrainer.evaluate`), plus exact match and ROUGE-L on generated answers when
`generation_eval_samples > 0`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .build import build_eval_trainer
from ..recipe.config import SFTConfig
from ..data.chat_template import last_turn_prompts
from ..data.prepare import PreparedData, describe_stats, prepare_data
from ..formats import get_format
from ..model.generate import generate_answers
from .metrics import normalise_answer, score_generations
from ..model.load import load_for_inference
from ..training.arguments import to_training_arguments
from ..errors import UserError
from ..recipe.files import load_recipe
from ..rundir.layout import RECIPE_FILENAME, RESULTS_FILENAME
from ..rundir.paths import writable_file

log = logging.getLogger("sft_recipe")


def evaluate_saved(model_dir: str | Path, config: SFTConfig) -> dict[str, Any]:
    """Metrics of the model (or LoRA adapter) in `model_dir` on the recipe's held-out split."""
    if not config.evaluates:
        raise UserError("eval: the recipe has no evaluation rows (eval_fraction: 0 or streaming_eval_examples: 0, "
                        "no eval_dataset); give an eval_dataset, e.g. --eval_dataset data/test.jsonl")
    model, tokenizer = load_for_inference(model_dir)  # its saved tokenizer carries any chat template
    data = prepare_data(config, tokenizer)
    log.info("data: %s", describe_stats(data.stats))
    args = to_training_arguments(config, report_to="none")
    trainer = build_eval_trainer(config, args, model, tokenizer, data.eval, data.eval_parts)
    metrics = trainer.evaluate()
    if config.generation_eval_samples:
        metrics.update(generation_check(config, trainer, tokenizer, data, "saved model"))
    return metrics


def write_results(metrics: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def generation_check(config: SFTConfig, trainer, tokenizer, data: PreparedData, label: str,
                     before: dict[str, float] | None = None) -> dict[str, float]:
    """Greedy answers for held-out prompts, scored by exact match and ROUGE-L (`sft_recipe.commands.metrics`,
    loaded with `evaluate`); printed as a small table."""
    if data.eval_raw is None:
        return {}
    rows = data.eval_raw.select(range(min(config.generation_eval_samples, len(data.eval_raw))))
    chat_kwargs: dict[str, Any] = {}
    if "messages" in rows.column_names:  # answer each conversation's last user turn
        rows, chat_kwargs = last_turn_prompts(rows, tokenizer, config.chat_template_kwargs)
    if "prompt" not in rows.column_names or len(rows) == 0:
        return {}
    answers = generate_answers(trainer.model, tokenizer, rows["prompt"], max_new_tokens=config.max_new_tokens,
                               **chat_kwargs)
    scores = score_generations(answers, rows["completion"])
    if trainer.is_world_process_zero():
        if label == "trained":
            shown = rows["shown"] if "shown" in rows.column_names else \
                [get_format(config.dataset_format).shown(p) for p in rows["prompt"]]
            for question, answer, ref in list(zip(shown, answers, rows["completion"]))[:4]:
                mark = "ok " if normalise_answer(answer) == normalise_answer(ref) else "BAD"
                print(f"  [{mark}] {question!r} -> {answer!r}")
        msg = (f"exact match on {len(rows)} held-out prompts ({label}): {scores['eval_exact_match']:.1%}, "
               f"ROUGE-L {scores['eval_rouge_l']:.3f}")
        if before:
            msg += f"  (untrained model: {before['eval_exact_match']:.1%}, {before['eval_rouge_l']:.3f})"
        print(msg, flush=True)
    return scores


def eval_command(model_dir: str, recipe: str | None, output: str | None, overrides: list[str]) -> int:
    """`sft-recipe eval MODEL_DIR [RECIPE]`: the recipe saved beside the model unless one is given."""
    recipe_path = recipe or Path(model_dir) / RECIPE_FILENAME
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: model directory not found")
    output_path = writable_file(output or Path(model_dir) / RESULTS_FILENAME, "--output")
    config = load_recipe(recipe_path, overrides)
    metrics = evaluate_saved(model_dir, config)
    path = write_results(metrics, output_path)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"wrote {path}", flush=True)
    return 0
