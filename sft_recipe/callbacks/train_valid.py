"""The train/valid table of a pretraining run: the loss on a fixed sample of training rows next
to the validation loss, at every evaluation (and at step 0 with `eval_on_start`).

The training loss the Trainer logs is a running average over the last `logging_steps` batches
(with dropout on); comparing it with the validation loss mixes two different measurements. Scoring
the same seeded training rows as the validation rows, with the same code, shows over-fitting as
it happens. `SFTTrainer` does the scoring (`train_sample=`), `data.prepare.sample_train_rows` picks the rows,
and this callback prints.
"""

from __future__ import annotations

from transformers import TrainerCallback


class TrainValidTable(TrainerCallback):
    """Prints `Step: N, Training Loss: ..., Validation Loss: ...` once per evaluation, on the
    main process. The evaluation of the best model after training is labelled as such."""

    def __init__(self) -> None:
        self.printed_steps: set[int] = set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
            return
        step = state.global_step
        label = f"Step: {step}" if step not in self.printed_steps else f"Best model (step {state.best_global_step})"
        self.printed_steps.add(step)
        print(format_row(label, metrics), flush=True)


def format_row(label: str, metrics: dict[str, float]) -> str:
    parts = [label]
    if "train_sample_loss" in metrics:
        parts.append(f"Training Loss: {metrics['train_sample_loss']:.3f}")
    parts.append(f"Validation Loss: {metrics['eval_loss']:.3f}")
    if "eval_perplexity" in metrics:
        parts.append(f"Validation Perplexity: {metrics['eval_perplexity']:.1f}")
    return ", ".join(parts)
