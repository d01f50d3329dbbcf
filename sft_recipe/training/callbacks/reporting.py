"""Reporting to wandb: the resolved recipe in the run config, and closing the run.

wandb is imported only when the recipe reports to it (`report_to: [wandb]`): it is slow to
import and starts background machinery.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ...recipe.config import SFTConfig


class WandbRecipeCallback(TrainerCallback):
    """Put the resolved recipe into the wandb run config, beside the TrainingArguments that the
    Trainer's WandbCallback logs (which runs first and starts the run)."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        self.recipe = recipe

    def on_train_begin(self, args, state, control, **kwargs):
        run = wandb_run(args)
        if run is not None and state.is_world_process_zero:
            run.config.update({"recipe": self.recipe}, allow_val_change=True)


def wandb_run(args):
    """The active wandb run when the recipe reports to wandb, else None (wandb is never imported otherwise)."""
    if "wandb" not in (args.report_to or []):
        return None
    import wandb

    return wandb.run


def finish_reporting(config: SFTConfig) -> None:
    """Close the wandb run after the final evaluation and generation metrics were logged (the
    Trainer leaves it open), so a second run in the same process starts a new one."""
    if "wandb" in config.report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()
