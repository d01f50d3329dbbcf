"""`sft-recipe plan RECIPE [--memory SIZE] [--device cpu|cuda] [--shards N]`: the memory a training step and an
evaluation step will need, part by part, before any data is tokenized; with a budget, the settings
that fit it (as `memory_budget:` would choose them). How each part is measured: `training/memory_plan.py`.
"""

from __future__ import annotations

import torch

from ..data.chat_template import setup_chat_template
from ..errors import UserError
from ..model.load import load_tokenizer
from ..recipe.files import load_recipe
from ..training.memory_budget import budget_of, make_plan, parse_size
from ..training.memory_plan import MIB
from ..training.planned_rows import planned_rows

CUDA_CONTEXT_BYTES = 500 * MIB  # modelled: the CUDA context and kernels, about 0.5 GiB on recent GPUs


def plan_command(recipe: str, overrides: list[str], memory: str | None, device: str, shards: int = 1) -> int:
    if shards < 1:
        raise UserError(f"plan --shards: expected a number of processes of at least 1, got {shards}")
    config = load_recipe(recipe, overrides)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("plan --device cuda: no CUDA device here; plan on the machine that trains, or use --device cpu")
    tokenizer = load_tokenizer(config.resolved_tokenizer_name, config.trust_remote_code)
    setup_chat_template(tokenizer, config)
    budget = parse_size(memory, "--memory") if memory else budget_of(config, device)
    rows = planned_rows(config, tokenizer, prepare=False)  # prepared rows where they exist, never tokenized here
    plan, _ = make_plan(config, tokenizer, budget, device, shards, rows)
    if device == "cuda":  # tensors are the same bytes on the GPU; the process's host memory is not on it
        extra = CUDA_CONTEXT_BYTES - plan.parts["process (imports, tokenizer)"]
        plan.parts["process (imports, tokenizer)"] = CUDA_CONTEXT_BYTES
        plan.train_peak, plan.eval_peak = plan.train_peak + extra, plan.eval_peak + extra
    where = "peak RSS of the whole process" if device == "cpu" else "max_memory_reserved plus the CUDA context"
    per = f", per process of {shards} sharing weights and AdamW state (FSDP, ZeRO-3)" if shards > 1 else ""
    print(f"memory plan for {recipe} on {device} ({where}{per}); rows: {plan.rows}")
    print(*plan.lines(), sep="\n")
    chosen = "chosen to fit " + f"{budget / MIB:,.0f} MiB" if budget is not None else "as the recipe sets them"
    print(f"settings ({chosen}): {plan.settings.describe()}")
    print(f"predicted peak, training: {plan.train_peak / MIB:.0f} MiB")
    print(f"predicted peak, evaluation: {plan.eval_peak / MIB:.0f} MiB", flush=True)
    return 0
