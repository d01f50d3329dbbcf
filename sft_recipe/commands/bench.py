"""`sft-recipe bench MODEL_DIR --tasks ...` and `bench_tasks:`: benchmark scores from lm-evaluation-harness.

The harness (`pip install -e ".[bench]"`; tested with lm-eval 0.4.13 on transformers 5) scores any
model directory, so a fine-tune and its base model are compared on the same tasks. What is ours is
only how the model meets the tasks, since that is where comparisons usually go wrong (a different
chat template, or a LoRA loaded differently, than at training):
- the model and tokenizer are loaded exactly as `generate` loads them (`model.load.load_for_inference`:
  a LoRA adapter on its base), and handed to the harness's own `HFLM` as objects;
- `--chat_template auto` (the default) applies the model's own chat template, the one saved with it
  at training, when the model was trained on conversations (its saved recipe says so) or, for a
  directory without a recipe, when its tokenizer has a template; the recipe's `chat_template_kwargs`
  reach the template (the harness's `chat_template_args`). `on`/`off` force it;
- scores go into `eval_results.json` under `bench`, the model card's `model-index` and the summary.
Tasks are the harness's own, or local task YAMLs (`--include_path DIR`), which may read local JSON:
nothing is downloaded by `bench` itself.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..formats import Form, form_of
from ..model.load import load_for_inference
from ..rundir.layout import CARD_FILENAME, RESULTS_FILENAME, read_saved_recipe

log = logging.getLogger("sft_recipe")
BENCH_KEY = "bench"


def harness() -> Any:
    """lm-evaluation-harness, or one line saying how to install it (it is an optional extra)."""
    try:
        import lm_eval  # the extra: imported only by `bench` (commands that never score need not have it)
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("bench needs lm-evaluation-harness: pip install -e \".[bench]\" "
                        "(or pip install lm_eval)") from None
    return lm_eval, HFLM, TaskManager


def use_chat_template(choice: str, recipe: dict[str, Any], tokenizer) -> bool:
    """`auto`: as the model was trained (module docstring); `on`/`off` as said."""
    if choice in ("on", "off"):
        if choice == "on" and tokenizer.chat_template is None:
            raise UserError("bench --chat_template on: the model's tokenizer has no chat template")
        return choice == "on"
    if recipe.get("dataset_format"):
        try:
            return form_of(str(recipe["dataset_format"])) is Form.CHAT
        except UserError:
            pass
    return tokenizer.chat_template is not None


def known_tasks(manager, tasks: list[str]) -> None:
    """An unknown task is one line, with the closest name, before the model is loaded."""
    names = set(manager.all_tasks)
    for task in tasks:
        if task not in names:
            close = difflib.get_close_matches(task, sorted(names), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"bench: unknown harness task '{task}'{hint}; list them with lm-eval ls tasks, "
                            "or give a local task YAML's folder with --include_path")


def scores_of(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from the harness's results (filters named as the harness names them)."""
    scores: dict[str, dict[str, float]] = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            if isinstance(value, (int, float)) and "_stderr" not in key and key not in ("sample_len",):
                metric, _, filtered = key.partition(",")
                name = metric if filtered in ("", "none") else f"{metric},{filtered}"
                scores.setdefault(task, {})[name] = float(value)
    return scores


def bench(model_dir: str | Path, tasks: list[str], *, include_path: str | None = None, limit: float | None = None,
          num_fewshot: int | None = None, batch_size: int = 8, chat_template: str = "auto",
          system_prompt: str | None = None, chat_template_kwargs: dict[str, Any] | None = None,
          log_samples: bool = False) -> dict[str, Any]:
    """Score `model_dir` on the harness `tasks`; returns {"scores": ..., "samples": ... (when asked)}."""
    model_dir = Path(model_dir)
    if not tasks:
        raise UserError("bench: name at least one task (--tasks a,b)")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"{include_path}: --include_path must be a folder of task YAMLs")
    lm_eval, hflm, task_manager = harness()
    manager = task_manager(include_path=include_path) if include_path else task_manager()
    known_tasks(manager, tasks)
    model, tokenizer = load_for_inference(model_dir)
    recipe = read_saved_recipe(model_dir)
    kwargs = dict(recipe.get("chat_template_kwargs") or {}, **(chat_template_kwargs or {}))
    chat = use_chat_template(chat_template, recipe, tokenizer)
    device = str(next(model.parameters()).device)
    lm = hflm(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              chat_template_args=kwargs or None)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, apply_chat_template=chat,
                                          system_instruction=system_prompt, log_samples=log_samples)
    except UserError:
        raise
    except Exception as exc:  # a task that cannot load (its data file, a missing split): one line
        raise UserError(f"bench: the harness failed: {' '.join(str(exc).split())[:400]}") from None
    scores = scores_of(results or {})
    out: dict[str, Any] = {"scores": scores, "chat_template": chat}
    if log_samples:
        out["samples"] = (results or {}).get("samples", {})
    return out


def record(model_dir: str | Path, scores: dict[str, dict[str, float]], name: str | None = None) -> None:
    """Scores into `eval_results.json` (under `bench`) and the model card's `model-index`."""
    model_dir = Path(model_dir)
    path = model_dir / RESULTS_FILENAME
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results[BENCH_KEY] = {**results.get(BENCH_KEY, {}), **scores}
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    card = model_dir / CARD_FILENAME
    if card.is_file():
        card.write_text(with_model_index(card.read_text(encoding="utf-8"), results[BENCH_KEY],
                                         name or model_dir.name), encoding="utf-8")


def with_model_index(card: str, scores: dict[str, dict[str, float]], name: str) -> str:
    """The card with its front matter's `model-index` set to `scores` (the hub reads it as results)."""
    front, body = "", card
    if card.startswith("---\n") and "\n---" in card[4:]:
        end = card.index("\n---", 4)
        front, body = card[4:end], card[end + 4:].lstrip("\n")
    meta = yaml.safe_load(front) or {} if front else {}
    meta["model-index"] = [{"name": name, "results": [
        {"task": {"type": "text-generation", "name": task}, "dataset": {"name": task, "type": task},
         "metrics": [{"type": metric, "value": value, "name": metric} for metric, value in metrics.items()]}
        for task, metrics in sorted(scores.items())]}]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}"


def describe(scores: dict[str, dict[str, float]]) -> list[str]:
    """`gsm8k  exact_match 0.412, ...` per task, for the console and the summary block."""
    return [f"{task}  " + ", ".join(f"{metric} {value:.4g}" for metric, value in metrics.items())
            for task, metrics in sorted(scores.items())]


def bench_best(best: Path, config) -> dict[str, dict[str, float]]:
    """`bench_tasks:` after training: `best/` scored and the scores recorded (as `sft-recipe bench` does)."""
    out = bench(best, list(config.bench_tasks), include_path=config.bench_include_path, limit=config.bench_limit,
                chat_template_kwargs=dict(config.chat_template_kwargs))
    record(best, out["scores"], config.hub_model_id or None)
    return out["scores"]


def bench_command(args: Any) -> int:
    """`sft-recipe bench MODEL_DIR --tasks a,b ...`: score, record, print."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out = bench(args.model_dir, tasks, include_path=args.include_path, limit=args.limit, num_fewshot=args.num_fewshot,
                batch_size=args.batch_size, chat_template=args.chat_template, system_prompt=args.system)
    record(args.model_dir, out["scores"])
    template = "the model's chat template" if out["chat_template"] else "no chat template"
    print(f"bench {args.model_dir} ({template}):", *describe(out["scores"]), sep="\n  ", flush=True)
    return 0
