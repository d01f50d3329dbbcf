"""How a recipe key is declared: once, with everything the rest of the package derives from it.

Each `SFTConfig` field is a `key(...)`: its default, help, `--help` section, where it goes (the
model, the data, `TrainingArguments` fields, LoRA, the run around training, or the pass-through
mapping), whether a resumed run may change it, and an optional value check. From these come the
`--help` sections (`cli.py`), the `TrainingArguments` mapping's coverage (`training/arguments.py`),
the resume rules (`rundir/resume.py`) and the key table in docs/recipe-keys.md (`key_table`); `tests/recipe/`
fails when a key lacks any of them.

Pure data: nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING
from typing import Any, Callable

from ..errors import RecipeError

# `sft-recipe train --help` and docs/recipe-keys.md group the keys in these sections, in this order.
MODEL, DATA, BATCHING, OPTIMISATION, EVALUATION, ESCAPE = SECTIONS = (
    "model and tokenizer", "data", "batching", "optimisation", "evaluation, logging, saving", "escape hatch")
# Where a key's value goes.
DESTINATIONS = {
    "model": "loading the model and tokenizer",
    "data": "data preparation",
    "trainer": "TrainingArguments fields (listed)",
    "lora": "peft adapters",
    "run": "the run around training: callbacks, generation, saving, the hub",
    "pass-through": "TrainingArguments fields the recipe does not map, unchanged",
}
# Whether a resumed run (same output_dir) may change a key.
FIXED, FREE, EXTENDS = "fixed", "free", "extends"
RESUME_RULES = {
    FIXED: "refused: it changes the weights' trajectory (model, data, optimisation, batch shape, seed)",
    FREE: "allowed: it changes cadence, reporting or memory, not the weights",
    EXTENDS: "allowed to train a finished or stopped run further (the schedule follows the new length)",
}
# TrainingArguments fields the recipe always sets, whatever the keys say (`training/arguments.py`).
FIXED_TRAINING_ARGS = frozenset({
    "eval_strategy", "save_strategy", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "remove_unused_columns", "use_cache", "average_tokens_across_devices", "include_num_input_tokens_seen",
    "tf32", "optim", "dataloader_pin_memory", "disable_tqdm", "use_cpu", "logging_nan_inf_filter",
    "ddp_find_unused_parameters",
})
# Built-in callbacks (training/callbacks/), and the ones a recipe gets when it names none.
BUILTIN_CALLBACKS = ("nan_guard", "throughput", "loss_curve", "samples", "early_stopping")
DEFAULT_CALLBACKS = ("nan_guard", "throughput", "loss_curve")

Check = Callable[[str, Any], None]


def key(default: Any = MISSING, help: str = "", section: str = "", goes: str = "", resume: str = FIXED, *,
        to: tuple[str, ...] = (), check: Check | None = None, factory: Callable[[], Any] | None = None):
    """One recipe key's whole declaration, as a dataclass field."""
    metadata = {"help": help, "section": section, "goes": goes, "resume": resume, "to": tuple(to), "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --- value checks: one line naming the key --------------------------------------------------------
def positive(name: str, value: Any) -> None:
    """> 0 (None allowed: the key is optional)."""
    if value is not None and value <= 0:
        raise RecipeError(f"recipe key '{name}' must be > 0, got {value}")


def non_negative(name: str, value: Any) -> None:
    if value is not None and value < 0:
        raise RecipeError(f"recipe key '{name}' must be >= 0, got {value}")


def positive_or_auto(name: str, value: Any) -> None:
    """> 0, or `auto` (chosen by the memory plan)."""
    if value != "auto":
        positive(name, value)


def positive_number(name: str, value: Any) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise RecipeError(f"recipe key '{name}' must be a positive number, got {value}")


def fraction(name: str, value: Any) -> None:
    """[0, 1): 0 holds nothing out (None allowed: the key is optional)."""
    if value is not None and not 0.0 <= value < 1.0:
        raise RecipeError(f"recipe key '{name}' must be in [0, 1) (0: no evaluation), got {value}")


# --- what is derived from the declarations --------------------------------------------------------
def keys_where(config_class, **match: Any) -> list[str]:
    """Key names whose declaration has every `match` value, in declaration order."""
    return [f.name for f in dataclasses.fields(config_class) if all(f.metadata.get(k) == v for k, v in match.items())]


def mapped_training_args(config_class) -> frozenset[str]:
    """Every TrainingArguments field the recipe sets: the keys' `to` fields and the fixed ones."""
    declared = frozenset(n for f in dataclasses.fields(config_class) for n in f.metadata.get("to", ()))
    return declared | FIXED_TRAINING_ARGS


def sections(config_class) -> list[tuple[str, list[dataclasses.Field]]]:
    """The keys grouped by section, sections in `SECTIONS` order and keys in declaration order."""
    fields = dataclasses.fields(config_class)
    return [(s, [f for f in fields if f.metadata.get("section") == s]) for s in SECTIONS]


def run_checks(config) -> None:
    """Each key's own value check, in declaration order."""
    for f in dataclasses.fields(config):
        if f.metadata.get("check") is not None:
            f.metadata["check"](f.name, getattr(config, f.name))


def is_secret_key(key: str) -> bool:
    """`hub_token`, `token`, ...: the same rule `TrainingArguments.to_dict` uses to mask values."""
    return key == "token" or key.endswith("_token")


def key_table(config_class) -> str:
    """The table of recipe keys in docs/recipe-keys.md (`python -m sft_recipe.recipe.config` prints it)."""
    lines = []
    for title, fields in sections(config_class):
        lines += [f"**{title}**", "", "| key | default | what it does | goes to | on resume |", "|---|---|---|---|---|"]
        for f in fields:
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            goes = f.metadata["goes"] + (f": {', '.join(f.metadata['to'])}" if f.metadata["to"] else "")
            help_text = f.metadata["help"].replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{default!r}` | {help_text} | {goes} | {f.metadata['resume']} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
