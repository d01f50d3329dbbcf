"""`memory_budget:` and `batch_size: auto`: the run picks its memory settings before the first step.

The plan (`memory_plan.py`) predicts each candidate's peak; the fastest that fits is written into the
recipe the run trains with (micro-batch, accumulation, loss chunk, tiles, checkpointing), said in one
line, and saved as `output_dir/memory_plan.json`, so that a resume makes the same choice (the sampler
depends on the micro-batch) whatever memory is free then. The effective batch is never changed:
batch_size x accumulation stays what the recipe gives (or `effective_batch_size` with
`batch_size: auto`). Every process computes its choice and all take the leanest of them. After the
second step (the first with AdamW's state in memory) one line compares the measured peak with
the predicted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import AutoConfig, TrainerCallback

from ..errors import UserError, one_line
from ..model.load import scratch_config
from ..recipe.config import SFTConfig
from .arguments import eval_batch_size, loss_chunk_size
from .host_memory import peak_resident_bytes, resident_bytes
from .memory_plan import MIB, Plan, candidates, choose, parameter_bytes, predict
from .memory_probes import Probes, Settings
from .planned_rows import PlannedRows, planned_rows

log = logging.getLogger("sft_recipe")
PLAN_FILENAME = "memory_plan.json"
AUTO_MARGIN = 0.10  # `memory_budget: auto` leaves this share of the free memory alone
UNITS = {"b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20, "g": 2**30,
         "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(text: Any, where: str) -> int:
    """`6GiB`, `6 GB`, `6144MiB` or a number of bytes; one line naming the key otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in UNITS and unit:
        raise UserError(f"{where}: expected a size such as 6GiB, 6000MB or auto, got {text!r}")
    return int(float(match.group(1)) * UNITS.get(unit, 1))


def model_config_of(config: SFTConfig, tokenizer):
    """The transformers config of the model the recipe trains, its vocabulary grown to the tokenizer's."""
    if config.from_scratch:
        model_config = scratch_config(config, tokenizer)
    else:
        try:
            model_config = AutoConfig.from_pretrained(config.model_name, trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise UserError(f"{config.model_name}: cannot read the model's config ({one_line(exc)})") from None
    model_config.vocab_size = max(model_config.vocab_size or 0, len(tokenizer))
    return model_config


def free_bytes(device: str) -> int:
    """`memory_budget: auto`: the device's free memory (available RAM on the CPU) less a margin."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free * (1 - AUTO_MARGIN))
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int((int(line.split()[1]) * 1024 + resident_bytes()) * (1 - AUTO_MARGIN))
    raise UserError("memory_budget: auto cannot read the free memory here; give a size, e.g. 6GiB")


def budget_of(config: SFTConfig, device: str) -> int | None:
    if config.memory_budget is None:
        return None
    return free_bytes(device) if str(config.memory_budget).lower() == "auto" else \
        parse_size(config.memory_budget, "recipe key 'memory_budget'")


def effective_batch(config: SFTConfig) -> int:
    if config.batch_size == "auto":
        if not config.effective_batch_size:
            raise UserError("batch_size: auto needs 'effective_batch_size' (rows per optimizer step, per process)")
        return config.effective_batch_size
    return config.batch_size * config.gradient_accumulation_steps


def recipe_settings(config: SFTConfig, vocab: int) -> Settings:
    """What the recipe sets itself (for `plan` without a budget)."""
    batch = config.batch_size if config.batch_size != "auto" else 1
    return Settings(batch, effective_batch(config) // batch, loss_chunk_size(config, vocab),
                    config.mlp_tile_tokens or 0, bool(config.gradient_checkpointing))


def sharding_processes() -> int:
    """How many processes share the weights and AdamW state (FSDP, DeepSpeed ZeRO-3 under
    `accelerate launch`), else 1: DDP keeps a whole copy on every device."""
    state = PartialState()
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    zero3 = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    return state.num_processes if fsdp or zero3 else 1


def make_plan(config: SFTConfig, tokenizer, budget: int | None, device: str = "cpu", shards: int = 1,
              rows: PlannedRows | None = None) -> tuple[Plan, Probes]:
    """The recipe's own settings' plan, or, with a budget, the fastest settings that fit it; per
    device, with the weights and AdamW state divided among `shards` processes (FSDP, ZeRO-3); for
    `rows` where they are prepared, else for the worst case the recipe allows."""
    model_config = model_config_of(config, tokenizer)
    probes = Probes(model_config, config, shards, rows)
    process, eval_batch = resident_bytes(), eval_batch_size(config)
    if budget is None:
        settings = recipe_settings(config, model_config.vocab_size)
        return predict(probes, settings, process, eval_batch, parameter_bytes(model_config, config)), probes
    return choose(probes, budget, effective_batch(config), loss_chunk_size(config, model_config.vocab_size), process,
                  eval_batch), probes


def agreed(settings: Settings, options: list[Settings]) -> Settings:
    """Every process takes the leanest of their choices (the latest in `options`' order)."""
    state = PartialState()
    if state.num_processes == 1 or not torch.distributed.is_initialized():
        return settings
    index = torch.tensor([options.index(settings)], device=state.device)
    torch.distributed.all_reduce(index, op=torch.distributed.ReduceOp.MAX)
    return options[int(index.item())]


def fit_memory(config: SFTConfig, tokenizer, resuming: bool) -> tuple[SFTConfig, Plan | None]:
    """The recipe with its memory settings chosen (unchanged without a budget or `batch_size: auto`)."""
    if config.memory_budget is None and config.batch_size != "auto":
        return config, None
    path = Path(config.output_dir) / PLAN_FILENAME
    if resuming and path.is_file():  # the choice the run started with, whatever is free now
        saved = json.loads(path.read_text(encoding="utf-8"))
        settings = Settings(**saved["settings"])
        log.info("memory plan: resuming with %s (chosen at the start of the run)", settings.describe())
        return applied(config, settings), None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = budget_of(config, device)
    if budget is None:  # batch_size: auto alone: as much as the device allows
        budget = free_bytes(device)
    rows = planned_rows(config, tokenizer, prepare=True)
    plan, probes = make_plan(config, tokenizer, budget, device, sharding_processes(), rows)
    options = candidates(effective_batch(config), loss_chunk_size(config, probes.model_config.vocab_size))
    settings = agreed(plan.settings, options)
    if settings != plan.settings:  # another process needed leaner settings: their plan, for the line and the check
        plan = predict(probes, settings, plan.parts["process (imports, tokenizer)"], eval_batch_size(config),
                       parameter_bytes(probes.model_config, config))
    log.info("memory plan: %s; predicted peak %s MiB training, %s MiB evaluation (budget %s MiB), for %s",
             settings.describe(), f"{plan.train_peak / MIB:,.0f}", f"{plan.eval_peak / MIB:,.0f}",
             f"{budget / MIB:,.0f}", plan.rows)
    if PartialState().is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings.__dict__, "predicted_train_mib": plan.train_peak / MIB,
                                    "predicted_eval_mib": plan.eval_peak / MIB, "budget_mib": budget / MIB},
                                   indent=1), encoding="utf-8")
    return applied(config, settings), plan


def applied(config: SFTConfig, settings: Settings) -> SFTConfig:
    """The recipe with `settings` in it; `memory_budget` stays, as the record of why."""
    return dataclasses.replace(config, batch_size=settings.batch_size, effective_batch_size=None,
                               gradient_accumulation_steps=settings.accumulation,
                               loss_chunk_size=settings.loss_chunk_size, mlp_tile_tokens=settings.mlp_tile_tokens,
                               gradient_checkpointing=settings.gradient_checkpointing)


class PeakAgainstPlan(TrainerCallback):
    """One line comparing the measured peak with the predicted one, after step 2: the plan is for a
    step that runs with AdamW's state in memory, which the first step creates only at its end
    (so its own peak is lower). A run of one step says so after it."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.said = plan, False

    def on_step_end(self, args, state, control, **kwargs: Any):
        if state.global_step == 2:
            self.say(state, "step 2 (the first with AdamW's state in memory)")
        return control

    def on_train_end(self, args, state, control, **kwargs: Any):
        if not self.said and state.global_step:
            self.say(state, f"{state.global_step} step (AdamW's state is created at its end: lower than planned)")
        return control

    def say(self, state, when: str) -> None:
        self.said = True
        if not state.is_world_process_zero:
            return
        measured = torch.cuda.max_memory_reserved() if torch.cuda.is_available() else peak_resident_bytes()
        log.info("memory: peak after %s %s MiB, predicted %s MiB (%.2fx)", when, f"{measured / MIB:,.0f}",
                 f"{self.plan.train_peak / MIB:,.0f}", measured / max(1, self.plan.train_peak))


@contextlib.contextmanager
def out_of_memory(config: SFTConfig) -> Iterator[None]:
    """An out-of-memory error during training is one line that says where to look."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise UserError(f"out of memory during training ({one_line(exc)[:160]}); `sft-recipe plan RECIPE` shows "
                        f"what a step needs, and memory_budget: auto (or a size) chooses settings that fit") from None
