"""The model card (`best/README.md`): what the model is, how it was trained, how to prompt it.

Written on the main process by `save.save_best`, so every saved `best/` documents itself, and the
same file is the hub page when `push_to_hub: true`. The YAML front matter is huggingface_hub's
`ModelCardData`; base model and datasets are listed there only when they are hub ids (a local
path is meaningless on the hub).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .layout import ADAPTER_CONFIG_FILENAME, CARD_FILENAME, LOSS_CURVE_FILENAME, RECIPE_FILENAME
from ..recipe.config import SFTConfig
from ..formats import Form, get_format
from ..data.builtin import is_builtin

EXAMPLE_INSTRUCTION = "Give three tips for staying healthy."
# Trainer bookkeeping that says nothing about the model.
_SKIPPED_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "tokens_seen")


def write_model_card(best: Path, config: SFTConfig, metrics: dict[str, Any]) -> Path:
    """Write `best/README.md` (and copy the loss curve beside it)."""
    curve = Path(config.output_dir) / LOSS_CURVE_FILENAME
    has_curve = curve.is_file()
    if has_curve:
        shutil.copy2(curve, best / LOSS_CURVE_FILENAME)
    text = model_card(config, metrics, str(best), is_adapter=(best / ADAPTER_CONFIG_FILENAME).is_file(),
                      loss_curve=LOSS_CURVE_FILENAME if has_curve else None)
    (path := best / CARD_FILENAME).write_text(text, encoding="utf-8")
    return path


def model_card(config: SFTConfig, metrics: dict[str, Any], local_dir: str, *, is_adapter: bool = False,
               loss_curve: str | None = None) -> str:
    """The card's Markdown, front matter included."""
    name = config.hub_model_id or local_dir
    base = None if config.from_scratch else config.model_name
    paths = [config.dataset] if config.dataset else [s.path for s in config.datasets or []]
    data = ModelCardData(library_name="peft" if is_adapter else "transformers",
                         base_model=base if base and is_hub_id(base) else None,
                         datasets=[p for p in paths if is_hub_id(p)] or None,
                         tags=["sft-recipe", "text-generation"] + (["lora"] if is_adapter else []),
                         pipeline_tag="text-generation")
    sections = [
        f"---\n{data.to_yaml()}\n---",
        f"# {config.hub_model_id.split('/')[-1] if config.hub_model_id else Path(config.output_dir).name}",
        describe_training(config, is_adapter),
        results_table(metrics),
        f"![Train and eval loss]({loss_curve})" if loss_curve else "",
        usage(config, name, is_adapter),
        f"## Training recipe\n\nThe resolved recipe (also saved as `{RECIPE_FILENAME}`); re-run it with "
        f"`sft-recipe train {RECIPE_FILENAME}`.\n\n```yaml\n"
        + yaml.safe_dump(config.to_dict(), sort_keys=False) + "```",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def is_hub_id(name: str) -> bool:
    """True for `org/name` or `name` hub ids; False for local paths and `builtin:` sources."""
    if is_builtin(name) or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def describe_training(config: SFTConfig, is_adapter: bool) -> str:
    if config.from_scratch:
        origin = f"A `{(config.model_config or {}).get('model_type')}` model trained from scratch"
    elif is_adapter:
        origin = f"LoRA adapters (r={config.lora.r if config.lora else 16}) for `{config.model_name}`, trained"
    else:
        origin = f"`{config.model_name}` fine-tuned"
    what = "the loss on the text" if config.form is Form.TEXT else "the loss on the responses only (prompts are masked)"
    steps = f"{config.max_steps} steps" if config.max_steps else f"{config.num_epochs:g} epochs"
    on = f"`{config.dataset}` (`{config.dataset_format}` format)" if config.dataset else "a mixture of " + ", ".join(
        f"`{s.path}` (`{s.format}`, weight {s.weight:g})" for s in config.datasets or [])
    return (f"{origin} with sft-recipe on {on} with {what}: {steps}, batch {config.batch_size} x "
            f"{config.gradient_accumulation_steps} accumulation per device, learning rate "
            f"{config.learning_rate:g}, max length {config.max_length}.")


def results_table(metrics: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not any(k.endswith(s) for s in _SKIPPED_METRICS)]
    if not rows:
        return ""
    lines = ["## Results (held-out split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k.removeprefix('eval_')} | {v:.4g} |" for k, v in rows]
    return "\n".join(lines)


def usage(config: SFTConfig, name: str, is_adapter: bool) -> str:
    how, prompt = get_format(config.dataset_format).card_prompt(EXAMPLE_INSTRUCTION)
    loader = ("from peft import AutoPeftModelForCausalLM\n"
              f"model = AutoPeftModelForCausalLM.from_pretrained({name!r})  # base model + adapters\n"
              if is_adapter else
              "from transformers import AutoModelForCausalLM\n"
              f"model = AutoModelForCausalLM.from_pretrained({name!r})\n")
    if config.form is Form.CHAT:
        build = ('messages = [{"role": "user", "content": ' + repr(EXAMPLE_INSTRUCTION) + "}]\n"
                 "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)\n"
                 "inputs = tokenizer(prompt, return_tensors=\"pt\", add_special_tokens=False)\n")
    else:
        build = f"prompt = {prompt!r}\ninputs = tokenizer(prompt, return_tensors=\"pt\")\n"
    code = ("from transformers import AutoTokenizer\n" + loader
            + f"tokenizer = AutoTokenizer.from_pretrained({name!r})\n" + build
            + "output = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
            "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))")
    cli = f"sft-recipe chat {name}" if config.form is Form.CHAT else \
        f"sft-recipe generate {name} {EXAMPLE_INSTRUCTION!r}"
    return (f"## How to use\n\nPrompts use {how}; generation stops at the tokenizer's EOS.\n\n"
            f"```python\n{code}\n```\n\nOr with sft-recipe, which applies the template itself:\n\n"
            f"```bash\n{cli}\n```")
